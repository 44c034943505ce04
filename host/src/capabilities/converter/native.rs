//! The native converters, by name: `exact`, `oci2rootfs` and commands
//! (each command's converter made once and kept).

use std::path::PathBuf;
use std::sync::Arc;

use super::{Converter, ConverterRegistry, command, exact, oci2rootfs};
use crate::converter_spec::ConverterSpec;
use crate::error::Result;

/// The native converters.
#[derive(Default)]
pub struct NativeConverters {
    oci2rootfs: Arc<oci2rootfs::Oci2rootfs>,
    exact: Arc<exact::ExactConverter>,
    commands: std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<command::CommandConverter>>>,
}

impl NativeConverters {
    /// The native converters, the exact one leaving `headroom` free when it
    /// sizes an image from its content.
    pub fn with_headroom(headroom: crate::ext4::Headroom) -> Self {
        Self::with_exact(exact::ExactConverter { headroom, ..Default::default() })
    }

    /// The native converters, `exact` configured as given.
    pub fn with_exact(exact: exact::ExactConverter) -> Self {
        Self { exact: Arc::new(exact), ..Self::default() }
    }
}

impl ConverterRegistry for NativeConverters {
    fn get(&self, converter: &ConverterSpec) -> Result<Arc<dyn Converter>> {
        match converter {
            ConverterSpec::Oci2rootfs => Ok(self.oci2rootfs.clone()),
            ConverterSpec::Exact => Ok(self.exact.clone()),
            ConverterSpec::Command(path) => {
                let mut commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(found) = commands.get(path) {
                    return Ok(found.clone());
                }
                let command = Arc::new(command::CommandConverter::new(path)?);
                commands.insert(path.clone(), command.clone());
                Ok(command)
            }
        }
    }
}

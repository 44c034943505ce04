//! A mounter that needs no privileges: it checks and records each install and
//! leaves the image untouched.

use std::fs::File;
use std::sync::{Arc, Mutex};

use super::{AttachedImage, ImageMounter, Install, MountedImage};
use crate::digest::sha256_reader;
use crate::error::{Error, Result};

/// The fake mounter. Clones share their records.
#[derive(Clone, Debug, Default)]
pub struct FakeMounter {
    installs: Arc<Mutex<Vec<Install>>>,
    mounted: Arc<Mutex<usize>>,
    attached: Arc<Mutex<Vec<AttachedImage>>>,
    detached: Arc<Mutex<Vec<AttachedImage>>>,
}

impl FakeMounter {
    /// Every install so far.
    pub fn installs(&self) -> Vec<Install> {
        self.installs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Images mounted right now.
    pub fn mounted(&self) -> usize {
        *self.mounted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pretends `device` was left attached to `backing` (for sweep tests).
    pub fn leave_attached(&self, device: &str, backing: impl Into<std::path::PathBuf>) {
        let attached = AttachedImage { device: device.to_owned(), backing: backing.into() };
        self.attached.lock().unwrap_or_else(|p| p.into_inner()).push(attached);
    }

    /// Every device the sweep detached so far.
    pub fn detached(&self) -> Vec<AttachedImage> {
        self.detached.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct FakeMount {
    owner: FakeMounter,
}

impl ImageMounter for FakeMounter {
    fn mount(&self, _image: File) -> Result<Box<dyn MountedImage>> {
        *self.mounted.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(Box::new(FakeMount { owner: self.clone() }))
    }

    fn attached_under(&self, dir: &std::path::Path) -> Vec<AttachedImage> {
        let attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        attached.iter().filter(|a| a.backing.starts_with(dir)).cloned().collect()
    }

    fn detach(&self, attached: &AttachedImage) -> Result<()> {
        self.attached.lock().unwrap_or_else(|p| p.into_inner()).retain(|a| a != attached);
        self.detached.lock().unwrap_or_else(|p| p.into_inner()).push(attached.clone());
        Ok(())
    }
}

impl MountedImage for FakeMount {
    fn install(&mut self, source: &mut dyn std::io::Read, install: &Install) -> Result<()> {
        super::install::components(&install.target)?;
        let actual = sha256_reader(source).map_err(|e| Error::InjectFailed(format!("reading the agent: {e}")))?;
        if actual != install.sha256 {
            return Err(Error::InjectFailed(format!("the agent changed during the build (sha256 {actual})")));
        }
        self.owner.installs.lock().unwrap_or_else(|p| p.into_inner()).push(install.clone());
        Ok(())
    }

    fn unmount(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl Drop for FakeMount {
    fn drop(&mut self) {
        *self.owner.mounted.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
    }
}

//! A request for an image.

use std::path::PathBuf;

use crate::converter_spec::ConverterSpec;

/// One request: a source and an agent, and how to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// An overlay2 layer directory or an OCI image layout.
    pub source: PathBuf,
    /// The agent binary to install at `/sbin/vm-agent`.
    pub agent: PathBuf,
    /// Image size in bytes; `None` lets the converter decide.
    pub size: Option<u64>,
    /// Which converter builds the image.
    pub converter: ConverterSpec,
    /// `os/arch[/variant]` for OCI indexes; `None` means `linux/amd64`.
    pub platform: Option<String>,
}

impl Request {
    /// A request with the default converter, size and platform.
    pub fn new(source: impl Into<PathBuf>, agent: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            agent: agent.into(),
            size: None,
            converter: ConverterSpec::default(),
            platform: None,
        }
    }

    /// Sets the image size.
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    /// Sets the converter.
    pub fn converter(mut self, converter: ConverterSpec) -> Self {
        self.converter = converter;
        self
    }

    /// Sets the platform for OCI indexes.
    pub fn platform(mut self, platform: impl Into<String>) -> Self {
        self.platform = Some(platform.into());
        self
    }
}

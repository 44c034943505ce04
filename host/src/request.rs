//! A request for an image.

use std::path::PathBuf;

use crate::converter_spec::ConverterSpec;

/// When a request for an image by name (`docker://…`) contacts its
/// registry, as Podman names the choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only when the cache has nothing for the reference: a tag resolved
    /// before is served from the cache without the network.
    #[default]
    Missing,
    /// Always resolve the reference again (a changed digest is a new key);
    /// blobs the cache holds are not downloaded again.
    Always,
    /// Never contact the registry.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "missing" => Ok(Self::Missing),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(crate::error::Error::InvalidRequest(format!(
                "pull policy {other:?} is unknown; use missing, always or never"
            ))),
        }
    }
}

/// One request: a source and an agent, and how to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// An overlay2 layer directory or an OCI image layout (a path), an image
    /// of a layout by its ref name (`oci:PATH:REF`), or an image by name
    /// (`docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`).
    pub source: PathBuf,
    /// The agent binary to install at `/sbin/vm-agent`.
    pub agent: PathBuf,
    /// Image size in bytes; `None` lets the converter decide.
    pub size: Option<u64>,
    /// Which converter builds the image.
    pub converter: ConverterSpec,
    /// `os/arch[/variant]` for OCI indexes; `None` means `linux/amd64`.
    pub platform: Option<String>,
    /// For an image by name: when to contact the registry.
    pub pull: PullPolicy,
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
            pull: PullPolicy::default(),
        }
    }

    /// Sets when an image by name contacts its registry.
    pub fn pull(mut self, pull: PullPolicy) -> Self {
        self.pull = pull;
        self
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

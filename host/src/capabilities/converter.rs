//! The converter capability: turn a resolved source into an ext4 image file.
//!
//! Backends, picked by name through a [`ConverterRegistry`]
//! ([`native::NativeConverters`], or the fake adapter's registry):
//! - [`exact::ExactConverter`] (the default): merges the layers into a tree
//!   (`rootfs-cache-layers`) and writes it with the ext4 writer
//!   (`rootfs-cache-ext4`), installing the agent itself; reproducible.
//! - [`oci2rootfs::Oci2rootfs`]: the `oci2rootfs` crate, in-process, on a
//!   blocking thread.
//! - [`command::CommandConverter`]: any program with oci2rootfs's command-line
//!   contract, `CMD SOURCE --output OUT --size BYTES`, in its own PID
//!   namespace, killed on timeout.
//! - [`fake::FakeConverter`]: writes a small, valid ext4 superblock and
//!   records every job; no privileges needed.

pub mod command;
pub mod exact;
pub mod fake;
pub mod native;
pub mod oci2rootfs;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::converter_spec::ConverterSpec;
use crate::error::Result;

/// What the guest resolved a source to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceLayers {
    /// An overlay2 chain: `diff/` directories, bottom first.
    Overlay2 {
        /// The requested layer directory.
        top: PathBuf,
        /// Every layer's `diff/`, bottom first.
        diffs: Vec<PathBuf>,
    },
    /// An OCI layout: layer blobs, bottom first.
    Oci {
        /// The layout directory.
        layout: PathBuf,
        /// `os/arch[/variant]`.
        platform: String,
        /// Layer blobs with their media types and digests, bottom first.
        blobs: Vec<LayerBlob>,
    },
    /// An image pulled by name, or exported by the local Docker engine: layer blobs of the
    /// cache's blob store.
    Pulled {
        /// The reference, `docker://HOST/REPO:TAG`.
        reference: String,
        /// `os/arch[/variant]`.
        platform: String,
        /// Layer blobs with their media types and digests, bottom first.
        blobs: Vec<LayerBlob>,
    },
}

impl SourceLayers {
    /// The error of a converter that reads a source directory itself and so cannot take a
    /// pulled image, which has only blobs.
    pub fn pulled_refused(converter: &str, reference: &str) -> crate::error::Error {
        crate::error::Error::UnsupportedSource(format!(
            "the {converter} converter reads an OCI layout or an overlay2 directory, and {reference} was pulled \
             or exported into the cache's blob store: convert it with --converter exact"
        ))
    }
}

pub use rootfs_cache_layers::LayerBlob;

/// A file the converter writes into the image itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInstall {
    /// The host file.
    pub source: PathBuf,
    /// Its expected SHA-256, hex.
    pub sha256: String,
    /// Absolute path inside the image.
    pub target: String,
    /// Permission bits.
    pub mode: u32,
}

/// One conversion, checked by the policy.
#[derive(Clone, Debug)]
pub struct ConversionJob {
    /// The source as resolved by the guest.
    pub source: SourceLayers,
    /// Where to write the image: a file in the cache's `tmp/` that does not
    /// exist yet.
    pub output: PathBuf,
    /// The image size, or `None` to size it from the content.
    pub size: Option<u64>,
    /// The cache key; reproducible converters derive the UUID from it.
    pub key: String,
    /// The agent, for converters that install it themselves.
    pub agent: Option<AgentInstall>,
    /// When to give up.
    pub timeout: Duration,
    /// The largest image the policy allows (`max_image_bytes`): a converter
    /// that sizes the image itself must stay within it, and the host refuses
    /// a longer output whatever the converter.
    pub max_bytes: u64,
}

/// What a converter wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Converted {
    /// The image's length.
    pub image_bytes: u64,
    /// File data the image shares with its sources by cloning (`FICLONERANGE`), in bytes.
    pub cloned_bytes: u64,
    /// File data written into the image by copying, in bytes; 0 from a
    /// converter that does not count it (only `exact` does).
    pub copied_bytes: u64,
    /// The image's SHA-256 (hex), when the converter hashed it as it wrote
    /// it (`exact` does); otherwise publishing hashes the image.
    pub image_sha256: Option<String>,
}

impl Converted {
    /// An image of `image_bytes` whose data was not counted.
    pub fn image(image_bytes: u64) -> Self {
        Self { image_bytes, ..Self::default() }
    }
}

/// A converter backend.
#[async_trait::async_trait]
pub trait Converter: Send + Sync {
    /// An identity that changes whenever the output may change (name and
    /// version, or command path and digest). Part of every cache key.
    fn identity(&self) -> String;

    /// Whether [`ConversionJob::agent`] is honoured, so no mount is needed.
    fn installs_agent(&self) -> bool {
        false
    }

    /// Writes the image at `job.output` and returns its length (and how its
    /// data got there). On failure, removes whatever it wrote. Errors:
    /// `ConverterFailed`, `Timeout`, `NoSpace`, `UnsupportedSource`, `Io`.
    async fn convert(&self, job: ConversionJob) -> Result<Converted>;
}

/// Picks the backend for a converter.
pub trait ConverterRegistry: Send + Sync {
    /// The backend of `converter`. Errors (a command's): `NotFound` when it
    /// is missing, `InvalidRequest` when it is no regular file, `Io`.
    fn get(&self, converter: &ConverterSpec) -> Result<Arc<dyn Converter>>;
}

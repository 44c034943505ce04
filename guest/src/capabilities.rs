//! The host's capabilities as the guest logic sees them.
//!
//! In the component these are the WIT imports (see `component.rs`). Natively
//! the fake host in `fake.rs` (`rootfs_cache_guest::fake::FakeHost`, over a
//! real cache directory, recording every call and failing any on request)
//! implements them, so the orchestration of `flow` and `lifecycle` is tested
//! without a wasm runtime (`guest/tests/flows.rs`).

use crate::daemon::Engine;
use crate::probe::Probe;
use crate::registry::Puller;
use crate::remote::Remote;
use crate::wit::host::{Conversion, ConverterInfo, FileDigest, FileInstall, FsckResult};
use crate::wit::types::Error;

/// A held build lock.
pub trait BuildLock {
    /// Unique to this holding; names the build's temporary files.
    fn token(&self) -> String;
    /// Records that the build failed, for callers waiting on it.
    fn fail(&self, reason: &Error);
}

/// A mounted image. Dropping it unmounts.
pub trait MountedImage {
    /// Installs a file into the image.
    fn install(&self, file: &FileInstall) -> Result<(), Error>;
    /// Unmounts, flushing every write.
    fn unmount(self) -> Result<(), Error>;
}

/// The privileged operations of the `host` interface (and its read-only
/// `probe`, its registry calls, its Docker engine calls and its remote
/// cache calls).
pub trait Capabilities: Probe + Puller + Engine + Remote {
    /// The build lock type.
    type Lock: BuildLock;
    /// The mounted image type.
    type Mounted: MountedImage;

    /// `host.digest-file`.
    fn digest_file(&self, path: &str) -> Result<FileDigest, Error>;
    /// `host.describe-converter`.
    fn describe_converter(&self, converter: &str) -> Result<ConverterInfo, Error>;
    /// `host.run-converter`.
    fn run_converter(&self, job: &Conversion) -> Result<u64, Error>;
    /// `host.mount-image`.
    fn mount_image(&self, image: &str) -> Result<Self::Mounted, Error>;
    /// `host.publish`.
    fn publish(&self, staged: &str, image: &str, manifest: &str, manifest_json: &str) -> Result<(), Error>;
    /// `host.remove`.
    fn remove(&self, path: &str) -> Result<(), Error>;
    /// `host.record-use`.
    fn record_use(&self, manifest: &str) -> Result<(), Error>;
    /// `host.lock`.
    fn lock(&self, key: &str) -> Result<Self::Lock, Error>;
    /// `host.try-lock`.
    fn try_lock(&self, key: &str) -> Result<Option<Self::Lock>, Error>;
    /// `host.fsck`.
    fn fsck(&self, image: &str) -> Result<FsckResult, Error>;
}

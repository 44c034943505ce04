//! The order of one request: validate, resolve, key, look up, lock, look
//! again, convert, inject, check, publish; and on any failure after the build
//! starts, remove the temporary image and report a typed error.
//!
//! By concern: `request` checks a request before anything is read,
//! `convert` serves or builds an image, `remote` fetches it from a remote
//! cache or pushes it there, `inspect` reads an image's
//! superblock and `list` lists the entries; `lifecycle` adds sweep,
//! gc and verify. Each adds its methods to [`Cache`].

use std::path::{Path, PathBuf};

use crate::capabilities::Capabilities;

mod convert;
mod entry;
mod inspect;
mod list;
mod remote;
mod request;

pub use request::{
    AGENT_MODE, AGENT_TARGET, DEFAULT_PLATFORM, MAX_IMAGE_BYTES, MAX_PATH_BYTES, MIN_IMAGE_BYTES, RECORD_USE_EVERY,
    SourceName, check_converter, check_host_path, check_request,
};

/// The cache, as one request sees it: the host's capabilities and the
/// read-only view of the cache directory.
pub struct Cache<'h, H> {
    host: &'h H,
    root: PathBuf,
}

impl<'h, H: Capabilities> Cache<'h, H> {
    /// A cache whose directory the guest sees at `root`.
    pub fn new(host: &'h H, root: impl Into<PathBuf>) -> Self {
        Self { host, root: root.into() }
    }

    /// The host's capabilities.
    pub fn host(&self) -> &H {
        self.host
    }

    /// Where the guest sees the cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

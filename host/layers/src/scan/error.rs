//! Why a tree could not be read.

use std::path::Path;

/// Why a tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A system call on a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path below the root.
        path: String,
        /// The error.
        source: rustix::io::Errno,
    },
    /// A file was shorter when read than when its length was taken: it
    /// changed while the tree was read.
    #[error("{path}: changed while it was being read")]
    Changed {
        /// The path below the root.
        path: String,
    },
    /// The conversion was cancelled.
    #[error("cancelled")]
    Cancelled,
}

pub(super) fn io(path: &Path) -> impl Fn(rustix::io::Errno) -> ScanError + '_ {
    move |source| ScanError::Io { path: format!("/{}", path.display()), source }
}

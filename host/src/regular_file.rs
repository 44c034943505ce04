//! The one way the host opens a file to read it: `rootfs_cache_layers::regular_file`
//! (a FIFO, device or directory is refused without blocking, a read stops at
//! the caller's limit), shared with the layer applier, which opens every blob
//! with it. This module adds the conversion into the host's error.

pub(crate) use rootfs_cache_layers::regular_file::{FileError, FinalSymlink, RegularFile, read};

use crate::error::Error;

/// [`FileError`] as the library's error.
pub(crate) trait IntoError {
    /// The library's error for this one, its message starting with `what`
    /// the file is ("agent"): a failed system call keeps its class
    /// (`NotFound`, `NoSpace` or `Io`, see [`Error::io`]); a file that is not
    /// regular or is too long becomes what `refused` makes of the message,
    /// the class the caller gives such a file (an agent is an
    /// `InvalidRequest`, a layer blob an `UnsupportedSource`).
    fn into_error(self, what: &str, refused: impl FnOnce(String) -> Error) -> Error;
}

impl IntoError for FileError {
    fn into_error(self, what: &str, refused: impl FnOnce(String) -> Error) -> Error {
        match self {
            Self::Io { path, source } => Error::io(format!("{what} {}", path.display()), &source),
            other => refused(format!("{what} {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustix::fs::{FileType, Mode};

    use super::*;

    #[test]
    fn a_fifo_is_a_refusal_of_the_callers_class() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let err = read(&fifo, 10, FinalSymlink::Follow).unwrap_err();
        assert!(
            matches!(err.into_error("policy", Error::Config), Error::Config(m) if m.starts_with("policy /") && m.contains("FIFO"))
        );
    }

    #[test]
    fn a_missing_file_keeps_its_class() {
        let err = read(Path::new("/nonexistent/rootfs-cache"), 1, FinalSymlink::Follow).unwrap_err();
        assert!(matches!(err.into_error("policy", Error::Config), Error::NotFound(_)));
    }
}

//! The guest's own error, [`SourceError`]: why a source, or a file of the
//! cache the guest reads itself, could not be used; and how it becomes the
//! WIT's [`Error`], the one error a caller sees.
//!
//! It lives apart from the modules that produce it (source detection, OCI
//! layouts, overlay2 chains, probes, validation) so that none of them needs
//! another to name it.

use std::path::Path;

use crate::sys;
use crate::wit::types::{Denial, Error};

/// Why a source could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceError {
    /// The path does not exist.
    NotFound(String),
    /// The path exists but is not a usable source.
    Unsupported(String),
    /// Reading the source failed.
    Io(String),
    /// A host call failed (a probe the host refused, say); its error
    /// passes through unchanged.
    Host(Error),
}

impl SourceError {
    /// `path` does not exist.
    pub fn not_found(path: &Path) -> Self {
        Self::NotFound(format!("{}: no such file or directory", path.display()))
    }

    /// An I/O error on `path`, kept as one line. A path that is no regular
    /// file ([`crate::sys::NotRegular`]) is an unsupported source; one that
    /// leads out of the request's directories ([`crate::sys::Escape`]) is a
    /// denial by the rule `source_roots`, as the host's probe says it.
    pub fn io(path: &Path, err: &std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::NotFound {
            Self::not_found(path)
        } else if let Some(refusal) = sys::not_regular(err) {
            Self::Unsupported(format!("{} {refusal}", path.display()))
        } else if sys::is_escape(err) {
            Self::Host(Error::Denied(Denial {
                rule: "source_roots".into(),
                detail: format!("{} {}", path.display(), sys::Escape),
            }))
        } else {
            Self::Io(format!("{}: {err}", path.display()))
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(m) | Self::Unsupported(m) | Self::Io(m) => f.write_str(m),
            Self::Host(e) => f.write_str(&describe(e)),
        }
    }
}

impl From<SourceError> for Error {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::NotFound(m) => Error::NotFound(m),
            SourceError::Unsupported(m) => Error::UnsupportedSource(m),
            SourceError::Io(m) => Error::Io(m),
            SourceError::Host(e) => e,
        }
    }
}

/// The message of a host error (a probe's, say), as the source errors
/// carry it.
pub fn describe(error: &Error) -> String {
    match error {
        Error::Denied(d) => format!("denied by {}: {}", d.rule, d.detail),
        Error::ConverterFailed(f) => f.stderr_tail.clone(),
        Error::InvalidRequest(m)
        | Error::NotFound(m)
        | Error::UnsupportedSource(m)
        | Error::Timeout(m)
        | Error::MountFailed(m)
        | Error::InjectFailed(m)
        | Error::Corrupt(m)
        | Error::NoSpace(m)
        | Error::Io(m) => m.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn refusals_become_source_errors_of_their_class() {
        let path = Path::new("/src/index.json");
        let fifo = io::Error::new(io::ErrorKind::InvalidInput, sys::NotRegular { kind: "a FIFO" });
        let refused = SourceError::io(path, &fifo);
        assert_eq!(refused, SourceError::Unsupported("/src/index.json is a FIFO, not a regular file".into()));
        let escaped = SourceError::io(path, &io::Error::new(io::ErrorKind::PermissionDenied, sys::Escape));
        let SourceError::Host(Error::Denied(denial)) = escaped else {
            panic!("an escape is not a denial: {escaped:?}")
        };
        assert_eq!(denial.rule, "source_roots");
        assert!(denial.detail.contains("leads outside"), "{}", denial.detail);
    }

    #[test]
    fn each_source_error_keeps_its_class_and_message() {
        assert_eq!(Error::from(SourceError::NotFound("a".into())), Error::NotFound("a".into()));
        assert_eq!(Error::from(SourceError::Unsupported("b".into())), Error::UnsupportedSource("b".into()));
        assert_eq!(Error::from(SourceError::Io("c".into())), Error::Io("c".into()));
        let denied = Error::Denied(Denial { rule: "r".into(), detail: "d".into() });
        assert_eq!(Error::from(SourceError::Host(denied.clone())), denied);
        assert_eq!(SourceError::Host(denied).to_string(), "denied by r: d");
    }
}

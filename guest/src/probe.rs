//! The hot path's reads, batched: source resolution and entry validation ask
//! the host's `probe` for many paths at once instead of making one WASI call
//! per fact (each of which costs microseconds through the component
//! boundary).

use std::path::Path;

use crate::error::SourceError;
use crate::wit::host::{PathInfo, PathKind, ProbeRequest};
use crate::wit::types::Error;

/// The `host.probe` capability: stat, readlink and the first bytes of
/// several paths in one call.
pub trait Probe {
    /// `host.probe`: one result per request, in order.
    fn probe(&self, requests: &[ProbeRequest]) -> Result<Vec<Result<PathInfo, Error>>, Error>;
}

/// Asks about `paths` (each with how many bytes to read) in one call.
pub fn ask(fs: &impl Probe, paths: &[(&Path, u32)]) -> Result<Vec<Result<PathInfo, Error>>, SourceError> {
    let mut requests = Vec::with_capacity(paths.len());
    for (path, read_bytes) in paths {
        let path = path.to_str().ok_or_else(|| SourceError::Unsupported(format!("{} is not UTF-8", path.display())))?;
        requests.push(ProbeRequest { path: path.to_owned(), read_bytes: *read_bytes });
    }
    let answers = fs.probe(&requests).map_err(SourceError::Host)?;
    if answers.len() != requests.len() {
        return Err(SourceError::Io(format!("probe answered {} of {} paths", answers.len(), requests.len())));
    }
    Ok(answers)
}

/// A probe's failed answer for `path` as a source error: not-found says so
/// in the words of [`SourceError::io`], and every other error keeps its
/// class (a denial stays a denial).
pub fn source_error(path: &Path, error: &Error) -> SourceError {
    match error {
        Error::NotFound(_) => SourceError::not_found(path),
        other => SourceError::Host(other.clone()),
    }
}

/// A small regular file's contents, refusing one longer than `limit` bytes
/// (the probe must have read at least `limit` bytes).
pub fn small_file(path: &Path, info: &PathInfo, limit: u64) -> Result<Vec<u8>, SourceError> {
    if info.kind != PathKind::File {
        let kind = match info.kind {
            PathKind::Directory => "a directory",
            PathKind::Symlink => "a symlink",
            _ => "a FIFO, socket or device",
        };
        return Err(SourceError::Unsupported(format!("{} is {kind}, not a regular file", path.display())));
    }
    if info.size > limit {
        return Err(SourceError::Unsupported(format!("{} is larger than {limit} bytes", path.display())));
    }
    Ok(info.head.clone())
}

/// Reads a small file whole, refusing one longer than `limit` bytes.
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, SourceError> {
    let (bytes, _) = crate::sys::read(path, 0, limit + 1).map_err(|e| SourceError::io(path, &e))?;
    if bytes.len() as u64 > limit {
        return Err(SourceError::Unsupported(format!("{} is larger than {limit} bytes", path.display())));
    }
    Ok(bytes)
}

/// The most a probe reads of one path (the WIT contract's limit).
pub const MAX_HEAD_BYTES: u64 = 64 * 1024;

/// The contents of the file at `path`, at most `limit` bytes, from the
/// probe's `answer` for it when that holds the whole file. A symlink (which
/// the probe does not follow), or a file longer than the probe read, is read
/// through WASI instead ([`crate::sys::read`] opens only a regular file). A
/// directory, FIFO, device or socket is refused without being opened.
pub fn contents(path: &Path, answer: Result<PathInfo, Error>, limit: u64) -> Result<Vec<u8>, SourceError> {
    match answer {
        Ok(info) if info.kind == PathKind::File => {
            if info.size > limit {
                return Err(SourceError::Unsupported(format!("{} is larger than {limit} bytes", path.display())));
            }
            if info.head.len() as u64 == info.size {
                return Ok(info.head);
            }
            read_small(path, limit)
        }
        Ok(info) if info.kind == PathKind::Symlink => read_small(path, limit),
        Ok(info) if info.kind == PathKind::Directory => {
            Err(SourceError::Unsupported(format!("{} is a directory, not a regular file", path.display())))
        }
        Ok(_) => {
            Err(SourceError::Unsupported(format!("{} is a FIFO, socket or device, not a regular file", path.display())))
        }
        Err(e) => Err(source_error(path, &e)),
    }
}

/// Reads the file at `path`, expected to hold `expected` bytes and refused
/// beyond `limit`: through one probe when it is small enough for one, through
/// WASI otherwise.
pub fn read(fs: &impl Probe, path: &Path, expected: u64, limit: u64) -> Result<Vec<u8>, SourceError> {
    if expected > MAX_HEAD_BYTES {
        return read_small(path, limit);
    }
    let answer =
        ask(fs, &[(path, expected as u32)])?.pop().ok_or_else(|| SourceError::Io("the probe gave no answer".into()))?;
    contents(path, answer, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: PathKind) -> PathInfo {
        PathInfo { kind, size: 10, modified_ns: 0, created_ns: 0, link_target: None, head: Vec::new() }
    }

    #[test]
    fn only_a_regular_file_or_a_symlink_is_read() {
        // A FIFO at a path the guest can read through WASI would block the
        // open: the probe's answer says what it is, and nothing is opened.
        let path = Path::new("/nonexistent/index.json");
        let err = contents(path, Ok(info(PathKind::Other)), 100).unwrap_err();
        assert!(err.to_string().contains("FIFO, socket or device, not a regular file"), "{err}");
        let err = contents(path, Ok(info(PathKind::Directory)), 100).unwrap_err();
        assert!(err.to_string().contains("is a directory, not a regular file"), "{err}");
        // A symlink is followed through WASI, which finds nothing here.
        assert!(matches!(contents(path, Ok(info(PathKind::Symlink)), 100), Err(SourceError::NotFound(_))));
        let err = small_file(path, &info(PathKind::Other), 100).unwrap_err();
        assert!(matches!(err, SourceError::Unsupported(_)), "{err:?}");
    }
}

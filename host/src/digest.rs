//! File digests, remembered against the file's identity.
//!
//! Every request needs the agent's SHA-256 for its key. Hashing a 20 MiB agent
//! costs milliseconds; a hit should cost microseconds. So the digest is kept
//! against the file's device, inode, size, modification and change times, and
//! recomputed only when one of them changes.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::regular_file::{FileError, FinalSymlink, RegularFile};

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileFingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileFingerprint {
    /// The fingerprint of the file at `path`, following symlinks.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        Ok(Self::from_metadata(&std::fs::metadata(path)?))
    }

    /// The fingerprint from metadata already read.
    pub fn from_metadata(m: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }
}

/// SHA-256 of a reader's bytes, hex.
pub fn sha256_reader(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The longest program the host digests or reads: an agent, a `command:`
/// converter (1 GiB).
pub const MAX_PROGRAM_BYTES: u64 = 1 << 30;

/// SHA-256 of a regular file of at most [`MAX_PROGRAM_BYTES`], hex. A FIFO,
/// device or directory is refused without blocking (an error of kind
/// `InvalidInput` that says what it is), a longer file with an error of kind
/// `FileTooLarge`.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let file = RegularFile::open(path, MAX_PROGRAM_BYTES, FinalSymlink::Follow).map_err(FileError::into_io)?;
    sha256_reader(file)
}

pub use rootfs_cache_layers::hex;

/// A file's digest and length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digested {
    /// SHA-256, hex.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

/// Digests remembered per path and fingerprint.
#[derive(Debug, Default)]
pub struct DigestMemo {
    known: Mutex<HashMap<PathBuf, (FileFingerprint, Digested)>>,
}

impl DigestMemo {
    /// The digest of the regular file at `path` (at most
    /// [`MAX_PROGRAM_BYTES`]), read only when the file changed since it was
    /// last digested. Anything but a regular file is refused with an error
    /// of kind `InvalidInput`, without opening it.
    pub fn digest(&self, path: &Path) -> std::io::Result<Digested> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
        }
        let fp = FileFingerprint::from_metadata(&meta);
        if let Some((seen, digest)) = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(path)
            && *seen == fp
        {
            return Ok(digest.clone());
        }
        let file = RegularFile::open(path, MAX_PROGRAM_BYTES, FinalSymlink::Follow).map_err(FileError::into_io)?;
        // Fingerprint the file actually opened, so a swap between stat and
        // open is not remembered under the old fingerprint.
        let fp = FileFingerprint::from_metadata(&file.file().metadata()?);
        let digest = Digested { sha256: sha256_reader(file)?, size: fp.size };
        self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_path_buf(), (fp, digest.clone()));
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_digested_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent");
        std::fs::write(&path, b"abc").unwrap();
        let memo = DigestMemo::default();
        let first = memo.digest(&path).unwrap();
        assert_eq!(first.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        std::fs::write(&path, b"abcd").unwrap();
        let second = memo.digest(&path).unwrap();
        assert_eq!(second.size, 4);
        assert_ne!(first.sha256, second.sha256);
    }

    #[test]
    fn a_directory_has_no_digest() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DigestMemo::default().digest(dir.path()).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    }
}

//! The content-addressed blob store: `<root>/blobs/sha256/<hex>`, shared by every image.
//!
//! Only complete, verified blobs are ever at their final name. A download streams into
//! `<root>/blobs/tmp/partial-<hex>.<pid>-<n>` ([`TEMP_PREFIX`]) while holding an exclusive
//! `flock` on `<root>/blobs/locks/<hex>.lock`; the lock serialises fetches of one digest
//! between threads and processes alike (an `flock` belongs to an open file description). A
//! temporary file whose digest's lock nobody holds is a leftover of a killed pull:
//! [`BlobStore::sweep`] lists or removes those.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FlockOperation, flock};

use crate::digest::Digest;
use crate::error::RegistryError;

/// The prefix of every temporary file in `<root>/blobs/tmp/`.
pub const TEMP_PREFIX: &str = "partial-";

/// A content-addressed store of blobs under one root.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// What [`BlobStore::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The blob (if it was there) and its lock file are gone.
    Removed,
    /// The digest's lock is held (a pull is writing the blob, or holds it): nothing was removed.
    Busy,
}

/// A temporary file found by [`BlobStore::sweep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleFile {
    /// Its path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub bytes: u64,
}

impl BlobStore {
    /// A store under `root`, creating `blobs/sha256`, `blobs/tmp` and `blobs/locks` as needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let store = Self { root: root.into() };
        for dir in [store.blob_dir(), store.tmp_dir(), store.lock_dir()] {
            fs::create_dir_all(&dir).map_err(|e| RegistryError::store(&dir, e))?;
        }
        Ok(store)
    }

    /// The root the store was opened with.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob is, once complete and verified.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// Whether the blob is in the store (only verified blobs ever are).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("blobs/tmp")
    }

    fn lock_dir(&self) -> PathBuf {
        self.root.join("blobs/locks")
    }

    fn lock_path(&self, digest_hex: &str) -> PathBuf {
        self.lock_dir().join(format!("{digest_hex}.lock"))
    }

    /// Takes the digest's lock, waiting for another holder (blocking: call it off the async
    /// workers). The lock file is re-checked after locking, so a sweep that removed it cannot
    /// leave two holders of two different files.
    pub(crate) fn lock(&self, digest: &Digest) -> Result<BlobLock, RegistryError> {
        self.lock_named(digest.hex())
    }

    /// Takes the lock `locks/<name>.lock` (see [`BlobStore::lock`]).
    fn lock_named(&self, name: &str) -> Result<BlobLock, RegistryError> {
        let path = self.lock_path(name);
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| RegistryError::store(&path, e))?;
            flock(&file, FlockOperation::LockExclusive).map_err(|e| RegistryError::store(&path, e.into()))?;
            let held = file.metadata().map_err(|e| RegistryError::store(&path, e))?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(BlobLock { _file: file }),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RegistryError::store(&path, e)),
            }
        }
    }

    /// A new temporary file for `digest`, created exclusively, named
    /// `partial-<hex>.<pid>-<n>`.
    pub(crate) fn create_temp(&self, digest: &Digest) -> Result<(PathBuf, File), RegistryError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self.tmp_dir().join(format!("{TEMP_PREFIX}{}.{}-{n}", digest.hex(), std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RegistryError::store(&path, e)),
            }
        }
    }

    /// Moves a complete, verified, synced temporary file to the blob's final name and syncs the
    /// directory.
    pub(crate) fn commit(&self, temp: &Path, digest: &Digest) -> Result<PathBuf, RegistryError> {
        let path = self.path(digest);
        fs::rename(temp, &path).map_err(|e| RegistryError::store(&path, e))?;
        let dir = self.blob_dir();
        File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| RegistryError::store(&dir, e))?;
        Ok(path)
    }

    /// Stores `bytes` (a manifest or index fetched whole) as the blob `digest`, unless it is
    /// there: under the digest's lock, through a temporary file, synced, then renamed, like a
    /// download. The bytes must hash to `digest`. Blocking: call it off the async workers.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, RegistryError> {
        if Digest::of(bytes) != *digest {
            return Err(RegistryError::Corrupt {
                digest: digest.clone(),
                what: "bytes to store".into(),
                reason: format!("they hash to {}", Digest::of(bytes)),
            });
        }
        if self.contains(digest) {
            return Ok(self.path(digest));
        }
        let _lock = self.lock(digest)?;
        if self.contains(digest) {
            return Ok(self.path(digest));
        }
        let (temp, mut file) = self.create_temp(digest)?;
        let mut guard = TempGuard { path: Some(temp.clone()) };
        io::Write::write_all(&mut file, bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| RegistryError::store(&temp, e))?;
        let path = self.commit(&temp, digest)?;
        guard.path = None;
        Ok(path)
    }

    /// Stores what `reader` yields, whose digest is not known beforehand (a file of an
    /// archive a Docker engine exported), as the blob its SHA-256 names, and returns the
    /// digest, the length and the blob's path. The bytes are hashed while they are written to
    /// a temporary file `partial-stream-<pid>-<n>`, whose own lock (`locks/stream-<pid>-<n>.lock`)
    /// is held meanwhile so that [`BlobStore::sweep`] leaves it alone; then, under the digest's
    /// lock, it is renamed into place, unless the store has the blob already. More than
    /// `limit` bytes is [`RegistryError::TooLarge`], and nothing is stored. Blocking: call it
    /// off the async workers.
    pub fn put_reader(
        &self,
        mut reader: impl io::Read,
        what: &str,
        limit: u64,
    ) -> Result<(Digest, u64, PathBuf), RegistryError> {
        use sha2::Digest as _;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!("stream-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let own_lock = self.lock_named(&name)?;
        let temp = self.tmp_dir().join(format!("{TEMP_PREFIX}{name}"));
        let mut file =
            OpenOptions::new().write(true).create_new(true).open(&temp).map_err(|e| RegistryError::store(&temp, e))?;
        let guard = TempGuard { path: Some(temp.clone()) };
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RegistryError::store(&temp, e)),
            };
            len += n as u64;
            if len > limit {
                return Err(RegistryError::TooLarge { what: what.to_owned(), limit });
            }
            hasher.update(&buf[..n]);
            io::Write::write_all(&mut file, &buf[..n]).map_err(|e| RegistryError::store(&temp, e))?;
        }
        file.sync_all().map_err(|e| RegistryError::store(&temp, e))?;
        drop(file);
        let digest = Digest::from_sha256(hasher.finalize().into());
        let _lock = self.lock(&digest)?;
        let path = if self.contains(&digest) { self.path(&digest) } else { self.commit(&temp, &digest)? };
        drop(guard);
        // The stream's own lock file goes with it; its name is never used again.
        let _ = fs::remove_file(self.lock_path(&name));
        drop(own_lock);
        Ok((digest, len, path))
    }

    /// Removes the blob `digest` and its lock file, under the digest's lock taken without
    /// waiting: when a pull holds the lock (it is downloading the blob, or another caller holds
    /// it), nothing is removed and the answer is [`Removal::Busy`]. A missing blob is not an
    /// error (its lock file, if any, still goes). A fetch waiting for the lock meanwhile finds
    /// its file unlinked once it has it, and takes a new one (see the private `BlobStore::lock`).
    pub fn remove(&self, digest: &Digest) -> Result<Removal, RegistryError> {
        let lock_path = self.lock_path(digest.hex());
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| RegistryError::store(&lock_path, e))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(Removal::Busy),
            Err(e) => return Err(RegistryError::store(&lock_path, e.into())),
        }
        // The file locked must still be the lock file: one unlinked by another remover
        // meanwhile locks nothing a fetch would wait on.
        let held = file.metadata().map_err(|e| RegistryError::store(&lock_path, e))?;
        match fs::metadata(&lock_path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {}
            Ok(_) => return Ok(Removal::Busy),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Busy),
            Err(e) => return Err(RegistryError::store(&lock_path, e)),
        }
        let path = self.path(digest);
        for removed in [&path, &lock_path] {
            match fs::remove_file(removed) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(RegistryError::store(removed, e)),
            }
        }
        Ok(Removal::Removed)
    }

    /// Records that the blob was just handed to a caller, by setting its modification time to
    /// now: a garbage collection spares the blobs handed out since a build still running
    /// started. Best effort: a blob whose time cannot be set (another owner) is used anyway.
    pub fn touch(&self, digest: &Digest) {
        if let Ok(file) = File::open(self.path(digest)) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }

    /// Temporary files left by pulls that are no longer running (their digest's lock is free),
    /// removed when `remove` is true. A temporary file of a running pull is never listed.
    pub fn sweep(&self, remove: bool) -> Result<Vec<StaleFile>, RegistryError> {
        let dir = self.tmp_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RegistryError::store(&dir, e)),
        };
        let mut stale = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| RegistryError::store(&dir, e))?;
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else { continue };
            let hex = rest.split('.').next().unwrap_or_default();
            let path = entry.path();
            // Held by a running pull? Try its lock without waiting.
            let lock_path = self.lock_path(hex);
            let _guard = match OpenOptions::new().write(true).open(&lock_path) {
                Ok(file) => match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => Some(file),
                    Err(rustix::io::Errno::WOULDBLOCK) => continue,
                    Err(e) => return Err(RegistryError::store(&lock_path, e.into())),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(RegistryError::store(&lock_path, e)),
            };
            let bytes = match entry.metadata() {
                Ok(meta) => meta.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RegistryError::store(&path, e)),
            };
            if remove {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(RegistryError::store(&path, e)),
                }
            }
            stale.push(StaleFile { path, bytes });
        }
        stale.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(stale)
    }
}

/// An exclusive hold on one digest; released when dropped.
#[derive(Debug)]
pub(crate) struct BlobLock {
    _file: File,
}

/// Removes a temporary file when dropped, unless it was committed; so a failed or cancelled
/// download leaves nothing behind.
pub(crate) struct TempGuard {
    pub(crate) path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_spares_held_and_removes_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let held = Digest::of(b"held");
        let stale = Digest::of(b"stale");
        let lock = store.lock(&held).unwrap();
        let (held_tmp, _) = store.create_temp(&held).unwrap();
        let (stale_tmp, _) = store.create_temp(&stale).unwrap();
        // Not under TEMP_PREFIX: never touched.
        fs::write(dir.path().join("blobs/tmp/other"), b"x").unwrap();
        let listed = store.sweep(false).unwrap();
        assert_eq!(listed, vec![StaleFile { path: stale_tmp.clone(), bytes: 0 }]);
        assert!(stale_tmp.exists());
        assert_eq!(store.sweep(true).unwrap().len(), 1);
        assert!(!stale_tmp.exists() && held_tmp.exists());
        drop(lock);
        assert_eq!(store.sweep(true).unwrap().len(), 1);
        assert!(!held_tmp.exists());
        assert!(dir.path().join("blobs/tmp/other").exists());
    }

    #[test]
    fn remove_spares_a_held_blob_and_takes_the_lock_file_with_a_free_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"blob");
        store.put(&digest, b"blob").unwrap();
        let lock_file = dir.path().join(format!("blobs/locks/{}.lock", digest.hex()));
        assert!(lock_file.exists());
        let held = store.lock(&digest).unwrap();
        assert_eq!(store.remove(&digest).unwrap(), Removal::Busy);
        assert!(store.contains(&digest) && lock_file.exists());
        drop(held);
        assert_eq!(store.remove(&digest).unwrap(), Removal::Removed);
        assert!(!store.contains(&digest) && !lock_file.exists());
        // Missing: nothing to do, and no lock file left behind.
        assert_eq!(store.remove(&digest).unwrap(), Removal::Removed);
        assert!(!lock_file.exists());
        // A fetch takes the digest's lock again afterwards.
        drop(store.lock(&digest).unwrap());
    }

    #[test]
    fn lock_excludes_within_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"x");
        let first = store.lock(&digest).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let store2 = store.clone();
        let digest2 = digest.clone();
        let waiter = std::thread::spawn(move || {
            let _second = store2.lock(&digest2).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "second lock taken while held");
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
    }
}

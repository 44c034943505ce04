//! The SHA-256 of an image file, recorded in its entry's manifest when it is
//! published (`image_sha256`) and compared by `verify --deep`.
//!
//! Images are sparse: most of a fresh image is holes. A hole reads as zeros,
//! so its bytes are hashed from a zero buffer without reading the file
//! (`SEEK_DATA`/`SEEK_HOLE`); the digest is the same as `sha256sum`'s.
//!
//! The exact converter does not leave the hash to publishing: it hashes the
//! image on a second thread while writing it ([`sha256_following`]), each
//! range as soon as the writer says it is final, so a miss does not pay for
//! a pass over the whole image after it is written.
//!
//! Behind the hash, the image leaves the page cache: the writer is held
//! back while it is more than [`MAX_AHEAD`] bytes ahead of the hash, and
//! waits for what the hash left behind to be on disk, then drops it from
//! the cache ([`SettledWriter`]). A miss then cycles the same few hundred
//! megabytes of memory instead of filling the page cache with the whole
//! image (five gigabytes for a million small files), memory the kernel must
//! first take from others and, in a VM whose freed memory goes back to its
//! host, fault in page by page; and the image, most of it already on disk,
//! is fsynced quickly when it is published.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex};

use sha2::{Digest, Sha256};

/// Bytes hashed per read.
const CHUNK: usize = 1 << 20;

/// The SHA-256 of `file`'s bytes, hex.
pub(crate) fn sha256(file: &File) -> io::Result<String> {
    let len = file.metadata()?.len();
    let mut hashing = Hashing::new();
    hashing.feed(file, len)?;
    Ok(hashing.finish())
}

/// A file hashed from its start, a range at a time.
struct Hashing {
    hasher: Sha256,
    /// How far the file is hashed.
    done: u64,
    zeros: Vec<u8>,
    buf: Vec<u8>,
}

impl Hashing {
    fn new() -> Self {
        Self { hasher: Sha256::new(), done: 0, zeros: vec![0u8; CHUNK], buf: vec![0u8; CHUNK] }
    }

    /// Hashes `file` from where the last call stopped up to `to`, reading
    /// only its data: holes are hashed as the zeros they read as.
    fn feed(&mut self, file: &File, to: u64) -> io::Result<()> {
        while self.done < to {
            let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(self.done)) {
                Ok(data) => data.min(to),
                // No data after this point: the rest is a hole.
                Err(rustix::io::Errno::NXIO) => to,
                // A filesystem without SEEK_DATA: read everything.
                Err(_) => self.done,
            };
            self.feed_zeros(data - self.done);
            if self.done >= to {
                break;
            }
            let hole = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(self.done)).map_or(to, |h| h.min(to));
            while self.done < hole {
                let n = (hole - self.done).min(CHUNK as u64) as usize;
                file.read_exact_at(&mut self.buf[..n], self.done)?;
                self.hasher.update(&self.buf[..n]);
                self.done += n as u64;
            }
        }
        Ok(())
    }

    fn feed_zeros(&mut self, mut n: u64) {
        while n > 0 {
            let step = n.min(self.zeros.len() as u64) as usize;
            self.hasher.update(&self.zeros[..step]);
            self.done += step as u64;
            n -= step as u64;
        }
    }

    fn finish(self) -> String {
        crate::digest::hex(&self.hasher.finalize())
    }
}

/// How much of a file being written is final, shared between its writer and
/// [`sha256_following`], which hashes it on another thread as it settles.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    state: Mutex<SettledState>,
    changed: Condvar,
}

#[derive(Clone, Copy, Debug, Default)]
struct SettledState {
    /// No byte below this is written again.
    below: u64,
    /// The writer stopped: finished, or failed.
    stopped: bool,
    /// Bytes below this are hashed.
    hashed: u64,
    /// The hashing thread stopped (finished, failed or unwinding): the
    /// writer waits for it no more.
    follower_stopped: bool,
}

/// How far the writer may get ahead of the bytes already hashed before
/// [`SettledWriter::advance`] waits.
const MAX_AHEAD: u64 = 512 << 20;

/// Bytes hashed at a time, and the least the writer releases at a time.
const STEP: u64 = 16 << 20;

/// Bytes hashed and not yet released: the disk's queue, written back while
/// the writer goes on.
const IN_FLIGHT: u64 = 256 << 20;

/// The writer's side of [`Settled`]: dropping it (done, failed or
/// unwinding) tells the hashing thread that nothing more will settle.
///
/// It also takes the image out of the page cache behind the hash: what is
/// hashed, once more than [`IN_FLIGHT`] bytes behind, is waited for on disk
/// and dropped from the cache.
pub(crate) struct SettledWriter<'a> {
    settled: &'a Settled,
    file: &'a File,
    /// Written back and dropped below this.
    released: u64,
}

impl SettledWriter<'_> {
    /// No byte below `below` will be written again. Waits while the writer
    /// is more than [`MAX_AHEAD`] bytes ahead of what is hashed, then
    /// releases what the hash left behind.
    pub(crate) fn advance(&mut self, below: u64) {
        let hashed = self.settled.advance(below);
        let to = hashed.saturating_sub(IN_FLIGHT);
        if to >= self.released + STEP {
            release(self.file, self.released, to);
            self.released = to;
        }
    }
}

impl Drop for SettledWriter<'_> {
    fn drop(&mut self) {
        self.settled.stop();
    }
}

impl Settled {
    /// The handle `file`'s writer reports through.
    pub(crate) fn writer<'a>(&'a self, file: &'a File) -> SettledWriter<'a> {
        SettledWriter { settled: self, file, released: 0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SettledState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer says that no byte below `below` will be written again,
    /// then waits until it is no more than [`MAX_AHEAD`] bytes ahead of
    /// what is hashed (or the follower stopped). Returns how much is hashed.
    fn advance(&self, below: u64) -> u64 {
        let mut state = self.lock();
        if below > state.below {
            state.below = below;
            self.changed.notify_all();
        }
        self.changed
            .wait_while(state, |s| s.below > s.hashed.saturating_add(MAX_AHEAD) && !s.follower_stopped)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .hashed
    }

    /// The writer is done with the file, whether it finished it or not.
    fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    /// Waits until more than `done` bytes have settled or the writer stopped.
    fn wait_past(&self, done: u64) -> SettledState {
        let state = self.lock();
        *self
            .changed
            .wait_while(state, |s| s.below <= done && !s.stopped)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes below `hashed` are hashed.
    fn hashed(&self, hashed: u64) {
        self.lock().hashed = hashed;
        self.changed.notify_all();
    }

    /// The follower will hash nothing more.
    fn follower_stop(&self) {
        self.lock().follower_stopped = true;
        self.changed.notify_all();
    }
}

/// The follower's side of [`Settled`]: dropping it (done, failed or
/// unwinding) lets the writer go on without waiting for the hash.
struct SettledFollower<'a>(&'a Settled);

impl Drop for SettledFollower<'_> {
    fn drop(&mut self) {
        self.0.follower_stop();
    }
}

/// Writes `file`'s bytes in `from..to` back to disk, waiting for them, and
/// drops them from the page cache. Best effort: a filesystem that cannot
/// keeps them cached, and the publish's fsync writes them.
fn release(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd as _;
    let Some(len) = to.checked_sub(from).and_then(std::num::NonZeroU64::new) else { return };
    let (Ok(offset), Ok(bytes)) = (i64::try_from(from), i64::try_from(len.get())) else { return };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid descriptor and a range of at least one byte (a length
    // of 0 would mean "to the end of the file").
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, bytes, flags) } == 0 {
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// The SHA-256 of `file`, hashed while another thread writes it and reports
/// its progress to `settled`: each settled range is read once, from the page
/// cache it was just written to. `None` when the writer stopped before the
/// whole file settled (it failed, or the file grew).
pub(crate) fn sha256_following(file: &File, settled: &Settled) -> io::Result<Option<String>> {
    let _follower = SettledFollower(settled);
    let mut hashing = Hashing::new();
    loop {
        let state = settled.wait_past(hashing.done);
        // A step at a time, so that the writer waits no longer than it must.
        while hashing.done < state.below {
            hashing.feed(file, state.below.min(hashing.done + STEP))?;
            settled.hashed(hashing.done);
        }
        if state.stopped {
            let complete = hashing.done == file.metadata()?.len();
            return Ok(complete.then(|| hashing.finish()));
        }
    }
}

/// `manifest_json` with `image_sha256` set to `digest`.
pub(crate) fn with_image_sha256(manifest_json: &str, digest: &str) -> Result<String, serde_json::Error> {
    let mut manifest: serde_json::Map<String, serde_json::Value> = serde_json::from_str(manifest_json)?;
    manifest.insert("image_sha256".into(), digest.into());
    serde_json::to_string(&manifest)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    #[test]
    fn a_sparse_file_hashes_as_its_bytes_do() {
        let mut file = tempfile::tempfile().unwrap();
        file.set_len(5 << 20).unwrap();
        file.seek(SeekFrom::Start(3 << 20)).unwrap();
        file.write_all(b"data between holes").unwrap();
        let mut bytes = vec![0u8; 5 << 20];
        bytes[3 << 20..(3 << 20) + 18].copy_from_slice(b"data between holes");
        assert_eq!(sha256(&file).unwrap(), crate::digest::hex(&Sha256::digest(&bytes)));
    }

    #[test]
    fn a_file_hashed_as_it_settles_hashes_as_its_bytes_do() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(9 << 20).unwrap();
        let settled = Settled::default();
        let digest = std::thread::scope(|s| {
            let hashing = s.spawn(|| sha256_following(&file, &settled));
            let mut writer = settled.writer(&file);
            // Written in order, with holes left between the writes.
            for i in 0..9u64 {
                file.write_all_at(&[i as u8 + 1; 3000], (i << 20) + 7).unwrap();
                writer.advance((i << 20) + 3007);
            }
            writer.advance(9 << 20);
            drop(writer);
            hashing.join().unwrap().unwrap()
        });
        assert_eq!(digest, Some(sha256(&file).unwrap()));
    }

    #[test]
    fn the_writer_waits_while_far_ahead_of_the_hash_and_releases_behind_it() {
        let file = tempfile::tempfile().unwrap();
        let len = 4 * MAX_AHEAD + (5 << 20);
        file.set_len(len).unwrap();
        let settled = Settled::default();
        let digest = std::thread::scope(|s| {
            let hashing = s.spawn(|| sha256_following(&file, &settled));
            let mut writer = settled.writer(&file);
            // Settling in leaps larger than the writer may be ahead by.
            let mut below = 0;
            while below < len {
                file.write_all_at(b"a leap", below).unwrap();
                below = (below + MAX_AHEAD + (3 << 20)).min(len);
                writer.advance(below);
                let hashed = settled.lock().hashed;
                assert!(hashed + MAX_AHEAD >= below, "the writer went on at {below} with only {hashed} hashed");
            }
            // Behind the hash, at most the disk's queue is left in the cache.
            assert!(writer.released >= len - MAX_AHEAD - IN_FLIGHT, "released {}", writer.released);
            drop(writer);
            hashing.join().unwrap().unwrap()
        });
        assert_eq!(digest, Some(sha256(&file).unwrap()));
        assert_eq!(settled.lock().hashed, len);
    }

    #[test]
    fn a_follower_that_fails_does_not_hold_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, b"data the follower cannot read").unwrap();
        // Write-only: every read the follower tries fails.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(3 * MAX_AHEAD).unwrap();
        let settled = Settled::default();
        std::thread::scope(|s| {
            let hashing = s.spawn(|| sha256_following(&file, &settled));
            let mut writer = settled.writer(&file);
            writer.advance(3 * MAX_AHEAD);
            drop(writer);
            assert!(hashing.join().unwrap().is_err());
        });
        assert!(settled.lock().follower_stopped);
    }

    #[test]
    fn a_writer_that_panics_stops_the_hashing() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let settled = Settled::default();
        let joined = std::thread::scope(|s| {
            let hashing = s.spawn(|| sha256_following(&file, &settled));
            let writing = s.spawn(|| {
                let _writer = settled.writer(&file);
                panic!("a bug in the writer");
            });
            assert!(writing.join().is_err());
            hashing.join().unwrap().unwrap()
        });
        assert_eq!(joined, None);
    }

    #[test]
    fn a_writer_that_stops_short_gives_no_digest() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(4 << 20).unwrap();
        let settled = Settled::default();
        settled.writer(&file).advance(1 << 20);
        assert_eq!(sha256_following(&file, &settled).unwrap(), None);
    }

    #[test]
    fn the_digest_is_added_to_the_manifest() {
        let json = with_image_sha256(r#"{"format":1,"key":"k"}"#, "ab").unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["image_sha256"], "ab");
        assert_eq!(value["key"], "k");
    }
}

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
}

/// The writer's side of [`Settled`]: dropping it (done, failed or
/// unwinding) tells the hashing thread that nothing more will settle.
pub(crate) struct SettledWriter<'a>(&'a Settled);

impl SettledWriter<'_> {
    /// No byte below `below` will be written again.
    pub(crate) fn advance(&self, below: u64) {
        self.0.advance(below);
    }
}

impl Drop for SettledWriter<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Settled {
    /// The handle the file's writer reports through.
    pub(crate) fn writer(&self) -> SettledWriter<'_> {
        SettledWriter(self)
    }

    /// The writer says that no byte below `below` will be written again.
    fn advance(&self, below: u64) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if below > state.below {
            state.below = below;
            self.changed.notify_one();
        }
    }

    /// The writer is done with the file, whether it finished it or not.
    fn stop(&self) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.stopped = true;
        self.changed.notify_one();
    }

    /// Waits until more than `done` bytes have settled or the writer stopped.
    fn wait_past(&self, done: u64) -> SettledState {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *self
            .changed
            .wait_while(state, |s| s.below <= done && !s.stopped)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The SHA-256 of `file`, hashed while another thread writes it and reports
/// its progress to `settled`: each settled range is read once, from the page
/// cache it was just written to. `None` when the writer stopped before the
/// whole file settled (it failed, or the file grew).
pub(crate) fn sha256_following(file: &File, settled: &Settled) -> io::Result<Option<String>> {
    let mut hashing = Hashing::new();
    loop {
        let state = settled.wait_past(hashing.done);
        hashing.feed(file, state.below)?;
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
            let writer = settled.writer();
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
    fn a_writer_that_panics_stops_the_hashing() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let settled = Settled::default();
        let joined = std::thread::scope(|s| {
            let hashing = s.spawn(|| sha256_following(&file, &settled));
            let writing = s.spawn(|| {
                let _writer = settled.writer();
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
        settled.writer().advance(1 << 20);
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

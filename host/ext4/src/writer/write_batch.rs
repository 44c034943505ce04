//! In-memory files' bytes gathered into large writes.
//!
//! Blocks are allocated in inode order, so the files of a directory lie one
//! after the other in the image: a million small files written one `pwrite`
//! each spend more time entering the kernel than copying. A [`WriteBatch`]
//! appends each file's bytes to one buffer while the next file starts on the
//! block right after the last one's end (the rest of that last block is
//! zeros, as the fresh image file already reads there), and writes the
//! buffer when it is full or the next file is elsewhere. The image's bytes
//! are the same as with one write per file.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::format::{BLOCK_SIZE, Extent};

use super::error::WriteError;

/// The buffer is written once it holds this much.
const BATCH_BYTES: usize = 1 << 20;

/// Writes that continue one another, gathered into one.
pub(super) struct WriteBatch<'a> {
    out: &'a File,
    /// Where the buffer goes in the image.
    start: u64,
    buf: Vec<u8>,
}

impl<'a> WriteBatch<'a> {
    /// An empty batch for `out`.
    pub(super) fn new(out: &'a File) -> Self {
        Self { out, start: 0, buf: Vec::with_capacity(BATCH_BYTES + BLOCK_SIZE as usize) }
    }

    /// Adds a file's `bytes`, laid out from logical block 0 on in the
    /// blocks `extents` name (every block of it allocated).
    pub(super) fn add_file(&mut self, bytes: &[u8], extents: &[Extent]) -> Result<(), WriteError> {
        for e in extents {
            let from = (u64::from(e.logical) * BLOCK_SIZE).min(bytes.len() as u64) as usize;
            let to = ((u64::from(e.logical) + u64::from(e.len)) * BLOCK_SIZE).min(bytes.len() as u64) as usize;
            if from < to {
                self.add(&bytes[from..to], e.start * BLOCK_SIZE)?;
            }
        }
        Ok(())
    }

    /// Adds `bytes` to be written at `offset`, a block boundary.
    fn add(&mut self, bytes: &[u8], offset: u64) -> Result<(), WriteError> {
        let end = self.start + self.buf.len() as u64;
        if self.buf.is_empty() || offset != end.next_multiple_of(BLOCK_SIZE) {
            self.flush()?;
            self.start = offset;
        } else {
            self.buf.resize((offset - self.start) as usize, 0);
        }
        if bytes.len() >= BATCH_BYTES && self.buf.is_empty() {
            return self.out.write_all_at(bytes, offset).map_err(WriteError::Write);
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// The first block the bytes not yet written go to (`u64::MAX` when
    /// there are none).
    pub(super) fn pending_block(&self) -> u64 {
        if self.buf.is_empty() { u64::MAX } else { self.start / BLOCK_SIZE }
    }

    /// Writes what the buffer holds.
    pub(super) fn flush(&mut self) -> Result<(), WriteError> {
        if !self.buf.is_empty() {
            self.out.write_all_at(&self.buf, self.start).map_err(WriteError::Write)?;
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(logical: u32, start: u64, len: u16) -> Extent {
        Extent { logical, start, len }
    }

    #[test]
    fn files_in_consecutive_blocks_read_back_as_written_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let (one, batched) = (dir.path().join("one"), dir.path().join("batched"));
        let files: Vec<(Vec<u8>, Vec<Extent>)> = vec![
            (vec![1u8; 10], vec![extent(0, 3, 1)]),
            (vec![2u8; 5000], vec![extent(0, 4, 2)]),
            // Split over two extents, the second elsewhere.
            (vec![3u8; 9000], vec![extent(0, 6, 1), extent(1, 20, 2)]),
            (vec![4u8; 4096], vec![extent(0, 22, 1)]),
            // Not right after the last: a new write.
            (vec![5u8; 1], vec![extent(0, 30, 1)]),
            (Vec::new(), Vec::new()),
        ];
        let single = File::create(&one).unwrap();
        single.set_len(40 * BLOCK_SIZE).unwrap();
        for (bytes, extents) in &files {
            let mut done = 0usize;
            for e in extents {
                let n = (usize::from(e.len) * BLOCK_SIZE as usize).min(bytes.len() - done);
                single.write_all_at(&bytes[done..done + n], e.start * BLOCK_SIZE).unwrap();
                done += n;
            }
        }
        let out = File::create(&batched).unwrap();
        out.set_len(40 * BLOCK_SIZE).unwrap();
        let mut batch = WriteBatch::new(&out);
        for (bytes, extents) in &files {
            batch.add_file(bytes, extents).unwrap();
        }
        batch.flush().unwrap();
        assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&batched).unwrap());
    }
}

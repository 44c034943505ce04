//! The image file being written.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::error::WriteError;
use crate::format::{BLOCK_SIZE, Extent};

/// The image being written: every write is at an offset.
pub(super) struct Image<'a> {
    /// The image file.
    pub(super) out: &'a File,
}

impl Image<'_> {
    /// Writes `bytes` at `offset`.
    pub(super) fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), WriteError> {
        self.out.write_all_at(bytes, offset).map_err(WriteError::Write)
    }

    /// Writes `blocks`, in order, to the blocks `extents` name.
    pub(super) fn write_blocks(&self, extents: &[Extent], blocks: &[Vec<u8>]) -> Result<(), WriteError> {
        let mut i = 0usize;
        for e in extents {
            for b in 0..u64::from(e.len) {
                self.write_at(&blocks[i], (e.start + b) * BLOCK_SIZE)?;
                i += 1;
            }
        }
        Ok(())
    }
}

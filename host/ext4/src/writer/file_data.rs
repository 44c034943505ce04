//! A file's data where the tree says it is: opening it, and finding its data
//! runs so that holes stay holes.

use std::fs::File;
use std::os::fd::AsFd;

use super::error::WriteError;
use crate::format::BLOCK_SIZE;
use crate::tree::FileData;

/// A file's bytes on disk: `base..base + size` of `file`.
pub(super) struct Source {
    /// The open file.
    pub(super) file: std::sync::Arc<File>,
    /// Where the file's bytes start in it.
    pub(super) base: u64,
    /// What to call it in errors.
    pub(super) name: String,
}

/// Opens the file `data` names.
pub(super) fn open_source(data: &FileData) -> Result<Source, WriteError> {
    match data {
        FileData::At { root, path, .. } => {
            // A regular file beneath the root (a FIFO swapped in since the
            // scan would block a plain open); read at offsets below its size.
            let file = crate::source::open_beneath(root.as_fd(), path)
                .map_err(|e| WriteError::Source { path: path.display().to_string(), message: e.to_string() })?;
            Ok(Source { file: std::sync::Arc::new(file), base: 0, name: path.display().to_string() })
        }
        FileData::Range { file, offset } => {
            Ok(Source { file: file.clone(), base: *offset, name: format!("spool at {offset}") })
        }
        FileData::Bytes(_) => unreachable!("in-memory files are not opened"),
    }
}

/// Data runs of a file: `(offset, length)` aligned to blocks, from
/// `SEEK_DATA`/`SEEK_HOLE`, so holes stay holes.
pub(super) fn runs(data: &FileData, size: u64) -> Result<Vec<(u64, u64)>, WriteError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let source = match data {
        FileData::Bytes(_) | FileData::At { dense: true, .. } => {
            return Ok(vec![(0, size.next_multiple_of(BLOCK_SIZE))]);
        }
        _ => open_source(data)?,
    };
    let (file, base) = (&*source.file, source.base);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let start = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(base + offset)) {
            Ok(s) => s.saturating_sub(base),
            // ENXIO: no data after `offset`.
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: all data.
            Err(_) => {
                runs.push((offset, size - offset));
                break;
            }
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(base + start)).map_or(size, |h| h - base).min(size);
        let (a, b) =
            (start / BLOCK_SIZE * BLOCK_SIZE, end.next_multiple_of(BLOCK_SIZE).min(size.next_multiple_of(BLOCK_SIZE)));
        match runs.last_mut() {
            Some((s, l)) if *s + *l >= a => *l = (*l).max(b - *s),
            _ => runs.push((a, b - a)),
        }
        offset = end;
    }
    Ok(runs)
}

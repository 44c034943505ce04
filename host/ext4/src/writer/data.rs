//! Phase 5, the data: regular files' bytes, cloned or copied (see
//! [`transfer`](super::transfer)) so that holes stay holes,
//! and the targets of symlinks too long for the inode.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::format::{BLOCK_SIZE, Extent};
use crate::tree::{FileData, Kind, Tree};

use super::allocate::Allocation;
use super::error::WriteError;
use super::file_data::open_source;
use super::image::Image;
use super::plan::Plan;
use super::transfer::Transfer;
use super::write_batch::WriteBatch;

/// Writes every regular file's data and every long symlink's target.
pub(super) fn write(
    tree: &Tree,
    plan: &Plan,
    allocation: &Allocation,
    image: &Image<'_>,
    transfer: &Transfer,
) -> Result<(), WriteError> {
    let mut copied_since_kick = 0u64;
    // In-memory files, written in runs of consecutive blocks.
    let mut batch = WriteBatch::new(image.out);
    for (ino, inode) in plan.written() {
        let Some(id) = inode.node else { continue };
        let extents = &allocation.inodes[ino as usize].extents;
        match &tree.node(id).kind {
            Kind::File { size, data } => {
                let copied = transfer.copied();
                match data {
                    FileData::Bytes(bytes) => {
                        let bytes = &bytes[..(*size as usize).min(bytes.len())];
                        batch.add_file(bytes, extents)?;
                        transfer.wrote(bytes.len() as u64);
                    }
                    _ => copy_file(image.out, data, *size, &inode.runs, extents, transfer)?,
                }
                // Cloned blocks are not dirty: only what was written counts.
                copied_since_kick += transfer.copied() - copied;
                if copied_since_kick >= WRITEBACK_KICK {
                    start_writeback(image.out);
                    copied_since_kick = 0;
                }
            }
            Kind::Symlink(target) if target.len() >= 60 => {
                let mut block = vec![0u8; BLOCK_SIZE as usize];
                block[..target.len()].copy_from_slice(target);
                image.write_blocks(extents, &[block])?;
            }
            _ => {}
        }
    }
    batch.flush()
}

/// Bytes written between two nudges to the kernel to start writing back.
const WRITEBACK_KICK: u64 = 32 << 20;

/// Starts writing what is dirty in `file` back to disk, without waiting: the
/// fsync when the image is published then has little left to do, and the
/// disk works while the writer goes on.
pub(super) fn start_writeback(file: &File) {
    // SAFETY: a valid descriptor; offset 0 and length 0 mean the whole file.
    unsafe {
        libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(file), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Clones or copies a file's data runs to the blocks its extents name.
fn copy_file(
    out: &File,
    data: &FileData,
    size: u64,
    runs: &[(u64, u64)],
    extents: &[Extent],
    transfer: &Transfer,
) -> Result<(), WriteError> {
    if runs.is_empty() {
        return Ok(());
    }
    // Map logical blocks to physical through the extents, in order.
    let physical = |logical_block: u64| -> Option<(u64, u64)> {
        extents.iter().find_map(|e| {
            let l = u64::from(e.logical);
            (logical_block >= l && logical_block < l + u64::from(e.len))
                .then(|| (e.start + logical_block - l, l + u64::from(e.len) - logical_block))
        })
    };
    match data {
        FileData::Bytes(bytes) => {
            let mut offset = 0u64;
            while offset < size {
                let (phys, blocks_left) = physical(offset / BLOCK_SIZE).expect("every data block was allocated");
                let n = (blocks_left * BLOCK_SIZE).min(size - offset);
                out.write_all_at(&bytes[offset as usize..(offset + n) as usize], phys * BLOCK_SIZE)
                    .map_err(WriteError::Write)?;
                transfer.wrote(n);
                offset += n;
            }
            Ok(())
        }
        FileData::At { .. } | FileData::Range { .. } => {
            let source = open_source(data)?;
            let name = source.name.clone();
            let changed =
                || WriteError::Source { path: name.clone(), message: "changed while it was being copied".into() };
            for &(run_start, run_len) in runs {
                let end = (run_start + run_len).min(size);
                let mut offset = run_start;
                while offset < end {
                    let (phys, blocks_left) = physical(offset / BLOCK_SIZE).expect("every data block was allocated");
                    let n = (blocks_left * BLOCK_SIZE).min(end - offset);
                    transfer.transfer(&source.file, source.base + offset, out, phys * BLOCK_SIZE, n).map_err(|e| {
                        match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => changed(),
                            _ if e.raw_os_error() == Some(libc::ENOSPC) => WriteError::Write(e),
                            _ => WriteError::Source { path: name.clone(), message: e.to_string() },
                        }
                    })?;
                    offset += n;
                }
            }
            Ok(())
        }
    }
}

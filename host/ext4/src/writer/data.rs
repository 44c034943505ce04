//! Phase 7, the data: regular files' bytes, cloned or copied (see
//! [`transfer`](super::transfer)) so that holes stay holes,
//! and the targets of symlinks too long for the inode.
//!
//! Written last, in inode order, which is the order their blocks were
//! allocated in: as each file is done, the image below the lowest block any
//! later file (or the batch still in memory) will write is final, and the
//! caller is told (`settled`).

use std::fs::File;

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
    settled: &mut dyn FnMut(u64),
) -> Result<(), WriteError> {
    // What this phase writes, in order: each file's and long symlink's
    // plan, kind and blocks.
    let written = || {
        plan.written().filter_map(|(ino, inode)| {
            let kind = &tree.node(inode.node?).kind;
            let extents = &allocation.inodes[ino as usize].extents;
            match kind {
                Kind::File { .. } => Some((inode, kind, extents)),
                Kind::Symlink(target) if target.len() >= 60 => Some((inode, kind, extents)),
                _ => None,
            }
        })
    };
    let lowest_after = lowest_after(written().map(|(_, _, extents)| extents.iter().map(|e| e.start).min()));
    // Everything but the data is written: final up to the first data block.
    let mut settling = Settling { settled, reported: 0 };
    settling.below_block(lowest_after[0]);
    let mut kick = WritebackKick::default();
    // In-memory files, written in runs of consecutive blocks.
    let mut batch = WriteBatch::new(image.out);
    for (i, (inode, kind, extents)) in written().enumerate() {
        // Final: everything below what later files and the batch will write.
        let later = lowest_after[i + 1].min(batch.pending_block());
        match kind {
            Kind::File { size, data } => {
                match data {
                    FileData::Bytes(bytes) => {
                        let bytes = &bytes[..(*size as usize).min(bytes.len())];
                        batch.add_file(bytes, extents)?;
                        transfer.wrote(bytes.len() as u64);
                    }
                    // A large file settles the image as it goes, not only once done.
                    _ => copy_file(image.out, data, *size, &inode.runs, extents, transfer, &mut |rest| {
                        kick.after(image.out, transfer.copied());
                        settling.below_block(rest.min(later));
                    })?,
                }
                kick.after(image.out, transfer.copied());
            }
            Kind::Symlink(target) => {
                let mut block = vec![0u8; BLOCK_SIZE as usize];
                block[..target.len()].copy_from_slice(target);
                image.write_blocks(extents, &[block])?;
            }
            _ => {}
        }
        settling.below_block(lowest_after[i + 1].min(batch.pending_block()));
    }
    batch.flush()
}

/// How far the image must settle before the caller is told again.
const SETTLE_STEP: u64 = 1 << 20;

/// Tells the caller how much of the image is final, in steps of at least
/// [`SETTLE_STEP`].
struct Settling<'a> {
    settled: &'a mut dyn FnMut(u64),
    /// The last offset told.
    reported: u64,
}

impl Settling<'_> {
    /// Nothing below block `block` will be written again (`u64::MAX`: the
    /// phase writes nothing more, which the caller is told at its end).
    fn below_block(&mut self, block: u64) {
        let below = block.saturating_mul(BLOCK_SIZE);
        if below != u64::MAX && below >= self.reported + SETTLE_STEP {
            (self.settled)(below);
            self.reported = below;
        }
    }
}

/// For each of the items whose lowest blocks `lowest` lists (`None`: no
/// block), the lowest block of that item and every later one; one more
/// entry, `u64::MAX`, after the last.
fn lowest_after(lowest: impl Iterator<Item = Option<u64>>) -> Vec<u64> {
    let mut after: Vec<u64> = lowest.map(|l| l.unwrap_or(u64::MAX)).collect();
    after.push(u64::MAX);
    for i in (0..after.len() - 1).rev() {
        after[i] = after[i].min(after[i + 1]);
    }
    after
}

/// The lowest block `extents` map the logical blocks from `logical` on to
/// (`u64::MAX` if none).
fn lowest_from(extents: &[Extent], logical: u64) -> u64 {
    extents
        .iter()
        .filter_map(|e| {
            let (start, len) = (u64::from(e.logical), u64::from(e.len));
            (logical < start + len).then(|| e.start + logical.saturating_sub(start))
        })
        .min()
        .unwrap_or(u64::MAX)
}

/// Bytes written between two nudges to the kernel to start writing back.
const WRITEBACK_KICK: u64 = 32 << 20;

/// Nudges the kernel to write back each time another [`WRITEBACK_KICK`]
/// bytes were copied (cloned blocks are not dirty: only copies count), so
/// that the writer, not whoever waits for the data later, starts the disk.
#[derive(Default)]
struct WritebackKick {
    /// Bytes copied at the last nudge.
    at: u64,
}

impl WritebackKick {
    /// `copied` bytes are copied so far.
    fn after(&mut self, out: &File, copied: u64) {
        if copied >= self.at + WRITEBACK_KICK {
            start_writeback(out);
            self.at = copied;
        }
    }
}

/// Starts writing what is dirty in `file` back to disk, without waiting: the
/// fsync when the image is published then has little left to do, and the
/// disk works while the writer goes on.
pub(super) fn start_writeback(file: &File) {
    // SAFETY: a valid descriptor; offset 0 and length 0 mean the whole file.
    unsafe {
        libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(file), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Clones or copies the data runs of a file on disk (files in memory go
/// through the batch) to the blocks its extents name, telling `progress`,
/// after each piece, the lowest block the file still writes.
fn copy_file(
    out: &File,
    data: &FileData,
    size: u64,
    runs: &[(u64, u64)],
    extents: &[Extent],
    transfer: &Transfer,
    progress: &mut dyn FnMut(u64),
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
    let source = open_source(data)?;
    let name = source.name.clone();
    let changed = || WriteError::Source { path: name.clone(), message: "changed while it was being copied".into() };
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
            progress(lowest_from(extents, offset / BLOCK_SIZE));
        }
    }
    Ok(())
}

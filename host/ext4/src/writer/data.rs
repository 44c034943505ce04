//! Phase 5, the data: regular files' bytes, copied so that holes stay holes,
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
use super::write_batch::WriteBatch;

/// Writes every regular file's data and every long symlink's target.
pub(super) fn write(tree: &Tree, plan: &Plan, allocation: &Allocation, image: &Image<'_>) -> Result<(), WriteError> {
    let mut written_since_kick = 0u64;
    // Whether copy_file_range works from these sources (not across overlayfs).
    let kernel_copy = std::cell::Cell::new(true);
    // In-memory files, written in runs of consecutive blocks.
    let mut batch = WriteBatch::new(image.out);
    for (ino, inode) in plan.written() {
        let Some(id) = inode.node else { continue };
        let extents = &allocation.inodes[ino as usize].extents;
        match &tree.node(id).kind {
            Kind::File { size, data } => {
                match data {
                    FileData::Bytes(bytes) => batch.add_file(&bytes[..(*size as usize).min(bytes.len())], extents)?,
                    _ => copy_file(image.out, data, *size, &inode.runs, extents, &kernel_copy)?,
                }
                written_since_kick += *size;
                if written_since_kick >= WRITEBACK_KICK {
                    start_writeback(image.out);
                    written_since_kick = 0;
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

/// Copies a file's data runs to the blocks its extents name.
fn copy_file(
    out: &File,
    data: &FileData,
    size: u64,
    runs: &[(u64, u64)],
    extents: &[Extent],
    kernel_copy: &std::cell::Cell<bool>,
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
                offset += n;
            }
            Ok(())
        }
        FileData::At { .. } | FileData::Range { .. } => {
            let source = open_source(data)?;
            let name = source.name.clone();
            let changed =
                || WriteError::Source { path: name.clone(), message: "changed while it was being copied".into() };
            let mut buf = Vec::new();
            for &(run_start, run_len) in runs {
                let end = (run_start + run_len).min(size);
                let mut offset = run_start;
                while offset < end {
                    let (phys, blocks_left) = physical(offset / BLOCK_SIZE).expect("every data block was allocated");
                    let n = (blocks_left * BLOCK_SIZE).min(end - offset);
                    copy_range(&source.file, source.base + offset, out, phys * BLOCK_SIZE, n, &mut buf, kernel_copy)
                        .map_err(|e| match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => changed(),
                            _ if e.raw_os_error() == Some(libc::ENOSPC) => WriteError::Write(e),
                            _ => WriteError::Source { path: name.clone(), message: e.to_string() },
                        })?;
                    offset += n;
                }
            }
            Ok(())
        }
    }
}

/// Copies `len` bytes, in the kernel when it can (`copy_file_range`), else
/// through a buffer.
fn copy_range(
    src: &File,
    mut from: u64,
    dst: &File,
    mut to: u64,
    mut len: u64,
    buf: &mut Vec<u8>,
    kernel_copy: &std::cell::Cell<bool>,
) -> std::io::Result<()> {
    while len > 0 && kernel_copy.get() {
        let (mut f, mut t) = (from, to);
        match rustix::fs::copy_file_range(src, Some(&mut f), dst, Some(&mut t), len.min(1 << 30) as usize) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                from += n as u64;
                to += n as u64;
                len -= n as u64;
            }
            // Not between these files (across overlayfs, say): copy through
            // a buffer from now on.
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP,
            ) => kernel_copy.set(false),
            Err(e) => return Err(e.into()),
        }
    }
    // Grow the buffer only as far as this file needs: most files are small.
    let want = len.min(1 << 20) as usize;
    if buf.len() < want {
        buf.resize(want, 0);
    }
    while len > 0 {
        let n = len.min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], from)?;
        dst.write_all_at(&buf[..n], to)?;
        from += n as u64;
        to += n as u64;
        len -= n as u64;
    }
    Ok(())
}

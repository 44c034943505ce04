//! Writes a [`Tree`] into a new ext4 image in one pass.
//!
//! Everything is decided before the first byte is written: inode numbers (in
//! sorted depth-first order), the geometry, and every block. The output is a
//! function of the tree and the options alone, so the same input gives the
//! same bytes. Blocks that hold nothing stay holes in the (sparse) image
//! file, and no byte of anything outside the tree is ever written.
//!
//! [`write_image`] runs the phases in order, one module each:
//!
//! 1. [`plan`]: inode numbers, link counts, and each inode's plan (its data
//!    runs, how many blocks it needs, its encoded attributes);
//! 2. [`allocate::geometry`]: the groups, sized for the plan or as asked;
//! 3. [`allocate::allocate`]: every block, in inode order;
//! 4. [`directories`]: each directory's entries (listed by the plan), packed
//!    into its blocks;
//! 5. [`inodes`]: the inode table, extent trees and attribute blocks;
//! 6. [`metadata`]: inode tables, bitmaps, descriptors and superblocks;
//! 7. [`data`]: file contents (cloned from their sources where the
//!    filesystem allows it, [`transfer`]) and long symlink targets.
//!
//! The data go last: everything else is written by then, and the data's
//! blocks were allocated in the order they are written, so the image
//! settles from its start to its end while the data phase runs. A caller of
//! [`write_image_streamed`] is told how far, and can read (hash, say) the
//! image while it is still being written.

mod allocate;
mod data;
mod directories;
mod error;
mod file_data;
mod htree;
mod image;
mod inodes;
mod journal;
mod metadata;
mod options;
mod plan;
mod transfer;
mod write_batch;

use std::fs::File;

pub use error::WriteError;
use image::Image;
pub use options::{ImageOptions, WriteReport};
pub use transfer::Reflink;

use crate::format::BLOCK_SIZE;
use crate::layout;
use crate::tree::Tree;

/// Writes `tree` into `out`, which must be an empty file opened for writing.
pub fn write_image(tree: &Tree, out: &File, options: &ImageOptions) -> Result<WriteReport, WriteError> {
    write_image_streamed(tree, out, options, &mut |_| {})
}

/// Writes `tree` into `out` as [`write_image`] does, telling `settled` how
/// much of the image is final as the writing goes on: no byte below the
/// offset of a call is written again, each call's offset is at least the
/// previous one's, and on success the last call is the image's length. The
/// bytes are the same as [`write_image`]'s. On error the calls stop short
/// of the length.
pub fn write_image_streamed(
    tree: &Tree,
    out: &File,
    options: &ImageOptions,
    settled: &mut dyn FnMut(u64),
) -> Result<WriteReport, WriteError> {
    let mut plan = plan::plan(tree, options)?;
    let geometry = size_journal(&mut plan, options)?;
    let allocation = allocate::allocate(&plan, &geometry, options)?;
    // The file is sized first, so every block not written stays a hole.
    let bytes = options.size.unwrap_or(geometry.blocks * BLOCK_SIZE);
    out.set_len(bytes).map_err(WriteError::Write)?;
    let image = Image { out };
    directories::write(tree, &plan, &allocation, &image)?;
    let itable = inodes::encode(tree, &plan, &allocation, &image, options.features, &options.uuid)?;
    if plan.journal_blocks() > 0 {
        journal::write(&allocation, plan.journal_blocks(), &options.uuid, &image)?;
    }
    let free_blocks = metadata::write(tree, &plan, &geometry, &allocation, &itable, options, &image)?;
    drop(itable);
    let transfer = transfer::Transfer::new(options.reflink);
    data::write(tree, &plan, &allocation, &image, &transfer, settled)?;
    settled(bytes);
    data::start_writeback(out);
    Ok(WriteReport {
        bytes,
        used_blocks: geometry.blocks - free_blocks,
        used_inodes: u64::from(plan.numbering.max_ino),
        cloned_bytes: transfer.cloned(),
        copied_bytes: transfer.copied(),
    })
}

/// Gives the plan its journal, when the options ask for one, and returns
/// the geometry that holds both. The journal's size depends on the
/// filesystem's, which depends on the journal's: sized from the content,
/// the two are iterated to their fixed point (the size rule only grows, so
/// a few rounds reach it), and an image sized from its content always gets
/// at least the smallest journal. An image of a size asked for below 8 MiB
/// gets none, as from `mke2fs`.
fn size_journal(plan: &mut plan::Plan, options: &ImageOptions) -> Result<layout::Geometry, WriteError> {
    let mut geometry = allocate::geometry(plan, options)?;
    if !options.features.journal {
        return Ok(geometry);
    }
    for _ in 0..16 {
        let wanted = match (journal::mke2fs_blocks(geometry.blocks), options.size) {
            (Some(blocks), _) => blocks,
            (None, None) => journal::MIN_BLOCKS,
            (None, Some(_)) => return Ok(geometry),
        };
        if wanted == plan.journal_blocks() {
            return Ok(geometry);
        }
        plan.set_journal(wanted);
        geometry = allocate::geometry(plan, options)?;
    }
    Err(WriteError::Layout("the journal's size did not settle".into()))
}

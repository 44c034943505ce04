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
//! 5. [`data`]: file contents and long symlink targets;
//! 6. [`inodes`]: the inode table, extent trees and attribute blocks;
//! 7. [`metadata`]: inode tables, bitmaps, descriptors and superblocks.

mod allocate;
mod data;
mod directories;
mod error;
mod file_data;
mod image;
mod inodes;
mod metadata;
mod options;
mod plan;

use std::fs::File;

pub use error::WriteError;
use image::Image;
pub use options::{ImageOptions, WriteReport};

use crate::format::BLOCK_SIZE;
use crate::tree::Tree;

/// Writes `tree` into `out`, which must be an empty file opened for writing.
pub fn write_image(tree: &Tree, out: &File, options: &ImageOptions) -> Result<WriteReport, WriteError> {
    let plan = plan::plan(tree)?;
    let geometry = allocate::geometry(&plan, options)?;
    let allocation = allocate::allocate(&plan, &geometry, options)?;
    // The file is sized first, so every block not written stays a hole.
    let bytes = options.size.unwrap_or(geometry.blocks * BLOCK_SIZE);
    out.set_len(bytes).map_err(WriteError::Write)?;
    let image = Image { out };
    directories::write(tree, &plan, &allocation, &image)?;
    data::write(tree, &plan, &allocation, &image)?;
    let itable = inodes::encode(tree, &plan, &allocation, &image)?;
    let free_blocks = metadata::write(tree, &plan, &geometry, &allocation, &itable, options, &image)?;
    data::start_writeback(out);
    Ok(WriteReport {
        bytes,
        used_blocks: geometry.blocks - free_blocks,
        used_inodes: u64::from(plan.numbering.max_ino),
    })
}

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
//! 4. [`directories`]: each directory's entries, packed into its blocks;
//! 5. [`data`]: file contents and long symlink targets;
//! 6. [`inodes`]: the inode table, extent trees and attribute blocks;
//! 7. [`metadata`]: inode tables, bitmaps, descriptors and superblocks.

mod allocate;
mod data;
mod directories;
mod inodes;
mod metadata;
mod plan;

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::format::{BLOCK_SIZE, Extent};
use crate::layout::{Headroom, LayoutError};
use crate::tree::Tree;
use crate::xattr::XattrError;

/// How to write an image.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The image's exact size in bytes, or `None` to size it from the content.
    pub size: Option<u64>,
    /// Room to leave when sizing from the content.
    pub headroom: Headroom,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
    /// Volume label, at most 16 bytes.
    pub label: String,
    /// The longest image allowed: an image sized from its content that
    /// would be longer fails with [`WriteError::TooLarge`] before anything
    /// is written.
    pub max_bytes: Option<u64>,
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReport {
    /// The image file's length.
    pub bytes: u64,
    /// Blocks holding data or metadata.
    pub used_blocks: u64,
    /// Inodes in use.
    pub used_inodes: u64,
}

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The content needs more room than asked for.
    #[error("the content needs at least {needed} bytes, more than the {size} bytes asked for")]
    DoesNotFit {
        /// Bytes needed.
        needed: u64,
        /// Bytes asked for.
        size: u64,
    },
    /// The content needs a longer image than [`ImageOptions::max_bytes`].
    #[error("the content needs an image of {needed} bytes, more than the {max} bytes allowed")]
    TooLarge {
        /// Bytes the image would have.
        needed: u64,
        /// Bytes allowed.
        max: u64,
    },
    /// Beyond what this writer supports.
    #[error("{0}")]
    Unsupported(String),
    /// A node's extended attributes cannot be stored.
    #[error("cannot store the extended attributes of {path}: {source}")]
    Xattrs {
        /// The first path that names the node.
        path: String,
        /// Why not.
        #[source]
        source: XattrError,
    },
    /// Reading a source file failed or it changed while being copied.
    #[error("{path}: {message}")]
    Source {
        /// The file.
        path: String,
        /// What happened.
        message: String,
    },
    /// Writing the image failed.
    #[error("writing the image: {0}")]
    Write(#[source] std::io::Error),
}

impl From<LayoutError> for WriteError {
    fn from(e: LayoutError) -> Self {
        match e {
            LayoutError::DoesNotFit { needed, size } => Self::DoesNotFit { needed, size },
            LayoutError::TooLarge(m) => Self::Unsupported(m),
        }
    }
}

/// The image being written: every write is at an offset.
struct Image<'a> {
    out: &'a File,
}

impl Image<'_> {
    /// Writes `bytes` at `offset`.
    fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), WriteError> {
        self.out.write_all_at(bytes, offset).map_err(WriteError::Write)
    }

    /// Writes `blocks`, in order, to the blocks `extents` name.
    fn write_blocks(&self, extents: &[Extent], blocks: &[Vec<u8>]) -> Result<(), WriteError> {
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

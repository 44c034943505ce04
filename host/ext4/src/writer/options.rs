//! What the caller asks of an image, and what it gets.

use crate::features::Features;
use crate::layout::Headroom;

use super::transfer::Reflink;

/// How to write an image.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The image's exact size in bytes, or `None` to size it from the content
    /// (its data and its inodes: see
    /// [`Geometry::for_content`](crate::layout::Geometry::for_content)). A size
    /// too small for either fails with
    /// [`WriteError::DoesNotFit`](super::WriteError::DoesNotFit), naming a size
    /// that holds them.
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
    /// would be longer fails with [`WriteError::TooLarge`](super::WriteError::TooLarge) before anything
    /// is written.
    pub max_bytes: Option<u64>,
    /// The ext4 features beyond the base every image has:
    /// [`Features::EXT4`] for a VM's root disk, [`Features::MINIMAL`] for
    /// read-only uses.
    pub features: Features,
    /// Whether file data may be cloned from its sources (`FICLONERANGE`)
    /// rather than copied. The image's bytes are the same either way.
    pub reflink: Reflink,
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
    /// File data shared with its source by cloning, in bytes (whole blocks).
    pub cloned_bytes: u64,
    /// File data written by copying (from a source or from memory), in bytes.
    pub copied_bytes: u64,
}

//! The journal: how many blocks it gets, and its superblock.
//!
//! The size follows `mke2fs` (`ext2fs_default_journal_size` in e2fsprogs
//! 1.47) from the filesystem's block count, so an image has the journal an
//! `mke2fs -t ext4` filesystem of its size would have. The journal is
//! created clean (nothing to replay) and otherwise zero: its blocks stay
//! holes in the image file, as the zeroes `mke2fs` writes read back.

use crate::format::{self, BLOCK_SIZE};

use super::allocate::Allocation;
use super::error::WriteError;
use super::image::Image;

/// The smallest journal jbd2 accepts (`JBD2_MIN_JOURNAL_BLOCKS`).
pub(super) const MIN_BLOCKS: u64 = 1024;

/// `mke2fs`'s journal size for a filesystem of `fs_blocks` 4 KiB blocks:
/// none below 2048 blocks, then 4 MiB up to 128 MiB, 16 MiB up to 1 GiB,
/// 32 MiB up to 2 GiB, 64 MiB up to 16 GiB, and so on up to 1 GiB.
pub(super) fn mke2fs_blocks(fs_blocks: u64) -> Option<u64> {
    Some(match fs_blocks {
        0..2048 => return None,
        2048..32768 => 1024,
        32768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16384,
        4_194_304..8_388_608 => 32768,
        8_388_608..16_777_216 => 65536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    })
}

/// Writes the journal's superblock into its first block.
pub(super) fn write(
    allocation: &Allocation,
    blocks: u64,
    uuid: &[u8; 16],
    image: &Image<'_>,
) -> Result<(), WriteError> {
    let first = allocation.inodes[format::JOURNAL_INODE as usize].extents.first().map(|e| e.start);
    let first = first.ok_or_else(|| WriteError::Layout("the journal was allocated no block".into()))?;
    image.write_at(&format::journal_superblock(blocks as u32, uuid), first * BLOCK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_steps_as_mke2fs_sizes_it() {
        assert_eq!(mke2fs_blocks(2047), None);
        assert_eq!(mke2fs_blocks(2048), Some(1024));
        assert_eq!(mke2fs_blocks(32767), Some(1024));
        assert_eq!(mke2fs_blocks(32768), Some(4096));
        assert_eq!(mke2fs_blocks(262_144), Some(8192));
        assert_eq!(mke2fs_blocks(1 << 22), Some(32768));
        assert_eq!(mke2fs_blocks(1 << 40), Some(262_144));
    }
}

//! Which optional ext4 features an image has.

/// The optional ext4 features an image has. Every image has extents, file
/// types in directory entries, sparse superblock backups, large files,
/// extended attributes, `extra_isize` and `dir_nlink`; these add to them.
/// Each combination gives a valid filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Features {
    /// A jbd2 journal (`has_journal`), sized by `mke2fs`'s rule and clean:
    /// what a VM writing to its root disk needs to survive being killed.
    pub journal: bool,
    /// crc32c checksums on every piece of metadata (`metadata_csum`): the
    /// superblock, group descriptors, bitmaps, inodes, extent blocks,
    /// directory blocks and attribute blocks.
    pub metadata_csum: bool,
    /// Hashed (htree) directories for every directory over one block
    /// (`dir_index`), with the half-MD4 hash and the image's hash seed.
    pub dir_index: bool,
    /// Flexible block groups (`flex_bg`): the bitmaps and inode tables of
    /// several groups packed together, so data runs across group borders.
    pub flex_bg: bool,
    /// 64-byte group descriptors and 64-bit block numbers (`64bit`).
    pub sixty_four_bit: bool,
    /// Files whose block counts may exceed 2^32 sectors (`huge_file`).
    pub huge_file: bool,
}

impl Features {
    /// What `mke2fs -t ext4` of e2fsprogs 1.47 gives with Debian's
    /// `/etc/mke2fs.conf`, less `resize_inode` (room reserved to grow the
    /// filesystem while mounted; an image is grown offline, by
    /// `resize2fs`, which needs none).
    pub const EXT4: Self = Self {
        journal: true,
        metadata_csum: true,
        dir_index: true,
        flex_bg: true,
        sixty_four_bit: true,
        huge_file: true,
    };

    /// None of them: the smallest image, for read-only uses.
    pub const MINIMAL: Self = Self {
        journal: false,
        metadata_csum: false,
        dir_index: false,
        flex_bg: false,
        sixty_four_bit: false,
        huge_file: false,
    };
}

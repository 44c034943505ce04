//! ext4 on-disk structures: the superblock, group descriptors, inodes,
//! directory entries, extents and extended attributes, encoded little-endian
//! exactly as the kernel and e2fsprogs read them.
//!
//! Only the features the writer uses are encoded: 4 KiB blocks, 256-byte
//! inodes with nanosecond timestamps, extents, file types in directory
//! entries, sparse superblock backups, extended attributes, and, as
//! [`Features`] asks, a clean jbd2 journal, 64-byte group descriptors
//! (`64bit`), flex groups, `huge_file` and crc32c checksums
//! (`metadata_csum`).

use super::checksum::crc32c;
use super::features::Features;
use super::tree::Timestamp;

/// Block size in bytes.
pub const BLOCK_SIZE: u64 = 4096;
/// `s_log_block_size` for [`BLOCK_SIZE`].
pub const LOG_BLOCK_SIZE: u32 = 2;
/// Blocks per group: one bitmap block's worth.
pub const BLOCKS_PER_GROUP: u64 = 32768;
/// Inode size in bytes.
pub const INODE_SIZE: usize = 256;
/// Inodes per inode-table block.
pub const INODES_PER_BLOCK: u32 = (BLOCK_SIZE as usize / INODE_SIZE) as u32;
/// `i_extra_isize`: room for the nanosecond and creation-time fields.
pub const EXTRA_ISIZE: u16 = 32;
/// First inode not reserved by the filesystem.
pub const FIRST_INODE: u32 = 11;
/// The root directory's inode.
pub const ROOT_INODE: u32 = 2;
/// Bytes of one group descriptor (without the 64bit feature).
pub const DESC_SIZE: u64 = 32;
/// Bytes of one group descriptor with the 64bit feature (`s_desc_size`).
pub const DESC_SIZE_64: u64 = 64;

/// Bytes of one group descriptor with `features`.
pub fn desc_size(features: Features) -> u64 {
    if features.sixty_four_bit { DESC_SIZE_64 } else { DESC_SIZE }
}
/// Longest extent of initialised blocks.
pub const MAX_EXTENT_LEN: u64 = 32768;
/// The journal's inode (`EXT4_JOURNAL_INO`).
pub const JOURNAL_INODE: u32 = 8;
/// Most links one inode may have (`EXT4_LINK_MAX`); a directory with more
/// subdirectories counts 1 under `dir_nlink`.
pub const MAX_LINKS: u32 = 65000;
/// The longest file ext4 holds with extents and 4 KiB blocks: logical block
/// numbers are 32 bits and the last one is reserved (`EXT_MAX_BLOCKS`), so
/// 2^32 − 1 blocks, the kernel's `s_maxbytes`.
pub const MAX_FILE_BYTES: u64 = (u32::MAX as u64) * BLOCK_SIZE;
/// The longest name a directory entry holds, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// `S_IF*` file types as stored in `i_mode`.
pub mod mode {
    /// Regular file.
    pub const REG: u16 = 0o100000;
    /// Directory.
    pub const DIR: u16 = 0o040000;
    /// Symlink.
    pub const LNK: u16 = 0o120000;
    /// Character device.
    pub const CHR: u16 = 0o020000;
    /// Block device.
    pub const BLK: u16 = 0o060000;
    /// FIFO.
    pub const FIFO: u16 = 0o010000;
    /// Socket.
    pub const SOCK: u16 = 0o140000;
}

/// Directory entry file types.
pub mod ftype {
    /// Regular file.
    pub const REG: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Character device.
    pub const CHR: u8 = 3;
    /// Block device.
    pub const BLK: u8 = 4;
    /// FIFO.
    pub const FIFO: u8 = 5;
    /// Socket.
    pub const SOCK: u8 = 6;
    /// Symlink.
    pub const LNK: u8 = 7;
}

const COMPAT_HAS_JOURNAL: u32 = 0x0004;
const COMPAT_EXT_ATTR: u32 = 0x0008;
const COMPAT_DIR_INDEX: u32 = 0x0020;
const INCOMPAT_FILETYPE: u32 = 0x0002;
const INCOMPAT_EXTENTS: u32 = 0x0040;
const INCOMPAT_64BIT: u32 = 0x0080;
const INCOMPAT_FLEX_BG: u32 = 0x0200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
const RO_COMPAT_DIR_NLINK: u32 = 0x0020;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x0040;
const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;
/// `EXT4_EXTENTS_FL`.
pub const EXTENTS_FL: u32 = 0x0008_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// Magic of an extended-attribute block and of the in-inode area.
pub const XATTR_MAGIC: u32 = 0xEA02_0000;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Whether group `g` holds a superblock backup (`sparse_super`): groups 0, 1
/// and powers of 3, 5 and 7.
pub fn has_superblock(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut n = base;
        while n < g {
            n *= base;
        }
        n == g
    })
}

/// Encodes a timestamp as ext4's 32-bit seconds and the extra word (two
/// epoch bits extending the seconds, then nanoseconds).
pub fn encode_time(t: Timestamp) -> (u32, u32) {
    let lo = t.secs as i32;
    let epoch = ((t.secs - i64::from(lo)) >> 32) as u32 & 3;
    (lo as u32, (t.nanos.min(999_999_999) << 2) | epoch)
}

/// Filesystem-wide values for the superblock.
pub struct SuperblockFields {
    /// Total inodes.
    pub inodes_count: u32,
    /// Total blocks.
    pub blocks_count: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Free inodes.
    pub free_inodes: u32,
    /// Inodes per group.
    pub inodes_per_group: u32,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
    /// Volume label (at most 16 bytes).
    pub label: [u8; 16],
    /// The optional features: each sets its flag.
    pub features: Features,
    /// The journal inode's `i_block` and size, when there is a journal: the
    /// superblock keeps a copy (`s_jnl_blocks`) for e2fsck.
    pub journal: Option<([u8; 60], u64)>,
    /// `s_log_groups_per_flex`, with `flex_bg`.
    pub log_groups_per_flex: Option<u8>,
}

/// The 1024-byte superblock, as stored in group `group`.
pub fn superblock(f: &SuperblockFields, group: u16) -> [u8; 1024] {
    let mut b = [0u8; 1024];
    put32(&mut b, 0x00, f.inodes_count);
    put32(&mut b, 0x04, f.blocks_count as u32);
    put32(&mut b, 0x0C, f.free_blocks as u32);
    put32(&mut b, 0x10, f.free_inodes);
    put32(&mut b, 0x14, 0); // first data block (4 KiB blocks)
    put32(&mut b, 0x18, LOG_BLOCK_SIZE);
    put32(&mut b, 0x1C, LOG_BLOCK_SIZE);
    put32(&mut b, 0x20, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x24, BLOCKS_PER_GROUP as u32);
    put32(&mut b, 0x28, f.inodes_per_group);
    put16(&mut b, 0x36, 0xFFFF); // max mount count: -1, never force a check
    put16(&mut b, 0x38, 0xEF53);
    put16(&mut b, 0x3A, 1); // clean
    put16(&mut b, 0x3C, 1); // errors: continue
    put32(&mut b, 0x4C, 1); // dynamic revision
    put32(&mut b, 0x54, FIRST_INODE);
    put16(&mut b, 0x58, INODE_SIZE as u16);
    put16(&mut b, 0x5A, group);
    let flag = |on: bool, bit: u32| if on { bit } else { 0 };
    let x = &f.features;
    put32(
        &mut b,
        0x5C,
        COMPAT_EXT_ATTR | flag(f.journal.is_some(), COMPAT_HAS_JOURNAL) | flag(x.dir_index, COMPAT_DIR_INDEX),
    );
    put32(
        &mut b,
        0x60,
        INCOMPAT_FILETYPE
            | INCOMPAT_EXTENTS
            | flag(x.sixty_four_bit, INCOMPAT_64BIT)
            | flag(x.flex_bg, INCOMPAT_FLEX_BG),
    );
    put32(
        &mut b,
        0x64,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE
            | flag(x.huge_file, RO_COMPAT_HUGE_FILE)
            | flag(x.metadata_csum, RO_COMPAT_METADATA_CSUM),
    );
    b[0x68..0x78].copy_from_slice(&f.uuid);
    b[0x78..0x88].copy_from_slice(&f.label);
    b[0xEC..0xFC].copy_from_slice(&f.hash_seed);
    b[0xFC] = 1; // half-MD4, should directories ever be indexed
    put16(&mut b, 0x15C, EXTRA_ISIZE);
    put16(&mut b, 0x15E, EXTRA_ISIZE);
    put32(&mut b, 0x160, 0x0001); // signed directory hash, as on x86
    if let Some((iblock, size)) = &f.journal {
        put32(&mut b, 0xE0, JOURNAL_INODE);
        b[0xFD] = 1; // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
        b[0x10C..0x10C + 60].copy_from_slice(iblock);
        put32(&mut b, 0x10C + 60, (size >> 32) as u32);
        put32(&mut b, 0x10C + 64, *size as u32);
    }
    if x.sixty_four_bit {
        put16(&mut b, 0xFE, DESC_SIZE_64 as u16); // s_desc_size
        put32(&mut b, 0x150, (f.blocks_count >> 32) as u32); // s_blocks_count_hi
        put32(&mut b, 0x158, (f.free_blocks >> 32) as u32); // s_free_blocks_hi
    }
    if let Some(log) = f.log_groups_per_flex {
        b[0x174] = log;
    }
    if x.metadata_csum {
        b[0x175] = 1; // s_checksum_type: crc32c
        let csum = crc32c(!0, &b[..0x3FC]);
        put32(&mut b, 0x3FC, csum); // s_checksum
    }
    b
}

/// The superblock of a clean, empty jbd2 journal of `blocks` blocks (the
/// first block of the journal inode; the rest stays zero), as `mke2fs`
/// writes it for an internal journal: version 2, the log starting at block
/// 1, sequence 1, `s_start` 0 (nothing to replay), one user, the
/// filesystem's UUID. Big-endian, like every jbd2 structure.
pub fn journal_superblock(blocks: u32, uuid: &[u8; 16]) -> [u8; 1024] {
    let mut b = [0u8; 1024];
    let be32 = |b: &mut [u8; 1024], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    be32(&mut b, 0x00, 0xC03B_3998); // h_magic
    be32(&mut b, 0x04, 4); // h_blocktype: superblock v2
    be32(&mut b, 0x0C, BLOCK_SIZE as u32); // s_blocksize
    be32(&mut b, 0x10, blocks); // s_maxlen
    be32(&mut b, 0x14, 1); // s_first
    be32(&mut b, 0x18, 1); // s_sequence
    b[0x30..0x40].copy_from_slice(uuid);
    be32(&mut b, 0x40, 1); // s_nr_users
    b
}

/// `EXT4_BG_INODE_UNINIT`: the group's inode table and bitmap are unused.
pub const BG_INODE_UNINIT: u16 = 0x0001;
/// `EXT4_BG_BLOCK_UNINIT`: the group's block bitmap is not written; it
/// holds only the group's own metadata.
pub const BG_BLOCK_UNINIT: u16 = 0x0002;
/// `EXT4_BG_INODE_ZEROED`: the group's inode table is zeroed.
pub const BG_INODE_ZEROED: u16 = 0x0004;

/// One group's descriptor.
#[derive(Clone, Debug, Default)]
pub struct GroupDesc {
    /// Block bitmap location.
    pub block_bitmap: u64,
    /// Inode bitmap location.
    pub inode_bitmap: u64,
    /// First inode-table block.
    pub inode_table: u64,
    /// Free blocks in the group.
    pub free_blocks: u32,
    /// Free inodes in the group.
    pub free_inodes: u32,
    /// Directories in the group.
    pub used_dirs: u32,
    /// `bg_flags` (`EXT4_BG_*`).
    pub flags: u16,
    /// Inodes at the end of the group's table never used (`bg_itable_unused`).
    pub itable_unused: u32,
    /// crc32c of the block bitmap (`metadata_csum`).
    pub block_bitmap_csum: u32,
    /// crc32c of the inode bitmap (`metadata_csum`).
    pub inode_bitmap_csum: u32,
}

impl GroupDesc {
    /// The descriptor's `desc_size` bytes (32, or 64 with `64bit`: the
    /// `_hi` halves), with its checksum from `csum_seed` when given
    /// (`metadata_csum`): the low 16 bits of the crc32c of the group number
    /// and the descriptor with `bg_checksum` zeroed.
    pub fn encode(&self, desc_size: u64, group: u32, csum_seed: Option<u32>) -> Vec<u8> {
        let mut b = vec![0u8; desc_size as usize];
        put32(&mut b, 0x00, self.block_bitmap as u32);
        put32(&mut b, 0x04, self.inode_bitmap as u32);
        put32(&mut b, 0x08, self.inode_table as u32);
        put16(&mut b, 0x0C, self.free_blocks as u16);
        put16(&mut b, 0x0E, self.free_inodes as u16);
        put16(&mut b, 0x10, self.used_dirs as u16);
        put16(&mut b, 0x12, self.flags);
        put16(&mut b, 0x18, self.block_bitmap_csum as u16);
        put16(&mut b, 0x1A, self.inode_bitmap_csum as u16);
        put16(&mut b, 0x1C, self.itable_unused as u16);
        if desc_size >= DESC_SIZE_64 {
            put32(&mut b, 0x20, (self.block_bitmap >> 32) as u32);
            put32(&mut b, 0x24, (self.inode_bitmap >> 32) as u32);
            put32(&mut b, 0x28, (self.inode_table >> 32) as u32);
            put16(&mut b, 0x2C, (self.free_blocks >> 16) as u16);
            put16(&mut b, 0x2E, (self.free_inodes >> 16) as u16);
            put16(&mut b, 0x30, (self.used_dirs >> 16) as u16);
            put16(&mut b, 0x32, (self.itable_unused >> 16) as u16);
            put16(&mut b, 0x38, (self.block_bitmap_csum >> 16) as u16);
            put16(&mut b, 0x3A, (self.inode_bitmap_csum >> 16) as u16);
        }
        if let Some(seed) = csum_seed {
            // bg_checksum (0x1E) is still zero here.
            let csum = crc32c(crc32c(seed, &group.to_le_bytes()), &b);
            put16(&mut b, 0x1E, csum as u16);
        }
        b
    }
}

/// Sets an inode's checksum (`metadata_csum`): the crc32c, from the inode's
/// seed, of its 256 bytes with `i_checksum_lo` (0x7C) and `i_checksum_hi`
/// (0x82) zeroed, stored as those two halves.
pub fn set_inode_checksum(inode: &mut [u8], inode_seed: u32) {
    put16(inode, 0x7C, 0);
    put16(inode, 0x82, 0);
    let csum = crc32c(inode_seed, &inode[..INODE_SIZE]);
    put16(inode, 0x7C, csum as u16);
    put16(inode, 0x82, (csum >> 16) as u16);
}

/// Sets the tail of an extent-tree block (`metadata_csum`): the crc32c,
/// from the inode's seed, of the header and all `eh_max` entry slots,
/// stored right after them (`ext4_extent_tail`, at byte 4092).
pub fn set_extent_block_checksum(block: &mut [u8], inode_seed: u32) {
    let max = u16::from_le_bytes([block[4], block[5]]) as usize;
    let tail = 12 + 12 * max;
    let csum = crc32c(inode_seed, &block[..tail]);
    put32(block, tail, csum);
}

/// Sets an extended-attribute block's `h_checksum` (`metadata_csum`): the
/// crc32c, from the filesystem's seed, of the block's number (le64) and
/// the block with `h_checksum` zeroed.
pub fn set_xattr_block_checksum(block: &mut [u8], block_nr: u64, fs_seed: u32) {
    put32(block, 0x10, 0);
    let csum = crc32c(crc32c(fs_seed, &block_nr.to_le_bytes()), block);
    put32(block, 0x10, csum);
}

/// The checksum of a bitmap (`metadata_csum`): the crc32c, from the
/// filesystem's seed, of its first `bits / 8` bytes (blocks or inodes per
/// group).
pub fn bitmap_checksum(bitmap: &[u8], bits: u64, fs_seed: u32) -> u32 {
    crc32c(fs_seed, &bitmap[..(bits / 8) as usize])
}

/// One extent: `len` blocks from logical block `logical` at physical `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub logical: u32,
    /// First physical block.
    pub start: u64,
    /// Blocks, at most [`MAX_EXTENT_LEN`].
    pub len: u16,
}

fn extent_header(b: &mut [u8], entries: u16, max: u16, depth: u16) {
    put16(b, 0, EXTENT_MAGIC);
    put16(b, 2, entries);
    put16(b, 4, max);
    put16(b, 6, depth);
}

/// Entries that fit in an extent block after its 12-byte header.
pub const EXTENTS_PER_BLOCK: usize = (BLOCK_SIZE as usize - 12) / 12;

/// A node of an extent tree: leaf extents, or index entries
/// `(first logical block, child block)`.
pub enum ExtentNode<'a> {
    /// Leaf entries.
    Leaf(&'a [Extent]),
    /// Index entries.
    Index(&'a [(u32, u64)]),
}

/// Encodes an extent-tree node into `out` (60 bytes in the inode, or a
/// block). `depth` is 0 for leaves.
pub fn encode_extent_node(out: &mut [u8], node: ExtentNode<'_>, depth: u16) {
    let max = ((out.len() - 12) / 12) as u16;
    match node {
        ExtentNode::Leaf(extents) => {
            extent_header(out, extents.len() as u16, max, depth);
            for (i, e) in extents.iter().enumerate() {
                let at = 12 + i * 12;
                put32(out, at, e.logical);
                put16(out, at + 4, e.len);
                put16(out, at + 6, (e.start >> 32) as u16);
                put32(out, at + 8, e.start as u32);
            }
        }
        ExtentNode::Index(entries) => {
            extent_header(out, entries.len() as u16, max, depth);
            for (i, (logical, child)) in entries.iter().enumerate() {
                let at = 12 + i * 12;
                put32(out, at, *logical);
                put32(out, at + 4, *child as u32);
                put16(out, at + 8, (*child >> 32) as u16);
            }
        }
    }
}

/// The on-disk inode.
pub struct InodeFields {
    /// Type and permission bits.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length in bytes.
    pub size: u64,
    /// All four timestamps are set to this.
    pub time: Timestamp,
    /// Hard links.
    pub links: u16,
    /// Allocated 512-byte sectors.
    pub sectors: u64,
    /// `i_flags`.
    pub flags: u32,
    /// `i_block`: extent root, fast symlink target or device number.
    pub block: [u8; 60],
    /// Extended-attribute block, or 0.
    pub xattr_block: u64,
    /// The in-inode extended-attribute area after `i_extra_isize`, if any.
    pub inline_xattrs: Option<Vec<u8>>,
}

impl InodeFields {
    /// Encodes the inode into its 256 bytes.
    pub fn encode(&self, out: &mut [u8]) {
        out[..INODE_SIZE].fill(0);
        let (secs, extra) = encode_time(self.time);
        put16(out, 0x00, self.mode);
        put16(out, 0x02, self.uid as u16);
        put32(out, 0x04, self.size as u32);
        put32(out, 0x08, secs); // atime
        put32(out, 0x0C, secs); // ctime
        put32(out, 0x10, secs); // mtime
        put16(out, 0x18, self.gid as u16);
        put16(out, 0x1A, self.links);
        put32(out, 0x1C, self.sectors as u32);
        put32(out, 0x20, self.flags);
        out[0x28..0x64].copy_from_slice(&self.block);
        put32(out, 0x68, self.xattr_block as u32);
        put32(out, 0x6C, (self.size >> 32) as u32);
        put16(out, 0x74, (self.sectors >> 32) as u16);
        put16(out, 0x76, (self.xattr_block >> 32) as u16);
        put16(out, 0x78, (self.uid >> 16) as u16);
        put16(out, 0x7A, (self.gid >> 16) as u16);
        put16(out, 0x80, EXTRA_ISIZE);
        put32(out, 0x84, extra); // ctime extra
        put32(out, 0x88, extra); // mtime extra
        put32(out, 0x8C, extra); // atime extra
        put32(out, 0x90, secs); // crtime
        put32(out, 0x94, extra);
        if let Some(area) = &self.inline_xattrs {
            let start = 0x80 + EXTRA_ISIZE as usize;
            out[start..start + area.len()].copy_from_slice(area);
        }
    }
}

/// Encodes a device number into `i_block` the way the kernel does.
pub fn encode_device(rdev: u64) -> [u8; 60] {
    let major = ((rdev >> 32) & 0xFFFF_F000) | ((rdev >> 8) & 0xFFF);
    let minor = ((rdev >> 12) & 0xFFFF_FF00) | (rdev & 0xFF);
    let mut block = [0u8; 60];
    if major < 256 && minor < 256 {
        put32(&mut block, 0, ((major << 8) | minor) as u32);
    } else {
        put32(&mut block, 4, ((minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12)) as u32);
    }
    block
}

/// Length of a directory entry for a name of `name_len` bytes.
pub fn dirent_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

/// Appends a directory entry to a block buffer at `at`, with `rec_len`.
pub fn put_dirent(block: &mut [u8], at: usize, inode: u32, rec_len: usize, name: &[u8], file_type: u8) {
    put32(block, at, inode);
    put16(block, at + 4, rec_len as u16);
    block[at + 6] = name.len() as u8;
    block[at + 7] = file_type;
    block[at + 8..at + 8 + name.len()].copy_from_slice(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_backups_are_in_groups_0_1_and_powers_of_3_5_7() {
        let with: Vec<u64> = (0..50).filter(|&g| has_superblock(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn times_before_2038_and_after_keep_their_seconds_and_nanoseconds() {
        assert_eq!(encode_time(Timestamp { secs: 1, nanos: 5 }), (1, 5 << 2));
        // 2040: beyond i32, epoch bits 01.
        let t = Timestamp { secs: 2_208_988_800, nanos: 0 };
        let (lo, extra) = encode_time(t);
        assert_eq!(i64::from(lo as i32) + (i64::from(extra & 3) << 32), t.secs);
        // Before 1970.
        assert_eq!(encode_time(Timestamp { secs: -1, nanos: 0 }), (u32::MAX, 0));
    }

    #[test]
    fn small_devices_use_the_old_encoding_and_large_ones_the_new() {
        let rdev = (1 << 8) | 3; // 1:3, /dev/null
        assert_eq!(&encode_device(rdev)[..4], &[3, 1, 0, 0]);
        let big = rustix::fs::makedev(300, 70000);
        let enc = encode_device(big);
        assert_eq!(&enc[..4], &[0; 4]);
        let word = u32::from_le_bytes([enc[4], enc[5], enc[6], enc[7]]);
        assert_eq!(word, (70000 & 0xFF) | (300 << 8) | ((70000 & !0xFF) << 12));
    }
}

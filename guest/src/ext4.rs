//! The ext4 superblock: just enough of it to tell a sound image from a broken one.
//!
//! The two magic bytes at 0x438 are not enough: a zeroed tail, a truncated
//! copy or a superblock from another filesystem size all have them.
//! [`Superblock::check_geometry`] also checks that what the superblock
//! declares fits in the file and is self-consistent.

/// Byte offset of the primary superblock in the image.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock this module reads.
pub const SUPERBLOCK_LEN: usize = 1024;
/// The ext2/3/4 magic number, `s_magic`.
pub const EXT4_MAGIC: u16 = 0xEF53;

const INCOMPAT_64BIT: u32 = 0x80;

/// The superblock fields rootfs-cache reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// `s_magic`.
    pub magic: u16,
    /// `s_inodes_count`.
    pub inodes_count: u32,
    /// `s_blocks_count`, both halves.
    pub blocks_count: u64,
    /// `s_free_blocks_count`, both halves.
    pub free_blocks: u64,
    /// `s_free_inodes_count`.
    pub free_inodes: u32,
    /// `s_first_data_block`.
    pub first_data_block: u32,
    /// `s_log_block_size`: the block size is `1024 << log_block_size`.
    pub log_block_size: u32,
    /// `s_blocks_per_group`.
    pub blocks_per_group: u32,
    /// `s_inodes_per_group`.
    pub inodes_per_group: u32,
    /// `s_rev_level`.
    pub rev_level: u32,
    /// `s_inode_size` (128 for revision 0).
    pub inode_size: u16,
    /// `s_uuid`.
    pub uuid: [u8; 16],
    /// `s_volume_name`, up to the first NUL.
    pub label: String,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Superblock {
    /// Parses the 1024 bytes that start at [`SUPERBLOCK_OFFSET`].
    ///
    /// Returns `None` when fewer bytes are given, as for a file shorter than
    /// 2048 bytes. The magic is not checked here: see [`Self::check_geometry`].
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < SUPERBLOCK_LEN {
            return None;
        }
        let incompat = u32_at(bytes, 0x60);
        let wide = incompat & INCOMPAT_64BIT != 0;
        let hi = |at: usize| {
            if wide { u64::from(u32_at(bytes, at)) << 32 } else { 0 }
        };
        let rev_level = u32_at(bytes, 0x4C);
        let label_raw = &bytes[0x78..0x88];
        let label_len = label_raw.iter().position(|&c| c == 0).unwrap_or(16);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&bytes[0x68..0x78]);
        Some(Self {
            magic: u16_at(bytes, 0x38),
            inodes_count: u32_at(bytes, 0x00),
            blocks_count: u64::from(u32_at(bytes, 0x04)) | hi(0x150),
            free_blocks: u64::from(u32_at(bytes, 0x0C)) | hi(0x158),
            free_inodes: u32_at(bytes, 0x10),
            first_data_block: u32_at(bytes, 0x14),
            log_block_size: u32_at(bytes, 0x18),
            blocks_per_group: u32_at(bytes, 0x20),
            inodes_per_group: u32_at(bytes, 0x28),
            rev_level,
            inode_size: if rev_level == 0 { 128 } else { u16_at(bytes, 0x58) },
            uuid,
            label: String::from_utf8_lossy(&label_raw[..label_len]).into_owned(),
        })
    }

    /// Whether the magic number is ext2/3/4's.
    pub fn has_magic(&self) -> bool {
        self.magic == EXT4_MAGIC
    }

    /// The block size in bytes, or `None` when `s_log_block_size` is out of
    /// ext4's range (1 KiB to 64 KiB).
    pub fn block_size(&self) -> Option<u32> {
        (self.log_block_size <= 6).then(|| 1024u32 << self.log_block_size)
    }

    /// The filesystem UUID in its usual hyphenated form.
    pub fn uuid_string(&self) -> String {
        let hex: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
    }

    /// Checks that the superblock describes a filesystem that fits in a file
    /// of `file_len` bytes and is consistent with itself.
    ///
    /// Returns a sentence naming the first problem found.
    pub fn check_geometry(&self, file_len: u64) -> Result<(), String> {
        if !self.has_magic() {
            return Err(format!("no ext4 magic (found {:#06x})", self.magic));
        }
        let block_size =
            self.block_size().ok_or_else(|| format!("block size exponent {} is out of range", self.log_block_size))?;
        if self.blocks_count == 0 {
            return Err("the superblock declares zero blocks".into());
        }
        let declared = self.blocks_count.checked_mul(u64::from(block_size)).ok_or("the declared size overflows")?;
        if declared > file_len {
            return Err(format!(
                "the filesystem declares {} blocks of {block_size} bytes ({declared} bytes) but the file has {file_len} bytes",
                self.blocks_count
            ));
        }
        let expected_first = u32::from(block_size == 1024);
        if self.first_data_block != expected_first {
            return Err(format!("first data block is {}, expected {expected_first}", self.first_data_block));
        }
        if self.blocks_per_group == 0 || self.blocks_per_group > block_size * 8 {
            return Err(format!("{} blocks per group is impossible", self.blocks_per_group));
        }
        if self.inodes_per_group == 0 || self.inodes_count == 0 {
            return Err("the superblock declares zero inodes".into());
        }
        let data_blocks = self.blocks_count - u64::from(self.first_data_block);
        let groups = data_blocks.div_ceil(u64::from(self.blocks_per_group));
        if u64::from(self.inodes_per_group) * groups != u64::from(self.inodes_count) {
            return Err(format!("{} inodes is not {} groups of {}", self.inodes_count, groups, self.inodes_per_group));
        }
        if self.free_blocks > self.blocks_count || self.free_inodes > self.inodes_count {
            return Err("more free blocks or inodes than the filesystem has".into());
        }
        let inode_size = u32::from(self.inode_size);
        if !inode_size.is_power_of_two() || inode_size < 128 || inode_size > block_size {
            return Err(format!("inode size {inode_size} is impossible"));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A superblock as mke2fs writes it for a 4 MiB image with 4 KiB blocks.
    pub(crate) fn sample(blocks: u32) -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_LEN];
        let put32 = |sb: &mut Vec<u8>, at: usize, v: u32| sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut sb, 0x00, 1024); // inodes
        put32(&mut sb, 0x04, blocks);
        put32(&mut sb, 0x0C, 100);
        put32(&mut sb, 0x10, 1000);
        put32(&mut sb, 0x14, 0);
        put32(&mut sb, 0x18, 2); // 4096
        put32(&mut sb, 0x20, 32768);
        put32(&mut sb, 0x28, 1024);
        put32(&mut sb, 0x4C, 1);
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        sb[0x78..0x7D].copy_from_slice(b"root\0");
        sb
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample;
    use super::*;

    #[test]
    fn a_sound_superblock_passes_when_the_file_holds_every_block() {
        let sb = Superblock::parse(&sample(1024)).unwrap();
        assert_eq!(sb.block_size(), Some(4096));
        assert_eq!(sb.label, "root");
        assert_eq!(sb.check_geometry(4 << 20), Ok(()));
    }

    #[test]
    fn a_truncated_file_fails_geometry() {
        let sb = Superblock::parse(&sample(1024)).unwrap();
        let err = sb.check_geometry((4 << 20) - 4096).unwrap_err();
        assert!(err.contains("but the file has"), "{err}");
    }

    #[test]
    fn zeroes_have_no_magic() {
        let sb = Superblock::parse(&[0u8; SUPERBLOCK_LEN]).unwrap();
        assert!(!sb.has_magic());
        assert!(sb.check_geometry(1 << 30).unwrap_err().contains("no ext4 magic"));
    }

    #[test]
    fn magic_alone_is_not_enough() {
        let mut raw = sample(1024);
        raw[0x18] = 9; // a 512 KiB block size
        let err = Superblock::parse(&raw).unwrap().check_geometry(u64::MAX).unwrap_err();
        assert!(err.contains("out of range"), "{err}");

        let mut raw = sample(1024);
        raw[0x00..0x04].copy_from_slice(&7u32.to_le_bytes());
        let err = Superblock::parse(&raw).unwrap().check_geometry(4 << 20).unwrap_err();
        assert!(err.contains("inodes is not"), "{err}");
    }

    #[test]
    fn short_input_is_not_a_superblock() {
        assert_eq!(Superblock::parse(&[0u8; 100]), None);
    }

    #[test]
    fn uuid_is_hyphenated() {
        let mut raw = sample(1024);
        raw[0x68..0x78].copy_from_slice(&[0x12; 16]);
        let sb = Superblock::parse(&raw).unwrap();
        assert_eq!(sb.uuid_string(), "12121212-1212-1212-1212-121212121212");
    }
}

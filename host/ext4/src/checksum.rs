//! ext4's crc32c checksums (`metadata_csum`).
//!
//! ext4 uses crc32c (Castagnoli) without the final inversion, chained: each
//! checksum starts from a seed and feeds the next. The filesystem's seed is
//! the crc32c of its UUID from `!0`; an inode's seed continues it with the
//! inode's number and generation, and every block that belongs to one inode
//! (extent, directory and index blocks) is checksummed from that seed.

/// crc32c of `bytes`, continuing from `seed`, without the final inversion:
/// the kernel's `ext4_chksum`.
pub fn crc32c(seed: u32, bytes: &[u8]) -> u32 {
    // The crate inverts before and after (the standard CRC); ext4 does not.
    !crc32c::crc32c_append(!seed, bytes)
}

/// The filesystem's seed (`s_csum_seed` when not stored): from the UUID.
pub fn fs_seed(uuid: &[u8; 16]) -> u32 {
    crc32c(!0, uuid)
}

/// An inode's seed: the filesystem's, then the inode's number and
/// generation (little-endian).
pub fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    crc32c(crc32c(fs_seed, &ino.to_le_bytes()), &generation.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_crc32c_without_the_final_inversion() {
        // The standard check value of CRC-32C ("123456789" -> 0xE3069283)
        // is the inverted form of ext4's.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        // Chaining equals one pass.
        assert_eq!(crc32c(crc32c(!0, b"1234"), b"56789"), crc32c(!0, b"123456789"));
    }
}

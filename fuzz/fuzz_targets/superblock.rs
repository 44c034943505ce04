//! The ext4 superblock check: never panics, and a geometry it accepts fits
//! the file it was checked against.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs_cache_guest::ext4::Superblock;

fuzz_target!(|data: &[u8]| {
    if data.len() < 1032 {
        return;
    }
    let file_len = u64::from_le_bytes(data[..8].try_into().unwrap());
    if let Some(sb) = Superblock::parse(&data[8..]) {
        if sb.check_geometry(file_len).is_ok() {
            assert!(sb.blocks_count * u64::from(sb.block_size().unwrap()) <= file_len);
        }
    }
});

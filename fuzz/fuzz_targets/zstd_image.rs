//! A compressed image as a remote cache may send it, decoded into a sparse file: never panics,
//! never writes past the limit, and what it accepts is in the file byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};

/// The most a fuzzed stream may decode to.
const LIMIT: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let file = tempfile::tempfile().unwrap();
    match rootfs_cache_registry::decode_sparse_image(data, &file, LIMIT) {
        Ok((length, digest)) => {
            assert!(length <= LIMIT);
            let bytes = std::fs::read(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))).unwrap();
            assert_eq!(bytes.len() as u64, length);
            assert_eq!(digest.hex(), format!("{:x}", Sha256::digest(&bytes)));
        }
        Err(_) => assert!(file.metadata().unwrap().len() <= LIMIT),
    }
});

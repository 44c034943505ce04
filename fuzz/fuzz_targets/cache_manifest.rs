//! The cache manifest: never panics, and what it accepts survives a round
//! trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs_cache_guest::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        assert_eq!(Manifest::parse(m.to_json().as_bytes()).as_ref(), Ok(&m));
    }
});

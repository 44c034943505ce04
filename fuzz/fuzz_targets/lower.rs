//! The overlay2 `lower` file: never panics; what it accepts is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs_cache_guest::overlay2::{is_valid_link_id, parse_lower, MAX_LAYERS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(ids) = parse_lower(text) {
        assert!(ids.len() <= MAX_LAYERS);
        for (i, id) in ids.iter().enumerate() {
            assert!(is_valid_link_id(id));
            assert!(!ids[..i].contains(id), "a repeated layer was accepted");
        }
    }
});

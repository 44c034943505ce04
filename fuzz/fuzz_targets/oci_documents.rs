//! `index.json` and image manifests: never panic; accepted manifests name
//! only supported layers by SHA-256.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs_cache_guest::oci::{parse_index, parse_manifest, sha256_of_digest, LAYER_TYPES};

fuzz_target!(|data: &[u8]| {
    let _ = parse_index(data);
    if let Ok((_config, layers)) = parse_manifest(data) {
        for layer in layers {
            assert!(LAYER_TYPES.contains(&layer.media_type.as_str()));
            assert!(sha256_of_digest(&layer.digest).is_ok());
        }
    }
});

//! The policy file's TOML (`Policy::from_toml`): never panics, and what it
//! accepts holds together: every limit positive, every path absolute.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootfs_cache::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policy) = Policy::from_toml(text) else { return };
    let limits = &policy.limits;
    assert!(limits.max_image_bytes > 0);
    assert!(!limits.convert_timeout.is_zero());
    assert!(limits.max_parallel_conversions > 0);
    assert!(limits.guest_memory_bytes > 0);
    assert!(!limits.guest_time.is_zero());
    let paths = policy.cache_dir.iter().chain(policy.audit_log.iter());
    let lists = policy.source_roots.iter().flatten().chain(policy.agents.iter().flatten());
    for path in paths.chain(lists) {
        assert!(path.is_absolute(), "{} was accepted", path.display());
    }
    for converter in policy.converters.iter().flatten() {
        assert!(!converter.is_empty());
    }
});

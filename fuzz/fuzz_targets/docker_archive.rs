//! An archive of arbitrary bytes, as a Docker engine's export, stored by
//! `rootfs-cache-docker`'s `store_archive`: never panics, stores only
//! complete blobs named by their SHA-256, and leaves no temporary file.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rootfs_cache_docker::archive::store_archive;
use rootfs_cache_registry::BlobStore;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let store = BlobStore::open(dir.path()).unwrap();
    if let Ok(files) = store_archive(data, &store, 1 << 20) {
        for file in files {
            let bytes = std::fs::read(&file.path).unwrap();
            let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, file.digest.hex());
            assert_eq!(bytes.len() as u64, file.size);
        }
    }
    assert!(store.sweep(false).unwrap().is_empty(), "a temporary file was left");
    let locks = std::fs::read_dir(dir.path().join("blobs/locks")).unwrap();
    let streams = locks.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("stream-")).count();
    assert_eq!(streams, 0, "a stream's lock file was left");
});

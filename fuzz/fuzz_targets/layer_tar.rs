//! An OCI layer of arbitrary bytes, applied by the OCI applier of
//! `rootfs-cache-layers` (the exact converter's): never panics, and never writes outside its spool.
#![no_main]

use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rootfs_cache_layers::oci_apply::Applier;
use rootfs_cache_layers::LayerBlob;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let blob = dir.path().join("layer.tar");
    std::fs::write(&blob, data).unwrap();
    let digest = format!("sha256:{}", Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect::<String>());
    let layer = LayerBlob {
        path: blob,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest,
        size: data.len() as u64,
        diff_id: None,
    };
    let applier = Applier::new(dir.path()).unwrap();
    let _ = applier.apply_all(&[layer], &AtomicBool::new(false));
    // The spool is unnamed: only the blob is in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
});

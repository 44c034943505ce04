//! The writer's output is pinned: the same tree gives these exact bytes, with
//! no optional feature and with every one, so a change to how the writer is
//! organised cannot change what it writes.
//! (The file with holes is found by `SEEK_DATA`/`SEEK_HOLE` in a temporary
//! file: on a filesystem without them, its holes would be data and the
//! digest would differ.)

mod common;

use sha2::{Digest, Sha256};

#[test]
fn the_varied_tree_gives_the_pinned_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, report) = common::write(&common::varied_tree(), dir.path(), &common::options());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, report.bytes);
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        (digest.as_str(), report.used_blocks, report.used_inodes),
        ("44529db550c19afb21064ddad39e0553e613bce2ecb703694300c47d542d9137", 650, 331),
        "the image's bytes changed"
    );
}

#[test]
fn the_varied_tree_with_every_feature_gives_the_pinned_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let options = rootfs_cache_ext4::ImageOptions { features: rootfs_cache_ext4::Features::EXT4, ..common::options() };
    let (path, report) = common::write(&common::varied_tree(), dir.path(), &options);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, report.bytes);
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        (digest.as_str(), report.used_blocks, report.used_inodes),
        ("5f72b31ded48a5a774580c784ed22b4b7c1bb5ae7e0ee102368230f2a2a11d2f", 1675, 331),
        "the image's bytes changed"
    );
}

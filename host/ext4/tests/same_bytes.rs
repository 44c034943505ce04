//! The writer's output is pinned: the same tree gives these exact bytes, with
//! no optional feature and with every one, so a change to how the writer is
//! organised cannot change what it writes.
//! (The file with holes is found by `SEEK_DATA`/`SEEK_HOLE` in a temporary
//! file: on a filesystem without them, its holes would be data and the
//! digest would differ.)

mod common;

use rootfs_cache_ext4::{Features, ImageOptions};
use sha2::{Digest, Sha256};

/// The varied tree's image with `features`: its SHA-256, used blocks and
/// used inodes.
fn written(features: Features) -> (String, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let options = ImageOptions { features, ..common::options() };
    let (path, report) = common::write(&common::varied_tree(), dir.path(), &options);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, report.bytes);
    let digest = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    (digest, report.used_blocks, report.used_inodes)
}

#[test]
fn the_varied_tree_gives_the_pinned_bytes() {
    let (digest, blocks, inodes) = written(Features::MINIMAL);
    assert_eq!(
        (digest.as_str(), blocks, inodes),
        ("44529db550c19afb21064ddad39e0553e613bce2ecb703694300c47d542d9137", 650, 331),
        "the image's bytes changed"
    );
}

#[test]
fn the_varied_tree_with_every_feature_gives_the_pinned_bytes() {
    let (digest, blocks, inodes) = written(Features::EXT4);
    assert_eq!(
        (digest.as_str(), blocks, inodes),
        ("5f72b31ded48a5a774580c784ed22b4b7c1bb5ae7e0ee102368230f2a2a11d2f", 1675, 331),
        "the image's bytes changed"
    );
}

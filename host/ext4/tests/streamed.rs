//! `write_image_streamed` says truthfully how much of the image is final:
//! reading each newly settled range as it is announced, and never again,
//! gives the finished image's bytes.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;

use rootfs_cache_ext4::{Features, FileData, ImageOptions, Kind, Tree, write_image_streamed};

/// The varied tree plus enough files in memory and on disk (more than a
/// mebibyte in each, across many directories) that the image settles in
/// many steps while the data are written.
fn tree_with_much_data() -> Tree {
    let mut tree = common::varied_tree();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for d in 0..20 {
        let dir = common::dir(&mut tree, Tree::ROOT, &format!("d{d:02}"));
        for f in 0..40 {
            let len = (next() % 12_000) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            common::file(&mut tree, dir, &format!("f{f:02}"), &bytes);
        }
        // A file read from another file (a spool), between the others.
        let spool = common::sparse_spool();
        common::node(
            &mut tree,
            dir,
            "spooled",
            Kind::File { size: common::SPARSE_LEN, data: FileData::Range { file: spool, offset: 100 } },
        );
    }
    tree
}

fn streamed_matches_the_image(features: Features) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.ext4");
    let out = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    let reader = File::open(&path).unwrap();
    let options = ImageOptions { features, ..common::options() };
    let mut streamed = Vec::new();
    let mut calls = Vec::new();
    let report = write_image_streamed(&tree_with_much_data(), &out, &options, &mut |below| {
        let from = streamed.len() as u64;
        assert!(below >= from, "settled went back from {from} to {below}");
        let mut bytes = vec![0u8; (below - from) as usize];
        reader.read_exact_at(&mut bytes, from).unwrap();
        streamed.extend_from_slice(&bytes);
        calls.push(below);
    })
    .unwrap();
    assert_eq!(calls.last(), Some(&report.bytes), "the last call is the image's length");
    assert!(calls.len() > 5, "the image settles in steps while the data are written: {calls:?}");
    let image = std::fs::read(&path).unwrap();
    assert_eq!(streamed.len(), image.len());
    assert!(streamed == image, "a settled byte was written again");
}

#[test]
fn what_is_announced_as_settled_is_never_written_again() {
    streamed_matches_the_image(Features::MINIMAL);
}

#[test]
fn what_is_announced_as_settled_is_never_written_again_with_every_feature() {
    streamed_matches_the_image(Features::EXT4);
}

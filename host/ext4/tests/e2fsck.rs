//! Images the writer makes are ones e2fsck finds nothing wrong with.

mod common;

use rootfs_cache_ext4::format::{BLOCKS_PER_GROUP, MAX_LINKS};
use rootfs_cache_ext4::xattr::XattrError;
use rootfs_cache_ext4::{ImageOptions, Kind, Meta, Tree, WriteError};

fn write_and_check(tree: &Tree, options: &ImageOptions) -> rootfs_cache_ext4::WriteReport {
    let dir = tempfile::tempdir().unwrap();
    let (path, report) = common::write(tree, dir.path(), options);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), report.bytes);
    common::e2fsck(&path);
    report
}

#[test]
fn an_empty_tree_is_a_clean_filesystem() {
    let report = write_and_check(&Tree::new(Meta::default()), &common::options());
    // The root and lost+found are the only inodes past the reserved ten.
    assert_eq!(report.used_inodes, 11);
}

#[test]
fn the_varied_tree_is_a_clean_filesystem() {
    write_and_check(&common::varied_tree(), &common::options());
}

#[test]
fn a_tree_spanning_several_block_groups_is_a_clean_filesystem() {
    let mut tree = common::varied_tree();
    // More inodes than one group holds, in directories of their own.
    for d in 0..10 {
        let dir = common::dir(&mut tree, Tree::ROOT, &format!("d{d}"));
        for f in 0..900 {
            common::node(&mut tree, dir, &format!("f{f}"), Kind::Fifo);
        }
    }
    // A file longer than a group.
    let group_bytes = (BLOCKS_PER_GROUP * 4096) as usize;
    common::file(&mut tree, Tree::ROOT, "longer-than-a-group", &vec![0x5a; group_bytes + 4096 * 3]);
    let options = ImageOptions { size: Some(600 << 20), ..common::options() };
    let report = write_and_check(&tree, &options);
    assert_eq!(report.bytes, 600 << 20);
    assert!(report.used_blocks > BLOCKS_PER_GROUP, "{report:?}");
}

#[test]
fn a_hardlink_group_past_ext4s_limit_is_split_into_copies() {
    let mut tree = Tree::new(Meta::default());
    let links = common::dir(&mut tree, Tree::ROOT, "links");
    let target = common::file(&mut tree, links, "l00000", b"shared\n");
    for i in 1..MAX_LINKS + 10 {
        tree.link(links, format!("l{i:05}").into_bytes(), target);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::fs::File::create(dir.path().join("refused.ext4")).unwrap();
    let refused = rootfs_cache_ext4::write_image(&tree, &out, &common::options()).unwrap_err();
    assert!(matches!(refused, WriteError::Unsupported(_)), "{refused}");
    assert!(refused.to_string().contains("65000 links"), "{refused}");

    assert_eq!(tree.split_link_groups(MAX_LINKS), 1, "65,009 names: one copy takes the last nine");
    let report = write_and_check(&tree, &common::options());
    // lost+found, the directory, the file and its copy, past the reserved ten.
    assert_eq!(report.used_inodes, 14);
}

#[test]
fn attributes_too_large_for_the_inode_and_a_block_are_refused_naming_the_file() {
    let mut tree = common::varied_tree();
    let var = tree.lookup(Tree::ROOT, b"var").unwrap();
    let big = common::file(&mut tree, var, "too-many-attributes", b"z");
    tree.node_mut(big).meta.xattrs = (0..3).map(|i| (format!("user.v{i}").into_bytes(), vec![b'v'; 2000])).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused.ext4");
    let out = std::fs::File::create(&path).unwrap();
    let err = rootfs_cache_ext4::write_image(&tree, &out, &common::options()).unwrap_err();
    match &err {
        WriteError::Xattrs { path, source: XattrError::TooLarge(bytes) } => {
            assert_eq!(path, "/var/too-many-attributes");
            assert!(*bytes > 6000, "{bytes}");
        }
        other => panic!("expected WriteError::Xattrs, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.starts_with("cannot store the extended attributes of /var/too-many-attributes: ")
            && message.ends_with("do not fit in the inode and one 4096-byte block"),
        "{message}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "nothing is written before the plan is whole");
}

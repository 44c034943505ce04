//! Trees of many entries and little data (issue 12): the size from the
//! content gives them enough groups for their inodes, and a size asked for
//! that is too small for them says which size is not.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use rootfs_cache_ext4::layout::MAX_INODES;
use rootfs_cache_ext4::{Features, ImageOptions, Meta, Tree, WriteError};

/// The options of each layout: the old one, and `flex_bg` with 64-byte
/// descriptors (with a journal; directory checksums are another branch's,
/// so not `metadata_csum`, which does not change the layout).
fn layouts() -> [ImageOptions; 2] {
    let flex = Features { metadata_csum: false, dir_index: false, ..Features::EXT4 };
    [common::options(), ImageOptions { features: flex, ..common::options() }]
}

/// `s_inodes_count` of the image at `path`.
fn inodes_count(path: &Path) -> u64 {
    let mut bytes = [0u8; 4];
    std::fs::File::open(path).unwrap().read_exact_at(&mut bytes, 1024).unwrap();
    u64::from(u32::from_le_bytes(bytes))
}

/// `files` empty files spread over `dirs` directories.
fn empty_files(dirs: usize, files: usize) -> Tree {
    let mut tree = Tree::new(Meta::default());
    for d in 0..dirs {
        let dir = common::dir(&mut tree, Tree::ROOT, &format!("d{d:03}"));
        for f in 0..files / dirs {
            common::file(&mut tree, dir, &format!("f{f:05}"), b"");
        }
    }
    tree
}

/// Writes `tree`, checks it with e2fsck and that it has the headroom's free
/// inodes.
fn write_and_check(tree: &Tree, options: &ImageOptions) {
    let dir = tempfile::tempdir().unwrap();
    let (path, report) = common::write(tree, dir.path(), options);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), report.bytes);
    let h = options.headroom;
    let free = (report.used_inodes * u64::from(h.free_inodes_percent) / 100).max(u64::from(h.min_free_inodes));
    let count = inodes_count(&path);
    assert!(count >= report.used_inodes + free, "{count} inodes for {report:?}");
    common::e2fsck(&path);
}

#[test]
fn a_hundred_thousand_empty_files_fit_the_size_from_the_content() {
    let tree = empty_files(100, 100_000);
    for options in layouts() {
        write_and_check(&tree, &options);
    }
}

#[test]
fn one_directory_of_thirty_thousand_entries_fits_the_size_from_the_content() {
    let tree = empty_files(1, 30_000);
    for options in layouts() {
        write_and_check(&tree, &options);
    }
}

#[test]
fn a_size_too_small_for_the_inodes_names_one_that_holds_them() {
    let tree = empty_files(10, 40_000);
    for options in layouts() {
        a_size_too_small_names_one_that_holds_them(&tree, &options);
    }
}

fn a_size_too_small_names_one_that_holds_them(tree: &Tree, options: &ImageOptions) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused.ext4");
    let out = std::fs::File::create(&path).unwrap();
    let small = ImageOptions { size: Some(64 << 20), ..options.clone() };
    let err = rootfs_cache_ext4::write_image(tree, &out, &small).unwrap_err();
    let WriteError::DoesNotFit { needed, size } = err else { panic!("expected DoesNotFit, got {err:?}") };
    assert_eq!(size, 64 << 20);
    assert!(needed > size, "{needed}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "nothing is written");

    let options = ImageOptions { size: Some(needed), ..options.clone() };
    let dir = tempfile::tempdir().unwrap();
    let (path, report) = common::write(tree, dir.path(), &options);
    assert_eq!(report.bytes, needed);
    assert!(inodes_count(&path) >= report.used_inodes);
    common::e2fsck(&path);
}

#[test]
fn an_image_past_max_bytes_for_its_inodes_is_refused_before_anything_is_written() {
    let tree = empty_files(10, 40_000);
    for options in layouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refused.ext4");
        let out = std::fs::File::create(&path).unwrap();
        let options = ImageOptions { max_bytes: Some(64 << 20), ..options };
        let err = rootfs_cache_ext4::write_image(&tree, &out, &options).unwrap_err();
        let WriteError::TooLarge { needed, max } = err else { panic!("expected TooLarge, got {err:?}") };
        assert_eq!(max, 64 << 20);
        assert!(needed > 128 << 20, "40,000 inodes need a second group: {needed}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "nothing is written");
    }
}

#[test]
fn the_inode_limit_is_named_in_the_error() {
    let err = WriteError::from(rootfs_cache_ext4::layout::LayoutError::TooManyInodes {
        inodes: MAX_INODES + 1,
        max: MAX_INODES,
    });
    assert!(matches!(err, WriteError::TooManyInodes { max: MAX_INODES, .. }));
    assert_eq!(err.to_string(), "the content needs 4292870145 inodes, more than the 4292870144 an ext4 image holds");
}

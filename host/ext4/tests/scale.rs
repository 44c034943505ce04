//! Limits of scale (issue 12): a directory of 100,000 entries, a 5 GiB
//! sparse file, names of 255 bytes, paths of 4,000 bytes, all in images of
//! the default profile (with a journal) that `e2fsck -fn` passes; and what
//! ext4 cannot hold (a 256-byte name, attributes past the inode and a block)
//! refused with an error that names the path.

mod common;

use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use rootfs_cache_ext4::format::{MAX_FILE_BYTES, MAX_NAME_LEN};
use rootfs_cache_ext4::xattr::XattrError;
use rootfs_cache_ext4::{Features, FileData, ImageOptions, Kind, Meta, Tree, WriteError, WriteReport};

/// The default profile's options: a journal.
fn journaled() -> ImageOptions {
    ImageOptions { features: Features::EXT4, ..common::options() }
}

/// Writes `tree` with the default profile and checks it with e2fsck.
fn write_and_check(tree: &Tree) -> (tempfile::TempDir, std::path::PathBuf, WriteReport) {
    let dir = tempfile::tempdir().unwrap();
    let (path, report) = common::write(tree, dir.path(), &journaled());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), report.bytes);
    common::e2fsck(&path);
    (dir, path, report)
}

/// The `Size:` debugfs's `stat` gives for `path` in `image`.
fn size_of(image: &Path, path: &str) -> Option<u64> {
    let stat = common::debugfs(image, &format!("stat \"{path}\""))?;
    let size = stat.split_whitespace().skip_while(|w| *w != "Size:").nth(1);
    Some(size.unwrap_or_else(|| panic!("no size in {stat}")).parse().unwrap())
}

/// Writes `tree` into a new file and returns the error, having checked
/// that nothing was written.
fn refused(tree: &Tree) -> WriteError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused.ext4");
    let out = std::fs::File::create(&path).unwrap();
    let err = rootfs_cache_ext4::write_image(tree, &out, &journaled()).unwrap_err();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "nothing is written");
    err
}

#[test]
fn one_directory_of_a_hundred_thousand_entries() {
    let mut tree = Tree::new(Meta::default());
    let dir = common::dir(&mut tree, Tree::ROOT, "many");
    for i in 0..100_000u32 {
        let name = format!("entry-{i:06}");
        if i % 2 == 0 {
            common::file(&mut tree, dir, &name, b"");
        } else {
            common::node(&mut tree, dir, &name, Kind::Fifo);
        }
    }
    let (_dir, path, report) = write_and_check(&tree);
    // lost+found, the directory and its entries, past the ten reserved
    // (the root among them).
    assert_eq!(report.used_inodes, 10 + 2 + 100_000, "{report:?}");
    if let Some(out) = common::debugfs(&path, "stat /many/entry-099999") {
        assert!(out.contains("Type: FIFO"), "{out}");
    }
    // Hashed (dir_index): a root over 491 leaves, every name in one, and
    // (metadata_csum) every index block's checksum the one debugfs expects.
    if let Some(out) = common::debugfs(&path, "stat /many") {
        assert!(out.contains("Flags: 0x81000"), "indexed and extents: {out}");
    }
    if let Some(out) = common::debugfs(&path, "htree /many") {
        assert!(out.contains("Indirect levels: 0"), "{out}");
        assert!(!out.contains("EXPECTED"), "{out}");
        assert_eq!(out.matches("Reading directory block").count(), 491);
        let names = out.split_whitespace().filter(|w| w.starts_with("entry-")).count();
        assert_eq!(names, 100_000);
    }
}

#[test]
fn a_five_gib_sparse_file_stays_sparse_at_its_exact_size() {
    const SIZE: u64 = 5 << 30;
    // 100 bytes of something else first: the file's content starts at 100.
    let mut spool = tempfile::tempfile().unwrap();
    spool.write_all(&[0xee; 100]).unwrap();
    spool.set_len(100 + SIZE).unwrap();
    let pieces: [(u64, &[u8]); 3] = [(0, b"head of the file"), (SIZE / 2 + 1234, b"the middle"), (SIZE - 4, b"tail")];
    for (at, bytes) in pieces {
        spool.write_all_at(bytes, 100 + at).unwrap();
    }
    let mut tree = Tree::new(Meta::default());
    let var = common::dir(&mut tree, Tree::ROOT, "var");
    let kind = Kind::File { size: SIZE, data: FileData::Range { file: Arc::new(spool), offset: 100 } };
    common::node(&mut tree, var, "sparse", kind);
    let (_dir, path, report) = write_and_check(&tree);

    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.blocks() * 512 < 256 << 20, "a 5 GiB sparse file uses {} bytes of disk", meta.blocks() * 512);
    assert!(report.bytes < 1 << 30, "{report:?}");
    let Some(size) = size_of(&path, "/var/sparse") else { return };
    assert_eq!(size, SIZE);
    // Each piece is where the file's block map says.
    let image = std::fs::File::open(&path).unwrap();
    for (at, bytes) in pieces {
        let out = common::debugfs(&path, &format!("bmap /var/sparse {}", at / 4096)).unwrap();
        let block: u64 = out.trim().parse().unwrap_or_else(|_| panic!("bmap: {out}"));
        assert_ne!(block, 0, "logical block {} is a hole", at / 4096);
        let mut read = vec![0u8; bytes.len()];
        image.read_exact_at(&mut read, block * 4096 + at % 4096).unwrap();
        assert_eq!(read, bytes, "at {at}");
    }
    // A block between the pieces is a hole.
    let out = common::debugfs(&path, &format!("bmap /var/sparse {}", SIZE / 4 / 4096)).unwrap();
    assert_eq!(out.trim(), "0", "a hole");
}

#[test]
fn the_largest_file_ext4_holds_is_written_and_one_byte_more_is_refused_naming_the_path() {
    // 2^32 − 1 blocks: a sparse spool of that length, its last bytes data.
    let spool = tempfile::tempfile().unwrap();
    spool.set_len(MAX_FILE_BYTES).unwrap();
    spool.write_all_at(b"end", MAX_FILE_BYTES - 3).unwrap();
    let spool = Arc::new(spool);
    let mut tree = Tree::new(Meta::default());
    let kind = Kind::File { size: MAX_FILE_BYTES, data: FileData::Range { file: spool.clone(), offset: 0 } };
    common::node(&mut tree, Tree::ROOT, "largest", kind);
    let (_dir, path, _) = write_and_check(&tree);
    if let Some(size) = size_of(&path, "/largest") {
        assert_eq!(size, MAX_FILE_BYTES);
    }

    let mut tree = Tree::new(Meta::default());
    let dir = common::dir(&mut tree, Tree::ROOT, "srv");
    let kind = Kind::File { size: MAX_FILE_BYTES + 1, data: FileData::Range { file: spool, offset: 0 } };
    common::node(&mut tree, dir, "too-large", kind);
    match refused(&tree) {
        WriteError::Unsupported(message) => {
            assert!(message.starts_with("/srv/too-large: "), "{message}");
            assert!(message.contains(&MAX_FILE_BYTES.to_string()), "{message}");
        }
        other => panic!("not unsupported: {other:?}"),
    }
}

#[test]
fn names_of_255_bytes_work_and_256_is_refused_naming_the_path() {
    let long = |c: char| c.to_string().repeat(MAX_NAME_LEN);
    let mut tree = Tree::new(Meta::default());
    let dir = common::dir(&mut tree, Tree::ROOT, &long('d'));
    common::file(&mut tree, dir, &long('f'), b"in a directory of a long name\n");
    common::dir(&mut tree, dir, &long('e'));
    common::node(&mut tree, Tree::ROOT, &long('s'), Kind::Symlink(long('t').into_bytes()));
    let (_dir, path, _) = write_and_check(&tree);
    let file = format!("/{}/{}", long('d'), long('f'));
    if let Some(size) = size_of(&path, &file) {
        assert_eq!(size, 30);
    }

    let mut tree = Tree::new(Meta::default());
    let dir = common::dir(&mut tree, Tree::ROOT, "etc");
    common::file(&mut tree, dir, &"n".repeat(MAX_NAME_LEN + 1), b"");
    let err = refused(&tree);
    assert!(matches!(err, WriteError::Unsupported(_)), "{err:?}");
    assert_eq!(err.to_string(), format!("/etc/{}: a name of 256 bytes is longer than ext4's 255", "n".repeat(256)));

    let mut tree = Tree::new(Meta::default());
    common::dir(&mut tree, Tree::ROOT, &"d".repeat(MAX_NAME_LEN + 1));
    let err = refused(&tree);
    assert!(err.to_string().starts_with(&format!("/{}: a name of 256 bytes", "d".repeat(256))), "{err}");
}

#[test]
fn paths_nested_to_four_thousand_bytes_work() {
    let mut tree = Tree::new(Meta::default());
    let mut dir = Tree::ROOT;
    let mut path = String::new();
    // 399 levels of "/level-NNN" (10 bytes each) and a file.
    for i in 0..399 {
        let name = format!("level-{i:03}");
        dir = common::dir(&mut tree, dir, &name);
        path = format!("{path}/{name}");
    }
    common::file(&mut tree, dir, "the-bottom", b"deep\n");
    path.push_str("/the-bottom");
    assert!(path.len() > 4000 && path.len() < 4096, "{}", path.len());
    let (_dir, image, _) = write_and_check(&tree);
    if let Some(size) = size_of(&image, &path) {
        assert_eq!(size, 5);
    }
}

#[test]
fn attributes_past_the_inode_and_a_block_are_refused_naming_the_path() {
    let mut tree = Tree::new(Meta::default());
    let etc = common::dir(&mut tree, Tree::ROOT, "etc");
    let big = common::file(&mut tree, etc, "attributes", b"");
    tree.node_mut(big).meta.xattrs = (0..5).map(|i| (format!("user.a{i}").into_bytes(), vec![b'v'; 1000])).collect();
    let err = refused(&tree);
    let WriteError::Xattrs { path, source: XattrError::TooLarge(_) } = &err else {
        panic!("expected WriteError::Xattrs, got {err:?}")
    };
    assert_eq!(path, "/etc/attributes");
    assert!(err.to_string().starts_with("cannot store the extended attributes of /etc/attributes: "), "{err}");

    // Just under a block: they fit.
    tree.node_mut(big).meta.xattrs = (0..3).map(|i| (format!("user.a{i}").into_bytes(), vec![b'v'; 1000])).collect();
    write_and_check(&tree);
}

#[test]
fn a_symlink_target_of_a_block_is_refused_naming_the_path() {
    let mut tree = Tree::new(Meta::default());
    let bin = common::dir(&mut tree, Tree::ROOT, "bin");
    common::node(&mut tree, bin, "fits", Kind::Symlink(vec![b'a'; 4095]));
    write_and_check(&tree);
    common::node(&mut tree, bin, "too-long", Kind::Symlink(vec![b'a'; 4096]));
    let err = refused(&tree);
    assert!(matches!(err, WriteError::Unsupported(_)), "{err:?}");
    assert_eq!(err.to_string(), "/bin/too-long: a symlink target of 4096 bytes, and ext4 holds at most 4095");
}

//! The journal: images with one are clean filesystems with `has_journal`, a
//! journal of the size `mke2fs` gives, that the kernel mounts without
//! recovery, writes through and leaves clean.

mod common;

use std::path::Path;
use std::process::Command;

use rootfs_cache_ext4::{Features, ImageOptions, Meta, Tree};

fn journaled() -> ImageOptions {
    ImageOptions { features: Features { journal: true, ..Features::MINIMAL }, ..common::options() }
}

/// `dumpe2fs -h`'s answer for `field` (e.g. `Journal size`).
fn dumpe2fs(image: &Path, field: &str) -> Option<String> {
    let out = Command::new("dumpe2fs").arg("-h").arg(image).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_owned()))
}

fn write(tree: &Tree, options: &ImageOptions) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (path, report) = common::write(tree, dir.path(), options);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), report.bytes);
    (dir, path)
}

#[test]
fn a_journaled_image_is_clean_and_says_so() {
    let (_dir, image) = write(&common::varied_tree(), &journaled());
    if !common::e2fsck(&image) {
        return;
    }
    let features = dumpe2fs(&image, "Filesystem features").expect("dumpe2fs reads the superblock");
    assert!(features.split_whitespace().any(|f| f == "has_journal"), "{features}");
    assert!(!features.contains("needs_recovery"), "{features}");
    assert_eq!(dumpe2fs(&image, "Journal inode").as_deref(), Some("8"));
    // An image sized from a small tree gets the smallest journal: 4 MiB.
    assert_eq!(dumpe2fs(&image, "Total journal size").as_deref(), Some("4096k"));
    assert_eq!(dumpe2fs(&image, "Journal sequence").as_deref(), Some("0x00000001"));
    assert_eq!(dumpe2fs(&image, "Journal start").as_deref(), Some("0"));
}

#[test]
fn the_journal_is_sized_as_mke2fs_sizes_it() {
    let cases = [
        // (image size, journal size as dumpe2fs says it)
        (600u64 << 20, Some("16M")),
        (2u64 << 30, Some("64M")),
        (100 << 20, Some("4096k")),
        // Below 8 MiB mke2fs makes no journal, and neither do we.
        (4 << 20, None),
    ];
    for (size, expected) in cases {
        let (_dir, image) = write(&Tree::new(Meta::default()), &ImageOptions { size: Some(size), ..journaled() });
        if !common::e2fsck(&image) {
            return;
        }
        assert_eq!(dumpe2fs(&image, "Total journal size").as_deref(), expected, "an image of {size} bytes");
    }
}

#[test]
fn a_journaled_image_is_reproducible_and_minimal_is_unchanged() {
    let tree = common::varied_tree();
    let digest = |options: &ImageOptions| {
        let (_dir, image) = write(&tree, options);
        std::fs::read(image).unwrap()
    };
    assert!(digest(&journaled()) == digest(&journaled()), "two journaled images of one tree differ");
    assert!(digest(&journaled()) != digest(&common::options()), "the journal changed nothing");
}

/// The kernel mounts a journaled image read-write without recovery, writes
/// through the journal, and leaves the image clean after unmounting.
#[test]
fn the_kernel_mounts_writes_and_leaves_a_journaled_image_clean() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI is set but the test does not run as root");
        println!("SKIPPED: mounting an image needs root");
        return;
    }
    let (dir, image) = write(&common::varied_tree(), &journaled());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let status = Command::new("mount").arg("-o").arg("loop,rw").arg(&image).arg(&mnt).status().unwrap();
    assert!(status.success(), "mount -o loop,rw failed");
    let written = (|| -> std::io::Result<()> {
        std::fs::write(mnt.join("written-in-the-vm"), b"hello\n")?;
        std::fs::create_dir(mnt.join("a-new-dir"))?;
        std::fs::rename(mnt.join("written-in-the-vm"), mnt.join("a-new-dir/moved"))?;
        std::fs::File::open(mnt.join("a-new-dir/moved"))?.sync_all()
    })();
    let umount = Command::new("umount").arg(&mnt).status().unwrap();
    written.unwrap();
    assert!(umount.success(), "umount failed");
    common::e2fsck(&image);
    let features = dumpe2fs(&image, "Filesystem features").unwrap();
    assert!(!features.contains("needs_recovery"), "{features}");
}

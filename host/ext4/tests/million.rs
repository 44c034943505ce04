//! A million files (issue 12): 1,000,000 small files in 1,000 directories
//! of 1,000, written with every feature of the default profile, sized from
//! the content; `e2fsck -fn` finds nothing, and the kernel sees every file.
//! The files' bytes come from memory, so the test costs the writer and the
//! checks, not a million files on disk first (the benchmark
//! `cargo bench -p rootfs-cache-tests --bench scale` converts such a tree
//! from disk).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rootfs_cache_ext4::{Features, FileData, ImageOptions, Kind, Meta, Node, Tree};

const DIRS: usize = 1000;
const FILES_PER_DIR: usize = 1000;

/// The contents of file `i`: 1 to 64 bytes naming it, so each is checkable.
fn contents(i: usize) -> Vec<u8> {
    let mut bytes = format!("file {i}\n").into_bytes();
    bytes.resize(1 + i % 64, b'.');
    bytes
}

fn million() -> Tree {
    let mut tree = Tree::new(Meta { perm: 0o755, ..Meta::default() });
    for d in 0..DIRS {
        let dir = common::dir(&mut tree, Tree::ROOT, &format!("d{d:03}"));
        for f in 0..FILES_PER_DIR {
            let bytes = contents(d * FILES_PER_DIR + f);
            let kind = Kind::File { size: bytes.len() as u64, data: FileData::Bytes(Arc::new(bytes)) };
            tree.add(
                dir,
                format!("file-{f:04}").into_bytes(),
                Node { meta: Meta { perm: 0o644, ..Meta::default() }, kind },
            );
        }
    }
    tree
}

/// Whether the kernel sees `DIRS × FILES_PER_DIR` files with the right bytes
/// in a sample, through a read-only loop mount. `None` without root.
fn kernel_view(image: &Path) -> Option<(usize, Vec<String>)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        println!("SKIPPED: mounting needs root");
        return None;
    }
    let mnt = tempfile::tempdir().unwrap();
    let status = Command::new("mount").args(["-o", "ro,loop"]).arg(image).arg(mnt.path()).status().unwrap();
    assert!(status.success(), "mount failed");
    let mut count = 0;
    let mut wrong = Vec::new();
    for d in 0..DIRS {
        let dir = mnt.path().join(format!("d{d:03}"));
        count += std::fs::read_dir(&dir).unwrap().count();
        // A sample: every 97th file's bytes, found by exact lookup.
        for f in (d % 97..FILES_PER_DIR).step_by(97) {
            let got = std::fs::read(dir.join(format!("file-{f:04}"))).unwrap();
            if got != contents(d * FILES_PER_DIR + f) {
                wrong.push(format!("d{d:03}/file-{f:04}"));
            }
        }
    }
    let status = Command::new("umount").arg(mnt.path()).status().unwrap();
    assert!(status.success(), "umount failed");
    Some((count, wrong))
}

#[test]
fn a_million_small_files_make_a_clean_image_the_kernel_reads() {
    let tree = million();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let options = ImageOptions { features: Features::EXT4, ..common::options() };
    let (path, report) = common::write(&tree, dir.path(), &options);
    // The ten reserved inodes (the root is inode 2), lost+found (11), then
    // 1,000 directories and 1,000,000 files.
    assert_eq!(report.used_inodes, 11 + DIRS as u64 + (DIRS * FILES_PER_DIR) as u64);
    common::e2fsck(&path);
    if let Some((count, wrong)) = kernel_view(&path) {
        assert_eq!(count, DIRS * FILES_PER_DIR);
        assert!(wrong.is_empty(), "files read back wrong: {wrong:?}");
    }
}

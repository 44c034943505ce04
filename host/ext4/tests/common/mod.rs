//! Trees and helpers the image tests share.

#![allow(dead_code, reason = "each test file uses some of the helpers")]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rootfs_cache_ext4::{
    Features, FileData, Headroom, ImageOptions, Kind, Meta, Node, NodeId, Reflink, Timestamp, Tree, WriteReport,
};

/// Metadata with a mode, an owner and a time with nanoseconds.
pub fn meta(perm: u32, uid: u32, secs: i64) -> Meta {
    Meta { perm, uid, gid: uid + 1, mtime: Timestamp { secs, nanos: 123_456_789 }, xattrs: Vec::new() }
}

pub fn dir(tree: &mut Tree, parent: NodeId, name: &str) -> NodeId {
    tree.add(parent, name.into(), Node { meta: meta(0o755, 0, 1_700_000_000), kind: Kind::Dir(BTreeMap::new()) })
}

pub fn file(tree: &mut Tree, parent: NodeId, name: &str, bytes: &[u8]) -> NodeId {
    let kind = Kind::File { size: bytes.len() as u64, data: FileData::Bytes(Arc::new(bytes.to_vec())) };
    tree.add(parent, name.into(), Node { meta: meta(0o644, 1000, 1_700_000_001), kind })
}

pub fn node(tree: &mut Tree, parent: NodeId, name: &str, kind: Kind) -> NodeId {
    tree.add(parent, name.into(), Node { meta: meta(0o600, 0, 1_700_000_002), kind })
}

/// A spool file whose content has holes: data at the start, in a few runs
/// further on (so the file needs more than the four extents an inode holds),
/// and at the end.
pub fn sparse_spool() -> Arc<File> {
    let mut spool = tempfile::tempfile().unwrap();
    // 100 bytes of something else first: the file's content starts at 100.
    spool.write_all(&[0xee; 100]).unwrap();
    for i in 0..7u64 {
        spool.write_all_at(&[b'a' + i as u8; 5000], 100 + i * (1 << 20)).unwrap();
    }
    spool.set_len(100 + (7 << 20) + 10).unwrap();
    spool.write_all_at(b"tail", 100 + (7 << 20) + 6).unwrap();
    Arc::new(spool)
}

/// The length of the content [`sparse_spool`] holds, from offset 100.
pub const SPARSE_LEN: u64 = (7 << 20) + 10;

/// A tree with some of everything the writer handles: nested directories,
/// files in memory and with holes, a hardlink group, short and long
/// symlinks, devices, a FIFO and a socket, extended attributes inside the
/// inode and in a block, and a directory of 300 entries spanning several
/// blocks.
pub fn varied_tree() -> Tree {
    let mut root = meta(0o755, 0, 1_600_000_000);
    root.xattrs.push((b"user.root".to_vec(), b"yes".to_vec()));
    let mut t = Tree::new(root);
    let etc = dir(&mut t, Tree::ROOT, "etc");
    file(&mut t, etc, "hostname", b"rootfs\n");
    file(&mut t, etc, "empty", b"");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let passwd = file(&mut t, etc, "passwd", &big);
    t.link(etc, b"passwd-".to_vec(), passwd);
    let bin = dir(&mut t, Tree::ROOT, "bin");
    t.link(bin, b"passwd-link".to_vec(), passwd);
    let suid = file(&mut t, bin, "su", b"#!/bin/sh\n");
    t.node_mut(suid).meta.perm = 0o4755;
    node(&mut t, bin, "sh", Kind::Symlink(b"busybox".to_vec()));
    node(&mut t, bin, "long", Kind::Symlink([b"../".repeat(30), b"usr/bin/target".to_vec()].concat()));
    let dev = dir(&mut t, Tree::ROOT, "dev");
    node(&mut t, dev, "null", Kind::CharDevice(rustix::fs::makedev(1, 3)));
    node(&mut t, dev, "sda", Kind::BlockDevice(rustix::fs::makedev(8, 0)));
    node(&mut t, dev, "big-minor", Kind::CharDevice(rustix::fs::makedev(300, 70_000)));
    node(&mut t, dev, "fifo", Kind::Fifo);
    node(&mut t, dev, "socket", Kind::Socket);
    let var = dir(&mut t, Tree::ROOT, "var");
    let holes = Kind::File { size: SPARSE_LEN, data: FileData::Range { file: sparse_spool(), offset: 100 } };
    node(&mut t, var, "holes", holes);
    let small = file(&mut t, var, "xattr-inline", b"x");
    t.node_mut(small).meta.xattrs = vec![
        (b"user.a".to_vec(), b"1".to_vec()),
        (b"security.selinux".to_vec(), b"system_u:object_r:etc_t:s0\0".to_vec()),
    ];
    let large = file(&mut t, var, "xattr-block", b"y");
    t.node_mut(large).meta.xattrs =
        vec![(b"user.big".to_vec(), vec![b'v'; 1500]), (b"trusted.other".to_vec(), vec![b'w'; 300])];
    let many = dir(&mut t, Tree::ROOT, "many");
    for i in 0..300 {
        let name = format!("entry-{i:04}-with-a-name-long-enough-to-fill-blocks");
        file(&mut t, many, &name, format!("{i}\n").as_bytes());
    }
    dir(&mut t, many, "sub");
    t
}

/// Options that make the image a function of the tree alone.
pub fn options() -> ImageOptions {
    ImageOptions {
        size: None,
        headroom: Headroom::default(),
        uuid: *b"rootfs-cache-ext",
        hash_seed: *b"hash-seed-012345",
        label: "test".into(),
        max_bytes: None,
        features: Features::MINIMAL,
        reflink: Reflink::Auto,
    }
}

/// Writes `tree` into a new file in `dir`.
pub fn write(tree: &Tree, dir: &Path, options: &ImageOptions) -> (std::path::PathBuf, WriteReport) {
    let path = dir.join("image.ext4");
    let out = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
    let report = rootfs_cache_ext4::write_image(tree, &out, options).unwrap();
    (path, report)
}

/// Runs `e2fsck -fn` on `image` and fails the test on any complaint. Returns
/// false, having said why, when e2fsck is not installed (outside CI only).
pub fn e2fsck(image: &Path) -> bool {
    let output = match Command::new("e2fsck").arg("-fn").arg(image).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(std::env::var_os("CI").is_none(), "CI is set but e2fsck is not installed");
            println!("SKIPPED: e2fsck not installed");
            return false;
        }
        Err(e) => panic!("running e2fsck: {e}"),
    };
    assert!(
        output.status.success(),
        "e2fsck -fn {} found problems:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

/// `debugfs -R request image`'s output, failing the test on any error it
/// prints. `None`, having said why, when debugfs is not installed (outside
/// CI only).
pub fn debugfs(image: &Path, request: &str) -> Option<String> {
    let output = match Command::new("debugfs").arg("-R").arg(request).arg(image).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(std::env::var_os("CI").is_none(), "CI is set but debugfs is not installed");
            println!("SKIPPED: debugfs not installed");
            return None;
        }
        Err(e) => panic!("running debugfs: {e}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("debugfs ")).collect();
    assert!(output.status.success() && complaints.is_empty(), "debugfs -R {request:?}: {stderr}");
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

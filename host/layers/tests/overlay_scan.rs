//! Reading an overlay mount's files in their layers gives the tree that
//! reading them through the mount gives (needs root: overlayfs, whiteouts,
//! `trusted.*` attributes).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use rootfs_cache_ext4::{FileData, Kind, Tree};
use rootfs_cache_layers::{overlay, scan};

fn is_root() -> bool {
    // `/proc/self` belongs to the effective user.
    rustix::fs::stat("/proc/self").is_ok_and(|st| st.st_uid == 0)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// A two-layer chain: `(top, lower)`.
fn chain(dir: &Path) -> (PathBuf, PathBuf) {
    let (top, lower) = (dir.join("top"), dir.join("lower"));
    write(&lower.join("etc/kept"), b"from the lower layer\n");
    write(&lower.join("etc/replaced"), b"old\n");
    write(&lower.join("etc/deleted"), b"gone\n");
    write(&lower.join("opt/hidden"), b"under an opaque directory\n");
    write(&lower.join("big/large.bin"), &vec![7u8; 200 << 10]);
    write(&lower.join("links/a"), b"two names\n");
    std::fs::hard_link(lower.join("links/a"), lower.join("links/b")).unwrap();
    let sparse = std::fs::File::create(lower.join("big/sparse")).unwrap();
    sparse.set_len(1 << 20).unwrap();
    write(&top.join("etc/replaced"), b"new\n");
    write(&top.join("etc/added"), b"from the top layer\n");
    std::fs::set_permissions(top.join("etc/added"), std::fs::Permissions::from_mode(0o750)).unwrap();
    set_xattr(&top.join("etc/added"), "user.note", b"kept");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        top.join("etc/deleted"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    write(&top.join("opt/new"), b"in the opaque directory\n");
    set_xattr(&top.join("opt"), "trusted.overlay.opaque", b"y");
    (top, lower)
}

/// Every entry, depth-first in name order: its path, its metadata and
/// what it holds (a file's bytes, wherever the tree says they are).
fn listing(tree: &Tree) -> Vec<String> {
    fn walk(tree: &Tree, dir: usize, prefix: &str, out: &mut Vec<String>) {
        for (name, id) in tree.entries(dir) {
            let path = format!("{prefix}/{}", String::from_utf8_lossy(name));
            let node = tree.node(id);
            let what = match &node.kind {
                Kind::File { size, data } => format!("file {size} {:?}", bytes(data, *size)),
                Kind::Dir(_) => "dir".into(),
                other => format!("{other:?}"),
            };
            out.push(format!("{path} {:?} {what}", node.meta));
            if node.is_dir() {
                walk(tree, id, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, Tree::ROOT, "", &mut out);
    out
}

fn bytes(data: &FileData, size: u64) -> Vec<u8> {
    match data {
        FileData::Bytes(bytes) => bytes.to_vec(),
        FileData::At { root, path, .. } => {
            let fd =
                rustix::fs::openat(root.as_fd(), path, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()).unwrap();
            let mut buf = vec![0u8; size as usize];
            let n = rustix::io::pread(&fd, &mut buf, 0).unwrap();
            buf.truncate(n);
            buf
        }
        FileData::Range { .. } => unreachable!("a scan names no spool"),
    }
}

fn mount(top: &Path, lower: &Path) -> Arc<OwnedFd> {
    Arc::new(overlay::mount(&[top.to_path_buf(), lower.to_path_buf()], None).unwrap())
}

#[test]
fn files_read_in_their_layers_give_the_tree_read_through_the_mount() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but the test needs root");
        println!("SKIPPED: needs root (overlayfs)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (top, lower) = chain(dir.path());
    let cancel = AtomicBool::new(false);
    let through_mount = scan::scan(mount(&top, &lower), &cancel).unwrap();
    let root = mount(&top, &lower);
    let in_layers = scan::scan_overlay(root.clone(), &[top.clone(), lower.clone()], &cancel).unwrap();
    let expected = listing(&through_mount);
    assert_eq!(listing(&in_layers), expected);
    let text = expected.join("\n");
    for absent in ["/etc/deleted", "/opt/hidden"] {
        assert!(!text.contains(absent), "{absent} is hidden by the top layer:\n{text}");
    }

    // What the writer reads later is named in its layer, not in the mount;
    // the two names of a hardlinked file are one node, as through the mount.
    let big = in_layers.resolve_dir(b"/big").unwrap();
    let large = in_layers.lookup(big, b"large.bin").unwrap();
    match &in_layers.node(large).kind {
        Kind::File { data: FileData::At { root: at, .. }, .. } => assert!(!Arc::ptr_eq(at, &root)),
        other => panic!("a 200 KiB file is left for the writer: {other:?}"),
    }
    let links = in_layers.resolve_dir(b"/links").unwrap();
    assert_eq!(in_layers.lookup(links, b"a"), in_layers.lookup(links, b"b"));
}

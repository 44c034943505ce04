//! Entry-by-entry comparison of two directory trees: a reference (the
//! kernel's overlay mount, `umoci unpack`) and a mounted image.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// What is compared for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `f`ile, `d`ir, `l`ink, `c`har, `b`lock, `p`ipe, `s`ocket.
    pub kind: char,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length for files, target length for symlinks.
    pub size: u64,
    /// SHA-256 of a file's content.
    pub digest: Option<String>,
    /// A symlink's target, raw.
    pub target: Option<Vec<u8>>,
    /// Device number.
    pub rdev: u64,
    /// Extended attributes (overlayfs's own excluded), sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// For files with other names: the first of them in sorted order.
    pub hardlink_group: Option<Vec<u8>>,
}

fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names) else { return Vec::new() };
    let mut out = Vec::new();
    for name in names[..n].split(|&c| c == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let c = std::ffi::CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(path, c.as_c_str(), &mut value) {
            value.truncate(len);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    out
}

fn digest(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every entry below `root` (and `root` itself as the empty path), keyed
/// by its path in bytes.
pub fn walk(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() { root.to_path_buf() } else { root.join(OsStr::from_bytes(&rel)) };
        // A name listed but absent on lookup (an overlayfs whiteout in a
        // directory of one layer) is not there.
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else if ft.is_socket() {
            's'
        } else {
            'f'
        };
        let mut hardlink_group = None;
        if kind == 'f' && meta.nlink() > 1 {
            hardlink_group = Some(groups.entry((meta.dev(), meta.ino())).or_insert_with(|| rel.clone()).clone());
        }
        out.insert(
            rel.clone(),
            Entry {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: if kind == 'd' { 0 } else { meta.size() },
                digest: (kind == 'f').then(|| digest(&path)),
                target: (kind == 'l').then(|| std::fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec()),
                rdev: if matches!(kind, 'c' | 'b') { meta.rdev() } else { 0 },
                xattrs: xattrs(&path),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                hardlink_group,
            },
        );
        if kind == 'd' {
            let mut children: Vec<Vec<u8>> =
                std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
            children.sort();
            // Reverse, so the stack pops them in sorted order and the first
            // name of every hardlink group is the smallest.
            for child in children.into_iter().rev() {
                let mut p = rel.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&child);
                stack.push(p);
            }
        }
    }
    // A group of one (its other names were deleted) is no group.
    let mut sizes: HashMap<Vec<u8>, usize> = HashMap::new();
    for e in out.values() {
        if let Some(g) = &e.hardlink_group {
            *sizes.entry(g.clone()).or_default() += 1;
        }
    }
    for e in out.values_mut() {
        if e.hardlink_group.as_ref().is_some_and(|g| sizes[g] < 2) {
            e.hardlink_group = None;
        }
    }
    out
}

/// Every difference between `reference` and `image`, one line each, with
/// paths in `ignore` (and below them) skipped on both sides.
pub fn differences(reference: &Path, image: &Path, ignore: &[&[u8]]) -> Vec<String> {
    let skip = |p: &[u8]| ignore.iter().any(|i| p == *i || (p.starts_with(i) && p.get(i.len()) == Some(&b'/')));
    let a = walk(reference);
    let b = walk(image);
    let mut diffs = Vec::new();
    let show = |p: &[u8]| format!("/{}", String::from_utf8_lossy(p));
    for (path, ra) in &a {
        if skip(path) {
            continue;
        }
        match b.get(path) {
            None => diffs.push(format!("{}: missing from the image", show(path))),
            Some(rb) if rb != ra => {
                let mut fields = Vec::new();
                if ra.kind != rb.kind {
                    fields.push(format!("type {} vs {}", ra.kind, rb.kind));
                }
                if ra.mode != rb.mode {
                    fields.push(format!("mode {:o} vs {:o}", ra.mode, rb.mode));
                }
                if (ra.uid, ra.gid) != (rb.uid, rb.gid) {
                    fields.push(format!("owner {}:{} vs {}:{}", ra.uid, ra.gid, rb.uid, rb.gid));
                }
                if ra.size != rb.size || ra.digest != rb.digest {
                    fields.push(format!("content {} bytes vs {} bytes", ra.size, rb.size));
                }
                if ra.target != rb.target {
                    fields.push("symlink target".into());
                }
                if ra.rdev != rb.rdev {
                    fields.push(format!("device {:x} vs {:x}", ra.rdev, rb.rdev));
                }
                if ra.xattrs != rb.xattrs {
                    let names = |x: &[(Vec<u8>, Vec<u8>)]| {
                        x.iter().map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>()
                    };
                    fields.push(format!("xattrs {:?} vs {:?}", names(&ra.xattrs), names(&rb.xattrs)));
                }
                if ra.mtime != rb.mtime {
                    fields.push(format!("mtime {}.{:09} vs {}.{:09}", ra.mtime.0, ra.mtime.1, rb.mtime.0, rb.mtime.1));
                }
                if ra.hardlink_group != rb.hardlink_group {
                    fields.push("hardlink group".into());
                }
                diffs.push(format!("{}: {}", show(path), fields.join(", ")));
            }
            Some(_) => {}
        }
    }
    for path in b.keys() {
        if !skip(path) && !a.contains_key(path) {
            diffs.push(format!("{}: only in the image", show(path)));
        }
    }
    diffs
}

/// What the image adds to the container's tree: lost+found, and the agent
/// where `/sbin` leads inside the tree (`/usr/sbin` on merged-usr systems),
/// or `/sbin` itself when the tree has none.
pub fn added_by_image(reference: &Path) -> Vec<Vec<u8>> {
    let mut sbin = b"sbin".to_vec();
    for _ in 0..8 {
        match std::fs::read_link(reference.join(String::from_utf8_lossy(&sbin).as_ref())) {
            Ok(target) => {
                let target = target.to_string_lossy().into_owned();
                sbin = match target.strip_prefix('/') {
                    Some(absolute) => absolute.as_bytes().to_vec(),
                    None => target.into_bytes(),
                };
            }
            Err(_) => break,
        }
    }
    if reference.join(String::from_utf8_lossy(&sbin).as_ref()).is_dir() {
        vec![b"lost+found".to_vec(), [sbin.as_slice(), b"/vm-agent"].concat()]
    } else {
        vec![b"lost+found".to_vec(), sbin]
    }
}

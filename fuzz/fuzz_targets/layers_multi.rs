//! One to three OCI layers built from the fuzz input, applied in order by the
//! OCI applier of `rootfs-cache-layers` (the exact converter's): files,
//! directories, symlinks and hardlinks over a small set of names, with
//! whiteouts (`.wh.<name>`), opaque markers (`.wh..wh..opq`) and hostile
//! names (`..`, absolute paths) among them, so that the layer rules meet each
//! other across layers. The applier never panics, never writes outside its
//! spool, and no whiteout or opaque marker ends up in the tree as a file.
#![no_main]

use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use libfuzzer_sys::fuzz_target;
use rootfs_cache_ext4::Tree;
use rootfs_cache_layers::LayerBlob;
use rootfs_cache_layers::oci_apply::Applier;
use sha2::{Digest, Sha256};

/// Paths the entries use, so that layers meet: parents and children,
/// and names that must be refused.
const NAMES: &[&str] =
    &["a", "b", "a/b", "a/c", "a/b/c", "d", "d/e", "d/e/f", "etc", "etc/passwd", "../x", "/abs", "a/../../y", "."];

/// Symlink targets: inside, relative out, absolute, through parents.
const TARGETS: &[&str] = &["a", "a/b", "../../..", "/etc", "d/e/f", "..", "b/../../z", ""];

/// Appends one entry to `tar`.
fn entry(tar: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
    header.set_size(data.len() as u64);
    // Raw names, as a hostile layer has them: `Builder::append_data` would
    // refuse `..` and absolute paths before the applier sees them.
    let name = path.as_bytes();
    if name.len() > 99 {
        return;
    }
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    if let Some(link) = link {
        let link = link.as_bytes();
        header.as_old_mut().linkname[..link.len().min(99)].copy_from_slice(&link[..link.len().min(99)]);
    }
    header.set_cksum();
    let _ = tar.append(&header, data);
}

/// The layers the input describes, three bytes per entry: what, which name,
/// and an argument (a target, contents). Operation 0 starts the next layer.
fn layers(data: &[u8]) -> Vec<Vec<u8>> {
    let mut done = Vec::new();
    let mut tar = tar::Builder::new(Vec::new());
    for op in data.chunks_exact(3) {
        let (what, name, arg) = (op[0] % 9, NAMES[op[1] as usize % NAMES.len()], op[2]);
        let dir_of = |name: &str| name.rsplit_once('/').map_or(String::new(), |(d, _)| format!("{d}/"));
        let base = |name: &str| name.rsplit_once('/').map_or(name.to_owned(), |(_, b)| b.to_owned());
        match what {
            0 if done.len() < 2 => {
                done.push(std::mem::replace(&mut tar, tar::Builder::new(Vec::new())).into_inner().unwrap_or_default())
            }
            0 => {}
            1 => entry(&mut tar, name, tar::EntryType::Regular, None, &vec![arg; usize::from(arg % 17)]),
            2 => entry(&mut tar, &format!("{name}/"), tar::EntryType::Directory, None, &[]),
            3 => entry(&mut tar, &format!("{}.wh.{}", dir_of(name), base(name)), tar::EntryType::Regular, None, &[]),
            4 => entry(&mut tar, &format!("{name}/.wh..wh..opq"), tar::EntryType::Regular, None, &[]),
            5 => {
                let target = TARGETS[usize::from(arg) % TARGETS.len()];
                entry(&mut tar, name, tar::EntryType::Symlink, Some(target), &[]);
            }
            6 => {
                let target = NAMES[usize::from(arg) % NAMES.len()];
                entry(&mut tar, name, tar::EntryType::Link, Some(target), &[]);
            }
            7 => entry(&mut tar, name, tar::EntryType::Fifo, None, &[]),
            _ => {
                // A whiteout of a whiteout, or a marker as a directory.
                let odd = if arg % 2 == 0 { ".wh..wh..wh.x" } else { ".wh..wh..opq/" };
                let kind = if odd.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular };
                entry(&mut tar, &format!("{}{odd}", dir_of(name)), kind, None, &[]);
            }
        }
    }
    done.push(tar.into_inner().unwrap_or_default());
    done
}

/// Every name in the tree below `dir`, with its depth bounded (a directory
/// cannot contain itself, but the bound costs nothing).
fn names(tree: &Tree, dir: rootfs_cache_ext4::NodeId, depth: usize, out: &mut Vec<Vec<u8>>) {
    if depth > 64 {
        return;
    }
    for (name, id) in tree.entries(dir) {
        out.push(name.clone());
        if tree.node(id).is_dir() {
            names(tree, id, depth + 1, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let tars = layers(data);
    let mut blobs = Vec::new();
    for (i, tar) in tars.iter().enumerate() {
        let path = dir.path().join(format!("layer{i}.tar"));
        std::fs::write(&path, tar).unwrap();
        let digest = format!("sha256:{}", Sha256::digest(tar).iter().map(|b| format!("{b:02x}")).collect::<String>());
        blobs.push(LayerBlob {
            path,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest,
            size: tar.len() as u64,
            diff_id: None,
        });
    }
    let applier = Applier::new(dir.path()).unwrap();
    if let Ok(tree) = applier.apply_all(&blobs, &AtomicBool::new(false)) {
        let mut all = Vec::new();
        names(&tree, Tree::ROOT, 0, &mut all);
        for name in &all {
            assert!(
                !name.starts_with(b".wh."),
                "a whiteout or opaque marker is in the tree: {:?}",
                String::from_utf8_lossy(name)
            );
            assert!(name != b".." && name != b"." && !name.contains(&b'/'), "a bad name is in the tree: {name:?}");
        }
    }
    // The spool is unnamed: only the blobs are in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), tars.len());
    for i in 0..3 {
        let _ = std::fs::remove_file(dir.path().join(format!("layer{i}.tar")));
    }
});

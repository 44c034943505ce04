//! Where an overlay2 chain's files really are: each regular file of the
//! merged tree pointed at the file in the topmost layer's `diff/` that
//! overlayfs shows, so that its blocks can be cloned into the image.
//!
//! A file read through the overlay mount cannot be cloned: the mount is
//! another filesystem than the image's (`EXDEV`). The file overlayfs shows
//! is, for a read-only mount of lower layers only, the topmost layer's
//! entry at that path; lower entries are hidden by it, by a whiteout or by
//! an opaque directory above them. So each layer is tried from the top,
//! with the rules the writer opens files with (`RESOLVE_BENEATH`, no
//! symlink followed, no blocking open), and the first entry found is taken
//! only when it is the same file the overlay shows: a regular file with the
//! same inode number (overlayfs reports the real inode's number when every
//! layer is on one filesystem), size and modification time. Anything else
//! (a whiteout, a directory, a symlinked parent, layers on several
//! filesystems) leaves the file read through the overlay, as before: what
//! an upper layer deleted is never read.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};

use rootfs_cache_ext4::{FileData, Kind, Tree};

/// Files smaller than this have no whole block to clone.
const BLOCK_SIZE: u64 = 4096;

/// How many files [`point_at_layers`] pointed at a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pointed {
    /// Files now read from a layer's `diff/`.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Points every regular file of `tree` of at least one block that is read
/// below `merged` (the overlay mount the tree was scanned from) at the same
/// file in one of `layers` (the chain's `diff/` directories, top first).
/// Files it cannot match stay as they are.
pub fn point_at_layers(tree: &mut Tree, merged: &Arc<OwnedFd>, layers: &[Arc<OwnedFd>]) -> Pointed {
    let mut pointed = Pointed::default();
    for id in 0..tree.nodes().len() {
        let Kind::File { size, data: FileData::At { root, path, dense } } = &tree.node(id).kind else { continue };
        if *size < BLOCK_SIZE || !Arc::ptr_eq(root, merged) {
            continue;
        }
        let Some(layer) = find(merged, layers, path) else { continue };
        let (size, path, dense) = (*size, path.clone(), *dense);
        tree.node_mut(id).kind = Kind::File { size, data: FileData::At { root: layer.clone(), path, dense } };
        pointed.files += 1;
        pointed.bytes += size;
    }
    pointed
}

/// The layer whose entry at `path` is the file the overlay shows there.
fn find<'a>(merged: &OwnedFd, layers: &'a [Arc<OwnedFd>], path: &Path) -> Option<&'a Arc<OwnedFd>> {
    let shown = identity(&open(merged, path).ok()?)?;
    for layer in layers {
        match open(layer, path) {
            Ok(fd) => return (identity(&fd)? == shown).then_some(layer),
            // Not in this layer (nor its parent): look lower.
            Err(rustix::io::Errno::NOENT) => continue,
            // A parent that is not a directory or is a symlink here: what
            // overlayfs shows is not a plain lookup; read it through the mount.
            Err(_) => return None,
        }
    }
    None
}

/// Opens `path` beneath `dir` as a handle only (no read, no blocking),
/// refusing every symlink on the way, as the writer's open does.
fn open(dir: &OwnedFd, path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir.as_fd(),
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// A regular file's inode number, size and modification time.
fn identity(fd: &OwnedFd) -> Option<(u64, u64, i64, u32)> {
    let stat = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).ok()?;
    (FileType::from_raw_mode(u32::from(stat.stx_mode)) == FileType::RegularFile).then_some((
        stat.stx_ino,
        stat.stx_size,
        stat.stx_mtime.tv_sec,
        stat.stx_mtime.tv_nsec,
    ))
}

/// Opens the chain's `diff/` directories (top first), for
/// [`point_at_layers`].
pub fn open_layers(top_first: &[std::path::PathBuf]) -> rustix::io::Result<Vec<Arc<OwnedFd>>> {
    top_first
        .iter()
        .map(|path| {
            rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map(Arc::new)
        })
        .collect()
}

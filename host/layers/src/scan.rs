//! Reads a directory tree (an overlay mount, a staging directory) into an
//! [`Tree`], through one directory handle and `*at`
//! system calls, never following a symlink.
//!
//! Directories are read in parallel (one thread per core, at most
//! [`MAX_THREADS`]), each whole by one thread (`listing`), and the tree is
//! then put together in one thread, in the same order whatever the
//! threads did: depth-first, names in order, so that hardlinks resolve to
//! the same node every time.

mod error;
mod listing;
mod xattrs;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{AtFlags, FileType, StatxFlags};

use rootfs_cache_ext4::{FileData, Kind, Meta, Node, NodeId, Timestamp, Tree};

pub use error::ScanError;
use error::io;
use listing::{Content, Entry};
use xattrs::proc_path;
pub use xattrs::{Xattrs, read_xattrs};

fn meta_of(stat: &rustix::fs::Statx, xattrs: Xattrs) -> Meta {
    Meta {
        perm: u32::from(stat.stx_mode) & 0o7777,
        uid: stat.stx_uid,
        gid: stat.stx_gid,
        mtime: Timestamp { secs: stat.stx_mtime.tv_sec, nanos: stat.stx_mtime.tv_nsec },
        xattrs,
    }
}

/// The most threads that read directories.
pub const MAX_THREADS: usize = 4;

/// Reads the tree below `root`. Small regular files are read whole
/// ([`FileData::Bytes`]); larger ones, sparse ones and those with several
/// names are left where they are ([`FileData::At`], below `root`).
pub fn scan(root: Arc<OwnedFd>, cancel: &AtomicBool) -> Result<Tree, ScanError> {
    scan_with_layers(root, None, cancel)
}

/// Reads the tree of an overlay mount, `root`, whose layers are the
/// directories `layers` (top first): as [`scan`], but a regular file the
/// mount shows is read in the layer that holds it when that is provably
/// the same inode (see the private `scan::listing` module), and a file left for the writer is
/// named below that layer. Layers on more than one filesystem are read
/// only through the mount.
pub fn scan_overlay(root: Arc<OwnedFd>, layers: &[PathBuf], cancel: &AtomicBool) -> Result<Tree, ScanError> {
    scan_with_layers(root, open_layers(layers), cancel)
}

/// The layers opened, if every one is on the same filesystem (else, or if
/// one cannot be opened, `None`: the tree is read through the mount only).
fn open_layers(layers: &[PathBuf]) -> Option<listing::Layers> {
    let mut roots = Vec::with_capacity(layers.len());
    let mut devs = Vec::with_capacity(layers.len());
    for layer in layers {
        let flags = rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
        let fd = rustix::fs::open(layer, flags, rustix::fs::Mode::empty()).ok()?;
        let st = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).ok()?;
        devs.push((st.stx_dev_major, st.stx_dev_minor));
        roots.push(Arc::new(fd));
    }
    let &dev = devs.first()?;
    devs.iter().all(|&d| d == dev).then_some(listing::Layers { roots, dev })
}

/// [`scan`], reading regular files in `layers` where it can.
fn scan_with_layers(
    root: Arc<OwnedFd>,
    layers: Option<listing::Layers>,
    cancel: &AtomicBool,
) -> Result<Tree, ScanError> {
    let root_stat =
        rustix::fs::statx(root.as_fd(), "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).map_err(io(Path::new("")))?;
    let root_xattrs = read_xattrs(&proc_path(root.as_fd(), OsStr::new(""))).map_err(io(Path::new("")))?;
    let (listings, paths) = read_all(root.as_fd(), layers.as_ref(), cancel)?;
    let layer_roots: Vec<Arc<OwnedFd>> = layers.as_ref().map(|l| l.roots.clone()).unwrap_or_default();
    let tree = assemble(meta_of(&root_stat, root_xattrs), listings, paths, &root, &layer_roots);
    drop(layers);
    // The last handle of an overlay mount tears it down (every dentry and
    // inode it made): on a thread of its own, while the image is written,
    // when no file of the tree still needs it.
    if let Ok(root) = Arc::try_unwrap(root) {
        let _ = std::thread::Builder::new().name("scan-unmount".into()).spawn(move || drop(root));
    }
    Ok(tree)
}

/// Every directory's listing, by job number (the root is job 0), and its
/// path below the root.
type Listings = (Vec<Vec<Entry>>, Vec<PathBuf>);

/// The shared state of the threads reading directories.
struct Jobs {
    /// Directories found and not yet taken: (job, path, layers holding it).
    pending: Vec<(usize, PathBuf, Vec<usize>)>,
    /// Threads reading a directory now.
    active: usize,
    /// Each job's listing, once read.
    done: Vec<Option<Vec<Entry>>>,
    /// Each job's path.
    paths: Vec<PathBuf>,
    /// The first error, which stops every thread.
    failed: Option<ScanError>,
}

/// Reads every directory below `root`, on up to [`MAX_THREADS`] threads.
fn read_all(
    root: BorrowedFd<'_>,
    layers: Option<&listing::Layers>,
    cancel: &AtomicBool,
) -> Result<Listings, ScanError> {
    let top: Vec<usize> = layers.map(|l| (0..l.roots.len()).collect()).unwrap_or_default();
    let jobs = Mutex::new(Jobs {
        pending: vec![(0, PathBuf::new(), top)],
        active: 0,
        done: vec![None],
        paths: vec![PathBuf::new()],
        failed: None,
    });
    let changed = Condvar::new();
    let in_memory = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_THREADS);
    let work = || read_jobs(root, layers, &jobs, &changed, &in_memory, cancel);
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    let jobs = jobs.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(err) = jobs.failed {
        return Err(err);
    }
    let listings = jobs.done.into_iter().map(|listing| listing.expect("every directory found was read")).collect();
    Ok((listings, jobs.paths))
}

/// One thread's loop: takes a directory, reads it, records what it found,
/// until every directory is read or one failed.
fn read_jobs(
    root: BorrowedFd<'_>,
    layers: Option<&listing::Layers>,
    jobs: &Mutex<Jobs>,
    changed: &Condvar,
    in_memory: &AtomicU64,
    cancel: &AtomicBool,
) {
    let lock = || jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let (job, path, holding) = {
            let mut state = lock();
            loop {
                if state.failed.is_some() {
                    return;
                }
                if let Some(next) = state.pending.pop() {
                    state.active += 1;
                    break next;
                }
                if state.active == 0 {
                    return;
                }
                state = changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        let mut found: Vec<PathBuf> = Vec::new();
        let read =
            listing::read(root, layers, listing::Job { path: &path, layers: &holding }, in_memory, cancel, |sub| {
                found.push(sub);
                found.len() - 1
            });
        let mut state = lock();
        state.active -= 1;
        match read {
            Ok(mut entries) => {
                // Number the subdirectories found, in name order.
                let base = state.done.len();
                let mut found = found.into_iter();
                for entry in &mut entries {
                    if let Content::Dir(i, below) = &mut entry.content {
                        *i += base;
                        let sub = found.next().expect("one path for each subdirectory");
                        state.done.push(None);
                        state.paths.push(sub.clone());
                        state.pending.push((*i, sub, std::mem::take(below)));
                    }
                }
                state.done[job] = Some(entries);
            }
            Err(err) => {
                if state.failed.is_none() {
                    state.failed = Some(err);
                }
            }
        }
        changed.notify_all();
    }
}

/// The tree from the listings, in one depth-first walk in name order.
fn assemble(
    root_meta: Meta,
    listings: Vec<Vec<Entry>>,
    paths: Vec<PathBuf>,
    root: &Arc<OwnedFd>,
    layer_roots: &[Arc<OwnedFd>],
) -> Tree {
    let mut tree = Tree::new(root_meta);
    let mut listings: Vec<Option<Vec<Entry>>> = listings.into_iter().map(Some).collect();
    let mut paths: Vec<Option<PathBuf>> = paths.into_iter().map(Some).collect();
    let mut hardlinks: HashMap<(u32, u32, u64), NodeId> = HashMap::new();
    let mut stack: Vec<(NodeId, usize)> = vec![(Tree::ROOT, 0)];
    while let Some((dir_node, job)) = stack.pop() {
        let dir_path = paths[job].take().expect("each directory is listed once");
        let entries = listings[job].take().expect("each directory is listed once");
        for Entry { name, stat, xattrs, content } in entries {
            let file_type = FileType::from_raw_mode(u32::from(stat.stx_mode));
            let identity = (stat.stx_dev_major, stat.stx_dev_minor, stat.stx_ino);
            let linked = file_type == FileType::RegularFile && stat.stx_nlink > 1;
            if linked && let Some(&existing) = hardlinks.get(&identity) {
                tree.link(dir_node, name, existing);
                continue;
            }
            let meta = meta_of(&stat, xattrs);
            let rdev = || rustix::fs::makedev(stat.stx_rdev_major, stat.stx_rdev_minor);
            let mut subdir = None;
            let at = |root: &Arc<OwnedFd>| {
                let dense = stat.stx_blocks * 512 >= stat.stx_size.next_multiple_of(4096);
                let path = dir_path.join(OsStr::from_bytes(&name));
                Kind::File { size: stat.stx_size, data: FileData::At { root: root.clone(), path, dense } }
            };
            let kind = match (file_type, content) {
                (FileType::RegularFile, Content::Bytes(bytes)) => {
                    Kind::File { size: stat.stx_size, data: FileData::Bytes(bytes) }
                }
                (FileType::RegularFile, Content::InLayer(l)) => at(&layer_roots[l]),
                (FileType::RegularFile, _) => at(root),
                (FileType::Directory, Content::Dir(sub, _)) => {
                    subdir = Some(sub);
                    Kind::Dir(Default::default())
                }
                (FileType::Symlink, Content::Target(target)) => Kind::Symlink(target),
                (FileType::CharacterDevice, _) => Kind::CharDevice(rdev()),
                (FileType::BlockDevice, _) => Kind::BlockDevice(rdev()),
                (FileType::Fifo, _) => Kind::Fifo,
                (FileType::Socket, _) => Kind::Socket,
                _ => continue,
            };
            let id = tree.add(dir_node, name, Node { meta, kind });
            if linked {
                hardlinks.insert(identity, id);
            }
            if let Some(sub) = subdir {
                stack.push((id, sub));
            }
        }
    }
    tree
}

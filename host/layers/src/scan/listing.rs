//! One directory of the tree, read: each entry's attributes, extended
//! attributes and, for a small regular file, its bytes.
//!
//! A regular file (as `readdir` reports it) is opened by its one name in
//! the directory (`O_NOFOLLOW`, `O_NONBLOCK`: a FIFO or symlink swapped in
//! cannot block or lead elsewhere), and everything else is asked of that
//! descriptor: `statx`, `flistxattr`, and a read of its bytes when it is
//! small and dense. Other entries are read by name, never followed.
//!
//! Through an overlay mount, each lookup and each open is costly (a lookup
//! in every layer, an overlay inode and dentry, a backing file, all torn
//! down again at the unmount), so a regular file the mount lists is opened
//! in the layer that holds it when that can be proved: the first layer,
//! top down, of those that hold the directory, with a file of that name,
//! and it must be the very inode the mount lists (on one filesystem, the
//! mount's `d_ino` is the real inode's number) and carry none of
//! overlayfs's own attributes (`trusted.overlay.*`: a metacopy, a
//! redirect). Anything else is read through the mount, as before.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};

use super::error::{ScanError, io};
use super::xattrs::{Xattrs, fd_xattrs, proc_path, read_xattrs};

/// Files up to this length are read while the tree is scanned.
pub(super) const SMALL_FILE_BYTES: u64 = 64 << 10;

/// At most this many bytes of small files are held in memory; past it,
/// the writer reads the rest (from their layer, or through the mount), as
/// it reads larger files.
pub(super) const IN_MEMORY_BYTES: u64 = 1 << 30;

/// One entry of a directory.
pub(super) struct Entry {
    /// Its name.
    pub(super) name: Vec<u8>,
    /// Its attributes.
    pub(super) stat: rustix::fs::Statx,
    /// Its extended attributes, sorted, overlayfs's own left out.
    pub(super) xattrs: Xattrs,
    /// What is known of its content.
    pub(super) content: Content,
}

/// What the scan read of an entry's content.
pub(super) enum Content {
    /// A regular file's bytes, read whole.
    Bytes(Arc<Vec<u8>>),
    /// A regular file not read, at the same path in this layer.
    InLayer(usize),
    /// A symlink's target.
    Target(Vec<u8>),
    /// A subdirectory, to be read as the job of this number, with the
    /// layers that hold it as a directory (top first).
    Dir(usize, Vec<usize>),
    /// Nothing (a larger or sparse file, read by the writer; a device, a
    /// FIFO, a socket).
    None,
}

/// The layers below a mount, opened, when the mount's files may be read
/// in them: every layer on the filesystem of `dev`.
pub(super) struct Layers {
    /// Each layer's directory, top first.
    pub(super) roots: Vec<Arc<OwnedFd>>,
    /// Their filesystem (major, minor).
    pub(super) dev: (u32, u32),
}

/// A directory to read: its path below the root and the layers that hold
/// it as a directory, top first.
pub(super) struct Job<'a> {
    pub(super) path: &'a Path,
    pub(super) layers: &'a [usize],
}

/// Opens the directory `path` below `root`, never through a symlink.
fn open_dir(root: BorrowedFd<'_>, path: &Path) -> rustix::io::Result<OwnedFd> {
    let at = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    rustix::fs::openat2(
        root,
        at,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
}

/// Reads the directory `job` below `root`: its entries in name order
/// (whiteouts, which look up as absent, left out). Each subdirectory gets
/// its job number from `next_job`, and is returned with it, to be read in
/// turn.
pub(super) fn read(
    root: BorrowedFd<'_>,
    layers: Option<&Layers>,
    job: Job<'_>,
    in_memory: &AtomicU64,
    cancel: &AtomicBool,
    mut next_job: impl FnMut(PathBuf) -> usize,
) -> Result<Vec<Entry>, ScanError> {
    let dir_path = job.path;
    let dir_fd = open_dir(root, dir_path).map_err(io(dir_path))?;
    // The directory in each layer that holds it; a layer where it cannot be
    // opened ends the list (what is below is read through the mount).
    let mut real_dirs: Vec<(usize, OwnedFd)> = Vec::new();
    if let Some(layers) = layers {
        for &l in job.layers {
            match open_dir(layers.roots[l].as_fd(), dir_path) {
                Ok(fd) => real_dirs.push((l, fd)),
                Err(_) => break,
            }
        }
    }
    let mut names: Vec<(Vec<u8>, FileType, u64)> = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir_fd).map_err(io(dir_path))? {
        let entry = entry.map_err(io(dir_path))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push((name.to_vec(), entry.file_type(), entry.ino()));
        }
    }
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut entries = Vec::with_capacity(names.len());
    for (name, listed_as, listed_ino) in names {
        if cancel.load(Ordering::Relaxed) {
            return Err(ScanError::Cancelled);
        }
        let os_name = OsStr::from_bytes(&name);
        let read = match (listed_as, layers) {
            (FileType::RegularFile, Some(layers)) => {
                match in_layer(layers, &real_dirs, os_name, listed_ino, dir_path, in_memory)? {
                    Some(read) => Some(read),
                    None => regular(&dir_fd, os_name, dir_path, in_memory)?,
                }
            }
            (FileType::RegularFile, None) => regular(&dir_fd, os_name, dir_path, in_memory)?,
            _ => None,
        };
        let (stat, xattrs, content) = match read {
            Some(read) => read,
            None => match by_name(&dir_fd, os_name, dir_path)? {
                Some(read) => read,
                // Overlayfs lists the whiteouts of a directory that exists
                // in one layer only, but they look up as absent: so they are.
                None => continue,
            },
        };
        let content = match content {
            Content::Dir(..) => {
                let below = sub_layers(&real_dirs, os_name);
                Content::Dir(next_job(dir_path.join(os_name)), below)
            }
            other => other,
        };
        entries.push(Entry { name, stat, xattrs, content });
    }
    Ok(entries)
}

/// What is read of one entry.
type Read = (rustix::fs::Statx, Xattrs, Content);

/// The layers, of those holding a directory, that hold its entry `name` as
/// a directory too: down to the first that holds something else there (a
/// file, a whiteout), which hides what is below. Opaque directories are
/// not looked for: a layer too many is harmless, as what is read in one
/// must be the inode the mount shows.
fn sub_layers(real_dirs: &[(usize, OwnedFd)], name: &OsStr) -> Vec<usize> {
    let mut below = Vec::new();
    for (l, dir) in real_dirs {
        match rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE) {
            Ok(st) if FileType::from_raw_mode(u32::from(st.stx_mode)) == FileType::Directory => below.push(*l),
            Err(rustix::io::Errno::NOENT) => {}
            _ => break,
        }
    }
    below
}

/// A regular file the mount lists as `listed_ino`, read in the first layer
/// that holds its name, if that is provably the same inode: `None` sends
/// it through the mount.
fn in_layer(
    layers: &Layers,
    real_dirs: &[(usize, OwnedFd)],
    name: &OsStr,
    listed_ino: u64,
    dir_path: &Path,
    in_memory: &AtomicU64,
) -> Result<Option<Read>, ScanError> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    for (l, dir) in real_dirs {
        let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(_) => return Ok(None),
        };
        let Ok(stat) = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS) else {
            return Ok(None);
        };
        // A file with several names goes through the mount, so that every
        // name of it has the same identity (the mount's device).
        let same = FileType::from_raw_mode(u32::from(stat.stx_mode)) == FileType::RegularFile
            && stat.stx_nlink == 1
            && stat.stx_ino == listed_ino
            && (stat.stx_dev_major, stat.stx_dev_minor) == layers.dev;
        if !same {
            return Ok(None);
        }
        let Ok(xattrs) = fd_xattrs(fd.as_fd(), true) else { return Ok(None) };
        if xattrs.iter().any(|(n, _)| n.starts_with(b"trusted.overlay.")) {
            return Ok(None);
        }
        let path = dir_path.join(name);
        let content = match small_file(&fd, &stat, &path, in_memory)? {
            Some(bytes) => Content::Bytes(bytes),
            None => Content::InLayer(*l),
        };
        return Ok(Some((stat, xattrs, content)));
    }
    Ok(None)
}

/// The bytes of the open regular file `fd`, when it is small and dense,
/// has one name and the in-memory budget has room for it.
fn small_file(
    fd: &OwnedFd,
    stat: &rustix::fs::Statx,
    path: &Path,
    in_memory: &AtomicU64,
) -> Result<Option<Arc<Vec<u8>>>, ScanError> {
    let size = stat.stx_size;
    let dense = stat.stx_blocks * 512 >= size.next_multiple_of(4096);
    // A file with other names may be listed again: read it once, by the
    // writer. A file with holes is read by the writer too, which keeps them.
    let small = size <= SMALL_FILE_BYTES && dense && stat.stx_nlink == 1;
    if !small || !reserve(in_memory, size) {
        return Ok(None);
    }
    let bytes = read_whole(fd, size).map_err(|e| match e {
        ReadError::Shrank => ScanError::Changed { path: format!("/{}", path.display()) },
        ReadError::Io(e) => io(path)(e),
    })?;
    Ok(Some(Arc::new(bytes)))
}

/// A regular file, read through one descriptor: `None` when it is not one
/// any more (then it is read by name), or is gone.
fn regular(dir: &OwnedFd, name: &OsStr, dir_path: &Path, in_memory: &AtomicU64) -> Result<Option<Read>, ScanError> {
    let path = || dir_path.join(name);
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // A symlink, a whiteout, or gone since it was listed: by name.
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOENT | rustix::io::Errno::NXIO) => return Ok(None),
        Err(e) => return Err(io(&path())(e)),
    };
    let stat = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).map_err(io(&path()))?;
    if FileType::from_raw_mode(u32::from(stat.stx_mode)) != FileType::RegularFile {
        return Ok(None);
    }
    let xattrs = fd_xattrs(fd.as_fd(), false).map_err(io(&path()))?;
    let content = match small_file(&fd, &stat, &path(), in_memory)? {
        Some(bytes) => Content::Bytes(bytes),
        None => Content::None,
    };
    Ok(Some((stat, xattrs, content)))
}

/// Takes `size` bytes of the in-memory budget, if that many are left.
fn reserve(in_memory: &AtomicU64, size: u64) -> bool {
    in_memory
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            used.checked_add(size).filter(|&u| u <= IN_MEMORY_BYTES)
        })
        .is_ok()
}

enum ReadError {
    Shrank,
    Io(rustix::io::Errno),
}

/// The first `size` bytes of `fd` (what the tree records as its length;
/// bytes it gained since are not read, as the writer would not read them).
fn read_whole(fd: &OwnedFd, size: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = vec![0u8; size as usize];
    let mut done = 0usize;
    while done < bytes.len() {
        match rustix::io::pread(fd, &mut bytes[done..], done as u64) {
            Ok(0) => return Err(ReadError::Shrank),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(bytes)
}

/// Any entry, read by name without following it: `None` when it looks up
/// as absent (a whiteout).
fn by_name(dir: &OwnedFd, name: &OsStr, dir_path: &Path) -> Result<Option<Read>, ScanError> {
    let path = || dir_path.join(name);
    let stat = match rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io(&path())(e)),
    };
    let xattrs = read_xattrs(&proc_path(dir.as_fd(), name)).map_err(io(&path()))?;
    let content = match FileType::from_raw_mode(u32::from(stat.stx_mode)) {
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new()).map_err(io(&path()))?;
            Content::Target(target.into_bytes())
        }
        FileType::Directory => Content::Dir(0, Vec::new()),
        _ => Content::None,
    };
    Ok(Some((stat, xattrs, content)))
}

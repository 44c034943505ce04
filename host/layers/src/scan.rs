//! Reads a directory tree (an overlay mount, a staging directory) into an
//! [`Tree`], through one directory handle and `*at`
//! system calls, never following a symlink.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};

use rootfs_cache_ext4::{FileData, Kind, Meta, Node, NodeId, Timestamp, Tree};

/// Why a tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A system call on a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path below the root.
        path: String,
        /// The error.
        source: rustix::io::Errno,
    },
    /// The conversion was cancelled.
    #[error("cancelled")]
    Cancelled,
}

fn io(path: &Path) -> impl Fn(rustix::io::Errno) -> ScanError + '_ {
    move |source| ScanError::Io { path: format!("/{}", path.display()), source }
}

/// The `/proc/self/fd` path of `name` in the directory `dir`, for the xattr
/// calls, which have no `*at` forms on older kernels.
fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if !name.is_empty() {
        p.push(name);
    }
    p
}

/// Extended attributes as (full name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads every extended attribute of a path, except overlayfs's own
/// `trusted.overlay.*`, without following a final symlink.
pub fn read_xattrs(path: &Path) -> Result<Xattrs, rustix::io::Errno> {
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&c| c == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let c_name = std::ffi::CString::new(name).map_err(|_| rustix::io::Errno::INVAL)?;
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, c_name.as_c_str(), &mut value) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(e),
            }
        };
        value.truncate(n);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

fn meta_of(stat: &rustix::fs::Statx, xattrs: Xattrs) -> Meta {
    Meta {
        perm: u32::from(stat.stx_mode) & 0o7777,
        uid: stat.stx_uid,
        gid: stat.stx_gid,
        mtime: Timestamp { secs: stat.stx_mtime.tv_sec, nanos: stat.stx_mtime.tv_nsec },
        xattrs,
    }
}

/// Reads the tree below `root`.
pub fn scan(root: Arc<OwnedFd>, cancel: &AtomicBool) -> Result<Tree, ScanError> {
    let root_stat =
        rustix::fs::statx(root.as_fd(), "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).map_err(io(Path::new("")))?;
    let root_xattrs = read_xattrs(&proc_path(root.as_fd(), OsStr::new(""))).map_err(io(Path::new("")))?;
    let mut tree = Tree::new(meta_of(&root_stat, root_xattrs));
    let mut hardlinks: HashMap<(u32, u32, u64), NodeId> = HashMap::new();
    // Directories still to read: (node, path below the root). They are opened
    // when read, so a directory of thousands of subdirectories does not hold
    // thousands of descriptors.
    let mut stack: Vec<(NodeId, PathBuf)> = vec![(Tree::ROOT, PathBuf::new())];
    while let Some((dir_node, dir_path)) = stack.pop() {
        let at = if dir_path.as_os_str().is_empty() { Path::new(".") } else { dir_path.as_path() };
        let dir_fd = rustix::fs::openat2(
            root.as_fd(),
            at,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(io(&dir_path))?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir_fd).map_err(io(&dir_path))? {
            let entry = entry.map_err(io(&dir_path))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        names.sort();
        for name in names {
            if cancel.load(Ordering::Relaxed) {
                return Err(ScanError::Cancelled);
            }
            let os_name = OsStr::from_bytes(&name);
            let path = dir_path.join(os_name);
            let stat = match rustix::fs::statx(&dir_fd, os_name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS) {
                Ok(stat) => stat,
                // Overlayfs lists the whiteouts of a directory that exists in
                // one layer only, but they look up as absent: so they are.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            let file_type = FileType::from_raw_mode(u32::from(stat.stx_mode));
            if file_type == FileType::RegularFile && stat.stx_nlink > 1 {
                let identity = (stat.stx_dev_major, stat.stx_dev_minor, stat.stx_ino);
                if let Some(&existing) = hardlinks.get(&identity) {
                    tree.link(dir_node, name, existing);
                    continue;
                }
            }
            let xattrs = read_xattrs(&proc_path(dir_fd.as_fd(), os_name)).map_err(io(&path))?;
            let meta = meta_of(&stat, xattrs);
            let rdev = || rustix::fs::makedev(stat.stx_rdev_major, stat.stx_rdev_minor);
            let kind = match file_type {
                FileType::RegularFile => {
                    let dense = stat.stx_blocks * 512 >= stat.stx_size.next_multiple_of(4096);
                    Kind::File {
                        size: stat.stx_size,
                        data: FileData::At { root: root.clone(), path: path.clone(), dense },
                    }
                }
                FileType::Directory => Kind::Dir(Default::default()),
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&dir_fd, os_name, Vec::new()).map_err(io(&path))?;
                    Kind::Symlink(target.into_bytes())
                }
                FileType::CharacterDevice => Kind::CharDevice(rdev()),
                FileType::BlockDevice => Kind::BlockDevice(rdev()),
                FileType::Fifo => Kind::Fifo,
                FileType::Socket => Kind::Socket,
                FileType::Unknown => continue,
            };
            let is_dir = matches!(kind, Kind::Dir(_));
            let id = tree.add(dir_node, name.clone(), Node { meta, kind });
            if file_type == FileType::RegularFile && stat.stx_nlink > 1 {
                hardlinks.insert((stat.stx_dev_major, stat.stx_dev_minor, stat.stx_ino), id);
            }
            if is_dir {
                stack.push((id, path));
            }
        }
    }
    Ok(tree)
}

//! Opening a file the tree names below a directory handle, for reading.
//!
//! The rule is the host's (`host/layers/src/regular_file.rs`): the kernel
//! resolves the path beneath the handle (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`), the open does not block (a FIFO swapped in since
//! the scan returns at once), and anything but a regular file is refused.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// Opens the regular file at the relative `path` beneath `dir`.
pub(crate) fn open_beneath(dir: impl AsFd, path: &Path) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let fd = match rustix::fs::openat2(&dir, path, flags, Mode::empty(), resolve) {
        Ok(fd) => fd,
        // Before Linux 5.6: a final symlink is still refused.
        Err(rustix::io::Errno::NOSYS) => rustix::fs::openat(&dir, path, flags, Mode::empty())?,
        Err(rustix::io::Errno::LOOP) => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "it is reached through a symlink"));
        }
        Err(e) => return Err(e.into()),
    };
    regular(fd)
}

/// `fd` as a blocking file, if it is a regular file.
fn regular(fd: OwnedFd) -> io::Result<File> {
    let stat = rustix::fs::fstat(&fd)?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => None,
        FileType::Directory => Some("a directory"),
        FileType::Symlink => Some("a symlink"),
        FileType::Fifo => Some("a FIFO"),
        FileType::Socket => Some("a socket"),
        FileType::CharacterDevice => Some("a character device"),
        FileType::BlockDevice => Some("a block device"),
        FileType::Unknown => Some("of an unknown type"),
    };
    if let Some(kind) = kind {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("it is {kind}, not a regular file")));
    }
    let status = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, status - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

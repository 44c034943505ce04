//! Extended attributes, by path or by open file.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// The `/proc/self/fd` path of `name` in the directory `dir`, for the xattr
/// calls, which have no `*at` forms on older kernels.
pub(super) fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
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
    values(&names[..len], false, |name, value| rustix::fs::lgetxattr(path, name, value))
}

/// Every extended attribute of an open file, overlayfs's own too when
/// `private` (a file in a layer, where they mean something).
pub(super) fn fd_xattrs(fd: BorrowedFd<'_>, private: bool) -> Result<Xattrs, rustix::io::Errno> {
    let mut names = [0u8; 1024];
    let len = match rustix::fs::flistxattr(fd, &mut names) {
        Ok(0) => return Ok(Vec::new()),
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        // Longer lists are rare: the general path sizes its buffer.
        Err(rustix::io::Errno::RANGE) if !private => return read_xattrs(&proc_path(fd, OsStr::new(""))),
        Err(e) => return Err(e),
    };
    values(&names[..len], private, |name, value| rustix::fs::fgetxattr(fd, name, value))
}

/// The value of every name in a NUL-separated `list` (overlayfs's own
/// `trusted.overlay.*` left out unless `private`), read with `get`, whose
/// buffer grows while it answers `ERANGE`; sorted by name.
fn values(
    list: &[u8],
    private: bool,
    mut get: impl FnMut(&std::ffi::CStr, &mut [u8]) -> Result<usize, rustix::io::Errno>,
) -> Result<Xattrs, rustix::io::Errno> {
    let mut out = Vec::new();
    for name in list.split(|&c| c == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") && !private {
            continue;
        }
        let c_name = std::ffi::CString::new(name).map_err(|_| rustix::io::Errno::INVAL)?;
        let mut value = vec![0u8; 256];
        let n = loop {
            match get(c_name.as_c_str(), &mut value) {
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

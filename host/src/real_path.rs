//! Canonical paths in three system calls.
//!
//! glibc's `realpath` (behind [`Path::canonicalize`]) calls `readlink` on
//! every prefix of the path, each a fresh walk from `/`: nine calls for the
//! source and agent of a typical request, about a tenth of a hit's system
//! calls. The kernel already knows where a path leads once it has opened it:
//! [`real_path`] opens the path with `O_PATH` (one walk, following every
//! symlink as `realpath` does), reads the name back from `/proc/self/fd`, and
//! closes it.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// The absolute path `path` names with every symlink, `.` and `..`
/// resolved, like [`Path::canonicalize`]; falls back to it where
/// `/proc/self/fd` cannot answer (no `/proc`, or a name the kernel cannot
/// give as a path).
pub(crate) fn real_path(path: &Path) -> io::Result<PathBuf> {
    let fd = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    let name = rustix::fs::readlinkat(rustix::fs::CWD, format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new());
    match name {
        // The kernel marks a removed file " (deleted)", and a file outside
        // this process's root without a leading '/': neither is a path.
        Ok(name) if name.as_bytes().starts_with(b"/") && !name.as_bytes().ends_with(b" (deleted)") => {
            Ok(PathBuf::from(OsString::from_vec(name.into_bytes())))
        }
        _ => path.canonicalize(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_resolves_what_canonicalize_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/file"), "x").unwrap();
        std::os::unix::fs::symlink("a/b", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../b/file", root.join("a/b/rel")).unwrap();
        for path in [
            root.join("a/b/file"),
            root.join("link/file"),
            root.join("a/./b/../b/rel"),
            root.join("link/rel"),
            root.join("a"),
            PathBuf::from("/"),
        ] {
            assert_eq!(real_path(&path).unwrap(), path.canonicalize().unwrap(), "{}", path.display());
        }
    }

    #[test]
    fn a_missing_path_or_a_dangling_symlink_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("gone", dir.path().join("dangling")).unwrap();
        for path in [dir.path().join("missing"), dir.path().join("dangling"), dir.path().join("missing/x")] {
            assert_eq!(real_path(&path).unwrap_err().kind(), io::ErrorKind::NotFound, "{}", path.display());
        }
    }

    #[test]
    fn a_file_used_as_a_directory_is_an_error_as_with_canonicalize() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let path = dir.path().join("file/x");
        assert_eq!(real_path(&path).unwrap_err().kind(), path.canonicalize().unwrap_err().kind());
    }
}

//! `host.probe`: the facts a request's hot path needs, for many paths in
//! one call.
//!
//! Every path is resolved beneath a handle of one of the directories the
//! guest already sees read-only (the request's source roots, the cache), so
//! the probe shows nothing the guest could not read through WASI: it only
//! replaces one WASI call per fact with one host call per batch.

use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};

use crate::bindings::rootfs::cache::host::{PathInfo, PathKind, ProbeRequest};
use crate::error::Error;
use crate::regular_file::{FileError, RegularFile};

/// Most paths one call may name.
pub(crate) const MAX_PATHS: usize = 256;

/// Most bytes one path may ask to read.
pub(crate) const MAX_READ_BYTES: u32 = 64 << 10;

/// Most bytes one call may ask to read, over all its paths.
pub(crate) const MAX_TOTAL_READ_BYTES: u64 = 1 << 20;

/// Where one probed path lives: the directory handle and the path inside it.
pub(crate) struct Located<'a> {
    dir: &'a Dir,
    inside: &'a Path,
}

/// Finds the directory `path` lies in: for an absolute path, the deepest of
/// `roots` (host paths and their handles) that holds it; for a relative
/// path, the cache.
fn locate<'a>(path: &'a str, roots: &'a [(PathBuf, Dir)], cache: &'a Dir) -> Result<Located<'a>, Error> {
    let path = Path::new(path);
    let (dir, inside) = if path.is_absolute() {
        roots
            .iter()
            .filter_map(|(root, dir)| path.strip_prefix(root).ok().map(|inside| (dir, inside)))
            .max_by_key(|(_, inside)| std::cmp::Reverse(inside.as_os_str().len()))
            .ok_or_else(|| {
                Error::denied("source_roots", format!("{} is outside the source of this request", path.display()))
            })?
    } else {
        (cache, path)
    };
    if inside.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Error::InvalidRequest(format!("{} is not a normalised path", path.display())));
    }
    Ok(Located { dir, inside })
}

fn nanos(time: &rustix::fs::StatxTimestamp) -> u64 {
    u64::try_from(time.tv_sec)
        .ok()
        .map_or(0, |secs| secs.saturating_mul(1_000_000_000).saturating_add(u64::from(time.tv_nsec)))
}

fn kind(mode: u16) -> PathKind {
    match rustix::fs::FileType::from_raw_mode(mode.into()) {
        rustix::fs::FileType::RegularFile => PathKind::File,
        rustix::fs::FileType::Directory => PathKind::Directory,
        rustix::fs::FileType::Symlink => PathKind::Symlink,
        _ => PathKind::Other,
    }
}

/// Looks at located paths, opening each parent directory once per call.
///
/// A path `a/b/name` costs: its parent opened with `openat2` and
/// `RESOLVE_BENEATH` (shared by its siblings), one `statx` of `name` without
/// following it, and for a symlink one `readlinkat`, for a regular file to
/// read an `openat` with `O_NOFOLLOW` (through [`RegularFile::open_in`],
/// which checks the opened file with `fstat`), the reads and a close. A single name
/// can neither escape the parent nor follow a symlink, so only the parent's
/// resolution needs the kernel's containment, and it gets it.
#[derive(Default)]
pub(crate) struct Prober {
    parents: Vec<(usize, PathBuf, OwnedFd)>,
}

impl Prober {
    fn parent(&mut self, dir: &Dir, parent: &Path) -> std::io::Result<BorrowedFd<'_>> {
        let id = std::ptr::from_ref(dir) as usize;
        if let Some(i) = self.parents.iter().position(|(d, p, _)| *d == id && p == parent) {
            return Ok(self.parents[i].2.as_fd());
        }
        let fd = match rustix::fs::openat2(
            dir,
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            // Before Linux 5.6: cap-std resolves it step by step.
            Err(rustix::io::Errno::NOSYS) => OwnedFd::from(dir.open_dir(parent)?.into_std_file()),
            Err(e) => return Err(e.into()),
        };
        self.parents.push((id, parent.to_path_buf(), fd));
        Ok(self.parents.last().map(|(_, _, fd)| fd.as_fd()).expect("just pushed"))
    }

    /// Answers one request of a probe call: its read size checked, its
    /// path located among `roots` (or in the cache) and looked at.
    pub(crate) fn answer(
        &mut self,
        request: &ProbeRequest,
        roots: &[(PathBuf, Dir)],
        cache: &Dir,
    ) -> Result<PathInfo, Error> {
        check_read(request)?;
        let at = locate(&request.path, roots, cache)?;
        self.probe(&at, request.read_bytes).map_err(|e| error(&request.path, &e))
    }

    /// Looks at one located path.
    fn probe(&mut self, at: &Located<'_>, read_bytes: u32) -> std::io::Result<PathInfo> {
        let Located { dir, inside } = at;
        let (parent, name) = match (inside.parent(), inside.file_name()) {
            (Some(parent), Some(name)) if parent.as_os_str().is_empty() => (dir.as_fd(), name),
            (Some(parent), Some(name)) => (self.parent(dir, parent)?, name),
            // The root itself.
            _ => (dir.as_fd(), "".as_ref()),
        };
        let flags = if name.is_empty() { AtFlags::EMPTY_PATH } else { AtFlags::SYMLINK_NOFOLLOW };
        let stat = rustix::fs::statx(
            parent,
            name,
            flags,
            StatxFlags::TYPE | StatxFlags::SIZE | StatxFlags::MTIME | StatxFlags::BTIME,
        )?;
        let kind = kind(stat.stx_mode);
        let link_target = match kind {
            PathKind::Symlink => Some(rustix::fs::readlinkat(parent, name, Vec::new())?.into_bytes()),
            _ => None,
        };
        let mut head = Vec::new();
        if kind == PathKind::File && read_bytes > 0 {
            // Opened as regular files are, by one name under its parent:
            // a symlink or FIFO swapped in since the stat is refused, and
            // nothing past the head is read.
            let shown = Path::new(name);
            let mut file =
                RegularFile::open_in(parent, shown, shown, u64::from(read_bytes)).map_err(FileError::into_io)?;
            head = file.read_head(u64::from(read_bytes).min(stat.stx_size)).map_err(FileError::into_io)?;
        }
        let btime = stat.stx_mask & StatxFlags::BTIME.bits() != 0;
        Ok(PathInfo {
            kind,
            size: stat.stx_size,
            modified_ns: nanos(&stat.stx_mtime),
            created_ns: if btime { nanos(&stat.stx_btime) } else { 0 },
            link_target,
            head,
        })
    }
}

/// The error for a failed probe of `path`: the kernel's (`EXDEV`) or
/// cap-std's refusal to resolve a path out of the directory is a denial,
/// like any other escape.
fn error(path: &str, err: &std::io::Error) -> Error {
    let escape = err.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error())
        || (err.kind() == std::io::ErrorKind::PermissionDenied
            && err.to_string().contains("outside of the filesystem"));
    if escape {
        return Error::denied("source_roots", format!("{path} leads outside the directories of this request"));
    }
    Error::io(path, err)
}

/// Checks a whole probe call before anything is read.
pub(crate) fn check(requests: &[ProbeRequest]) -> Result<(), Error> {
    if requests.len() > MAX_PATHS {
        return Err(Error::InvalidRequest(format!(
            "probe was given {} paths; the limit is {MAX_PATHS}",
            requests.len()
        )));
    }
    let total: u64 = requests.iter().map(|r| u64::from(r.read_bytes)).sum();
    if total > MAX_TOTAL_READ_BYTES {
        return Err(Error::InvalidRequest(format!(
            "probe asked for {total} bytes in all; the limit is {MAX_TOTAL_READ_BYTES}"
        )));
    }
    Ok(())
}

/// Checks one probe request's read size.
fn check_read(request: &ProbeRequest) -> Result<(), Error> {
    if request.read_bytes > MAX_READ_BYTES {
        return Err(Error::InvalidRequest(format!(
            "probe asked for {} bytes of {}; the limit is {MAX_READ_BYTES}",
            request.read_bytes, request.path
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(path: &Path) -> Dir {
        Dir::open_ambient_dir(path, cap_std::ambient_authority()).unwrap()
    }

    #[test]
    fn facts_of_a_file_a_directory_and_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("layer/diff")).unwrap();
        std::fs::write(root.join("layer/link"), "ABC\n").unwrap();
        std::os::unix::fs::symlink("../layer/diff", root.join("l")).unwrap();
        let roots = vec![(root.clone(), handle(&root))];
        let cache = handle(tmp.path());
        let mut prober = Prober::default();
        let mut at = |p: &Path| prober.probe(&locate(p.to_str().unwrap(), &roots, &cache).unwrap(), 2).unwrap();

        let link = at(&root.join("layer/link"));
        assert_eq!((link.kind, link.size, link.head.as_slice()), (PathKind::File, 4, &b"AB"[..]));
        assert!(link.modified_ns > 0);
        let diff = at(&root.join("layer/diff"));
        assert_eq!(diff.kind, PathKind::Directory);
        assert!(diff.head.is_empty());
        let l = at(&root.join("l"));
        assert_eq!((l.kind, l.link_target.as_deref()), (PathKind::Symlink, Some(&b"../layer/diff"[..])));
        assert_eq!(at(&root).kind, PathKind::Directory);
    }

    #[test]
    fn a_fifo_or_device_is_reported_and_never_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("index.json");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        std::os::unix::fs::symlink("/dev/zero", tmp.path().join("zero")).unwrap();
        let roots = vec![(tmp.path().to_path_buf(), handle(tmp.path()))];
        let cache = handle(tmp.path());
        let mut prober = Prober::default();
        // Nobody writes to the FIFO: opening it to read would block.
        let info = prober.probe(&locate(fifo.to_str().unwrap(), &roots, &cache).unwrap(), 100).unwrap();
        assert_eq!((info.kind, info.head.len()), (PathKind::Other, 0));
        let zero = prober.probe(&locate("zero", &roots, &cache).unwrap(), 100).unwrap();
        assert_eq!((zero.kind, zero.head.len()), (PathKind::Symlink, 0));
    }

    #[test]
    fn paths_outside_the_roots_or_with_dot_dot_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(tmp.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("escape")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("up")).unwrap();
        let roots = vec![(root.clone(), handle(&root))];
        let cache = handle(&root);
        let outside = tmp.path().join("secret");
        assert!(matches!(locate(outside.to_str().unwrap(), &roots, &cache), Err(Error::Denied { .. })));
        for bad in ["../secret", "images/../../secret"] {
            assert!(matches!(locate(bad, &roots, &cache), Err(Error::InvalidRequest(_))), "{bad}");
        }
        let dotdot = format!("{}/../secret", root.display());
        assert!(locate(&dotdot, &roots, &cache).is_err());
        // A symlink is reported, never followed out of the root.
        let mut prober = Prober::default();
        let escape = prober.probe(&locate("escape", &roots, &cache).unwrap(), 100).unwrap();
        assert_eq!(escape.kind, PathKind::Symlink);
        assert!(escape.head.is_empty());
        let err = prober.probe(&locate("up/secret", &roots, &cache).unwrap(), 100).unwrap_err();
        assert!(matches!(error("up/secret", &err), Error::Denied { .. }), "{err}");
    }
}

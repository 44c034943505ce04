//! Installing one file under a directory handle that stands for an image's
//! root, with every path resolved inside that root.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use sha2::{Digest, Sha256};

use super::Install;
use crate::digest::hex;
use crate::error::{Error, Result};

fn inject(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Error {
    Error::InjectFailed(format!("{what}: {err}"))
}

/// Splits an absolute image path into its components, refusing `.`, `..`,
/// empty components and `/` itself.
pub fn components(target: &str) -> Result<Vec<&str>> {
    let rest = target
        .strip_prefix('/')
        .ok_or_else(|| Error::InvalidRequest(format!("install target {target:?} is not absolute")))?;
    let parts: Vec<&str> = rest.split('/').collect();
    if rest.is_empty() || parts.iter().any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0')) {
        return Err(Error::InvalidRequest(format!("install target {target:?} is not a normalised file path")));
    }
    Ok(parts)
}

/// Opens (creating when missing, mode 0755) the directory `parts` below
/// `root`, resolving symlinks as if `root` were `/`.
fn open_parent(root: BorrowedFd<'_>, parts: &[&str]) -> Result<OwnedFd> {
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir =
        rustix::fs::openat2(root, ".", flags, Mode::empty(), resolve).map_err(|e| inject("the image root", e))?;
    for i in 0..parts.len() {
        let sub = parts[..=i].join("/");
        dir = match rustix::fs::openat2(root, sub.as_str(), flags, Mode::empty(), resolve) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::mkdirat(&dir, parts[i], Mode::from_raw_mode(0o755))
                    .map_err(|e| inject(format!("creating /{sub}"), e))?;
                rustix::fs::openat2(root, sub.as_str(), flags, Mode::empty(), resolve)
                    .map_err(|e| inject(format!("/{sub}"), e))?
            }
            Err(e) => return Err(inject(format!("/{sub}"), e)),
        };
    }
    Ok(dir)
}

/// Installs `source` at `install.target` below `root`.
pub fn install_file(root: BorrowedFd<'_>, source: &mut dyn Read, install: &Install) -> Result<()> {
    let parts = components(&install.target)?;
    let (name, parents) = parts.split_last().expect("components is never empty");
    let parent = open_parent(root, parents)?;
    match rustix::fs::unlinkat(&parent, *name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(rustix::io::Errno::ISDIR) => {
            return Err(inject(&install.target, "is a directory in the image"));
        }
        Err(e) => return Err(inject(&install.target, e)),
    }
    let fd = rustix::fs::openat(
        &parent,
        *name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o700),
    )
    .map_err(|e| inject(&install.target, e))?;
    let mut out = File::from(fd);
    let result = copy_checked(source, &mut out, install).and_then(|()| {
        rustix::fs::fchown(out.as_fd(), Some(rustix::fs::Uid::ROOT), Some(rustix::fs::Gid::ROOT))
            .map_err(|e| inject(format!("chown {}", install.target), e))?;
        rustix::fs::fchmod(out.as_fd(), Mode::from_raw_mode(install.mode & 0o7777))
            .map_err(|e| inject(format!("chmod {}", install.target), e))?;
        out.sync_all().map_err(|e| write_error(&install.target, &e))
    });
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&parent, *name, AtFlags::empty());
    }
    result
}

fn write_error(target: &str, err: &std::io::Error) -> Error {
    if err.raw_os_error() == Some(libc::ENOSPC) {
        Error::InjectFailed(format!("the image has no room for {target}; raise --size or omit it"))
    } else {
        inject(target, err)
    }
}

fn copy_checked(source: &mut dyn Read, out: &mut File, install: &Install) -> Result<()> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = source.read(&mut buf).map_err(|e| inject("reading the agent", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| write_error(&install.target, &e))?;
    }
    let actual = hex(&hasher.finalize());
    if actual != install.sha256 {
        return Err(Error::InjectFailed(format!(
            "the agent changed during the build (sha256 {actual}, expected {}); retry",
            install.sha256
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn install(target: &str, bytes: &[u8]) -> Install {
        Install { target: target.into(), mode: 0o755, sha256: hex(&Sha256::digest(bytes)) }
    }

    fn agent(dir: &std::path::Path, bytes: &[u8]) -> File {
        let path = dir.join("agent-src");
        std::fs::write(&path, bytes).unwrap();
        File::open(path).unwrap()
    }

    #[test]
    fn the_file_lands_with_its_mode_creating_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let root_fd = File::open(&root).unwrap();
        install_file(root_fd.as_fd(), &mut agent(tmp.path(), b"agent"), &install("/sbin/vm-agent", b"agent")).unwrap();
        let meta = std::fs::metadata(root.join("sbin/vm-agent")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read(root.join("sbin/vm-agent")).unwrap(), b"agent");
        if rustix::process::geteuid().is_root() {
            assert_eq!(meta.uid(), 0);
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_image_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        // Merged-usr: /sbin -> usr/sbin. And a hostile absolute link.
        std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        let root_fd = File::open(&root).unwrap();
        install_file(root_fd.as_fd(), &mut agent(tmp.path(), b"a"), &install("/sbin/vm-agent", b"a")).unwrap();
        assert!(root.join("usr/sbin/vm-agent").is_file());
        // The absolute link resolves to <root>/<outside path>, which does not
        // exist, and creating `evil` fails because the link is in the way.
        let escaped = install_file(root_fd.as_fd(), &mut agent(tmp.path(), b"b"), &install("/evil/x", b"b"));
        assert_eq!(escaped.unwrap_err().class(), "inject-failed");
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "wrote through an absolute symlink");
    }

    #[test]
    fn a_digest_mismatch_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let root_fd = File::open(&root).unwrap();
        let err =
            install_file(root_fd.as_fd(), &mut agent(tmp.path(), b"new"), &install("/vm-agent", b"old")).unwrap_err();
        assert_eq!(err.class(), "inject-failed");
        assert!(!root.join("vm-agent").exists());
    }

    #[test]
    fn bad_targets_are_refused() {
        for bad in ["", "/", "relative", "/a/../b", "/a//b", "/a/./b"] {
            assert!(components(bad).is_err(), "{bad:?}");
        }
    }
}

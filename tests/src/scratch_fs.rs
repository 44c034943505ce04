//! Filesystems made for one test: a sparse file in `/var/tmp`, formatted
//! (xfs with `reflink=1`, btrfs, ext4) and loop-mounted with mount(8).
//! Unmounted and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A filesystem type the tests make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// xfs with `-m reflink=1`: shares blocks (`FICLONE`, `FICLONERANGE`).
    Xfs,
    /// btrfs: shares blocks.
    Btrfs,
    /// ext4: shares nothing; every clone falls back to a copy.
    Ext4,
}

impl FsKind {
    /// The `mkfs` program and its arguments (the device follows).
    fn mkfs(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Xfs => ("mkfs.xfs", &["-q", "-f", "-m", "reflink=1"]),
            Self::Btrfs => ("mkfs.btrfs", &["-q", "-f"]),
            Self::Ext4 => ("mkfs.ext4", &["-q", "-F"]),
        }
    }

    /// Whether this machine can make one: its `mkfs` is installed and the
    /// kernel knows the filesystem (`/proc/filesystems`, after a `modprobe`).
    pub fn available(self) -> bool {
        let (mkfs, _) = self.mkfs();
        let name = format!("{self:?}").to_lowercase();
        let _ = Command::new("modprobe").arg(&name).output();
        let known = std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.lines().any(|l| l.ends_with(&name)));
        known && Command::new(mkfs).arg("-V").output().is_ok_and(|o| o.status.success())
    }
}

/// A mounted scratch filesystem.
pub struct ScratchFs {
    /// Where it is mounted.
    pub path: PathBuf,
    /// Its type.
    pub kind: FsKind,
    _dir: tempfile::TempDir,
}

impl ScratchFs {
    /// Makes and mounts a filesystem of `kind`, `bytes` long (sparse).
    pub fn new(kind: FsKind, bytes: u64) -> Self {
        let dir = tempfile::Builder::new().prefix("rootfs-cache-fs").tempdir_in("/var/tmp").unwrap();
        let backing = dir.path().join("fs.img");
        std::fs::File::create(&backing).unwrap().set_len(bytes).unwrap();
        let (mkfs, args) = kind.mkfs();
        let out = Command::new(mkfs).args(args).arg(&backing).output().unwrap();
        assert!(out.status.success(), "{mkfs}: {}", String::from_utf8_lossy(&out.stderr));
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount").args(["-o", "loop"]).arg(&backing).arg(&path).output().unwrap();
        assert!(out.status.success(), "mount {kind:?}: {}", String::from_utf8_lossy(&out.stderr));
        Self { path, kind, _dir: dir }
    }

    /// Bytes in use, after everything written so far reached the disk (so
    /// that delayed allocation and btrfs's transactions are counted).
    pub fn used_bytes(&self) -> u64 {
        let dir = std::fs::File::open(&self.path).unwrap();
        rustix::fs::syncfs(&dir).unwrap();
        if self.kind == FsKind::Btrfs {
            // btrfs reports freed and allocated extents once its transaction commits.
            let _ = Command::new("btrfs").args(["filesystem", "sync"]).arg(&self.path).output();
        }
        let stat = rustix::fs::fstatvfs(&dir).unwrap();
        (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    }

    /// A directory `name` in it.
    pub fn dir(&self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Disk blocks `path` uses, in bytes (`st_blocks`), shared or not.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).unwrap().blocks() * 512
}

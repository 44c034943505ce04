//! Fixtures and helpers for rootfs-cache's integration tests.
//!
//! Fixtures are built by the tests themselves: overlay2 chains with real
//! whiteouts (character devices 0/0) and opaque directories
//! (`trusted.overlay.opaque`), OCI layouts with gzip layers, agents, and small
//! converter scripts.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub mod compare;
pub mod dockerd;
pub mod oci;
pub mod scratch_fs;
pub mod token_server;
pub mod vm;

/// A child forked from this process that holds copies of every descriptor
/// the process had at the fork, as a child forked by any thread of an
/// embedding process holds them until it execs, until it is released.
pub struct ForkedCopies {
    pid: libc::pid_t,
    release: Option<std::os::fd::OwnedFd>,
}

impl ForkedCopies {
    /// Forks the child.
    pub fn hold() -> Self {
        use std::os::fd::AsRawFd;

        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        // SAFETY: the child calls only async-signal-safe functions (close,
        // read, _exit) before it exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above; the child waits for the parent to close the
            // pipe's write end.
            unsafe {
                libc::close(write_end.as_raw_fd());
                let mut byte = 0u8;
                libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        Self { pid, release: Some(write_end) }
    }

    /// Lets the child exit and reaps it: its copies are closed when this
    /// returns.
    pub fn release(mut self) {
        self.reap();
    }

    fn reap(&mut self) {
        if self.release.take().is_some() {
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

impl Drop for ForkedCopies {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Marsaglia's xorshift64: the same numbers for the same seed on every run,
/// for trees and data the tests and benchmarks generate.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next number of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `len` bytes that do not compress (xorshift64 from `seed`, low byte of each
/// step): data that fills a disk however the filesystem stores it.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Whether this process may use loop devices, mknod and `trusted.*` xattrs.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips the calling test unless running as root, saying why. CI runs as
/// root, so there every such test runs.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!(
                "SKIPPED: {} needs root (loop devices, mknod, trusted.* xattrs); CI runs it as root",
                module_path!()
            );
            if std::env::var_os("CI").is_some() {
                panic!("CI must run this test as root");
            }
            return;
        }
    };
}

/// The median of timed runs (the upper one of an even count), for the
/// benchmarks' tables.
pub fn median(mut runs: Vec<std::time::Duration>) -> std::time::Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// SHA-256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a published entry's image for writing, as a runtime that booted
/// the entry itself would: entries are published read-only (0444), which
/// stops its owner, not root.
pub fn open_entry_for_writing(image: &Path) -> std::fs::File {
    std::fs::set_permissions(image, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new().write(true).open(image).unwrap()
}

/// Writes an executable file.
pub fn write_executable(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A Docker-style overlay2 storage directory being built layer by layer.
pub struct Overlay2 {
    root: PathBuf,
    links: Vec<String>,
    count: usize,
}

/// The `diff/` of one layer under construction.
pub struct LayerDiff {
    /// The `diff/` directory.
    pub diff: PathBuf,
}

impl LayerDiff {
    fn at(&self, path: &str) -> PathBuf {
        let p = self.diff.join(path.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        p
    }

    /// A regular file.
    pub fn file(&self, path: &str, contents: &[u8], mode: u32) -> &Self {
        let p = self.at(path);
        std::fs::write(&p, contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// A directory.
    pub fn dir(&self, path: &str, mode: u32) -> &Self {
        let p = self.at(path);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// A symlink.
    pub fn symlink(&self, path: &str, target: &str) -> &Self {
        std::os::unix::fs::symlink(target, self.at(path)).unwrap();
        self
    }

    /// An overlayfs whiteout: a character device 0/0 (needs root).
    pub fn whiteout(&self, path: &str) -> &Self {
        mknod(&self.at(path), rustix::fs::FileType::CharacterDevice, 0, 0);
        self
    }

    /// An opaque directory: `trusted.overlay.opaque=y` (needs root).
    pub fn opaque(&self, path: &str) -> &Self {
        let p = self.at(path);
        std::fs::create_dir_all(&p).unwrap();
        set_xattr(&p, "trusted.overlay.opaque", b"y");
        self
    }
}

/// Makes a device node or FIFO at `path` (devices need root).
pub fn mknod(path: &Path, kind: rustix::fs::FileType, mode: u32, dev: rustix::fs::Dev) {
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, rustix::fs::Mode::from_raw_mode(mode), dev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

/// Sets an extended attribute, panicking on failure.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let c_name = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe { libc::lsetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}

impl Overlay2 {
    /// Starts an overlay2 directory at `root`.
    pub fn new(root: &Path) -> Self {
        std::fs::create_dir_all(root.join("l")).unwrap();
        Self { root: root.to_path_buf(), links: Vec::new(), count: 0 }
    }

    /// The overlay2 root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Builds the next layer on the first `keep` layers only, so that a
    /// second image shares its base with the first.
    pub fn branch(&mut self, keep: usize) {
        self.links.truncate(keep);
    }

    /// Adds a layer on top; returns its layer directory.
    pub fn layer(&mut self, fill: impl FnOnce(&LayerDiff)) -> PathBuf {
        self.count += 1;
        let chain = sha256_hex(format!("{}-{}", self.root.display(), self.count).as_bytes());
        let link = format!("L{:025}", self.count);
        let dir = self.root.join(&chain);
        std::fs::create_dir_all(dir.join("diff")).unwrap();
        std::fs::write(dir.join("link"), &link).unwrap();
        if !self.links.is_empty() {
            let lower: Vec<String> = self.links.iter().rev().map(|l| format!("l/{l}")).collect();
            std::fs::write(dir.join("lower"), lower.join(":")).unwrap();
        }
        std::os::unix::fs::symlink(format!("../{chain}/diff"), self.root.join("l").join(&link)).unwrap();
        fill(&LayerDiff { diff: dir.join("diff") });
        self.links.push(link);
        dir
    }
}

/// The standard two-layer chain of the tests: a base layer, and a top layer
/// that deletes a file (whiteout), replaces a directory (opaque) and adds
/// files. Returns the top layer directory.
pub fn standard_chain(root: &Path) -> PathBuf {
    let mut o = Overlay2::new(root);
    o.layer(|l| {
        l.file("/etc/os-release", b"ID=fixture\n", 0o644)
            .file("/etc/deleted-by-top", b"should be gone\n", 0o644)
            .file("/opt/app/old-config", b"old\n", 0o644)
            .file("/usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
            .symlink("/bin", "usr/bin");
    });
    o.layer(|l| {
        l.file("/etc/motd", b"top layer\n", 0o644).file("/srv/data.txt", b"data from the top layer\n", 0o600);
        if is_root() {
            l.whiteout("/etc/deleted-by-top");
            l.opaque("/opt/app");
            l.file("/opt/app/new-config", b"new\n", 0o644);
        }
    })
}

/// An agent binary with distinguishable bytes.
pub fn agent(dir: &Path, name: &str, marker: &str) -> PathBuf {
    let path = dir.join(name);
    write_executable(&path, format!("#!/bin/sh\n# agent {marker}\necho {marker}\n").as_bytes());
    path
}

/// A read-only mount of an image through mount(8), independent of the code
/// under test. Unmounted on drop.
pub struct ReadOnlyMount {
    /// Where it is mounted.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ReadOnlyMount {
    /// Mounts `image` read-only with the kernel's ext4 driver.
    pub fn new(image: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let out =
            Command::new("mount").args(["-t", "ext4", "-o", "loop,ro,noload"]).arg(image).arg(&path).output().unwrap();
        assert!(out.status.success(), "mount {}: {}", image.display(), String::from_utf8_lossy(&out.stderr));
        Self { path, _dir: dir }
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Loop devices attached to files under `dir`.
pub fn loop_devices_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file"))
            && Path::new(backing.trim_end()).starts_with(&dir)
        {
            found.push(format!("{name} -> {}", backing.trim_end()));
        }
    }
    found
}

/// Mounts whose source or target mentions `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter(|l| l.contains(dir.to_str().unwrap_or("\0"))).map(str::to_owned).collect()
}

/// Every file under `dir`, relative, sorted, with its length, excluding the
/// precompiled component (which a test's first process writes).
pub fn snapshot(dir: &Path) -> Vec<(String, u64)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                if rel != "engine" {
                    out.push((format!("{rel}/"), 0));
                    walk(base, &path, out);
                }
            } else {
                out.push((rel, meta.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Files in `<cache>/tmp`.
pub fn temp_files(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The `rootfs-cache` binary of this build. It is built (a no-op when it is
/// up to date) once per test process, with the crash tests' pause points,
/// so a test never runs a stale binary.
pub fn rootfs_cache_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
            let target_dir = profile_dir.parent().unwrap();
            let mut build = Command::new(env!("CARGO"));
            build.args(["build", "--quiet", "-p", "rootfs-cache", "--bin", "rootfs-cache", "--features", "test-hooks"]);
            build.arg("--target-dir").arg(target_dir).current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.file_name() == Some("release".as_ref()) {
                build.arg("--release");
            }
            let status = build.status().unwrap();
            let bin = profile_dir.join("rootfs-cache");
            assert!(status.success() && bin.exists(), "building {} failed", bin.display());
            bin
        })
        .clone()
}

/// Runs the CLI with `args`; returns (exit code, stdout, stderr).
pub fn cli(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(rootfs_cache_bin()).args(args).env_remove("ROOTFS_CACHE_AGENT").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A converter script following oci2rootfs's contract that logs each call
/// to `log` and then runs `then` (a shell fragment) with the same arguments.
pub fn converter_script(dir: &Path, name: &str, log: &Path, then: &str) -> PathBuf {
    let path = dir.join(name);
    let mut script = std::fs::File::create(&path).unwrap();
    writeln!(script, "#!/bin/sh\necho \"$@\" >> '{}'\n{then}", log.display()).unwrap();
    drop(script);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The test-only `oci2rootfs-cli` program (the oci2rootfs crate behind its
/// command-line contract).
pub fn oci2rootfs_cli() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("oci2rootfs-cli");
    assert!(bin.exists(), "{} is missing: run the tests with `cargo test --workspace`", bin.display());
    bin
}

/// Sets a file's times (atime = mtime) with nanoseconds, without following symlinks.
pub fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = rustix::fs::Timespec { tv_sec: secs, tv_nsec: nanos };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps { last_access: t, last_modification: t },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Changes owner without following symlinks.
pub fn lchown(path: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A marker that the base layer writes and the top layer deletes: it must
/// not be readable anywhere in an image built from the chain.
pub const DELETED_MARKER: &[u8] = b"DELETED-DATA-7f3a9c1e-must-not-survive";

/// A three-layer overlay2 chain with every kind of entry and every kind of
/// change between layers (needs root). Returns the top layer directory.
pub fn feature_chain(root: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut o = Overlay2::new(root);
    o.layer(|l| {
        l.dir("/etc", 0o755)
            .file("/etc/os-release", b"ID=features\n", 0o644)
            .file("/etc/deleted-file", DELETED_MARKER, 0o644)
            .dir("/etc/deleted-dir", 0o755)
            .file("/etc/deleted-dir/child", DELETED_MARKER, 0o600)
            .symlink("/etc/deleted-link", "os-release")
            .dir("/opt/app", 0o750)
            .file("/opt/app/old-config", b"old\n", 0o644)
            .file("/data/will-be-dir", b"a file first\n", 0o644)
            .dir("/data/will-be-file", 0o755)
            .file("/data/will-be-file/child", b"x", 0o644)
            .file("/usr/bin/suid", b"#!/bin/sh\n", 0o4755)
            .file("/usr/bin/sgid", b"#!/bin/sh\n", 0o2755)
            .dir("/tmp", 0o1777)
            .file("/data/hl-a", b"hardlinked\n", 0o644)
            .file("/data/hl-doomed", b"hardlinked and deleted\n", 0o644)
            .symlink("/bin", "usr/bin");
        std::fs::hard_link(l.diff.join("data/hl-a"), l.diff.join("data/hl-b")).unwrap();
        std::fs::hard_link(l.diff.join("data/hl-a"), l.diff.join("usr/bin/hl-c")).unwrap();
        std::fs::hard_link(l.diff.join("data/hl-doomed"), l.diff.join("data/hl-survivor")).unwrap();
        // A sparse file: 8 MiB with a little data in the middle.
        let sparse = std::fs::File::create(l.diff.join("data/sparse")).unwrap();
        sparse.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 4 << 20).unwrap();
        // Owners of files, directories and symlinks.
        l.file("/home/user/file", b"mine\n", 0o640).symlink("/home/user/link", "file");
        lchown(&l.diff.join("home/user"), 1000, 1000);
        lchown(&l.diff.join("home/user/file"), 1000, 100);
        lchown(&l.diff.join("home/user/link"), 1234, 5678);
        // Devices, a FIFO, xattrs.
        use rustix::fs::{FileType, makedev};
        mknod(&l.diff.join("dev-null"), FileType::CharacterDevice, 0o666, makedev(1, 3));
        mknod(&l.diff.join("dev-loop"), FileType::BlockDevice, 0o660, makedev(7, 300));
        mknod(&l.diff.join("fifo"), FileType::Fifo, 0o644, 0);
        l.file("/usr/bin/ping", b"\x7fELF not really\n", 0o755);
        // cap_net_raw=ep, VFS_CAP_REVISION_2.
        set_xattr(
            &l.diff.join("usr/bin/ping"),
            "security.capability",
            &[0, 0, 0, 2, 0, 32, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        set_xattr(&l.diff.join("etc/os-release"), "user.origin", b"layer one");
        set_xattr(&l.diff.join("data/hl-a"), "user.big", &vec![b'x'; 1500]);
        // Names and targets that are not UTF-8.
        let odd = l.diff.join(std::ffi::OsStr::from_bytes(b"caf\xe9-\xff"));
        std::fs::write(&odd, b"latin-1 name\n").unwrap();
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(b"target-\xfe"), l.diff.join("odd-link")).unwrap();
        set_mtime(&l.diff.join("etc/os-release"), 1_600_000_000, 123_456_789);
        set_mtime(&l.diff.join("bin"), 1_500_000_000, 987_654_321);
    });
    o.layer(|l| {
        l.whiteout("/etc/deleted-file")
            .whiteout("/etc/deleted-dir")
            .whiteout("/etc/deleted-link")
            .whiteout("/data/hl-doomed")
            .opaque("/opt/app")
            .file("/opt/app/new-config", b"new\n", 0o600)
            .file("/data/will-be-file", b"now a file\n", 0o644)
            .dir("/data/will-be-dir", 0o700)
            .file("/data/will-be-dir/child", b"now a directory\n", 0o644)
            .file("/etc/motd", b"layer two\n", 0o644);
        // A directory of 5,000 entries.
        let many = l.diff.join("many");
        std::fs::create_dir(&many).unwrap();
        for i in 0..5000 {
            std::fs::write(many.join(format!("entry-{i:05}")), i.to_string()).unwrap();
        }
    });
    o.layer(|l| {
        l.file("/etc/motd", b"layer three\n", 0o644).dir("/etc", 0o755);
        set_mtime(&l.diff.join("etc/motd"), 1_700_000_000, 1);
    })
}

/// Mounts an overlay2 chain's `diff/` directories read-only with the
/// kernel's overlayfs through mount(8): the reference for what a container
/// sees. Unmounted on drop.
pub struct OverlayMount {
    /// The merged tree.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl OverlayMount {
    /// Mounts the chain whose top layer directory is `top`.
    pub fn new(top: &Path) -> Self {
        let root = top.parent().unwrap();
        let mut layers = vec![top.join("diff")];
        if let Ok(lower) = std::fs::read_to_string(top.join("lower")) {
            for link in lower.trim_end().split(':') {
                layers.push(root.join(link).canonicalize().unwrap());
            }
        }
        let dir = tempfile::tempdir().unwrap();
        if layers.len() == 1 {
            let empty = dir.path().join("empty");
            std::fs::create_dir(&empty).unwrap();
            layers.push(empty);
        }
        let path = dir.path().join("merged");
        std::fs::create_dir(&path).unwrap();
        let lowerdir: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowerdir.join(":")))
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "overlay mount: {}", String::from_utf8_lossy(&out.stderr));
        Self { path, _dir: dir }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// `e2fsck -fn` on an image: its exit status and output.
pub fn fsck(image: &Path) -> (i32, String) {
    let out = Command::new("e2fsck").arg("-fn").arg(image).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// The `diff/` directories of the chain whose top layer directory is `top`,
/// bottom first.
pub fn chain_diffs(top: &Path) -> Vec<PathBuf> {
    let root = top.parent().unwrap();
    let mut diffs = vec![top.join("diff")];
    if let Ok(lower) = std::fs::read_to_string(top.join("lower")) {
        for link in lower.trim_end().split(':') {
            diffs.push(root.join(link).canonicalize().unwrap());
        }
    }
    diffs.reverse();
    diffs
}

/// "N MB in M entries" for the chain whose top layer directory is `top`.
pub fn describe_tree(top: &Path) -> String {
    let (mut bytes, mut entries) = (0u64, 0u64);
    for diff in chain_diffs(top) {
        let mut stack = vec![diff];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                entries += 1;
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    stack.push(e.path());
                } else {
                    bytes += meta.len();
                }
            }
        }
    }
    format!("{} MB in {entries} entries", bytes / 1_000_000)
}

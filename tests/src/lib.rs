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

pub mod oci;

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

/// SHA-256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
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
        let p = self.at(path);
        rustix::fs::mknodat(rustix::fs::CWD, &p, rustix::fs::FileType::CharacterDevice, rustix::fs::Mode::empty(), 0)
            .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
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

/// The `rootfs-cache` binary built alongside these tests.
pub fn rootfs_cache_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("rootfs-cache");
    assert!(bin.exists(), "{} is missing: run the tests with `cargo test --workspace`", bin.display());
    bin
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

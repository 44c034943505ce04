//! Booting an image in a QEMU `microvm` as its root filesystem, with a test
//! agent as PID 1 that reports what it sees (the recipe is in the README's
//! "Booting an image in a micro-VM").
//!
//! [`Vm::prepare`] finds or builds, once per machine under
//! `/var/tmp/rootfs-cache-vm/` (or `ROOTFS_CACHE_VM_DIR`): Debian's cloud
//! kernel and its four virtio modules (unpacked from `apt-get download`, keyed
//! by the package's name and version), a static busybox, an initramfs that
//! loads the modules, mounts `/dev/vda` read-write and `switch_root`s into
//! `/sbin/vm-agent`, and the agent itself, compiled from
//! `tests/vm-agent/agent.rs` (std only, statically linked). [`Vm::boot`] runs
//! QEMU under a timeout and parses the agent's report from the serial
//! console into a [`BootReport`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::sha256_hex;

/// The agent's source, compiled by [`Vm::prepare`].
const AGENT_SOURCE: &str = include_str!("../vm-agent/agent.rs");

/// The kernel command line. The three timer options keep TCG boots from
/// hanging while the kernel calibrates the TSC.
const CMDLINE: &str =
    "console=ttyS0 panic=-1 mitigations=off loglevel=3 tsc_early_khz=2000000 lpj=8000000 no_timer_check";

/// The modules the initramfs loads, in the order they must be loaded.
const MODULES: [&str; 4] = ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"];

/// The initramfs's `/init`.
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc; $B mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_blk; do $B insmod /mod/$m.ko; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do $B sleep 0.1; i=$((i+1)); done
$B mount -t ext4 -o rw /dev/vda /newroot || { echo ROOT-MOUNT-FAILED; $B poweroff -f; }
$B umount /proc; $B umount /dev
exec $B switch_root /newroot /sbin/vm-agent
"#;

/// Why a VM could not be prepared or booted.
#[derive(Debug)]
pub enum VmError {
    /// This machine cannot boot a VM (no QEMU, no apt, no kernel package):
    /// a test skips, except under `CI=true`.
    Unavailable(String),
    /// A step failed, or the VM did not finish in time; the message carries
    /// the console's tail where there is one.
    Failed(String),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "no micro-VM on this machine: {why}"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for VmError {}

fn failed(what: impl fmt::Display) -> VmError {
    VmError::Failed(what.to_string())
}

/// A prepared micro-VM: kernel, initramfs, agent and accelerator.
#[derive(Clone, Debug)]
pub struct Vm {
    kernel: PathBuf,
    initrd: PathBuf,
    agent: PathBuf,
    accel: String,
}

impl Vm {
    /// Finds or builds everything a boot needs (downloads the kernel and,
    /// where `/bin/busybox` is not static, `busybox-static` with `apt-get
    /// download`; compiles the agent with `rustc`) and picks KVM when a
    /// probe boot works with it, TCG otherwise. `ROOTFS_CACHE_VM_ACCEL=tcg`
    /// or `kvm` skips the probe. [`VmError::Unavailable`] when QEMU or apt
    /// is missing or apt knows no cloud kernel.
    pub fn prepare() -> Result<Self, VmError> {
        if !program_exists("qemu-system-x86_64") {
            return Err(VmError::Unavailable("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into()));
        }
        let root = std::env::var_os("ROOTFS_CACHE_VM_DIR").map_or_else(|| "/var/tmp/rootfs-cache-vm".into(), PathBuf::from);
        std::fs::create_dir_all(&root).map_err(|e| failed(format!("creating {}: {e}", root.display())))?;
        let kernel_dir = kernel_dir(&root)?;
        let agent = agent(&root)?;
        let mut vm = Self { kernel: kernel_dir.join("vmlinuz"), initrd: kernel_dir.join("initrd.gz"), agent, accel: "tcg".into() };
        vm.accel = match std::env::var("ROOTFS_CACHE_VM_ACCEL") {
            Ok(accel) => accel,
            Err(_) => vm.probe_accel(&kernel_dir)?,
        };
        Ok(vm)
    }

    /// [`Vm::prepare`] for a test: `None` after printing `SKIPPED: <reason>`
    /// when this machine cannot boot a VM, and a panic instead under
    /// `CI=true` or when preparing failed.
    pub fn prepare_or_skip() -> Option<Self> {
        match Self::prepare() {
            Ok(vm) => Some(vm),
            Err(VmError::Unavailable(why)) => {
                eprintln!("SKIPPED: {why}");
                assert!(std::env::var_os("CI").is_none(), "CI must boot the micro-VM: {why}");
                None
            }
            Err(e) => panic!("preparing the micro-VM: {e}"),
        }
    }

    /// The test agent, to install as the image's `/sbin/vm-agent`.
    pub fn agent(&self) -> &Path {
        &self.agent
    }

    /// The kernel, initramfs and accelerator a boot uses.
    pub fn parts(&self) -> (&Path, &Path, &str) {
        (&self.kernel, &self.initrd, &self.accel)
    }

    /// The QEMU command line that boots `image` (raw ext4, written to by
    /// the guest) as `/dev/vda`.
    pub fn command(&self, image: &Path) -> Command {
        let mut qemu = Command::new("qemu-system-x86_64");
        let cpu = if self.accel == "kvm" { "host" } else { "qemu64" };
        qemu.args(["-M", &format!("microvm,accel={}", self.accel), "-cpu", cpu, "-m", "512"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", CMDLINE])
            .arg("-drive")
            .arg(format!("id=root,file={},format=raw,if=none", image.display().to_string().replace(',', ",,")))
            .args(["-device", "virtio-blk-device,drive=root", "-no-reboot"]);
        qemu
    }

    /// Boots `image` (which the agent changes: boot a copy) and returns what
    /// the agent reported. Fails when QEMU fails, runs past `timeout` (QEMU
    /// is killed), or the console holds no complete report; every such
    /// error ends with the console's tail.
    pub fn boot(&self, image: &Path, timeout: Duration) -> Result<BootReport, VmError> {
        let (console, elapsed) = self.run(self.command(image), timeout)?;
        BootReport::parse(&console, elapsed)
    }

    /// Runs QEMU under `timeout`; returns the console and the time taken.
    fn run(&self, mut qemu: Command, timeout: Duration) -> Result<(String, Duration), VmError> {
        let logs = tempfile::tempdir().map_err(failed)?;
        let console_path = logs.path().join("console");
        let stderr_path = logs.path().join("stderr");
        let console_file = std::fs::File::create(&console_path).map_err(failed)?;
        let stderr_file = std::fs::File::create(&stderr_path).map_err(failed)?;
        let started = Instant::now();
        let mut child = qemu
            .stdin(Stdio::null())
            .stdout(console_file)
            .stderr(stderr_file)
            .spawn()
            .map_err(|e| failed(format!("starting qemu-system-x86_64: {e}")))?;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(failed)? {
                break Some(status);
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let elapsed = started.elapsed();
        let console = String::from_utf8_lossy(&std::fs::read(&console_path).unwrap_or_default()).replace('\r', "");
        let stderr = String::from_utf8_lossy(&std::fs::read(&stderr_path).unwrap_or_default()).into_owned();
        match status {
            None => Err(failed(format!(
                "the VM ran past {timeout:?} and was killed; console tail:\n{}\nqemu stderr:\n{}",
                tail(&console),
                tail(&stderr)
            ))),
            Some(status) if !status.success() => Err(failed(format!(
                "qemu-system-x86_64 exited with {status}: {}\nconsole tail:\n{}",
                tail(&stderr),
                tail(&console)
            ))),
            Some(_) => Ok((console, elapsed)),
        }
    }

    /// Boots the kernel with no disk under KVM once per machine: the
    /// initramfs reports `ROOT-MOUNT-FAILED` and powers off where KVM works;
    /// where it does not (KVM inside some VMs fails on the kernel's first
    /// `cmpxchg16b`), the probe fails or times out and TCG is used.
    fn probe_accel(&self, kernel_dir: &Path) -> Result<String, VmError> {
        let remembered = kernel_dir.join("accel");
        if let Ok(accel) = std::fs::read_to_string(&remembered) {
            return Ok(accel.trim().to_string());
        }
        let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
            && Self { accel: "kvm".into(), ..self.clone() }
                .run(self.probe_command(), Duration::from_secs(20))
                .is_ok_and(|(console, _)| console.contains("ROOT-MOUNT-FAILED"));
        let accel = if kvm { "kvm" } else { "tcg" };
        std::fs::write(&remembered, accel).map_err(failed)?;
        Ok(accel.into())
    }

    fn probe_command(&self) -> Command {
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-M", "microvm,accel=kvm", "-cpu", "host", "-m", "512"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", CMDLINE, "-no-reboot"]);
        qemu
    }
}

/// The last 40 lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn program_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Runs a command; its stdout, or an error with its stderr.
fn output(cmd: &mut Command) -> Result<String, VmError> {
    let out = cmd.output().map_err(|e| failed(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!("{cmd:?} exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A fresh directory under `root` to build in before renaming it into place.
fn staging(root: &Path) -> Result<PathBuf, VmError> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let dir = root.join(format!(".staging-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(failed)?;
    Ok(dir)
}

/// Renames `staging` to `dir`; another process that got there first wins.
fn publish(staging: &Path, dir: &Path) -> Result<(), VmError> {
    if std::fs::rename(staging, dir).is_err() {
        let _ = std::fs::remove_dir_all(staging);
        if !dir.is_dir() {
            return Err(failed(format!("could not create {}", dir.display())));
        }
    }
    Ok(())
}

/// The kernel package `linux-image-cloud-amd64` depends on, and its version.
fn kernel_package() -> Result<(String, String), VmError> {
    if !program_exists("apt-cache") || !program_exists("apt-get") || !program_exists("dpkg-deb") {
        return Err(VmError::Unavailable("no apt-get, apt-cache or dpkg-deb: the kernel comes from Debian's archive".into()));
    }
    let depends = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))
        .map_err(|e| VmError::Unavailable(format!("apt-cache knows no linux-image-cloud-amd64 (run apt-get update?): {e}")))?;
    let name = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit))
        .ok_or_else(|| VmError::Unavailable(format!("linux-image-cloud-amd64 depends on no kernel:\n{depends}")))?
        .to_string();
    let show = output(Command::new("apt-cache").args(["show", "--no-all-versions", &name]))
        .map_err(|e| VmError::Unavailable(e.to_string()))?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .ok_or_else(|| VmError::Unavailable(format!("apt-cache shows no version of {name}")))?
        .to_string();
    Ok((name, version))
}

/// Downloads and unpacks `package` (`=version` if given) into `into`.
fn download_and_unpack(package: &str, into: &Path) -> Result<(), VmError> {
    let debs = into.join("debs");
    std::fs::create_dir_all(&debs).map_err(failed)?;
    output(Command::new("apt-get").args(["download", "-q", package]).current_dir(&debs))?;
    for deb in std::fs::read_dir(&debs).map_err(failed)?.flatten() {
        output(Command::new("dpkg-deb").arg("-x").arg(deb.path()).arg(into))?;
    }
    std::fs::remove_dir_all(&debs).map_err(failed)
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// The kernel, modules, busybox and initramfs for the current cloud kernel
/// package, built once; where apt cannot say which that is, the newest one
/// built before.
fn kernel_dir(root: &Path) -> Result<PathBuf, VmError> {
    let (name, version) = match kernel_package() {
        Ok(package) => package,
        Err(e) => {
            let mut ready: Vec<PathBuf> = std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("initrd.gz").is_file())
                .collect();
            ready.sort();
            return ready.pop().ok_or(e);
        }
    };
    let dir = root.join(format!("{name}_{version}"));
    if dir.join("initrd.gz").is_file() {
        return Ok(dir);
    }
    let stage = staging(root)?;
    let result = build_kernel_dir(&stage, &name, &version);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    publish(&stage, &dir)?;
    Ok(dir)
}

fn build_kernel_dir(stage: &Path, name: &str, version: &str) -> Result<(), VmError> {
    let unpacked = stage.join("unpacked");
    download_and_unpack(&format!("{name}={version}"), &unpacked)?;
    let files = files_under(&unpacked);
    let vmlinuz = files
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n.as_bytes().starts_with(b"vmlinuz-")))
        .ok_or_else(|| failed(format!("{name} holds no boot/vmlinuz-*")))?;
    std::fs::copy(vmlinuz, stage.join("vmlinuz")).map_err(failed)?;

    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "newroot", "mod"] {
        cpio.entry(dir, 0o040755, &[], 0);
    }
    cpio.entry("dev/console", 0o020600, &[], (5 << 8) | 1);
    cpio.entry("init", 0o100755, INIT.as_bytes(), 0);
    cpio.entry("bin/busybox", 0o100755, &busybox(stage)?, 0);
    for module in MODULES {
        let file = files
            .iter()
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n == format!("{module}.ko") || n.starts_with(&format!("{module}.ko."))
                })
            })
            .ok_or_else(|| failed(format!("{name} holds no {module}.ko")))?;
        let bytes = match file.extension().and_then(|e| e.to_str()) {
            Some("ko") => std::fs::read(file).map_err(failed)?,
            Some("zst") => zstd::decode_all(std::fs::File::open(file).map_err(failed)?).map_err(failed)?,
            Some("xz") => output(Command::new("xz").arg("-dc").arg(file)).map(String::into_bytes)?,
            other => return Err(failed(format!("{}: a module compressed as {other:?}", file.display()))),
        };
        cpio.entry(&format!("mod/{module}.ko"), 0o100644, &bytes, 0);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&cpio.finish()).map_err(failed)?;
    std::fs::write(stage.join("initrd.gz"), gz.finish().map_err(failed)?).map_err(failed)?;
    std::fs::remove_dir_all(&unpacked).map_err(failed)
}

/// A static busybox: `/bin/busybox` if it is one, else the one in
/// `busybox-static`, downloaded into `stage`.
fn busybox(stage: &Path) -> Result<Vec<u8>, VmError> {
    if let Ok(bytes) = std::fs::read("/bin/busybox")
        && is_static_elf(&bytes)
    {
        return Ok(bytes);
    }
    let unpacked = stage.join("busybox-static");
    download_and_unpack("busybox-static", &unpacked)?;
    let bytes = std::fs::read(unpacked.join("bin/busybox")).map_err(failed)?;
    std::fs::remove_dir_all(&unpacked).map_err(failed)?;
    Ok(bytes)
}

/// Whether `bytes` is a 64-bit little-endian ELF without a program
/// interpreter (`PT_INTERP`): one that runs without a dynamic loader.
fn is_static_elf(bytes: &[u8]) -> bool {
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |o: usize| bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    if !bytes.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|t| t != 3))
}

/// A cpio archive in the `newc` format, as the kernel unpacks an initramfs.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inodes: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: u32) {
        self.inodes += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.inodes,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], 0);
        self.bytes
    }
}

/// The agent, compiled once per source and compiler.
fn agent(root: &Path) -> Result<PathBuf, VmError> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = output(Command::new(&rustc).arg("-vV"))?;
    let key = sha256_hex(format!("{AGENT_SOURCE}\n{version}").as_bytes());
    let dir = root.join(format!("agent-{}", &key[..16]));
    let bin = dir.join("vm-agent");
    if bin.is_file() {
        return Ok(bin);
    }
    let stage = staging(root)?;
    std::fs::write(stage.join("agent.rs"), AGENT_SOURCE).map_err(failed)?;
    let built = output(
        Command::new(&rustc)
            .args(["--edition", "2024", "-O", "-C", "strip=symbols", "-C", "target-feature=+crt-static"])
            .args(["--target", "x86_64-unknown-linux-gnu", "agent.rs", "-o", "vm-agent"])
            .current_dir(&stage),
    );
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    publish(&stage, &dir)?;
    Ok(bin)
}

/// One entry as the agent saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEntry {
    /// `f`ile, `d`ir, `l`ink, `c`har, `b`lock, `p`ipe, `s`ocket.
    pub kind: char,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length for files and symlinks, 0 for directories.
    pub size: u64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Device number of character and block devices.
    pub rdev: u64,
    /// Inode number.
    pub ino: u64,
    /// Link count.
    pub nlink: u64,
    /// SHA-256 of a file's content, hex.
    pub digest: Option<String>,
    /// A symlink's target, raw.
    pub target: Option<Vec<u8>>,
    /// Extended attributes: names and SHA-256 of values (hex), sorted.
    pub xattrs: Vec<(Vec<u8>, String)>,
}

/// What the agent reported from inside the VM.
#[derive(Clone, Debug, Default)]
pub struct BootReport {
    /// Every entry, keyed by its path relative to `/` (the root is the empty
    /// path, as in [`crate::compare::walk`]).
    pub entries: BTreeMap<Vec<u8>, VmEntry>,
    /// The paths in the order the agent walked them (sorted depth-first).
    pub order: Vec<Vec<u8>>,
    /// The agent's PID.
    pub pid: u32,
    /// The root mount's filesystem type, options and source, from
    /// `/proc/self/mountinfo`.
    pub root: Option<(String, String, String)>,
    /// Paths the agent created for itself (`/proc` where the image has none).
    pub created: Vec<Vec<u8>>,
    /// The file the agent wrote and the SHA-256 of its content.
    pub wrote: Option<(Vec<u8>, String)>,
    /// The file the agent renamed, and its new name.
    pub renamed: Option<(Vec<u8>, Vec<u8>)>,
    /// The file the agent deleted.
    pub deleted: Option<Vec<u8>>,
    /// Whether the agent called `sync` and got as far as powering off.
    pub powered_off: bool,
    /// What went wrong inside the VM, as the agent saw it.
    pub errors: Vec<String>,
    /// The whole serial console.
    pub console: String,
    /// From starting QEMU to its exit.
    pub elapsed: Duration,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The path relative to `/`, as [`crate::compare::walk`] keys it.
fn relative(hex: &str) -> Option<Vec<u8>> {
    let path = unhex(hex)?;
    Some(path.strip_prefix(b"/").unwrap_or(&path).to_vec())
}

impl BootReport {
    /// Parses the console; fails (with its tail) without a complete report.
    pub fn parse(console: &str, elapsed: Duration) -> Result<Self, VmError> {
        let mut report = Self { console: console.to_string(), elapsed, ..Self::default() };
        let (mut begun, mut ended) = (false, false);
        for line in console.lines() {
            let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
            let fields: Vec<&str> = rest.split(' ').collect();
            let parsed = match tag {
                "BEGIN-REPORT" => Some(begun = true),
                "END-REPORT" => Some(ended = true),
                "PID1" => rest.parse().ok().map(|pid| report.pid = pid),
                "ROOT" if fields.len() == 3 => {
                    Some(report.root = Some((fields[0].into(), fields[1].into(), fields[2].into())))
                }
                "CREATED" => relative(rest).map(|p| report.created.push(p)),
                "WROTE" if fields.len() == 2 => relative(fields[0]).map(|p| report.wrote = Some((p, fields[1].into()))),
                "RENAMED" if fields.len() == 2 => {
                    relative(fields[0]).zip(relative(fields[1])).map(|r| report.renamed = Some(r))
                }
                "DELETED" => relative(rest).map(|p| report.deleted = Some(p)),
                "POWER-OFF" => Some(report.powered_off = true),
                "AGENT-ERROR" => Some(report.errors.push(rest.to_string())),
                "E" if begun && !ended => parse_entry(&fields).map(|(path, e)| {
                    report.order.push(path.clone());
                    report.entries.insert(path, e);
                }),
                _ => Some(()),
            };
            if parsed.is_none() && begun && !ended {
                report.errors.push(format!("unparsable console line: {line}"));
            }
        }
        if !begun || !ended {
            return Err(failed(format!("the console holds no complete report; its tail:\n{}", tail(console))));
        }
        Ok(report)
    }

    /// Every difference between the agent's view and `reference` (a tree
    /// on this host: the kernel's overlay mount, or the image mounted here),
    /// one line each, with `ignore`d paths (and below them) and what the agent
    /// created skipped on both sides. Compares type, mode, owner, size,
    /// content, symlink target, device number, xattrs, mtime and hardlink
    /// groups.
    pub fn differences(&self, reference: &Path, ignore: &[&[u8]]) -> Vec<String> {
        let skip = |p: &[u8]| {
            ignore.iter().chain(self.created.iter().map(Vec::as_slice).collect::<Vec<_>>().iter()).any(|i| {
                p == *i || (p.starts_with(i) && (i.is_empty() || p.get(i.len()) == Some(&b'/')))
            })
        };
        let show = |p: &[u8]| format!("/{}", String::from_utf8_lossy(p));
        let groups = self.hardlink_groups();
        let reference = crate::compare::walk(reference);
        let mut diffs = Vec::new();
        for (path, r) in &reference {
            if skip(path) {
                continue;
            }
            let Some(v) = self.entries.get(path) else {
                diffs.push(format!("{}: missing in the VM", show(path)));
                continue;
            };
            let mut fields = Vec::new();
            if r.kind != v.kind {
                fields.push(format!("type {} vs {}", r.kind, v.kind));
            }
            if r.mode != v.mode {
                fields.push(format!("mode {:o} vs {:o}", r.mode, v.mode));
            }
            if (r.uid, r.gid) != (v.uid, v.gid) {
                fields.push(format!("owner {}:{} vs {}:{}", r.uid, r.gid, v.uid, v.gid));
            }
            if r.size != v.size || r.digest != v.digest {
                fields.push(format!("content {} bytes vs {} bytes", r.size, v.size));
            }
            if r.target != v.target {
                fields.push("symlink target".into());
            }
            if r.rdev != v.rdev {
                fields.push(format!("device {:x} vs {:x}", r.rdev, v.rdev));
            }
            let xattrs: Vec<(Vec<u8>, String)> = r.xattrs.iter().map(|(n, val)| (n.clone(), sha256_hex(val))).collect();
            if xattrs != v.xattrs {
                let names = |x: &[(Vec<u8>, String)]| {
                    x.iter().map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>()
                };
                fields.push(format!("xattrs {:?} vs {:?}", names(&xattrs), names(&v.xattrs)));
            }
            if r.mtime != v.mtime {
                fields.push(format!("mtime {}.{:09} vs {}.{:09}", r.mtime.0, r.mtime.1, v.mtime.0, v.mtime.1));
            }
            if r.hardlink_group.as_ref() != groups.get(path) {
                fields.push("hardlink group".into());
            }
            if !fields.is_empty() {
                diffs.push(format!("{}: {}", show(path), fields.join(", ")));
            }
        }
        for path in self.entries.keys() {
            if !skip(path) && !reference.contains_key(path) {
                diffs.push(format!("{}: only in the VM", show(path)));
            }
        }
        diffs
    }

    /// For every file with other names in the report: the first of its
    /// names in walk order, as [`crate::compare::walk`] groups them.
    fn hardlink_groups(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        let mut first: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut sizes: HashMap<u64, usize> = HashMap::new();
        for path in &self.order {
            let e = &self.entries[path];
            if e.kind == 'f' && e.nlink > 1 {
                first.entry(e.ino).or_insert_with(|| path.clone());
                *sizes.entry(e.ino).or_default() += 1;
            }
        }
        self.entries
            .iter()
            .filter(|(_, e)| e.kind == 'f' && sizes.get(&e.ino).is_some_and(|&n| n > 1) && e.nlink > 1)
            .map(|(p, e)| (p.clone(), first[&e.ino].clone()))
            .collect()
    }
}

fn parse_entry(f: &[&str]) -> Option<(Vec<u8>, VmEntry)> {
    let [kind, mode, uid, gid, size, mtime, rdev, ino, nlink, digest, target, xattrs, path] = f else { return None };
    let (secs, nanos) = mtime.split_once('.')?;
    let opt = |s: &str| (s != "-").then(|| s.to_string());
    let xattrs = if *xattrs == "-" {
        Vec::new()
    } else {
        xattrs
            .split(',')
            .map(|x| x.split_once('=').and_then(|(n, v)| Some((unhex(n)?, v.to_string()))))
            .collect::<Option<Vec<_>>>()?
    };
    Some((
        relative(path)?,
        VmEntry {
            kind: kind.chars().next()?,
            mode: u32::from_str_radix(mode, 8).ok()?,
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            size: size.parse().ok()?,
            mtime: (secs.parse().ok()?, nanos.parse().ok()?),
            rdev: u64::from_str_radix(rdev, 16).ok()?,
            ino: ino.parse().ok()?,
            nlink: nlink.parse().ok()?,
            digest: opt(digest),
            target: match opt(target) {
                Some(t) => Some(unhex(&t)?),
                None => None,
            },
            xattrs,
        },
    ))
}

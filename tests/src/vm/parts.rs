//! What a boot needs, found or built once per machine: the kernel and its
//! virtio modules from Debian's archive, a static busybox, the initramfs,
//! and the test agent.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{VmError, failed};
use crate::sha256_hex;

/// The agent's source, compiled by [`agent`].
const AGENT_SOURCE: &str = include_str!("../../vm-agent/agent.rs");
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

pub(super) fn program_exists(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
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
        return Err(VmError::Unavailable(
            "no apt-get, apt-cache or dpkg-deb: the kernel comes from Debian's archive".into(),
        ));
    }
    let depends = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"])).map_err(|e| {
        VmError::Unavailable(format!("apt-cache knows no linux-image-cloud-amd64 (run apt-get update?): {e}"))
    })?;
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
pub(super) fn kernel_dir(root: &Path) -> Result<PathBuf, VmError> {
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
    // `/bin` in Debian 12's package, `/usr/bin` after the merged-/usr move.
    let bytes = std::fs::read(unpacked.join("bin/busybox"))
        .or_else(|_| std::fs::read(unpacked.join("usr/bin/busybox")))
        .map_err(|e| failed(format!("busybox-static holds no bin/busybox: {e}")))?;
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
pub(super) fn agent(root: &Path) -> Result<PathBuf, VmError> {
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

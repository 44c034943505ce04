//! Loop devices through `/dev/loop-control` and `LOOP_CONFIGURE`.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// How long [`LoopDevice::detach`] waits, by default, for the kernel to
/// release the device.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// An attached loop device. It detaches itself (autoclear) when its last
/// user, this handle or a mount, goes away.
#[derive(Debug)]
pub struct LoopDevice {
    device: File,
    number: u32,
    /// The backing file as sysfs named it when the device was attached.
    backing: Option<PathBuf>,
}

/// How often to retry when another process takes the free device first.
const ATTACH_ATTEMPTS: usize = 64;

impl LoopDevice {
    /// Attaches `image` to a free loop device with `LO_FLAGS_AUTOCLEAR`.
    pub fn attach(image: &File, label: &str) -> Result<Self> {
        let control = OpenOptions::new().read(true).write(true).open("/dev/loop-control").map_err(|e| {
            Error::MountFailed(format!("/dev/loop-control: {e} (loop devices need root and the loop module)"))
        })?;
        for _ in 0..ATTACH_ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
            let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if number < 0 {
                return Err(Error::MountFailed(format!("no free loop device: {}", std::io::Error::last_os_error())));
            }
            let path = format!("/dev/loop{number}");
            let device = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::MountFailed(format!("{path}: {e}")))?;
            let mut name = [0u8; LO_NAME_SIZE];
            let label = label.as_bytes();
            let n = label.len().min(LO_NAME_SIZE - 1);
            name[..n].copy_from_slice(&label[..n]);
            let config = LoopConfig {
                fd: image.as_raw_fd() as u32,
                block_size: 0,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: 0,
                    lo_sizelimit: 0,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: LO_FLAGS_AUTOCLEAR,
                    lo_file_name: name,
                    lo_crypt_name: [0; LO_NAME_SIZE],
                    lo_encrypt_key: [0; LO_KEY_SIZE],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            // SAFETY: `config` is a valid `struct loop_config` that outlives the call.
            let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config as *const LoopConfig) };
            if rc == 0 {
                let number = number as u32;
                return Ok(Self { device, number, backing: backing_file(number) });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(Error::MountFailed(format!("attaching the image to {path}: {err}")));
            }
            // Another process configured this device between GET_FREE and
            // CONFIGURE: ask for another.
        }
        Err(Error::MountFailed("every free loop device was taken by another process".into()))
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/loop{}", self.number))
    }

    /// The device number N.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Detaches the device and waits, up to `timeout`, until the kernel has
    /// released it.
    ///
    /// `LOOP_CLR_FD` only marks a device that someone else still has open;
    /// the kernel detaches it at the last close. Until then the image may
    /// still be written: by a mount whose superblock outlived its unmount
    /// because a child process, forked by any thread of this process, holds
    /// a copy of the mount's descriptor until it execs, or by another
    /// process that opened the device (udev's probe, `blkid`). So this
    /// returns only once the device no longer serves the image, and fails
    /// with `MountFailed` if that takes longer than `timeout`.
    pub fn detach(self, timeout: Duration) -> Result<()> {
        // SAFETY: LOOP_CLR_FD takes no argument.
        let rc = unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_CLR_FD, 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // ENXIO: autoclear already detached it.
            if err.raw_os_error() != Some(libc::ENXIO) {
                return Err(Error::MountFailed(format!("detaching {}: {err}", self.path().display())));
            }
        }
        let Self { device, number, backing } = self;
        // Our own descriptor counts as a user: close it first.
        drop(device);
        match backing {
            Some(backing) => wait_released(number, &backing, timeout),
            None => Ok(()),
        }
    }
}

/// Waits until `/dev/loopN` no longer serves `backing`: it was detached,
/// or detached and attached again to another file.
fn wait_released(number: u32, backing: &Path, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(20);
    while backing_file(number).is_some_and(|current| same_file_name(&current, backing)) {
        if start.elapsed() >= timeout {
            return Err(Error::MountFailed(format!(
                "/dev/loop{number} still serves {} {timeout:?} after its unmount: another process has the device \
                 open, or holds a copy of the mount (a child forked before its exec)",
                backing.display()
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
    Ok(())
}

/// Whether sysfs's `current` names `attached`, allowing for the
/// ` (deleted)` the kernel appends once the file is unlinked.
fn same_file_name(current: &Path, attached: &Path) -> bool {
    let current = current.as_os_str().as_bytes();
    let current = current.strip_suffix(b" (deleted)").unwrap_or(current);
    OsStr::from_bytes(current) == attached.as_os_str()
}

/// The backing file of `/dev/loopN`, if it is attached.
pub fn backing_file(number: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/sys/block/loop{number}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end()))
}

/// Every attached loop device whose backing file lies under `dir`.
pub fn attached_under(dir: &std::path::Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_prefix("loop")).and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(backing) = backing_file(number)
            && backing.starts_with(dir)
        {
            found.push((number, backing));
        }
    }
    found
}

/// Detaches `/dev/loopN` (for the sweep: a device left by a dead builder).
pub fn detach_number(number: u32) -> Result<()> {
    let path = format!("/dev/loop{number}");
    let device = OpenOptions::new().read(true).open(&path).map_err(|e| Error::MountFailed(format!("{path}: {e}")))?;
    // A sweep does not wait: it reports what it asked to detach.
    LoopDevice { device, number, backing: None }.detach(Duration::ZERO)
}

/// Every loop device attached to an image under `dir`, for a mounter's
/// [`ImageMounter::attached_under`](super::ImageMounter::attached_under).
pub fn attached_images_under(dir: &std::path::Path) -> Vec<super::AttachedImage> {
    attached_under(dir)
        .into_iter()
        .map(|(number, backing)| super::AttachedImage { device: format!("/dev/loop{number}"), backing })
        .collect()
}

/// Detaches one of [`attached_images_under`]'s devices.
pub fn detach_attached(attached: &super::AttachedImage) -> Result<()> {
    let number = attached
        .device
        .strip_prefix("/dev/loop")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::MountFailed(format!("{} is not a loop device", attached.device)))?;
    detach_number(number)
}

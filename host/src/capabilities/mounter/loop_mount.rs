//! The native image mounter: loop device, detached ext4 mount, install,
//! unmount, detach.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

use super::install::install_file;
use super::loop_device::{LoopDevice, RELEASE_TIMEOUT};
use super::{ImageMounter, Install, MountedImage};
use crate::error::{Error, Result};

/// Mounts images through a loop device and a detached ext4 mount.
#[derive(Clone, Copy, Debug)]
pub struct LoopMounter {
    release_timeout: Duration,
}

impl Default for LoopMounter {
    fn default() -> Self {
        Self { release_timeout: RELEASE_TIMEOUT }
    }
}

impl LoopMounter {
    /// A mounter whose unmount waits up to `timeout` for the kernel to
    /// release the loop device (see [`LoopDevice::detach`]).
    pub fn with_release_timeout(timeout: Duration) -> Self {
        Self { release_timeout: timeout }
    }
}

/// A mounted image: the mount's root directory handle and its loop device.
#[derive(Debug)]
pub struct LoopMount {
    mount: Option<OwnedFd>,
    device: Option<LoopDevice>,
    release_timeout: Duration,
}

fn mount_failed(what: &str, err: rustix::io::Errno, fs: Option<&OwnedFd>) -> Error {
    // The new mount API reports the kernel's reason through the fs context.
    let mut detail = String::new();
    if let Some(fs) = fs {
        let mut buf = [0u8; 512];
        while let Ok(n) = rustix::io::read(fs, &mut buf) {
            if n == 0 {
                break;
            }
            detail.push_str(&format!("; {}", String::from_utf8_lossy(&buf[..n]).trim_end()));
        }
    }
    Error::MountFailed(format!("{what}: {err}{detail}"))
}

/// Mounts the ext4 filesystem on `device` without attaching it anywhere.
fn mount_detached(device: &LoopDevice) -> Result<OwnedFd> {
    let fs = rustix::mount::fsopen("ext4", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| mount_failed("fsopen(ext4)", e, None))?;
    let source = device.path();
    rustix::mount::fsconfig_set_string(&fs, "source", source.as_path())
        .map_err(|e| mount_failed("configuring the mount", e, Some(&fs)))?;
    rustix::mount::fsconfig_create(&fs).map_err(|e| mount_failed("mounting the image as ext4", e, Some(&fs)))?;
    rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
    .map_err(|e| mount_failed("fsmount", e, Some(&fs)))
}

impl ImageMounter for LoopMounter {
    fn attached_under(&self, dir: &std::path::Path) -> Vec<super::AttachedImage> {
        super::loop_device::attached_images_under(dir)
    }

    fn detach(&self, attached: &super::AttachedImage) -> Result<()> {
        super::loop_device::detach_attached(attached)
    }

    fn mount(&self, image: File) -> Result<Box<dyn MountedImage>> {
        let device = LoopDevice::attach(&image, "rootfs-cache")?;
        // The loop device holds its own reference to the file.
        drop(image);
        match mount_detached(&device) {
            Ok(mount) => Ok(Box::new(LoopMount {
                mount: Some(mount),
                device: Some(device),
                release_timeout: self.release_timeout,
            })),
            Err(e) => {
                let _ = device.detach(self.release_timeout);
                Err(e)
            }
        }
    }
}

impl LoopMount {
    fn release(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(mount) = self.mount.take() {
            // syncfs reports write-back errors that close would swallow. The
            // fsmount handle is a path-only descriptor; syncfs needs a real one.
            let synced = rustix::fs::openat(
                &mount,
                ".",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .and_then(|root| rustix::fs::syncfs(&root));
            if let Err(e) = synced {
                result = Err(if e == rustix::io::Errno::NOSPC {
                    Error::NoSpace(format!("flushing the image: {e}"))
                } else {
                    Error::MountFailed(format!("flushing the image: {e}"))
                });
            }
            // Closing the last reference to a detached mount unmounts it
            // before close returns; a copy in a forked child delays that,
            // which the device's detach waits out.
            drop(mount);
        }
        if let Some(device) = self.device.take() {
            let detached = device.detach(self.release_timeout);
            if result.is_ok() {
                result = detached;
            }
        }
        result
    }
}

impl MountedImage for LoopMount {
    fn install(&mut self, source: &mut dyn std::io::Read, install: &Install) -> Result<()> {
        let mount = self.mount.as_ref().ok_or_else(|| Error::InjectFailed("the image is no longer mounted".into()))?;
        install_file(mount.as_fd(), source, install)
    }

    fn unmount(mut self: Box<Self>) -> Result<()> {
        self.release()
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

//! The image mounter capability: mount an image read-write, install a file
//! into it, unmount.
//!
//! Backends:
//! - [`loop_mount::LoopMounter`]: a loop device and the kernel's ext4 driver,
//!   through system calls only (no mount(8), no busybox). The mount is
//!   *detached* (`fsopen`/`fsmount`): it is never attached to any directory,
//!   so no other process sees it, and if this process dies the kernel
//!   unmounts it and, through `LO_FLAGS_AUTOCLEAR`, detaches the loop device.
//! - [`debugfs::DebugfsInstaller`]: no mount at all: e2fsprogs' `debugfs -w`
//!   edits the image file, so a user without `CAP_SYS_ADMIN` can install the
//!   agent (the rootless adapter).
//! - [`fake::FakeMounter`]: records installs and changes nothing.

pub mod debugfs;
pub mod fake;
pub mod install;
pub mod loop_device;
pub mod loop_mount;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Result;

/// A file to install into a mounted image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    /// Absolute path inside the image, e.g. `/sbin/vm-agent`.
    pub target: String,
    /// Permission bits.
    pub mode: u32,
    /// SHA-256 the installed bytes must have, hex.
    pub sha256: String,
}

/// A device a mount left attached to an image file (a loop device whose
/// process died before it could detach it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedImage {
    /// The device, e.g. `/dev/loop3`.
    pub device: String,
    /// The image file it is attached to.
    pub backing: PathBuf,
}

/// Mounts images.
pub trait ImageMounter: Send + Sync {
    /// Mounts the image in `image` (opened read-write). Errors: `MountFailed`.
    fn mount(&self, image: File) -> Result<Box<dyn MountedImage>>;

    /// Every device still attached to an image under `dir`, for the sweep.
    /// A mounter that attaches nothing has none.
    fn attached_under(&self, dir: &Path) -> Vec<AttachedImage> {
        let _ = dir;
        Vec::new()
    }

    /// Detaches one of [`Self::attached_under`]'s devices, without waiting
    /// for the kernel to release it. Errors: `MountFailed`.
    fn detach(&self, attached: &AttachedImage) -> Result<()> {
        Err(crate::error::Error::MountFailed(format!("{} was not attached by this mounter", attached.device)))
    }
}

/// A mounted image. Dropping it unmounts and detaches, ignoring errors; call
/// [`MountedImage::unmount`] to see them.
pub trait MountedImage: Send {
    /// Copies `source` (read to its end: the host hands over a regular file
    /// read at most up to a bound) into the image as `install` says, owned
    /// by root, creating missing parent directories with mode 0755 and
    /// resolving symlinks inside the image only. Errors: `InjectFailed`
    /// (including a digest mismatch or a failed read), `NoSpace`.
    fn install(&mut self, source: &mut dyn Read, install: &Install) -> Result<()>;

    /// Flushes, unmounts and detaches. Errors: `MountFailed`, `NoSpace`, `Io`.
    fn unmount(self: Box<Self>) -> Result<()>;
}

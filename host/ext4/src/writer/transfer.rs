//! Moving a source file's bytes into the image: cloned where the filesystem
//! shares blocks between files (`FICLONERANGE`: xfs with `reflink=1`, btrfs),
//! copied otherwise (`copy_file_range`, or through a buffer).
//!
//! A clone shares the source's blocks with the image instead of writing
//! them: no data is read or written, and no disk space is used until one of
//! the two files is changed. The kernel clones whole blocks only, from and to
//! block-aligned offsets, within one filesystem; the image's partial last
//! block of each file is copied. The bytes the image reads back are the same
//! whichever way they got there.
//!
//! Whether cloning works is decided once per source filesystem and
//! conversion: the first refusal (`EOPNOTSUPP` on ext4, `EXDEV` across
//! filesystems or from an overlay mount, `EINVAL` for a block size other
//! than the image's) turns it off for every later file of that filesystem,
//! silently.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::format::BLOCK_SIZE;

/// Whether the writer may share blocks with its sources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reflink {
    /// Clone whole blocks where the filesystem allows it, copy otherwise.
    #[default]
    Auto,
    /// Always copy (for comparisons, or to keep an image independent of
    /// its sources' extents).
    Never,
}

/// How one image's data got there, and what was learnt on the way.
pub(super) struct Transfer {
    reflink: Reflink,
    /// Source filesystems (`st_dev`) whose clones were refused.
    refused: RefCell<HashSet<u64>>,
    /// Whether `copy_file_range` works from these sources (not across
    /// overlayfs, on older kernels).
    kernel_copy: Cell<bool>,
    cloned: Cell<u64>,
    copied: Cell<u64>,
    buf: RefCell<Vec<u8>>,
}

impl Transfer {
    /// A transfer that clones when `reflink` allows it.
    pub(super) fn new(reflink: Reflink) -> Self {
        Self {
            reflink,
            refused: RefCell::default(),
            kernel_copy: Cell::new(true),
            cloned: Cell::new(0),
            copied: Cell::new(0),
            buf: RefCell::default(),
        }
    }

    /// Bytes shared with a source by cloning.
    pub(super) fn cloned(&self) -> u64 {
        self.cloned.get()
    }

    /// Bytes written (copied from a source or from memory).
    pub(super) fn copied(&self) -> u64 {
        self.copied.get()
    }

    /// Counts `n` bytes written from memory.
    pub(super) fn wrote(&self, n: u64) {
        self.copied.set(self.copied.get() + n);
    }

    /// Moves `len` bytes at `from` in `src` to `to` in `dst`: the whole
    /// blocks by cloning where it works, the rest by copying. `to` is a
    /// block boundary of the image; `from` need not be one (a
    /// [`FileData::Range`](crate::FileData::Range) may start mid-block), and
    /// then everything is copied.
    pub(super) fn transfer(&self, src: &File, from: u64, dst: &File, to: u64, len: u64) -> std::io::Result<()> {
        let whole = len / BLOCK_SIZE * BLOCK_SIZE;
        let cloned = if whole > 0 && from.is_multiple_of(BLOCK_SIZE) && to.is_multiple_of(BLOCK_SIZE) {
            self.try_clone(src, from, dst, to, whole)?
        } else {
            0
        };
        self.cloned.set(self.cloned.get() + cloned);
        self.copy(src, from + cloned, dst, to + cloned, len - cloned)?;
        self.copied.set(self.copied.get() + len - cloned);
        Ok(())
    }

    /// Clones `len` bytes (whole blocks) and returns how many it did: all,
    /// or none when the source's filesystem refuses.
    fn try_clone(&self, src: &File, from: u64, dst: &File, to: u64, len: u64) -> std::io::Result<u64> {
        if self.reflink == Reflink::Never {
            return Ok(0);
        }
        let dev = rustix::fs::fstat(src)?.st_dev;
        if self.refused.borrow().contains(&dev) {
            return Ok(0);
        }
        match clone_range(src, from, dst, to, len) {
            Ok(()) => Ok(len),
            Err(e) if refusal(&e) => {
                self.refused.borrow_mut().insert(dev);
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies `len` bytes, in the kernel when it can (`copy_file_range`),
    /// else through a buffer. With [`Reflink::Never`] always through a
    /// buffer: xfs and btrfs answer `copy_file_range` within one filesystem
    /// by sharing blocks, which is what `Never` promises not to do.
    fn copy(&self, src: &File, mut from: u64, dst: &File, mut to: u64, mut len: u64) -> std::io::Result<()> {
        while len > 0 && self.kernel_copy.get() && self.reflink != Reflink::Never {
            let (mut f, mut t) = (from, to);
            match rustix::fs::copy_file_range(src, Some(&mut f), dst, Some(&mut t), len.min(1 << 30) as usize) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    from += n as u64;
                    to += n as u64;
                    len -= n as u64;
                }
                // Not between these files (across overlayfs, say): copy
                // through a buffer from now on.
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::OPNOTSUPP,
                ) => self.kernel_copy.set(false),
                Err(e) => return Err(e.into()),
            }
        }
        let mut buf = self.buf.borrow_mut();
        // Grow the buffer only as far as this file needs: most files are small.
        let want = len.min(1 << 20) as usize;
        if buf.len() < want {
            buf.resize(want, 0);
        }
        while len > 0 {
            let n = len.min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], from)?;
            dst.write_all_at(&buf[..n], to)?;
            from += n as u64;
            to += n as u64;
            len -= n as u64;
        }
        Ok(())
    }
}

/// Whether a clone's error means "not here" (copy instead) rather than a
/// failure: no reflink support (`EOPNOTSUPP`, `ENOTTY`, `ENOSYS`), another
/// filesystem (`EXDEV`), offsets the filesystem cannot share (`EINVAL`),
/// or a file it will not share (`EPERM`, `ETXTBSY`: a swap or active file).
fn refusal(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS | libc::EXDEV | libc::EINVAL | libc::EPERM | libc::ETXTBSY)
    )
}

/// `FICLONERANGE`: makes `len` bytes of `dst` at `to` share the blocks of
/// `src` at `from`.
fn clone_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> std::io::Result<()> {
    let range = libc::file_clone_range {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset: from,
        src_length: len,
        dest_offset: to,
    };
    // SAFETY: both descriptors are open for the call's duration and
    // `range` is a valid `file_clone_range` the kernel only reads.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONERANGE, &range) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

//! Private, writable copies of a cache entry, one per VM (`rootfs-cache
//! clone`).
//!
//! A published entry is shared by every request for its key: a VM that
//! booted it read-write would change what the next VM gets, and a hit's
//! validation (length, superblock, geometry) would not notice. A runtime
//! boots a clone instead. Where the filesystem shares blocks between files
//! (xfs with `reflink=1`, btrfs) the clone is one `FICLONE`: it takes
//! milliseconds whatever the image's size and uses no space until the VM
//! writes. Elsewhere it is a sparse copy (holes stay holes), made with
//! `copy_file_range` over the image's data runs.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::cache_dir::{Area, CacheDir};
use crate::error::{Error, Result};
use crate::regular_file::{IntoError as _, RegularFile};

/// How a clone was made.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloneMethod {
    /// `FICLONE`: the clone shares the entry's blocks until either is written.
    Reflink,
    /// A sparse copy: the filesystem cannot share blocks (ext4, tmpfs), or
    /// the destination is on another filesystem than the cache.
    Copy,
}

/// What [`RootfsCache::clone_entry`](crate::RootfsCache::clone_entry) made.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CloneReport {
    /// The entry's key.
    pub key: String,
    /// The entry's image (absolute), which stays as it was.
    pub image: PathBuf,
    /// The new, writable copy.
    pub dest: PathBuf,
    /// How it was made.
    pub method: CloneMethod,
    /// Its length (the entry's).
    pub image_bytes: u64,
    /// Bytes written to make it: 0 for a reflink, the data (not the holes)
    /// for a copy.
    pub copied_bytes: u64,
    /// How long it took, in microseconds.
    pub duration_us: u64,
}

/// The key an entry is named by: a key (64 lowercase hex digits), or a path
/// to `<key>.ext4` in this cache's `images/`.
pub(crate) fn entry_key(cache: &CacheDir, image_or_key: &str) -> Result<String> {
    let is_key = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if is_key(image_or_key) {
        return Ok(image_or_key.to_owned());
    }
    let path = Path::new(image_or_key);
    let key = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ext4")).filter(|k| is_key(k));
    let in_images = path
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .is_some_and(|p| p == cache.path().join(Area::Images.dir_name()));
    match key {
        Some(key) if in_images => Ok(key.to_owned()),
        _ => Err(Error::InvalidRequest(format!(
            "{image_or_key:?} is neither a cache key (64 lowercase hex digits) nor an image of this cache \
             ({}/images/<key>.ext4)",
            cache.path().display()
        ))),
    }
}

/// Opens the image of the entry `key`, checked to be one: a regular file
/// with a manifest that names the key and the image's length.
pub(crate) fn open_entry(cache: &CacheDir, key: &str) -> Result<RegularFile> {
    let images = cache.dir(Area::Images);
    let manifest_name = format!("{key}.json");
    let not_an_entry =
        |why: String| Error::NotFound(format!("no entry {key} in the cache ({why}); see `rootfs-cache list`"));
    let manifest = RegularFile::open_in(images, Path::new(&manifest_name), Path::new(&manifest_name), 64 << 10)
        .and_then(RegularFile::read_all)
        .map_err(|e| match e.into_error("manifest", Error::Corrupt) {
            Error::NotFound(m) => not_an_entry(m),
            other => other,
        })?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| Error::Corrupt(format!("images/{manifest_name} is not valid JSON: {e}")))?;
    let image_name = format!("{key}.ext4");
    let image =
        RegularFile::open_in(images, Path::new(&image_name), Path::new(&image_name), u64::MAX).map_err(|e| match e
            .into_error("image", Error::Corrupt)
        {
            Error::NotFound(m) => not_an_entry(m),
            other => other,
        })?;
    let len = image.file().metadata().map_err(|e| Error::io(format!("images/{image_name}"), &e))?.len();
    if manifest["key"] != key || manifest["image_bytes"] != len {
        return Err(Error::Corrupt(format!(
            "images/{image_name} is not the entry its manifest describes (key or length differ); run `rootfs-cache verify`"
        )));
    }
    Ok(image)
}

/// Makes `dest` (which must not exist) a private copy of the entry `key`.
pub(crate) fn clone_entry(cache: &CacheDir, key: &str, dest: &Path) -> Result<CloneReport> {
    let started = Instant::now();
    let image = open_entry(cache, key)?;
    let source = image.file();
    let len = source.metadata().map_err(|e| Error::io(format!("images/{key}.ext4"), &e))?.len();
    let out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(dest).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            Error::InvalidRequest(format!("{} exists; a clone is always a new file", dest.display()))
        } else {
            Error::io(dest.display(), &e)
        }
    })?;
    let made = match rustix::fs::ioctl_ficlone(&out, source) {
        Ok(()) => Ok((CloneMethod::Reflink, 0)),
        Err(e) if refusal(e) => sparse_copy(source, &out, len).map(|copied| (CloneMethod::Copy, copied)),
        Err(e) => Err(e.into()),
    };
    let (method, copied_bytes) = made.map_err(|e| {
        let _ = std::fs::remove_file(dest);
        Error::io(format!("cloning images/{key}.ext4 to {}", dest.display()), &e)
    })?;
    Ok(CloneReport {
        key: key.to_owned(),
        image: cache.path().join(Area::Images.dir_name()).join(format!("{key}.ext4")),
        dest: std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf()),
        method,
        image_bytes: len,
        copied_bytes,
        duration_us: started.elapsed().as_micros() as u64,
    })
}

/// Whether `FICLONE` failed because the files cannot share blocks, rather
/// than for a reason a copy would hit too.
fn refusal(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    matches!(e, Errno::OPNOTSUPP | Errno::NOTTY | Errno::NOSYS | Errno::XDEV | Errno::INVAL | Errno::PERM)
}

/// Copies `source`'s data runs to `out`, leaving holes as holes; returns
/// the bytes copied.
fn sparse_copy(source: &File, out: &File, len: u64) -> io::Result<u64> {
    out.set_len(len)?;
    let mut copied = 0;
    let mut offset = 0u64;
    while offset < len {
        let data = match rustix::fs::seek(source, rustix::fs::SeekFrom::Data(offset)) {
            Ok(data) => data,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => offset,
        };
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(source, rustix::fs::SeekFrom::Hole(data)).map_or(len, |h| h.min(len));
        copy_range(source, out, data, hole - data)?;
        copied += hole - data;
        offset = hole;
    }
    Ok(copied)
}

/// Copies `len` bytes at `offset` from `source` to the same offset in
/// `out`: in the kernel where it can, through a buffer across filesystems
/// that `copy_file_range` does not span.
fn copy_range(source: &File, out: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let (mut from, mut to, end) = (offset, offset, offset + len);
    while from < end {
        let want = (end - from) as usize;
        match rustix::fs::copy_file_range(source, Some(&mut from), out, Some(&mut to), want) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the image shrank while it was copied")),
            Ok(_) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP,
            ) => {
                let mut buf = vec![0u8; (end - from).min(1 << 20) as usize];
                while from < end {
                    let n = (end - from).min(buf.len() as u64) as usize;
                    source.read_exact_at(&mut buf[..n], from)?;
                    out.write_all_at(&buf[..n], from)?;
                    from += n as u64;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

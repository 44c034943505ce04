//! `verify --deep`: every entry's bytes hashed again and compared with the
//! SHA-256 its manifest recorded when it was published.
//!
//! An entry is read-only (0444), but root and the entry's owner can still
//! write it, and a runtime that boots the entry instead of a clone does.
//! Validation on a hit reads the superblock and the length only; this reads
//! every byte, so it is an operator's command, not part of a request.

use std::path::Path;

use crate::cache_dir::{Area, CacheDir};
use crate::error::{Error, Result};
use crate::regular_file::{IntoError as _, RegularFile};

/// What hashing an entry again found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rehash {
    /// The bytes are those published.
    Unchanged,
    /// The manifest records no digest (an entry published before digests
    /// were recorded): nothing to compare with.
    Unrecorded,
    /// The bytes changed: the problem, in words.
    Changed(String),
}

/// Hashes the image of the entry `key` and compares it with its manifest's
/// `image_sha256`.
pub(crate) fn rehash(cache: &CacheDir, key: &str) -> Result<Rehash> {
    let images = cache.dir(Area::Images);
    let manifest_name = format!("{key}.json");
    let manifest = RegularFile::open_in(images, Path::new(&manifest_name), Path::new(&manifest_name), 64 << 10)
        .and_then(RegularFile::read_all)
        .map_err(|e| e.into_error("manifest", Error::Corrupt))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| Error::Corrupt(format!("images/{manifest_name} is not valid JSON: {e}")))?;
    let Some(recorded) = manifest.get("image_sha256").and_then(|v| v.as_str()) else { return Ok(Rehash::Unrecorded) };
    let image_name = format!("{key}.ext4");
    let image = RegularFile::open_in(images, Path::new(&image_name), Path::new(&image_name), u64::MAX)
        .map_err(|e| e.into_error("image", Error::Corrupt))?;
    let actual =
        crate::image_digest::sha256(image.file()).map_err(|e| Error::io(format!("hashing images/{image_name}"), &e))?;
    Ok(if actual == recorded {
        Rehash::Unchanged
    } else {
        Rehash::Changed(format!(
            "the image's bytes changed since it was published (sha256 {actual}, recorded {recorded}): \
             something wrote to the entry; boot clones (`rootfs-cache clone`), never entries"
        ))
    })
}

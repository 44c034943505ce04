//! `inspect`: an image's superblock, and whether its geometry is sound.

use std::path::{Component, Path, PathBuf};

use super::Cache;
use super::request::check_host_path;
use crate::capabilities::Capabilities;
use crate::error::SourceError;
use crate::sys;
use crate::validate;
use crate::wit::types::{Error, ImageInfo};

/// The errno WASI calls give for a path under no preopen (wasi-libc's
/// `ENOTCAPABLE`).
const NOT_PREOPENED: i32 = 76;

/// What `inspect` says of an absolute image path under no preopen: what
/// the host must do instead.
fn not_preopened(image: &str) -> String {
    format!(
        "image {image} is in no directory the host preopened for this call: a host must preopen the \
         image's directory read-only at its own path before calling inspect with an absolute path (the \
         Rust host and the CLI do), or pass a cache-relative path such as images/<key>.ext4"
    )
}

impl<H: Capabilities> Cache<'_, H> {
    /// Reads an image's superblock. See `cache.inspect` in the WIT.
    pub fn inspect(&self, image: &str) -> Result<ImageInfo, Error> {
        let path = if image.starts_with('/') {
            check_host_path("image", image)?;
            PathBuf::from(image)
        } else {
            if image.is_empty() || Path::new(image).components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(Error::InvalidRequest(format!("image {image:?} is not a path inside the cache")));
            }
            self.root.join(image)
        };
        let (sb, len) = validate::read_superblock(&path).map_err(|e| match sys::not_regular(&e) {
            // Never opened: a FIFO would block.
            Some(refusal) => {
                Error::InvalidRequest(format!("{} {refusal}: inspect reads an image file", path.display()))
            }
            None if image.starts_with('/') && e.raw_os_error() == Some(NOT_PREOPENED) => {
                Error::InvalidRequest(not_preopened(image))
            }
            None => SourceError::io(&path, &e).into(),
        })?;
        Ok(match sb {
            None => ImageInfo {
                file_bytes: len,
                magic: false,
                block_size: 0,
                blocks_count: 0,
                free_blocks: 0,
                inodes_count: 0,
                free_inodes: 0,
                uuid: String::new(),
                label: String::new(),
                geometry_error: Some(format!("{len} bytes is too short for an ext4 superblock")),
            },
            Some(sb) => ImageInfo {
                file_bytes: len,
                magic: sb.has_magic(),
                block_size: sb.block_size().unwrap_or(0),
                blocks_count: sb.blocks_count,
                free_blocks: sb.free_blocks,
                inodes_count: sb.inodes_count,
                free_inodes: sb.free_inodes,
                uuid: sb.uuid_string(),
                label: sb.label.clone(),
                geometry_error: sb.check_geometry(len).err(),
            },
        })
    }
}

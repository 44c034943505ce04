//! The publisher capability: make a built image part of the cache, durably,
//! or remove a file from it.
//!
//! Publishing order, so that a published entry survives a crash or power
//! loss and a half-published one is never mistaken for a valid entry:
//!
//! 1. fsync the staged image (its data and size are on disk), make it
//!    read-only (0444: a VM boots a clone, never the entry) and hash it
//!    (unless the host hashed it as it wrote it: a download, an exact
//!    conversion);
//! 2. write the manifest, with the image's SHA-256 (`image_sha256`) added,
//!    to `tmp/<name>.json`, fsync it;
//! 3. rename the image to `images/<key>.ext4`;
//! 4. rename the manifest to `images/<key>.json`;
//! 5. fsync `images/` (both renames are on disk) and `tmp/`.
//!
//! A crash before 4 leaves an image without a manifest, which validation
//! treats as corrupt and the next request rebuilds; after 5 the entry is
//! complete on disk.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use cap_std::fs::OpenOptions;
use cap_std::fs::OpenOptionsExt as _;

use crate::cache_dir::{Area, BlobFile, CacheDir, CacheFile};
use crate::error::{Error, Result};
use crate::regular_file::{IntoError as _, RegularFile};

/// Publishes and removes cache files.
pub trait Publisher: Send + Sync {
    /// Publishes `staged` (in `tmp/`) as `image`, with `manifest_json` at
    /// `manifest` (both in `images/`), the image's SHA-256 added to it:
    /// `known_sha256` when the host hashed the bytes as it wrote them (a
    /// download, an exact conversion), else hashed here. Errors: `NoSpace`, `Io`; on error
    /// nothing new is visible in `images/`.
    fn publish(
        &self,
        cache: &CacheDir,
        staged: &CacheFile,
        image: &CacheFile,
        manifest: &CacheFile,
        manifest_json: &str,
        known_sha256: Option<&str>,
    ) -> Result<()>;

    /// Removes a file or an empty directory; a missing one is not an error.
    fn remove(&self, cache: &CacheDir, file: &CacheFile) -> Result<()>;

    /// Removes a blob of the store and its lock file, under the digest's lock taken without
    /// waiting. While a pull holds that lock (it is writing the blob) nothing is removed and
    /// the call still succeeds: the guest looks again to see whether the blob went. A missing
    /// blob is not an error. Errors: `Io`.
    fn remove_blob(&self, cache: &CacheDir, blob: &BlobFile) -> Result<()>;

    /// Records a use of the entry whose manifest is `manifest` by setting the
    /// manifest's modification (and access) time to now; its contents stay.
    fn record_use(&self, cache: &CacheDir, manifest: &CacheFile) -> Result<()>;
}

/// Publishes through cap-std handles with fsync at every step.
#[derive(Debug, Default)]
pub struct DurablePublisher {
    /// Skip fsync (for tests on tmpfs that only count calls); never in production.
    pub skip_fsync: bool,
}

fn fsync_dir(cache: &CacheDir, area: Area) -> Result<()> {
    // A directory opened read-only can be fsynced on Linux.
    let dir = cache.dir(area).open(".").map_err(|e| Error::io(format!("opening {}/", area.dir_name()), &e))?;
    dir.sync_all().map_err(|e| Error::io(format!("fsync {}/", area.dir_name()), &e))
}

impl Publisher for DurablePublisher {
    fn publish(
        &self,
        cache: &CacheDir,
        staged: &CacheFile,
        image: &CacheFile,
        manifest: &CacheFile,
        manifest_json: &str,
        known_sha256: Option<&str>,
    ) -> Result<()> {
        let tmp = cache.dir(Area::Tmp);
        let images = cache.dir(Area::Images);
        // Never blocks: a FIFO or device in its place is refused.
        let staged_file = RegularFile::open_in(tmp, Path::new(&staged.name), Path::new(&staged.relative()), 0)
            .map_err(|e| e.into_error("the staged image", Error::Corrupt))?;
        let file = staged_file.file();
        rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(0o444))
            .map_err(|e| Error::io(format!("making {} read-only", staged.relative()), &e.into()))?;
        // The fsync waits for the disk and the hash for the CPU: side by side.
        let (synced, digest) = std::thread::scope(|s| {
            let hashing = s.spawn(|| match known_sha256 {
                Some(known) => Ok(known.to_owned()),
                None => crate::image_digest::sha256(file),
            });
            let synced = if self.skip_fsync { Ok(()) } else { file.sync_all() };
            (synced, hashing.join().unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked"))))
        });
        synced.map_err(|e| Error::io(format!("fsync {}", staged.relative()), &e))?;
        let digest = digest.map_err(|e| Error::io(format!("hashing {}", staged.relative()), &e))?;
        let manifest_json = crate::image_digest::with_image_sha256(manifest_json, &digest)
            .map_err(|e| Error::Corrupt(format!("the manifest to publish is not a JSON object: {e}")))?;
        drop(staged_file);
        crate::test_hooks::pause("fsynced");

        let manifest_tmp = format!("{}.json.tmp", staged.name);
        let write_manifest = || -> std::io::Result<()> {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true).mode(0o644);
            let mut file = tmp.open_with(&manifest_tmp, &options)?;
            file.write_all(manifest_json.as_bytes())?;
            file.write_all(b"\n")?;
            if !self.skip_fsync {
                file.sync_all()?;
            }
            Ok(())
        };
        if let Err(e) = write_manifest() {
            let _ = tmp.remove_file(&manifest_tmp);
            return Err(Error::io("writing the manifest", &e));
        }
        if let Err(e) = tmp.rename(&staged.name, images, &image.name) {
            let _ = tmp.remove_file(&manifest_tmp);
            return Err(Error::io(format!("renaming {} to {}", staged.relative(), image.relative()), &e));
        }
        crate::test_hooks::pause("renamed");
        if let Err(e) = tmp.rename(&manifest_tmp, images, &manifest.name) {
            // Without its manifest the image is not an entry; take it back out.
            let _ = images.remove_file(&image.name);
            let _ = tmp.remove_file(&manifest_tmp);
            return Err(Error::io(format!("renaming the manifest to {}", manifest.relative()), &e));
        }
        if !self.skip_fsync {
            fsync_dir(cache, Area::Images)?;
            fsync_dir(cache, Area::Tmp)?;
        }
        crate::test_hooks::pause("published");
        Ok(())
    }

    fn remove(&self, cache: &CacheDir, file: &CacheFile) -> Result<()> {
        let dir = cache.dir(file.area);
        let result = match dir.symlink_metadata(&file.name) {
            Ok(meta) if meta.is_dir() => dir.remove_dir(&file.name),
            _ => dir.remove_file(&file.name),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", file.relative()), &e)),
        }
    }

    fn remove_blob(&self, cache: &CacheDir, blob: &BlobFile) -> Result<()> {
        let digest: rootfs_cache_registry::Digest = format!("sha256:{}", blob.hex)
            .parse()
            .map_err(|e| Error::InvalidRequest(format!("{}: {e}", blob.relative())))?;
        let store = rootfs_cache_registry::BlobStore::open(cache.path())
            .map_err(crate::capabilities::puller::registry_error)?;
        store.remove(&digest).map(|_| ()).map_err(crate::capabilities::puller::registry_error)
    }

    fn record_use(&self, cache: &CacheDir, manifest: &CacheFile) -> Result<()> {
        let file = RegularFile::open_in(
            cache.dir(manifest.area),
            Path::new(&manifest.name),
            Path::new(&manifest.relative()),
            0,
        )
        .map_err(|e| e.into_error("the manifest", Error::Corrupt))?;
        let now = SystemTime::now();
        let times = std::fs::FileTimes::new().set_accessed(now).set_modified(now);
        file.file().set_times(times).map_err(|e| Error::io(format!("recording use of {}", manifest.relative()), &e))
    }
}

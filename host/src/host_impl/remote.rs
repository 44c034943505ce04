//! `remote-*` and `digest-image`: an entry's bytes to and from the remote
//! cache in force (the caller's or the policy's, its registry checked when
//! the cache was opened). The guest names only tags (cache keys), digests
//! and cache-relative files: the repository is the host's.

use std::sync::Arc;

use rootfs_cache_registry::{Digest, Reference};

use crate::bindings::rootfs::cache::host::{FetchedImage, FetchedManifest, FileDigest, PushedBlob};
use crate::cache_dir::{Area, CacheFile};
use crate::capabilities::puller::MAX_READ_BYTES;
use crate::capabilities::remote::RemoteContext;
use crate::error::Error;
use crate::observer::{BlobProgress, Phase};
use crate::remote_cache::RemoteCache;
use crate::store::StoreState;

/// Checks a tag the guest names: a cache key, 64 lowercase hex digits.
fn check_tag(tag: &str) -> Result<(), Error> {
    let ok = tag.len() == 64 && tag.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if ok { Ok(()) } else { Err(Error::InvalidRequest(format!("remote tag {tag:?} is not a cache key"))) }
}

fn parse_digest(digest: &str) -> Result<Digest, Error> {
    digest.parse().map_err(|e| Error::InvalidRequest(format!("digest {digest:?}: {e}")))
}

impl StoreState {
    /// The remote cache in force, or `denied` when there is none.
    fn remote(&self) -> Result<RemoteCache, Error> {
        self.shared
            .remote
            .clone()
            .ok_or_else(|| Error::denied("remote", "this request has no remote cache; nothing was sent"))
    }

    /// The remote cache, if pushing to it is allowed.
    fn remote_for_push(&self) -> Result<RemoteCache, Error> {
        let remote = self.remote()?;
        if !remote.push {
            return Err(Error::denied(
                "remote_push",
                format!("pushing to the remote cache {} is turned off; nothing was sent", remote.repository),
            ));
        }
        Ok(remote)
    }

    fn remote_context(&self) -> RemoteContext<'_> {
        RemoteContext { policy: &self.shared.policy, progress: Arc::new(BlobProgress(self.shared.observer.clone())) }
    }

    /// The repository, for calls on blobs (its tag does not matter).
    fn repository(remote: &RemoteCache) -> Result<Reference, Error> {
        remote.tagged("latest")
    }

    /// `remote-manifest`.
    pub(super) async fn remote_manifest_checked(&mut self, tag: &str) -> Result<Option<FetchedManifest>, Error> {
        check_tag(tag)?;
        let remote = self.remote()?;
        self.phase(Phase::Pulling);
        let shared = self.shared.clone();
        let fetched = shared.caps.remote.manifest(&self.remote_context(), &remote.tagged(tag)?).await?;
        Ok(fetched.map(|d| FetchedManifest { bytes: d.bytes, media_type: d.media_type, digest: d.digest }))
    }

    /// `remote-blob`.
    pub(super) async fn remote_blob_checked(&mut self, digest: &str, size: u64) -> Result<Vec<u8>, Error> {
        let parsed = parse_digest(digest)?;
        if size > MAX_READ_BYTES {
            return Err(Error::UnsupportedSource(format!(
                "blob {digest} declares {size} bytes; blobs read whole are limited to {MAX_READ_BYTES}"
            )));
        }
        let remote = self.remote()?;
        let shared = self.shared.clone();
        shared.caps.remote.blob(&self.remote_context(), &Self::repository(&remote)?, &parsed, size).await
    }

    /// `remote-image`: a new file under `tmp/`, owned by the store until the
    /// guest publishes or removes it, removed on any error.
    pub(super) async fn remote_image_checked(
        &mut self,
        digest: &str,
        size: u64,
        staged: &str,
    ) -> Result<FetchedImage, Error> {
        let parsed = parse_digest(digest)?;
        let remote = self.remote()?;
        let file = CacheFile::parse(staged, &[Area::Tmp])?;
        let shared = self.shared.clone();
        let out = shared
            .cache
            .dir(Area::Tmp)
            .open_with(&file.name, cap_std::fs::OpenOptions::new().write(true).create_new(true))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    Error::denied("cache_dir", format!("{staged} already exists; a download only creates new files"))
                }
                _ => Error::io(staged, &e),
            })?
            .into_std();
        self.staged.push(file.clone());
        self.phase(Phase::Pulling);
        let max_bytes = shared.policy.limits.max_image_bytes;
        let written = shared
            .caps
            .remote
            .image(&self.remote_context(), &Self::repository(&remote)?, &parsed, size, out, max_bytes)
            .await;
        match written {
            Ok(image) => {
                let hex = image.sha256.trim_start_matches("sha256:").to_owned();
                self.hashed.insert(staged.to_owned(), hex);
                Ok(FetchedImage { bytes: image.bytes, sha256: image.sha256 })
            }
            Err(e) => {
                let _ = shared.cache.dir(Area::Tmp).remove_file(&file.name);
                self.staged.retain(|f| f.relative() != staged);
                Err(e)
            }
        }
    }

    /// `remote-push-image`: a published entry's image.
    pub(super) async fn remote_push_image_checked(&mut self, image: &str) -> Result<PushedBlob, Error> {
        let remote = self.remote_for_push()?;
        let file = CacheFile::parse(image, &[Area::Images])?;
        let shared = self.shared.clone();
        let (path, scratch) = (shared.cache.absolute(&file), shared.cache.path().join(Area::Tmp.dir_name()));
        self.phase(Phase::Publishing);
        let (digest, size) =
            shared.caps.remote.push_image(&self.remote_context(), &Self::repository(&remote)?, &path, &scratch).await?;
        Ok(PushedBlob { digest, size })
    }

    /// `remote-push-blob`.
    pub(super) async fn remote_push_blob_checked(&mut self, bytes: &[u8]) -> Result<PushedBlob, Error> {
        let remote = self.remote_for_push()?;
        if bytes.len() as u64 > MAX_READ_BYTES {
            return Err(Error::InvalidRequest(format!("a pushed blob is limited to {MAX_READ_BYTES} bytes")));
        }
        let shared = self.shared.clone();
        let (digest, size) =
            shared.caps.remote.push_blob(&self.remote_context(), &Self::repository(&remote)?, bytes).await?;
        Ok(PushedBlob { digest, size })
    }

    /// `remote-push-manifest`.
    pub(super) async fn remote_push_manifest_checked(&mut self, tag: &str, bytes: &[u8]) -> Result<String, Error> {
        check_tag(tag)?;
        let remote = self.remote_for_push()?;
        if bytes.len() as u64 > MAX_READ_BYTES {
            return Err(Error::InvalidRequest(format!("a pushed manifest is limited to {MAX_READ_BYTES} bytes")));
        }
        let shared = self.shared.clone();
        shared.caps.remote.push_manifest(&self.remote_context(), &remote.tagged(tag)?, bytes).await
    }

    /// `digest-image`: SHA-256 of a temporary image or an entry's image.
    pub(super) async fn digest_image_checked(&mut self, image: &str) -> Result<FileDigest, Error> {
        let file = CacheFile::parse(image, &[Area::Tmp, Area::Images])?;
        let opened = self
            .shared
            .cache
            .dir(file.area)
            .open(&file.name)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound(format!("{image} does not exist")),
                _ => Error::io(image, &e),
            })?
            .into_std();
        let (sha256, size) = tokio::task::spawn_blocking(move || {
            let size = opened.metadata()?.len();
            crate::image_digest::sha256(&opened).map(|sha| (sha, size))
        })
        .await
        .map_err(|e| Error::Io(e.to_string()))?
        .map_err(|e| Error::io(image, &e))?;
        Ok(FileDigest { sha256, size })
    }
}

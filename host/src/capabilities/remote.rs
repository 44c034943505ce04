//! The remote-cache capability: moving an entry's bytes to and from an OCI
//! registry repository. What the bytes mean (the artifact's manifest and
//! config) is the guest's to write and to check.
//!
//! - [`RegistryRemote`] (native): the `rootfs-cache-registry` client, with
//!   the credentials, TLS and allow-list of images by name.
//! - [`NoRemote`] (fake adapter): refuses every call with `denied`.

use std::path::Path;
use std::sync::Arc;

use rootfs_cache_registry::{Digest, Progress, Reference};

use super::puller::{ClientPool, registry_error};
use crate::error::{Error, Result};
use crate::policy::Policy;

/// What one remote call may use: the policy (for the registry's client) and
/// where progress goes.
pub struct RemoteContext<'a> {
    /// The policy: `registries`, `insecure_registries`.
    pub policy: &'a Policy,
    /// Progress of uploads and downloads.
    pub progress: Arc<dyn Progress>,
}

/// A document or small blob as fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDocument {
    /// The bytes, unparsed.
    pub bytes: Vec<u8>,
    /// The media type the registry named.
    pub media_type: String,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
}

/// What downloading an image wrote: its length and `sha256:<hex>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenImage {
    /// The image's length.
    pub bytes: u64,
    /// `sha256:<hex>` of the image.
    pub sha256: String,
}

/// Moves entries' bytes to and from a registry repository. Each call names
/// the repository as a [`Reference`] whose tag, where one matters, is the
/// tag to read or write.
#[async_trait::async_trait]
pub trait RemoteStore: Send + Sync {
    /// The manifest tagged `reference`'s tag; `None` when there is none.
    async fn manifest(&self, cx: &RemoteContext<'_>, reference: &Reference) -> Result<Option<RemoteDocument>>;
    /// A small blob's bytes, verified.
    async fn blob(&self, cx: &RemoteContext<'_>, reference: &Reference, digest: &Digest, size: u64) -> Result<Vec<u8>>;
    /// Downloads the zstd blob `digest` and writes it decompressed, sparse,
    /// into `out`, at most `max_bytes`.
    async fn image(
        &self,
        cx: &RemoteContext<'_>,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        out: std::fs::File,
        max_bytes: u64,
    ) -> Result<WrittenImage>;
    /// Compresses and uploads `image` (temporary files in `scratch`).
    async fn push_image(
        &self,
        cx: &RemoteContext<'_>,
        reference: &Reference,
        image: &Path,
        scratch: &Path,
    ) -> Result<(String, u64)>;
    /// Uploads `bytes` as a blob.
    async fn push_blob(&self, cx: &RemoteContext<'_>, reference: &Reference, bytes: &[u8]) -> Result<(String, u64)>;
    /// Puts `bytes` as the OCI image manifest tagged `reference`'s tag.
    async fn push_manifest(&self, cx: &RemoteContext<'_>, reference: &Reference, bytes: &[u8]) -> Result<String>;
}

/// The fake adapter's remote: none.
#[derive(Debug, Default)]
pub struct NoRemote;

fn no_remote() -> Error {
    Error::denied("remote", "this host adapter has no remote cache (the fake adapter has no network)")
}

#[async_trait::async_trait]
impl RemoteStore for NoRemote {
    async fn manifest(&self, _: &RemoteContext<'_>, _: &Reference) -> Result<Option<RemoteDocument>> {
        Err(no_remote())
    }

    async fn blob(&self, _: &RemoteContext<'_>, _: &Reference, _: &Digest, _: u64) -> Result<Vec<u8>> {
        Err(no_remote())
    }

    async fn image(
        &self,
        _: &RemoteContext<'_>,
        _: &Reference,
        _: &Digest,
        _: u64,
        _: std::fs::File,
        _: u64,
    ) -> Result<WrittenImage> {
        Err(no_remote())
    }

    async fn push_image(&self, _: &RemoteContext<'_>, _: &Reference, _: &Path, _: &Path) -> Result<(String, u64)> {
        Err(no_remote())
    }

    async fn push_blob(&self, _: &RemoteContext<'_>, _: &Reference, _: &[u8]) -> Result<(String, u64)> {
        Err(no_remote())
    }

    async fn push_manifest(&self, _: &RemoteContext<'_>, _: &Reference, _: &[u8]) -> Result<String> {
        Err(no_remote())
    }
}

/// The native remote: a registry client per allow-list, shared with nothing
/// else so that a push's token never serves a pull of an image by name.
#[derive(Debug, Default)]
pub struct RegistryRemote {
    clients: ClientPool,
}

#[async_trait::async_trait]
impl RemoteStore for RegistryRemote {
    async fn manifest(&self, cx: &RemoteContext<'_>, reference: &Reference) -> Result<Option<RemoteDocument>> {
        let client = self.clients.client(cx.policy, reference);
        let raw = client.fetch_tagged_manifest(reference).await.map_err(registry_error)?;
        Ok(raw.map(|raw| RemoteDocument {
            media_type: raw.media_type.unwrap_or_default(),
            digest: raw.digest.to_string(),
            bytes: raw.bytes,
        }))
    }

    async fn blob(&self, cx: &RemoteContext<'_>, reference: &Reference, digest: &Digest, size: u64) -> Result<Vec<u8>> {
        let client = self.clients.client(cx.policy, reference);
        client.fetch_blob_bytes(reference, digest, size).await.map_err(registry_error)
    }

    async fn image(
        &self,
        cx: &RemoteContext<'_>,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        mut out: std::fs::File,
        max_bytes: u64,
    ) -> Result<WrittenImage> {
        let client = self.clients.client(cx.policy, reference);
        let written = client
            .fetch_zstd_image(reference, digest, size, &mut out, max_bytes, cx.progress.as_ref())
            .await
            .map_err(registry_error)?;
        Ok(WrittenImage { bytes: written.bytes, sha256: written.sha256.to_string() })
    }

    async fn push_image(
        &self,
        cx: &RemoteContext<'_>,
        reference: &Reference,
        image: &Path,
        scratch: &Path,
    ) -> Result<(String, u64)> {
        let client = self.clients.client(cx.policy, reference);
        let pushed =
            client.push_zstd_image(reference, image, scratch, cx.progress.as_ref()).await.map_err(registry_error)?;
        Ok((pushed.digest.to_string(), pushed.size))
    }

    async fn push_blob(&self, cx: &RemoteContext<'_>, reference: &Reference, bytes: &[u8]) -> Result<(String, u64)> {
        let client = self.clients.client(cx.policy, reference);
        let pushed = client.push_blob_bytes(reference, bytes).await.map_err(registry_error)?;
        Ok((pushed.digest.to_string(), pushed.size))
    }

    async fn push_manifest(&self, cx: &RemoteContext<'_>, reference: &Reference, bytes: &[u8]) -> Result<String> {
        let client = self.clients.client(cx.policy, reference);
        let digest = client
            .push_manifest_bytes(reference, bytes, rootfs_cache_registry::OCI_MANIFEST_TYPE)
            .await
            .map_err(registry_error)?;
        Ok(digest.to_string())
    }
}

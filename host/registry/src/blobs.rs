//! Blobs by digest into the [`BlobStore`]: verified while they stream, renamed into place only
//! when complete, fetched once however many callers ask at the same time.

use std::path::PathBuf;

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::client::{HostClient, RegistryClient};
use crate::config::MAX_CONCURRENT_DOWNLOADS;
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::progress::Progress;
use crate::reference::Reference;
use crate::store::{BlobStore, TempGuard};

/// One blob to fetch: its digest and, when the manifest gives it, its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRequest {
    /// The digest the bytes must have.
    pub digest: Digest,
    /// The length they must have, if known (a descriptor's `size`).
    pub size: Option<u64>,
}

impl BlobRequest {
    /// A request for `digest` of `size` bytes.
    pub fn new(digest: Digest, size: Option<u64>) -> Self {
        Self { digest, size }
    }
}

/// How a blob came to be in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// It was there already (or another fetch put it there while this one waited): nothing
    /// was downloaded.
    Present,
    /// It was downloaded: `attempts` is 2 when the first was corrupt or truncated.
    Downloaded {
        /// Attempts made, 1 or 2.
        attempts: u32,
    },
}

/// A blob in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its path in the store.
    pub path: PathBuf,
    /// Its length.
    pub size: u64,
    /// Whether it was downloaded.
    pub outcome: BlobOutcome,
}

/// Why one download attempt failed: worth another try, or not.
enum AttemptError {
    Retry(String),
    Fatal(RegistryError),
}

impl RegistryClient {
    /// Fetches `blobs` of `repository` (its tag or digest is ignored) into `store`,
    /// [`MAX_CONCURRENT_DOWNLOADS`] at a time; results in the order asked. The first error
    /// stops the rest (their temporary files are removed).
    pub async fn fetch_blobs(
        &self,
        store: &BlobStore,
        repository: &Reference,
        blobs: &[BlobRequest],
        progress: &dyn Progress,
    ) -> Result<Vec<FetchedBlob>, RegistryError> {
        // The futures are made first (they start only when polled): a stream mapping through a
        // closure would make this future impossible to prove `Send` for callers that spawn it.
        let fetches: Vec<_> = blobs.iter().map(|blob| self.fetch_blob(store, repository, blob, progress)).collect();
        stream::iter(fetches).buffered(MAX_CONCURRENT_DOWNLOADS).try_collect().await
    }

    /// Fetches one blob of `repository` into `store`, unless it is there already.
    ///
    /// Holds the digest's lock while downloading, so concurrent fetches of one digest, in this
    /// process or another, download it once. A digest or length mismatch or a stream that
    /// ends early is retried once, then is [`RegistryError::Corrupt`]; nothing incomplete is
    /// ever at the blob's final name.
    pub async fn fetch_blob(
        &self,
        store: &BlobStore,
        repository: &Reference,
        blob: &BlobRequest,
        progress: &dyn Progress,
    ) -> Result<FetchedBlob, RegistryError> {
        self.check_allowed(repository)?;
        if let Some(present) = present(store, blob)? {
            progress.finished(&blob.digest, 0);
            return Ok(present);
        }
        let lock = {
            let (owned, digest) = (store.clone(), blob.digest.clone());
            tokio::task::spawn_blocking(move || owned.lock(&digest))
                .await
                .map_err(|e| RegistryError::store(store.root(), std::io::Error::other(e)))??
        };
        if let Some(present) = present(store, blob)? {
            progress.finished(&blob.digest, 0);
            return Ok(present);
        }
        let host = self.host_client(repository).await?;
        progress.started(&blob.digest, blob.size);
        let what = format!("{}/{}", repository.registry(), repository.repository());
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            match self.attempt(&host, store, repository, blob, progress).await {
                Ok((guard, size)) => break Ok((guard, size)),
                Err(AttemptError::Fatal(e)) => break Err(e),
                Err(AttemptError::Retry(reason)) if attempts < 2 => progress.retrying(&blob.digest, &reason),
                Err(AttemptError::Retry(reason)) => {
                    break Err(RegistryError::Corrupt { digest: blob.digest.clone(), what: what.clone(), reason });
                }
            }
        };
        let (mut guard, size) = result?;
        let temp = guard.path.take().expect("a finished attempt keeps its file");
        let path = match store.commit(&temp, &blob.digest) {
            Ok(path) => path,
            Err(e) => {
                guard.path = Some(temp);
                return Err(e);
            }
        };
        drop(lock);
        progress.finished(&blob.digest, size);
        Ok(FetchedBlob { digest: blob.digest.clone(), path, size, outcome: BlobOutcome::Downloaded { attempts } })
    }

    /// One download into a new temporary file, verified and synced; the guard removes the
    /// file unless the caller commits it.
    async fn attempt(
        &self,
        host: &HostClient,
        store: &BlobStore,
        repository: &Reference,
        blob: &BlobRequest,
        progress: &dyn Progress,
    ) -> Result<(TempGuard, u64), AttemptError> {
        let (path, file) = store.create_temp(&blob.digest).map_err(AttemptError::Fatal)?;
        let guard = TempGuard { path: Some(path.clone()) };
        let mut file = tokio::fs::File::from_std(file);
        let digest_text = blob.digest.to_string();
        let what = format!("{}/{}@{}", repository.registry(), repository.repository(), digest_text);
        let mut response = self
            .get(host, repository, &format!("blobs/{digest_text}"), "*/*", &what)
            .await
            .map_err(AttemptError::Fatal)?;
        if let (Some(expected), Some(announced)) = (blob.size, response.content_length())
            && expected != announced
        {
            return Err(AttemptError::Retry(format!("the registry announced {announced} bytes, not {expected}")));
        }
        let write_error = |e: std::io::Error| AttemptError::Fatal(RegistryError::store(&path, e));
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    let why = crate::classify::describe(&e);
                    return Err(AttemptError::Retry(format!("the stream broke after {received} bytes: {why}")));
                }
            };
            received += chunk.len() as u64;
            if let Some(expected) = blob.size
                && received > expected
            {
                return Err(AttemptError::Retry(format!("more than the expected {expected} bytes")));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(write_error)?;
            progress.advanced(&blob.digest, received);
        }
        if let Some(expected) = blob.size
            && received != expected
        {
            return Err(AttemptError::Retry(format!("the stream ended after {received} of {expected} bytes")));
        }
        let got = Digest::from_sha256(hasher.finalize().into());
        if got != blob.digest {
            return Err(AttemptError::Retry(format!("the bytes received have digest {got}")));
        }
        file.flush().await.map_err(write_error)?;
        file.sync_all().await.map_err(write_error)?;
        Ok((guard, received))
    }
}

/// The blob, if it is in the store already (and has the expected length, when one is given),
/// its use recorded ([`BlobStore::touch`]).
fn present(store: &BlobStore, blob: &BlobRequest) -> Result<Option<FetchedBlob>, RegistryError> {
    let path = store.path(&blob.digest);
    match std::fs::metadata(&path) {
        Ok(meta) if blob.size.is_none_or(|size| size == meta.len()) => {
            store.touch(&blob.digest);
            Ok(Some(FetchedBlob { digest: blob.digest.clone(), size: meta.len(), path, outcome: BlobOutcome::Present }))
        }
        Ok(meta) => Err(RegistryError::Corrupt {
            digest: blob.digest.clone(),
            what: path.display().to_string(),
            reason: format!("the stored blob has {} bytes, not the {} asked for", meta.len(), blob.size.unwrap_or(0)),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RegistryError::store(path, e)),
    }
}

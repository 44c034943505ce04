//! The puller capability: manifests and blobs of images by name, from a registry or from
//! what the cache remembers of one.
//!
//! - [`RegistryPuller`] (native): the `rootfs-cache-registry` client. Every document it
//!   fetches is stored in the cache's blob store (`<cache>/blobs/sha256/<hex>`), and the
//!   digest each reference named is remembered in `<cache>/refs/<sha256 of the reference>.json`
//!   (written through a temporary file and a rename), so that `--pull missing` answers a
//!   reference resolved before without the network.
//! - [`NoNetwork`] (fake adapter): refuses every fetch with `denied`; the fake adapter has no
//!   network.
//!
//! The host has checked the registry against the policy before a puller is called; the
//! client is given the same allow-list, so a token service or a redirect to another host is
//! refused too unless the policy lists it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rootfs_cache_registry::{
    BlobRequest as RegistryBlob, BlobStore, Digest, Progress, Reference, RegistryClient, RegistryConfig, RegistryError,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::request::PullPolicy;

/// A document as fetched: bytes, media type, digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The bytes, unparsed.
    pub bytes: Vec<u8>,
    /// The media type the registry named (or that was recorded with the reference).
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
}

/// One blob to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobAsk {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The length it must have.
    pub size: u64,
    /// Return its bytes too.
    pub read: bool,
}

/// A blob in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Its absolute path.
    pub path: PathBuf,
    /// Its bytes, when asked for.
    pub contents: Option<Vec<u8>>,
}

/// What one fetch may use: the cache, the policy, and where progress goes.
pub struct PullContext<'a> {
    /// The cache directory (absolute).
    pub cache: &'a Path,
    /// The policy: `registries`, `insecure_registries`.
    pub policy: &'a Policy,
    /// Progress of blob downloads.
    pub progress: Arc<dyn Progress>,
}

/// Fetches manifests and blobs of images by name.
#[async_trait::async_trait]
pub trait Puller: Send + Sync {
    /// The manifest or index `reference` names, under the pull policy.
    async fn fetch_manifest(&self, cx: &PullContext<'_>, reference: &Reference, pull: PullPolicy) -> Result<Fetched>;
    /// Blobs of `reference`'s repository into the cache's blob store.
    async fn fetch_blobs(
        &self,
        cx: &PullContext<'_>,
        reference: &Reference,
        blobs: &[BlobAsk],
        pull: PullPolicy,
    ) -> Result<Vec<Stored>>;
}

/// The largest blob whose bytes are returned (an image config).
pub const MAX_READ_BYTES: u64 = 4 << 20;

/// The fake adapter's puller: no network.
#[derive(Debug, Default)]
pub struct NoNetwork;

#[async_trait::async_trait]
impl Puller for NoNetwork {
    async fn fetch_manifest(&self, _: &PullContext<'_>, reference: &Reference, _: PullPolicy) -> Result<Fetched> {
        Err(no_network(reference))
    }

    async fn fetch_blobs(
        &self,
        _: &PullContext<'_>,
        r: &Reference,
        _: &[BlobAsk],
        _: PullPolicy,
    ) -> Result<Vec<Stored>> {
        Err(no_network(r))
    }
}

fn no_network(reference: &Reference) -> Error {
    Error::denied(
        "registries",
        format!("{reference}: this host adapter has no network (the fake adapter pulls nothing)"),
    )
}

/// The native puller.
#[derive(Debug, Default)]
pub struct RegistryPuller {
    clients: ClientPool,
}

/// Registry clients kept per allow-list, so that connections and tokens are
/// reused between the calls of one process.
#[derive(Default)]
pub struct ClientPool(Mutex<Clients>);

/// Clients by (allowed registries, insecure registries).
type Clients = BTreeMap<(Vec<String>, Vec<String>), Arc<RegistryClient>>;

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool").finish_non_exhaustive()
    }
}

impl ClientPool {
    /// The client for `policy`'s allow-list (`reference`'s registry alone
    /// when the policy allows any).
    pub fn client(&self, policy: &Policy, reference: &Reference) -> Arc<RegistryClient> {
        let allowed = policy.registries.clone().unwrap_or_else(|| vec![reference.registry().to_owned()]);
        let insecure = policy.insecure_registries.clone();
        let mut clients = self.0.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry((allowed.clone(), insecure.clone()))
            .or_insert_with(|| {
                let mut config = RegistryConfig::new(allowed);
                config.insecure = insecure;
                Arc::new(RegistryClient::new(config))
            })
            .clone()
    }
}

/// What `refs/` remembers of a reference.
#[derive(Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    digest: String,
    media_type: String,
}

impl RegistryPuller {
    fn client(&self, cx: &PullContext<'_>, reference: &Reference) -> Arc<RegistryClient> {
        self.clients.client(cx.policy, reference)
    }
}

fn refs_path(cache: &Path, reference: &Reference) -> PathBuf {
    let hex = Digest::of(reference.to_string().as_bytes()).hex().to_owned();
    cache.join("refs").join(format!("{hex}.json"))
}

/// What the cache remembers of `reference`, with the document's bytes; `None` when it has
/// nothing (or what it has does not hold up: then the registry is asked).
fn remembered(store: &BlobStore, cache: &Path, reference: &Reference) -> Option<Fetched> {
    let record: RefRecord = serde_json::from_slice(&std::fs::read(refs_path(cache, reference)).ok()?).ok()?;
    let digest: Digest = record.digest.parse().ok()?;
    if reference.digest().is_some_and(|d| *d != digest) {
        return None;
    }
    let bytes = std::fs::read(store.path(&digest)).ok()?;
    (Digest::of(&bytes) == digest).then_some(Fetched { bytes, media_type: record.media_type, digest: record.digest })
}

fn remember(cache: &Path, reference: &Reference, fetched: &Fetched) -> Result<()> {
    let path = refs_path(cache, reference);
    let dir = cache.join("refs");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), &e))?;
    let record = RefRecord {
        reference: reference.to_string(),
        digest: fetched.digest.clone(),
        media_type: fetched.media_type.clone(),
    };
    let json = serde_json::to_vec(&record).map_err(|e| Error::Io(e.to_string()))?;
    let mut temp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| Error::io(dir.display(), &e))?;
    std::io::Write::write_all(&mut temp, &json).map_err(|e| Error::io(path.display(), &e))?;
    temp.persist(&path).map_err(|e| Error::io(path.display(), &e.error))?;
    Ok(())
}

fn open_store(cache: &Path) -> Result<BlobStore> {
    BlobStore::open(cache).map_err(registry_error)
}

#[async_trait::async_trait]
impl Puller for RegistryPuller {
    async fn fetch_manifest(&self, cx: &PullContext<'_>, reference: &Reference, pull: PullPolicy) -> Result<Fetched> {
        let store = open_store(cx.cache)?;
        if pull != PullPolicy::Always
            && let Some(known) = remembered(&store, cx.cache, reference)
        {
            return Ok(known);
        }
        if pull == PullPolicy::Never {
            return Err(Error::NotFound(format!(
                "{reference} was never pulled into this cache, and --pull never uses only what the cache holds"
            )));
        }
        let raw = self.client(cx, reference).fetch_manifest(reference).await.map_err(registry_error)?;
        let fetched = Fetched {
            media_type: raw.media_type.unwrap_or_default(),
            digest: raw.digest.to_string(),
            bytes: raw.bytes,
        };
        let (store2, digest, bytes) = (store.clone(), raw.digest.clone(), fetched.bytes.clone());
        tokio::task::spawn_blocking(move || store2.put(&digest, &bytes))
            .await
            .map_err(|e| Error::Io(e.to_string()))?
            .map_err(registry_error)?;
        remember(cx.cache, reference, &fetched)?;
        Ok(fetched)
    }

    async fn fetch_blobs(
        &self,
        cx: &PullContext<'_>,
        reference: &Reference,
        blobs: &[BlobAsk],
        pull: PullPolicy,
    ) -> Result<Vec<Stored>> {
        let store = open_store(cx.cache)?;
        let mut asks = Vec::with_capacity(blobs.len());
        for blob in blobs {
            let digest: Digest =
                blob.digest.parse().map_err(|e| Error::InvalidRequest(format!("blob digest {}: {e}", blob.digest)))?;
            if blob.read && blob.size > MAX_READ_BYTES {
                return Err(Error::UnsupportedSource(format!(
                    "blob {} declares {} bytes; blobs read whole are limited to {MAX_READ_BYTES}",
                    blob.digest, blob.size
                )));
            }
            if pull == PullPolicy::Never && !store.contains(&digest) {
                return Err(Error::NotFound(format!(
                    "blob {} of {reference} is not in this cache, and --pull never uses only what the cache holds",
                    blob.digest
                )));
            }
            asks.push(RegistryBlob::new(digest, Some(blob.size)));
        }
        // On a task of its own: the download futures borrow only what the task owns.
        let (client, owned_store, owned_reference, progress) =
            (self.client(cx, reference), store.clone(), reference.clone(), cx.progress.clone());
        let fetched =
            tokio::spawn(
                async move { client.fetch_blobs(&owned_store, &owned_reference, &asks, progress.as_ref()).await },
            )
            .await
            .map_err(|e| Error::Io(format!("fetching blobs of {reference}: {e}")))?
            .map_err(registry_error)?;
        let mut answers = Vec::with_capacity(fetched.len());
        for (blob, ask) in fetched.into_iter().zip(blobs) {
            let contents = if ask.read {
                Some(std::fs::read(&blob.path).map_err(|e| Error::io(blob.path.display(), &e))?)
            } else {
                None
            };
            answers.push(Stored { path: blob.path, contents });
        }
        Ok(answers)
    }
}

/// A registry's failure as the library's error class, its message kept (it names the host,
/// what was asked for and what to do; never a credential).
pub fn registry_error(error: RegistryError) -> Error {
    let message = error.to_string();
    match error {
        RegistryError::Denied { .. } => Error::denied("registries", message),
        RegistryError::NotFound { .. } => Error::NotFound(message),
        RegistryError::TooLarge { .. } => Error::UnsupportedSource(message),
        RegistryError::Corrupt { .. } => Error::Corrupt(message),
        RegistryError::Store { source, .. } | RegistryError::File { source, .. } => match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Error::NoSpace(message),
            _ => Error::Io(message),
        },
        RegistryError::Unreachable { .. }
        | RegistryError::Tls { .. }
        | RegistryError::Unauthorized { .. }
        | RegistryError::PushDenied { .. }
        | RegistryError::Protocol { .. }
        | RegistryError::Credentials { .. }
        | RegistryError::Certificate { .. } => Error::Io(message),
    }
}

//! The host's client of the OCI distribution API, for pulling images by name.
//!
//! The host only does the network's part: HTTP, credentials, TLS, and checking that what
//! arrives has the digest it should. What the registry sends (indexes, manifests, configs) is
//! parsed by the sandboxed guest, so this crate hands manifests over as raw bytes.
//!
//! - [`Reference`]: `[docker://][HOST[:PORT]/]REPO[:TAG][@sha256:HEX]` with Docker Hub's
//!   defaults (`docker.io`, `library/`, `latest`).
//! - [`RegistryConfig`] and [`RegistryClient`]: the hosts that may be contacted (anything else
//!   is [`RegistryError::Denied`] before a connection), those reached over plain HTTP, CAs from
//!   `/etc/docker/certs.d/HOST:PORT/*.crt` beside the system's roots, credentials from
//!   Docker's `config.json` and Podman's `auth.json` ([`AuthFiles`]), basic or token auth.
//! - [`RegistryClient::fetch_manifest`]: bytes, media type and digest of a manifest or index,
//!   at most 4 MiB.
//! - [`RegistryClient::fetch_blob`] and [`RegistryClient::fetch_blobs`]: blobs into a
//!   content-addressed [`BlobStore`], verified while streaming, three at a time, each digest
//!   downloaded once however many threads and processes ask; [`Progress`] reports bytes.
//! - Cache entries as OCI 1.1 artifacts (the guest builds and parses their documents):
//!   [`RegistryClient::fetch_tagged_manifest`] (`None` for a missing tag),
//!   [`RegistryClient::fetch_blob_bytes`], [`RegistryClient::fetch_zstd_image`] (a zstd blob
//!   decoded into a sparse file, verified while it streams, bounded against bombs), and
//!   [`RegistryClient::push_zstd_image`] (a sparse file compressed reading only its data),
//!   [`RegistryClient::push_blob_bytes`], [`RegistryClient::push_manifest_bytes`] (blobs the
//!   registry has already are not uploaded again; a refusal to push is
//!   [`RegistryError::PushDenied`]).
//! - [`RegistryError`]: one variant per class a CLI reports (unreachable, TLS, unauthorized,
//!   not found, too large, corrupt, denied).
//!
//! ```no_run
//! use rootfs_cache_registry::{BlobRequest, BlobStore, FnProgress, Reference, RegistryClient, RegistryConfig};
//!
//! # async fn pull() -> Result<(), Box<dyn std::error::Error>> {
//! let client = RegistryClient::new(RegistryConfig::new(["registry.example.com"]).insecure("127.0.0.1:5000"));
//! let reference: Reference = "docker://registry.example.com/team/app:1.4".parse()?;
//! let manifest = client.fetch_manifest(&reference).await?; // raw: the guest parses it
//! println!("{} {:?} {} bytes", manifest.digest, manifest.media_type, manifest.bytes.len());
//!
//! let store = BlobStore::open("/var/cache/rootfs")?; // blobs/sha256/<hex>
//! let layers = vec![BlobRequest::new("sha256:…".parse()?, Some(1234))]; // from the guest
//! let progress = FnProgress(|digest: &rootfs_cache_registry::Digest, bytes: u64| eprintln!("{digest}: {bytes}"));
//! for blob in client.fetch_blobs(&store, &reference, &layers, &progress).await? {
//!     println!("{} at {} ({:?})", blob.digest, blob.path.display(), blob.outcome);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Credentials never appear in an error, in `Debug` output or in a log line.
//!
//! TLS is rustls with its default `aws-lc-rs` provider (post-quantum key exchange; `ring`'s
//! provider is deprecated in rustls 0.23.48) and the system's roots through
//! `rustls-platform-verifier`. A provider the embedding program installs as the process
//! default is used instead.
//!
//! Every connection goes to an allowed host: the reference's registry, the token service a
//! registry names in its `Bearer` challenge (checked when the client for that host is built),
//! and any host a request is redirected to (Docker Hub, for example, redirects blobs to its
//! CDN, which must then be allowed too). `oci-client` does the token handshake; the manifest
//! and blob requests are this crate's own, so that their size, redirects and streaming are
//! under its control.

mod artifact;
mod blobs;
mod classify;
mod client;
mod config;
mod credentials;
mod digest;
mod error;
mod manifest;
mod progress;
mod reference;
mod sparse;
mod store;

pub use artifact::{OCI_MANIFEST_TYPE, PushedBlob, UnpackedImage};
pub use blobs::{BlobOutcome, BlobRequest, FetchedBlob};
pub use client::RegistryClient;
pub use config::{DOCKER_CERTS_DIR, MAX_CONCURRENT_DOWNLOADS, MAX_MANIFEST_BYTES, RegistryConfig};
pub use credentials::{AuthFiles, Credentials, Found, Secret};
pub use digest::{Digest, DigestError};
pub use error::RegistryError;
pub use manifest::{ACCEPTED_MEDIA_TYPES, RawManifest};
pub use progress::{FnProgress, NoProgress, Progress};
pub use reference::{DOCKER_HUB, Reference, ReferenceError};
pub use store::{BlobStore, Removal, StaleFile, TEMP_PREFIX};

/// Decodes the zstd stream `input` into `file` (an empty file) as a download of an image does:
/// every 4 KiB block of zeroes left a hole, at most `limit` decoded bytes. Returns the decoded
/// length and its SHA-256, or why it stopped. The same code as
/// [`RegistryClient::fetch_zstd_image`] runs, without the network (the fuzz target's entry).
pub fn decode_sparse_image(
    input: impl std::io::Read,
    file: &std::fs::File,
    limit: u64,
) -> Result<(u64, Digest), String> {
    sparse::decode_sparse(input, file, limit).map_err(|e| format!("{e:?}"))
}

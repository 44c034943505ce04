//! The host's client of the local Docker engine, for `docker-daemon:NAME[:TAG]` sources.
//!
//! Like the registry client, it does the engine's part only: what an image holds (its
//! inspect document, its exported archive) is untrusted and is parsed by the sandboxed
//! guest, so this crate hands it over unparsed, or stores it by digest.
//!
//! - [`DockerHost`]: the engine's socket, from `DOCKER_HOST` (`unix://PATH`) or
//!   `/var/run/docker.sock`, as the Docker CLI finds it.
//! - [`EngineClient::info`]: the engine's root directory and storage driver (`GET /info`),
//!   so a host knows, before its guest runs, which directory an overlay2 image lies under.
//! - [`EngineClient::inspect`]: `GET /images/{name}/json`, raw, at most 4 MiB.
//! - [`EngineClient::export`]: `GET /images/{name}/get` (what `docker save` writes), every
//!   regular file of the archive stored in a [`BlobStore`](rootfs_cache_registry::BlobStore) under its SHA-256 while it streams
//!   ([`archive::store_archive`]).
//! - [`EngineError`]: one variant per class a CLI reports (not running, not found, denied by
//!   the engine, too large, a bad archive).
//!
//! ```no_run
//! use rootfs_cache_docker::{DockerHost, EngineClient};
//! use rootfs_cache_registry::BlobStore;
//!
//! # async fn export() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = EngineClient::new(DockerHost::from_env()?);
//! let info = engine.info().await?;
//! println!("{} keeps images under {} ({})", engine.host(), info.root_dir.display(), info.driver);
//! let inspect = engine.inspect("app:dev").await?; // raw: the guest parses it
//! let store = BlobStore::open("/var/cache/rootfs")?;
//! for file in engine.export("app:dev", &store, 8 << 30).await? {
//!     println!("{} {} ({} bytes)", file.name, file.digest, file.size);
//! }
//! # let _ = inspect;
//! # Ok(())
//! # }
//! ```

pub mod archive;
mod client;
mod error;
mod host;
mod info;
mod name;

pub use archive::ArchiveFile;
pub use client::{EngineClient, MAX_INSPECT_BYTES};
pub use error::EngineError;
pub use host::{DEFAULT_SOCKET, DockerHost};
pub use info::EngineInfo;
pub use name::check_image_name;

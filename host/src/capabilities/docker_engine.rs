//! The Docker engine capability: images of the local engine, for `docker-daemon:` sources.
//!
//! - [`EngineApi`] (native): the `rootfs-cache-docker` client of the engine `DOCKER_HOST`
//!   names (else `/var/run/docker.sock`), the way the Docker CLI finds it.
//! - [`NoEngine`] (fake adapter): refuses every call with `denied`.
//!
//! The host checks the engine's socket against the policy (`docker_engines`) before a call
//! reaches a backend. What the engine sends about an image (its inspect document, its
//! archive) is handed to the guest unparsed, or stored by digest.

use std::path::Path;

use rootfs_cache_docker::{ArchiveFile, DockerHost, EngineClient, EngineError, EngineInfo};
use rootfs_cache_registry::BlobStore;

use super::puller::registry_error;
use crate::error::{Error, Result};

/// Images of a local Docker engine.
#[async_trait::async_trait]
pub trait DockerEngine: Send + Sync {
    /// The engine's socket, which the policy must allow; an error when the engine cannot
    /// be named (a `DOCKER_HOST` that is not a unix socket).
    fn socket(&self) -> Result<&Path>;
    /// Where the engine keeps images, and with which storage driver.
    async fn info(&self) -> Result<EngineInfo>;
    /// The image's inspect document, unparsed.
    async fn inspect(&self, name: &str) -> Result<Vec<u8>>;
    /// The image exported into the blob store of `cache`, at most `limit` bytes.
    async fn export(&self, name: &str, cache: &Path, limit: u64) -> Result<Vec<ArchiveFile>>;
}

/// The fake adapter's engine: there is none.
#[derive(Debug, Default)]
pub struct NoEngine;

fn no_engine() -> Error {
    Error::denied("docker_engines", "this host adapter reaches no Docker engine (the fake adapter has none)")
}

#[async_trait::async_trait]
impl DockerEngine for NoEngine {
    fn socket(&self) -> Result<&Path> {
        Err(no_engine())
    }

    async fn info(&self) -> Result<EngineInfo> {
        Err(no_engine())
    }

    async fn inspect(&self, _: &str) -> Result<Vec<u8>> {
        Err(no_engine())
    }

    async fn export(&self, _: &str, _: &Path, _: u64) -> Result<Vec<ArchiveFile>> {
        Err(no_engine())
    }
}

/// The native engine: the one `DOCKER_HOST` names when the capability is made.
#[derive(Debug)]
pub struct EngineApi {
    client: std::result::Result<EngineClient, String>,
}

impl EngineApi {
    /// The engine `DOCKER_HOST` names, else `/var/run/docker.sock`. A `DOCKER_HOST` this
    /// client cannot use is reported when the engine is first needed.
    pub fn from_env() -> Self {
        Self { client: DockerHost::from_env().map(EngineClient::new).map_err(|e| e.to_string()) }
    }

    /// The engine at `socket`.
    pub fn at(socket: impl Into<std::path::PathBuf>) -> Self {
        Self { client: Ok(EngineClient::new(DockerHost::unix(socket))) }
    }

    fn client(&self) -> Result<&EngineClient> {
        self.client.as_ref().map_err(|e| Error::InvalidRequest(e.clone()))
    }
}

impl Default for EngineApi {
    fn default() -> Self {
        Self::from_env()
    }
}

#[async_trait::async_trait]
impl DockerEngine for EngineApi {
    fn socket(&self) -> Result<&Path> {
        Ok(self.client()?.host().socket())
    }

    async fn info(&self) -> Result<EngineInfo> {
        self.client()?.info().await.map_err(engine_error)
    }

    async fn inspect(&self, name: &str) -> Result<Vec<u8>> {
        self.client()?.inspect(name).await.map_err(engine_error)
    }

    async fn export(&self, name: &str, cache: &Path, limit: u64) -> Result<Vec<ArchiveFile>> {
        let store = BlobStore::open(cache).map_err(registry_error)?;
        self.client()?.export(name, &store, limit).await.map_err(engine_error)
    }
}

/// The library's class of an engine error.
pub fn engine_error(error: EngineError) -> Error {
    let message = error.to_string();
    match error {
        EngineError::UnsupportedHost(_) | EngineError::InvalidName(_) => Error::InvalidRequest(message),
        EngineError::NotFound { .. } => Error::NotFound(message),
        EngineError::TooLarge { .. } => Error::denied("max_image_bytes", message),
        EngineError::Archive(_) => Error::UnsupportedSource(message),
        EngineError::Store(e) => registry_error(e),
        EngineError::NotRunning { .. } | EngineError::Protocol { .. } => Error::Io(message),
    }
}

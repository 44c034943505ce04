//! What a client may do: the hosts it may contact, which of them over plain HTTP, where CA
//! certificates and credentials are found.

use std::path::PathBuf;
use std::time::Duration;

use crate::credentials::AuthFiles;

/// Docker's directory of per-registry CA certificates: `<dir>/HOST:PORT/ca.crt`.
pub const DOCKER_CERTS_DIR: &str = "/etc/docker/certs.d";

/// The largest manifest or index fetched (Docker's and containerd's limit): 4 MiB.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Blobs downloaded at once by [`RegistryClient::fetch_blobs`](crate::RegistryClient::fetch_blobs), as Docker does.
pub const MAX_CONCURRENT_DOWNLOADS: usize = 3;

/// The configuration of a [`RegistryClient`](crate::RegistryClient).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The hosts that may be contacted, as `HOST[:PORT]` exactly as references name them
    /// (`docker.io` for Docker Hub): registries, and the token services and redirect targets
    /// they send the client to (for Docker Hub `auth.docker.io` and its blob CDN). A request
    /// for any other host is [`Denied`](crate::RegistryError::Denied) before it is sent.
    pub allowed: Vec<String>,
    /// Registries reached over plain HTTP instead of TLS (each is allowed too). Every other
    /// host is spoken to with TLS only.
    pub insecure: Vec<String>,
    /// The directory of per-registry CAs ([`DOCKER_CERTS_DIR`] by default): every `*.crt` in
    /// `<dir>/HOST[:PORT]/` is trusted for that host, beside the system's roots.
    pub certs_dir: PathBuf,
    /// Where credentials are looked for.
    pub auth_files: AuthFiles,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
    /// How long a read may wait for data.
    pub read_timeout: Duration,
    /// The largest manifest or index accepted ([`MAX_MANIFEST_BYTES`] by default).
    pub max_manifest_bytes: u64,
}

impl RegistryConfig {
    /// A configuration allowing `allowed`, with Docker's CA directory and credentials from the
    /// environment ([`AuthFiles::from_env`]).
    pub fn new<S: Into<String>>(allowed: impl IntoIterator<Item = S>) -> Self {
        Self {
            allowed: allowed.into_iter().map(Into::into).collect(),
            insecure: Vec::new(),
            certs_dir: PathBuf::from(DOCKER_CERTS_DIR),
            auth_files: AuthFiles::from_env(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
            max_manifest_bytes: MAX_MANIFEST_BYTES,
        }
    }

    /// Also reach `host` (`HOST[:PORT]`) over plain HTTP.
    pub fn insecure(mut self, host: impl Into<String>) -> Self {
        self.insecure.push(host.into());
        self
    }

    /// Look for per-registry CAs under `dir` instead of [`DOCKER_CERTS_DIR`].
    pub fn certs_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.certs_dir = dir.into();
        self
    }

    /// Read credentials from these files instead.
    pub fn auth_files(mut self, files: AuthFiles) -> Self {
        self.auth_files = files;
        self
    }

    /// Whether `host` may be contacted. Allowing `docker.io` allows the names Docker Hub's
    /// API is served under (`index.docker.io`, `registry-1.docker.io`), not its token service
    /// (`auth.docker.io`) or blob CDN, which are hosts of their own.
    pub fn is_allowed(&self, host: &str) -> bool {
        let host = match host {
            "index.docker.io" | "registry-1.docker.io" => crate::reference::DOCKER_HUB,
            other => other,
        };
        self.allowed.iter().chain(&self.insecure).any(|h| h == host)
    }

    /// Whether `host` is reached over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure.iter().any(|h| h == host)
    }

    /// Where a CA for `host` goes: `<certs_dir>/HOST[:PORT]/ca.crt`.
    pub fn ca_path(&self, host: &str) -> PathBuf {
        self.certs_dir.join(host).join("ca.crt")
    }
}

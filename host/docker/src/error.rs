//! The errors of the engine's client, one variant per class a CLI reports.

use std::path::PathBuf;

use rootfs_cache_registry::RegistryError;

/// Why a request to the Docker engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `DOCKER_HOST` names something other than a unix socket.
    #[error("DOCKER_HOST={0:?} is not supported: only a local engine on a unix socket (unix:///PATH) is")]
    UnsupportedHost(String),
    /// Nothing answers on the socket: the engine is not running, or this user may not use it.
    #[error(
        "the Docker engine at {} is not running or not reachable ({reason}); start dockerd, or set DOCKER_HOST to its socket",
        socket.display()
    )]
    NotRunning {
        /// The socket.
        socket: PathBuf,
        /// What connecting said.
        reason: String,
    },
    /// The engine has no such image.
    #[error("the Docker engine at {} has no image {name:?}", socket.display())]
    NotFound {
        /// The socket.
        socket: PathBuf,
        /// The image asked for.
        name: String,
    },
    /// A name the client refuses to send.
    #[error("{0:?} is not a Docker image name, NAME[:TAG], NAME@sha256:HEX or an image ID")]
    InvalidName(String),
    /// An answer over its limit.
    #[error("{what} from the Docker engine is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was read.
        what: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The engine answered with an error status, or something that is not HTTP.
    #[error("the Docker engine at {} answered {what}: {message}", socket.display())]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// The request, or the status.
        what: String,
        /// The engine's message.
        message: String,
    },
    /// An exported archive that is not a tar archive a `docker save` writes.
    #[error("the archive the Docker engine exported is unusable: {0}")]
    Archive(String),
    /// The blob store could not be written.
    #[error(transparent)]
    Store(#[from] RegistryError),
}

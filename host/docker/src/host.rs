//! Where the engine listens: `DOCKER_HOST`, as the Docker CLI reads it.

use std::path::{Path, PathBuf};

use crate::error::EngineError;

/// The engine's socket when `DOCKER_HOST` is unset.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// A local Docker engine's API socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerHost {
    socket: PathBuf,
}

impl DockerHost {
    /// The engine at `socket`.
    pub fn unix(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    /// Parses a `DOCKER_HOST` value: `unix:///PATH`, or empty for the default socket. A TCP
    /// or SSH engine is [`EngineError::UnsupportedHost`]: an engine on another machine has
    /// its image store on that machine.
    pub fn parse(value: &str) -> Result<Self, EngineError> {
        if value.is_empty() {
            return Ok(Self::unix(DEFAULT_SOCKET));
        }
        match value.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') => Ok(Self::unix(path)),
            _ => Err(EngineError::UnsupportedHost(value.to_owned())),
        }
    }

    /// The engine `DOCKER_HOST` names, else the default socket.
    pub fn from_env() -> Result<Self, EngineError> {
        Self::parse(&std::env::var("DOCKER_HOST").unwrap_or_default())
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl std::fmt::Display for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unix://{}", self.socket.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_values_as_the_cli_reads_them() {
        assert_eq!(DockerHost::parse("").unwrap().socket(), Path::new(DEFAULT_SOCKET));
        assert_eq!(
            DockerHost::parse("unix:///run/user/1000/docker.sock").unwrap().to_string(),
            "unix:///run/user/1000/docker.sock"
        );
        for bad in ["tcp://10.0.0.1:2375", "ssh://me@host", "unix://relative.sock", "/var/run/docker.sock"] {
            assert!(matches!(DockerHost::parse(bad), Err(EngineError::UnsupportedHost(_))), "{bad}");
        }
    }
}

//! What the engine says of itself (`GET /info`): where it keeps images, and how.
//!
//! This is parsed on the host, before the guest runs, because the host must know which
//! directory to show the guest. It is the engine's own description of itself (the engine
//! runs as root on this machine), not anything an image brings, and only two strings of it
//! are read.

use std::path::PathBuf;

use serde::Deserialize;

/// The engine's storage, as `docker info` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// `DockerRootDir`, e.g. `/var/lib/docker`.
    pub root_dir: PathBuf,
    /// `Driver`, the storage driver: `overlay2`, `vfs`, `btrfs`, `zfs`, or
    /// `overlayfs` with the containerd image store.
    pub driver: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InfoDocument {
    docker_root_dir: String,
    driver: String,
}

impl EngineInfo {
    /// Parses the body of `GET /info`.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let doc: InfoDocument = serde_json::from_slice(body).map_err(|e| format!("GET /info: {e}"))?;
        if !doc.docker_root_dir.starts_with('/') {
            return Err(format!("GET /info: DockerRootDir {:?} is not an absolute path", doc.docker_root_dir));
        }
        Ok(Self { root_dir: PathBuf::from(doc.docker_root_dir), driver: doc.driver })
    }

    /// The directory holding the layers of the `overlay2` driver, when that is the driver.
    pub fn overlay2_dir(&self) -> Option<PathBuf> {
        (self.driver == "overlay2").then(|| self.root_dir.join("overlay2"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_driver_are_read_and_overlay2_gives_its_directory() {
        let info = EngineInfo::parse(br#"{"ID":"x","Driver":"overlay2","DockerRootDir":"/var/lib/docker","Images":3}"#)
            .unwrap();
        assert_eq!(info.overlay2_dir(), Some(PathBuf::from("/var/lib/docker/overlay2")));
        let info = EngineInfo::parse(br#"{"Driver":"vfs","DockerRootDir":"/srv/docker"}"#).unwrap();
        assert_eq!(info.overlay2_dir(), None);
        assert!(EngineInfo::parse(br#"{"Driver":"vfs","DockerRootDir":"srv"}"#).is_err());
        assert!(EngineInfo::parse(b"not json").is_err());
    }
}

//! What the host checks of a request before its guest runs, and what the
//! guest will see: the rule that picks a source's root is here, once, for
//! the library and the CLI's implicit policy alike.

use std::path::{Path, PathBuf};

use crate::bindings::rootfs::cache::types as wit;
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::request::Request;
use crate::store::RequestScope;

/// The largest size the guest accepts in a request (16 TiB, ext4's limit
/// with 4 KiB blocks); a larger one is `invalid-request`.
const MAX_VALID_IMAGE_BYTES: u64 = 16 << 40;

/// Longest path accepted (Linux's `PATH_MAX`, 4096, less its terminating NUL).
const MAX_PATH_BYTES: usize = 4095;

/// The directory the guest must see for `source`: an OCI layout is
/// self-contained; an overlay2 layer resolves its lower layers among its
/// siblings; and for anything else the parent shows the guest what it is.
pub fn source_root(source: &Path) -> PathBuf {
    if source.join("oci-layout").exists() {
        source.to_path_buf()
    } else {
        source.parent().map_or_else(|| source.to_path_buf(), Path::to_path_buf)
    }
}

/// Docker's layer database beside the overlay2 directory `overlay2_root`
/// (`<docker root>/image/overlay2/layerdb`), which the guest reads (read-only)
/// to find an overlay2 chain's chain ID, its portable key: when `overlay2_root`
/// is named `overlay2` and the database is a directory reached through no
/// symlink (its real path is the one the guest computes from the root).
pub(crate) fn layerdb_beside(overlay2_root: &Path) -> Option<PathBuf> {
    if overlay2_root.file_name()? != "overlay2" {
        return None;
    }
    let layerdb = overlay2_root.parent()?.join("image/overlay2/layerdb");
    let real = crate::real_path::real_path(&layerdb).ok()?;
    (real == layerdb && std::fs::metadata(&real).is_ok_and(|m| m.is_dir())).then_some(real)
}

/// What a request's source names, as the host needs to know it before the
/// guest runs (the guest parses it again, and decides).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceRef {
    /// A host path (an overlay2 layer, an OCI layout), with the ref name
    /// of `oci:PATH:REF`.
    Path(PathBuf, Option<String>),
    /// `docker://…`: an image by name; nothing on the host is preopened.
    Registry(String),
    /// `docker-daemon:NAME`: an image of the local Docker engine; with the
    /// overlay2 driver, the engine's overlay2 directory is preopened.
    Daemon(String),
}

/// The prefix of a source naming an image of the local Docker engine.
pub const DAEMON_PREFIX: &str = "docker-daemon:";

impl SourceRef {
    /// Splits a source: `docker://…`, `oci:PATH[:REF]` (REF after the last
    /// `:`, when it holds no `/`), or a path.
    pub fn parse(source: &Path) -> Self {
        let Some(text) = source.to_str() else { return Self::Path(source.to_path_buf(), None) };
        if text.starts_with("docker://") {
            return Self::Registry(text.to_owned());
        }
        if let Some(name) = text.strip_prefix(DAEMON_PREFIX) {
            return Self::Daemon(name.to_owned());
        }
        match text.strip_prefix("oci:") {
            Some(rest) => match rest.rsplit_once(':') {
                Some((path, name)) if !name.contains('/') && !path.is_empty() => {
                    Self::Path(PathBuf::from(path), Some(name.to_owned()))
                }
                _ => Self::Path(PathBuf::from(rest), None),
            },
            None => Self::Path(source.to_path_buf(), None),
        }
    }
}

/// `path` as UTF-8, which every path the guest sees must be.
pub(crate) fn utf8<'a>(what: &str, path: &'a Path) -> Result<&'a str> {
    path.to_str().ok_or_else(|| Error::InvalidRequest(format!("{what} {} is not valid UTF-8", path.display())))
}

/// Resolves a path given by the caller, which must exist.
pub(crate) fn existing(what: &str, path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Error::InvalidRequest(format!("{what} is empty")));
    }
    if path.as_os_str().len() > MAX_PATH_BYTES {
        return Err(Error::InvalidRequest(format!(
            "{what} is {} bytes long; paths are limited to {MAX_PATH_BYTES}",
            path.as_os_str().len()
        )));
    }
    crate::real_path::real_path(path).map_err(|e| Error::io(format!("{what} {}", path.display()), &e))
}

fn check_reference_length(reference: &str) -> Result<()> {
    if reference.len() > MAX_PATH_BYTES {
        return Err(Error::InvalidRequest(format!(
            "source is {} bytes long; references are limited to {MAX_PATH_BYTES}",
            reference.len()
        )));
    }
    Ok(())
}

/// Checks `request` before its guest runs: the source and the agent exist
/// and are UTF-8, the source lies under the policy's roots, and the size is
/// within its limit. Returns the request as the guest gets it and the scope
/// its store is made with (the source root to preopen, the canonical agent).
/// For a `docker-daemon:` source, `daemon_overlay2` is the engine's overlay2
/// directory when that is its storage driver (the caller asked the engine).
pub(crate) fn admit(
    policy: &Policy,
    remote: Option<&crate::RemoteCache>,
    request: &Request,
    daemon_overlay2: Option<&Path>,
) -> Result<(wit::ConvertRequest, RequestScope)> {
    let (source_str, roots) = match SourceRef::parse(&request.source) {
        SourceRef::Registry(reference) => {
            check_reference_length(&reference)?;
            // The guest parses the reference; every registry it asks for
            // is checked against `registries` before any connection.
            (reference, Vec::new())
        }
        SourceRef::Daemon(name) => {
            check_reference_length(&name)?;
            // The guest asks the engine about the image, and finds its layers
            // under the overlay2 directory, which is all it sees of the host.
            let roots = match daemon_overlay2 {
                Some(dir) => {
                    let real = existing("the Docker engine's overlay2 directory", dir)?;
                    policy.check_source_real("the Docker engine's overlay2 directory", utf8("it", &real)?, &real)?;
                    let layerdb = layerdb_beside(&real);
                    std::iter::once(real).chain(layerdb).collect()
                }
                None => Vec::new(),
            };
            (format!("{DAEMON_PREFIX}{name}"), roots)
        }
        SourceRef::Path(path, name) => {
            let source = existing("source", &path)?;
            let source_str = utf8("source", &source)?;
            policy.check_source_real("source", source_str, &source)?;
            let root = source_root(&source);
            // An overlay2 layer's chain ID is in Docker's layer database.
            let layerdb = if source.join("link").is_file() { layerdb_beside(&root) } else { None };
            let roots = std::iter::once(root).chain(layerdb).collect();
            match name {
                Some(name) => (format!("oci:{source_str}:{name}"), roots),
                None => (source_str.to_owned(), roots),
            }
        }
    };
    let agent = existing("agent", &request.agent)?;
    // A size beyond what any image may have is invalid, not denied: the
    // guest says so.
    policy.check_size(request.size.filter(|&size| size <= MAX_VALID_IMAGE_BYTES))?;
    let agent_str = utf8("agent", &agent)?.to_owned();
    let wit_request = wit::ConvertRequest {
        source: source_str,
        agent: agent_str.clone(),
        size: request.size,
        converter: request.converter.to_string(),
        platform: request.platform.clone(),
        pull: Some(request.pull.into()),
        remote: remote.map(|r| wit::RemoteOptions {
            repository: r.repository.clone(),
            push: r.push,
            verify: match r.verify {
                crate::RemoteVerify::Digest => wit::RemoteVerify::Digest,
                crate::RemoteVerify::Rebuild => wit::RemoteVerify::Rebuild,
            },
        }),
    };
    let scope = RequestScope { roots, agent: Some((agent_str, agent)) };
    Ok((wit_request, scope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_split_into_paths_named_images_and_references() {
        let parse = |s: &str| SourceRef::parse(Path::new(s));
        assert_eq!(parse("/srv/oci/app"), SourceRef::Path("/srv/oci/app".into(), None));
        assert_eq!(parse("oci:/srv/oci/app"), SourceRef::Path("/srv/oci/app".into(), None));
        assert_eq!(parse("oci:/srv/oci/app:v1"), SourceRef::Path("/srv/oci/app".into(), Some("v1".into())));
        assert_eq!(parse("oci:layouts/app:v1"), SourceRef::Path("layouts/app".into(), Some("v1".into())));
        assert_eq!(parse("oci:/a:b/c"), SourceRef::Path("/a:b/c".into(), None));
        assert_eq!(
            parse("docker://127.0.0.1:5000/app:v1"),
            SourceRef::Registry("docker://127.0.0.1:5000/app:v1".into())
        );
        assert_eq!(parse("docker-daemon:app:dev"), SourceRef::Daemon("app:dev".into()));
    }

    #[test]
    fn the_layer_database_is_shown_beside_an_overlay2_directory_only() {
        let tmp = tempfile::tempdir().unwrap();
        let docker = crate::real_path::real_path(tmp.path()).unwrap().join("docker");
        let overlay2 = docker.join("overlay2");
        std::fs::create_dir_all(&overlay2).unwrap();
        assert_eq!(layerdb_beside(&overlay2), None, "no database");
        let layerdb = docker.join("image/overlay2/layerdb");
        std::fs::create_dir_all(&layerdb).unwrap();
        assert_eq!(layerdb_beside(&overlay2), Some(layerdb.clone()));
        let other = docker.join("other");
        std::fs::create_dir_all(&other).unwrap();
        assert_eq!(layerdb_beside(&other), None, "not an overlay2 directory");
        // Through a symlink, the guest would not find it where it looks.
        std::fs::rename(docker.join("image"), docker.join("image.real")).unwrap();
        std::os::unix::fs::symlink("image.real", docker.join("image")).unwrap();
        assert_eq!(layerdb_beside(&overlay2), None);
    }
}

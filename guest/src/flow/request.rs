//! The checks of a request, before anything is read: host paths absolute
//! and normalised, a known converter, a size within bounds, a platform that
//! parses.

use std::path::{Component, Path};

use crate::oci::Platform;
use crate::registry::ImageRef;
use crate::wit::types::{ConvertRequest, Error};

/// Where the agent goes inside every image.
pub const AGENT_TARGET: &str = "/sbin/vm-agent";
/// The agent's mode.
pub const AGENT_MODE: u32 = 0o755;
/// How often a hit records its use, at most.
pub const RECORD_USE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// The platform picked from an OCI index when the request names none.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";
/// Smallest image size accepted: below this no ext4 root filesystem fits.
pub const MIN_IMAGE_BYTES: u64 = 1 << 20;
/// Largest image size accepted (16 TiB, ext4's limit with 4 KiB blocks).
pub const MAX_IMAGE_BYTES: u64 = 16 << 40;
/// Longest path accepted (Linux's `PATH_MAX`, including the NUL).
pub const MAX_PATH_BYTES: usize = 4095;

/// Checks that `path` is an absolute, normalised host path of sane length.
pub fn check_host_path(what: &str, path: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::InvalidRequest(format!("{what} {path:?} {why}")));
    if path.is_empty() {
        return Err(Error::InvalidRequest(format!("{what} is empty")));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::InvalidRequest(format!(
            "{what} is {} bytes long; paths are limited to {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    if !path.starts_with('/') {
        return bad("is not an absolute path");
    }
    if Path::new(path).components().any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || path.contains("//")
        || (path.len() > 1 && path.ends_with('/'))
    {
        return bad("is not normalised (no `.`, `..`, `//` or trailing `/`)");
    }
    Ok(())
}

/// Checks a converter name: `oci2rootfs`, `exact`, or `command:<absolute path>`.
pub fn check_converter(name: &str) -> Result<(), Error> {
    match name {
        "oci2rootfs" | "exact" => Ok(()),
        _ => match name.strip_prefix("command:") {
            Some(path) => check_host_path("converter command", path),
            None => Err(Error::InvalidRequest(format!(
                "converter {name:?} is unknown; use oci2rootfs, exact or command:<absolute path>"
            ))),
        },
    }
}

/// What a request's `source` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceName {
    /// A host path: an overlay2 layer directory or an OCI layout.
    Path(String),
    /// `oci:PATH:REF`: the image named `REF` in the layout at `PATH`.
    NamedInLayout(String, String),
    /// `docker://…`: an image in a registry.
    Registry(ImageRef),
    /// `docker-daemon:NAME`: an image of the local Docker engine.
    Daemon(String),
}

impl SourceName {
    /// Parses a request's `source`: `docker://…`, `docker-daemon:NAME`,
    /// `oci:PATH[:REF]` (a bare `oci:PATH` is the path), or an absolute host
    /// path.
    pub fn parse(source: &str) -> Result<Self, Error> {
        if source.starts_with(crate::registry::SCHEME) {
            return ImageRef::parse(source).map(Self::Registry);
        }
        if let Some(name) = source.strip_prefix(crate::daemon::PREFIX) {
            crate::daemon::check_name(name)?;
            return Ok(Self::Daemon(name.to_owned()));
        }
        if let Some(rest) = source.strip_prefix("oci:") {
            // A path may hold `:`; the reference is what follows the last
            // one, if that is not part of the path.
            let (path, name) = match rest.rsplit_once(':') {
                Some((path, name)) if !name.contains('/') && path.starts_with('/') => (path, Some(name)),
                _ => (rest, None),
            };
            check_host_path("source", path)?;
            return Ok(match name {
                None => Self::Path(path.to_owned()),
                Some("") => return Err(Error::InvalidRequest(format!("source {source:?} names an empty reference"))),
                Some(name) => Self::NamedInLayout(path.to_owned(), name.to_owned()),
            });
        }
        check_host_path("source", source)?;
        Ok(Self::Path(source.to_owned()))
    }
}

/// Checks the whole request before anything is read.
pub fn check_request(request: &ConvertRequest) -> Result<String, Error> {
    SourceName::parse(&request.source)?;
    check_host_path("agent", &request.agent)?;
    check_converter(&request.converter)?;
    if let Some(size) = request.size {
        if size < MIN_IMAGE_BYTES {
            return Err(Error::InvalidRequest(format!(
                "size {size} is below the minimum of {MIN_IMAGE_BYTES} bytes (1 MiB)"
            )));
        }
        if size > MAX_IMAGE_BYTES {
            return Err(Error::InvalidRequest(format!(
                "size {size} is above the maximum of {MAX_IMAGE_BYTES} bytes (16 TiB)"
            )));
        }
    }
    let platform = request.platform.clone().unwrap_or_else(|| DEFAULT_PLATFORM.to_owned());
    if Platform::parse(&platform).is_none() {
        return Err(Error::InvalidRequest(format!("platform {platform:?} is not os/arch or os/arch/variant")));
    }
    Ok(platform)
}

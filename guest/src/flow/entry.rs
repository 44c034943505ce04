//! What every way of making an entry shares: its inputs, and the manifest
//! and platform it records.

use crate::key::CacheKey;
use crate::manifest::{AgentRecord, FORMAT, Manifest};
use crate::source::Source;
use crate::sys;
use crate::wit::host::{ConverterInfo, FileDigest};
use crate::wit::types::{ConvertRequest, SourceKind};

/// Everything one build starts from: what the request resolved to, and
/// where the converter writes.
pub(super) struct BuildInputs<'a> {
    /// The entry's key.
    pub(super) key: &'a CacheKey,
    /// The resolved source.
    pub(super) source: &'a Source,
    /// The request as the caller made it.
    pub(super) request: &'a ConvertRequest,
    /// The platform checked from the request (or the default).
    pub(super) platform: &'a str,
    /// The agent's digest and size.
    pub(super) agent: &'a FileDigest,
    /// What the host says of the converter.
    pub(super) converter: &'a ConverterInfo,
    /// The cache-relative temporary image, under `tmp/`.
    pub(super) staged: &'a str,
    /// What the entry records as its source.
    pub(super) source_name: &'a str,
    /// What the conversion job names as its source.
    pub(super) job_source: &'a str,
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    sys::now_ns() / 1_000_000_000
}

/// What built entries record: see [`crate::manifest::Manifest`].
pub(super) const BUILDER: &str = concat!("rootfs-cache-guest ", env!("CARGO_PKG_VERSION"));

/// The manifest of the entry `inputs` describe, its image `image_bytes`
/// long, made from `layers` (none for an image fetched from a remote cache).
pub(super) fn entry_manifest(inputs: &BuildInputs<'_>, layers: Vec<String>, image_bytes: u64) -> Manifest {
    let BuildInputs { key, source, request, agent, converter, source_name, .. } = *inputs;
    Manifest {
        format: FORMAT,
        key: key.to_string(),
        kind: kind_name(source).into(),
        source: source_name.to_owned(),
        layers,
        platform: recorded_platform(source),
        agent: AgentRecord { path: request.agent.clone(), sha256: agent.sha256.clone(), size: agent.size },
        converter: converter.identity.clone(),
        requested_size: request.size,
        image_bytes,
        created: now_secs(),
        builder: BUILDER.into(),
        image_sha256: None,
    }
}

/// What an entry records as its platform: for images, the platform and the
/// manifest (or image ID) selected.
pub(super) fn recorded_platform(source: &Source) -> Option<String> {
    match source {
        Source::Overlay2(_) => None,
        Source::Oci(image) => Some(format!("{} {}", image.platform, image.manifest_digest)),
        Source::Pulled(image) => Some(format!("{} {}", image.platform, image.manifest_digest)),
        Source::Exported(image) => Some(format!("{} {}", image.platform, image.id)),
    }
}

/// The kind of `source`, as the WIT names it.
pub(super) fn kind_of(source: &Source) -> SourceKind {
    match source {
        Source::Overlay2(_) => SourceKind::Overlay2,
        Source::Oci(_) => SourceKind::OciLayout,
        Source::Pulled(_) => SourceKind::Registry,
        Source::Exported(_) => SourceKind::DockerArchive,
    }
}

/// The kind of `source`, as an entry's manifest records it.
pub(super) fn kind_name(source: &Source) -> &'static str {
    match source {
        Source::Overlay2(_) => "overlay2",
        Source::Oci(_) => "oci-layout",
        Source::Pulled(_) => "registry",
        Source::Exported(_) => "docker-archive",
    }
}

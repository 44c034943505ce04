//! The conversions between the WIT's types (the guest's answers and
//! errors) and the library's, in one place beside the bindings.

use std::path::Path;

use crate::bindings::rootfs::cache::types::{self as wit, ConverterFailure, Denial};
use crate::error::Error;
use crate::reports::{Entry, GcReport, ImageInfo, Origin, Outcome, SourceKind, Timings, VerifyReport};

impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::InvalidRequest(m) => Self::InvalidRequest(m),
            wit::Error::NotFound(m) => Self::NotFound(m),
            wit::Error::UnsupportedSource(m) => Self::UnsupportedSource(m),
            wit::Error::Denied(d) => Self::Denied { rule: d.rule, detail: d.detail },
            wit::Error::ConverterFailed(f) => {
                Self::ConverterFailed { converter: f.converter, exit_status: f.exit_status, stderr_tail: f.stderr_tail }
            }
            wit::Error::Timeout(m) => Self::Timeout(m),
            wit::Error::MountFailed(m) => Self::MountFailed(m),
            wit::Error::InjectFailed(m) => Self::InjectFailed(m),
            wit::Error::Corrupt(m) => Self::Corrupt(m),
            wit::Error::NoSpace(m) => Self::NoSpace(m),
            wit::Error::Io(m) => Self::Io(m),
        }
    }
}

/// The guest's view of an error. Classes the WIT does not have (traps,
/// component and configuration errors) become `io`; they never reach a
/// guest in practice, since they end its call.
impl From<&Error> for wit::Error {
    fn from(e: &Error) -> Self {
        match e.clone() {
            Error::InvalidRequest(m) => Self::InvalidRequest(m),
            Error::NotFound(m) => Self::NotFound(m),
            Error::UnsupportedSource(m) => Self::UnsupportedSource(m),
            Error::Denied { rule, detail } => Self::Denied(Denial { rule, detail }),
            Error::ConverterFailed { converter, exit_status, stderr_tail } => {
                Self::ConverterFailed(ConverterFailure { converter, exit_status, stderr_tail })
            }
            Error::Timeout(m) => Self::Timeout(m),
            Error::MountFailed(m) => Self::MountFailed(m),
            Error::InjectFailed(m) => Self::InjectFailed(m),
            Error::Corrupt(m) => Self::Corrupt(m),
            Error::NoSpace(m) => Self::NoSpace(m),
            Error::Io(m) => Self::Io(m),
            other @ (Error::GuestTrap(_) | Error::Component(_) | Error::Config(_)) => Self::Io(other.to_string()),
        }
    }
}

impl From<wit::SourceKind> for SourceKind {
    fn from(k: wit::SourceKind) -> Self {
        match k {
            wit::SourceKind::Overlay2 => Self::Overlay2,
            wit::SourceKind::OciLayout => Self::OciLayout,
            wit::SourceKind::Registry => Self::Registry,
            wit::SourceKind::DockerArchive => Self::DockerArchive,
        }
    }
}

impl From<wit::Origin> for Origin {
    fn from(o: wit::Origin) -> Self {
        match o {
            wit::Origin::Local => Self::Local,
            wit::Origin::Remote => Self::Remote,
            wit::Origin::Built => Self::Built,
        }
    }
}

impl From<wit::Timings> for Timings {
    fn from(t: wit::Timings) -> Self {
        Self {
            resolve_us: t.resolve_us,
            lookup_us: t.lookup_us,
            lock_us: t.lock_us,
            convert_us: t.convert_us,
            inject_us: t.inject_us,
            publish_us: t.publish_us,
            total_us: t.total_us,
        }
    }
}

impl From<wit::ImageInfo> for ImageInfo {
    fn from(info: wit::ImageInfo) -> Self {
        Self {
            file_bytes: info.file_bytes,
            magic: info.magic,
            block_size: info.block_size,
            blocks_count: info.blocks_count,
            free_blocks: info.free_blocks,
            inodes_count: info.inodes_count,
            free_inodes: info.free_inodes,
            uuid: info.uuid,
            label: info.label,
            geometry_error: info.geometry_error,
        }
    }
}

/// The outcome the guest gave, its image path made absolute under `cache`.
pub(crate) fn outcome(o: wit::Outcome, cache: &Path) -> Outcome {
    Outcome {
        image: cache.join(&o.image),
        key: o.key,
        cached: o.cached,
        kind: o.kind.into(),
        image_bytes: o.image_bytes,
        rebuilt_because: o.rebuilt_because,
        timings: o.timings.into(),
        reference: o.reference,
        manifest_digest: o.manifest_digest,
        cloned_bytes: 0,
        copied_bytes: 0,
        origin: o.origin.into(),
        shareable: o.shareable,
        warnings: o.warnings,
        remote_digest: o.remote_digest,
        pushed: o.pushed,
    }
}

/// An entry the guest listed, its image path made absolute under `cache`.
pub(crate) fn entry(e: wit::Entry, cache: &Path) -> Entry {
    Entry {
        image: cache.join(&e.image),
        key: e.key,
        source: e.source,
        kind: e.kind.into(),
        agent_sha256: e.agent_sha256,
        converter: e.converter,
        image_bytes: e.image_bytes,
        created: e.created,
        last_used: e.last_used,
        problem: e.problem,
    }
}

/// A garbage collection's report, its entries' paths under `cache`.
pub(crate) fn gc_report(r: wit::GcReport, cache: &Path) -> GcReport {
    let images: u64 = r.removed.iter().map(|e| e.image_bytes).sum();
    GcReport {
        blob_bytes_freed: r.bytes_before.saturating_sub(r.bytes_after).saturating_sub(images),
        removed: r.removed.into_iter().map(|e| entry(e, cache)).collect(),
        bytes_before: r.bytes_before,
        bytes_after: r.bytes_after,
        kept_pinned: r.kept_pinned,
    }
}

/// A verification's report, its entries' paths under `cache`.
pub(crate) fn verify_report(r: wit::VerifyReport, cache: &Path) -> VerifyReport {
    VerifyReport { checked: r.checked, broken: r.broken.into_iter().map(|e| entry(e, cache)).collect(), hashed: 0 }
}

/// Maps a guest call's two layers of failure to one error.
pub(crate) fn guest_result<T>(result: wasmtime::Result<Result<T, wit::Error>>) -> Result<T, Error> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.into()),
        Err(trap) => Err(Error::GuestTrap(format!("{trap:#}"))),
    }
}

impl From<crate::request::PullPolicy> for wit::PullPolicy {
    fn from(p: crate::request::PullPolicy) -> Self {
        match p {
            crate::request::PullPolicy::Missing => Self::Missing,
            crate::request::PullPolicy::Always => Self::Always,
            crate::request::PullPolicy::Never => Self::Never,
        }
    }
}

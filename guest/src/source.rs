//! Source detection and identity: what kind of source a path is, and what
//! about it must change the cache key.

use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::key::KeyBuilder;
use crate::oci::OciImage;
use crate::overlay2::{self, Overlay2Chain};

/// Why a source could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceError {
    /// The path does not exist.
    NotFound(String),
    /// The path exists but is not a usable source.
    Unsupported(String),
    /// Reading the source failed.
    Io(String),
}

impl SourceError {
    /// An I/O error on `path`, kept as one line.
    pub fn io(path: &Path, err: &std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound(format!("{}: no such file or directory", path.display()))
        } else {
            Self::Io(format!("{}: {err}", path.display()))
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(m) | Self::Unsupported(m) | Self::Io(m) => f.write_str(m),
        }
    }
}

/// Reads a small file whole, refusing one longer than `limit` bytes.
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, SourceError> {
    let file = fs::File::open(path).map_err(|e| SourceError::io(path, &e))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| SourceError::io(path, &e))?;
    if bytes.len() as u64 > limit {
        return Err(SourceError::Unsupported(format!("{} is larger than {limit} bytes", path.display())));
    }
    Ok(bytes)
}

/// Nanoseconds since the epoch, or 0 where the platform keeps no such time.
fn nanos(time: std::io::Result<SystemTime>) -> u64 {
    time.ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(d.subsec_nanos())))
}

/// What identifies one overlay2 layer at one point in time.
///
/// Docker never changes a committed layer, so the path, the short id and the
/// `diff/` directory's birth and modification times identify its contents: a
/// layer deleted and re-created at the same path gets new times, and so a new
/// key, even when its inode number is reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerIdentity {
    /// The layer directory, `<root>/<chain-id>`.
    pub dir: String,
    /// The layer's short id (`link`).
    pub link: String,
    /// Birth time of `diff/` in ns (the status-change time where the host
    /// reports no birth time).
    pub created_ns: u64,
    /// Modification time of `diff/` in ns.
    pub modified_ns: u64,
}

impl LayerIdentity {
    /// Reads the identity of the layer directory `dir` whose short id is `link`.
    pub fn of_layer(dir: &Path, link: String) -> Result<Self, SourceError> {
        let diff = dir.join("diff");
        let meta = fs::symlink_metadata(&diff).map_err(|e| SourceError::io(&diff, &e))?;
        if !meta.is_dir() {
            return Err(SourceError::Unsupported(format!("{} is not a directory", diff.display())));
        }
        let dir =
            dir.to_str().ok_or_else(|| SourceError::Unsupported(format!("{} is not UTF-8", dir.display())))?.to_owned();
        Ok(Self { dir, link, created_ns: nanos(meta.created()), modified_ns: nanos(meta.modified()) })
    }
}

/// A detected, resolved source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Docker overlay2 chain.
    Overlay2(Overlay2Chain),
    /// One image selected from an OCI image layout.
    Oci(OciImage),
}

impl Source {
    /// Detects and resolves the source at `path` (an absolute path), picking
    /// `platform` (`os/arch[/variant]`) from an OCI index.
    pub fn resolve(path: &Path, platform: &str) -> Result<Self, SourceError> {
        // The common case first, in as few filesystem calls as possible: an
        // overlay2 layer, recognised by its `link` file.
        if let Ok(link) = read_small(&path.join("link"), 256) {
            return Overlay2Chain::resolve_with_link(path, &link).map(Self::Overlay2);
        }
        let meta = fs::metadata(path).map_err(|e| SourceError::io(path, &e))?;
        if !meta.is_dir() {
            return Err(SourceError::Unsupported(format!(
                "{} is a file; a source is an overlay2 layer directory or an OCI image layout directory",
                path.display()
            )));
        }
        if fs::symlink_metadata(path.join("oci-layout")).is_ok() {
            return OciImage::resolve(path, platform).map(Self::Oci);
        }
        if overlay2::looks_like_layer(path) {
            return Overlay2Chain::resolve(path).map(Self::Overlay2);
        }
        Err(SourceError::Unsupported(format!(
            "{} is neither an overlay2 layer directory (diff/ and link) nor an OCI image layout (oci-layout and index.json)",
            path.display()
        )))
    }

    /// Feeds everything that identifies this source into a cache key.
    pub fn add_to_key(&self, key: &mut KeyBuilder) {
        match self {
            Self::Overlay2(chain) => {
                key.text("kind", "overlay2").number("layers", chain.layers.len() as u64);
                for layer in &chain.layers {
                    key.text("layer.dir", &layer.dir)
                        .text("layer.link", &layer.link)
                        .number("layer.created", layer.created_ns)
                        .number("layer.modified", layer.modified_ns);
                }
            }
            Self::Oci(image) => {
                key.text("kind", "oci-layout")
                    .text("layout", &image.layout)
                    .number("index.created", image.index_created_ns)
                    .number("index.modified", image.index_modified_ns)
                    .text("manifest", &image.manifest_digest)
                    .text("platform", &image.platform);
            }
        }
    }
}

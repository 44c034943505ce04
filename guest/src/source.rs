//! Source detection and identity: what kind of source a path is, and what
//! about it must change the cache key.

use std::path::Path;

use crate::key::KeyBuilder;
use crate::oci::OciImage;
use crate::overlay2::{self, Overlay2Chain};
use crate::probe::{self, Probe};
use crate::wit::host::{PathInfo, PathKind};
use crate::wit::types::Error;

/// Why a source could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceError {
    /// The path does not exist.
    NotFound(String),
    /// The path exists but is not a usable source.
    Unsupported(String),
    /// Reading the source failed.
    Io(String),
    /// A host call failed (a probe the host refused, say); its error
    /// passes through unchanged.
    Host(Error),
}

impl SourceError {
    /// `path` does not exist.
    pub fn not_found(path: &Path) -> Self {
        Self::NotFound(format!("{}: no such file or directory", path.display()))
    }

    /// An I/O error on `path`, kept as one line. A path that is no regular
    /// file ([`crate::sys::NotRegular`]) is an unsupported source; one that
    /// leads out of the request's directories ([`crate::sys::Escape`]) is a
    /// denial by the rule `source_roots`, as the host's probe says it.
    pub fn io(path: &Path, err: &std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::NotFound {
            Self::not_found(path)
        } else if let Some(refusal) = crate::sys::not_regular(err) {
            Self::Unsupported(format!("{} {refusal}", path.display()))
        } else if crate::sys::is_escape(err) {
            Self::Host(Error::Denied(crate::wit::types::Denial {
                rule: "source_roots".into(),
                detail: format!("{} {}", path.display(), crate::sys::Escape),
            }))
        } else {
            Self::Io(format!("{}: {err}", path.display()))
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(m) | Self::Unsupported(m) | Self::Io(m) => f.write_str(m),
            Self::Host(e) => f.write_str(&probe::describe(e)),
        }
    }
}

/// Reads a small file whole, refusing one longer than `limit` bytes.
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, SourceError> {
    let (bytes, _) = crate::sys::read(path, 0, limit + 1).map_err(|e| SourceError::io(path, &e))?;
    if bytes.len() as u64 > limit {
        return Err(SourceError::Unsupported(format!("{} is larger than {limit} bytes", path.display())));
    }
    Ok(bytes)
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
    /// Birth time of `diff/` in ns (0 where the host records none).
    pub created_ns: u64,
    /// Modification time of `diff/` in ns.
    pub modified_ns: u64,
}

impl LayerIdentity {
    /// The identity of the layer directory `dir` whose short id is `link`,
    /// from the probe's answer for its `diff/`.
    pub fn from_diff(dir: &Path, link: String, diff: Result<PathInfo, Error>) -> Result<Self, SourceError> {
        let diff_path = dir.join("diff");
        let info = diff.map_err(|e| probe::source_error(&diff_path, &e))?;
        if info.kind != PathKind::Directory {
            return Err(SourceError::Unsupported(format!("{} is not a directory", diff_path.display())));
        }
        let dir =
            dir.to_str().ok_or_else(|| SourceError::Unsupported(format!("{} is not UTF-8", dir.display())))?.to_owned();
        Ok(Self { dir, link, created_ns: info.created_ns, modified_ns: info.modified_ns })
    }
}

/// The longest `link` file accepted (Docker writes 26 bytes).
const MAX_LINK_BYTES: u64 = 256;

/// The six answers of the first probe, by position.
fn six(answers: Vec<Result<PathInfo, Error>>) -> Result<[Result<PathInfo, Error>; 6], SourceError> {
    <[_; 6]>::try_from(answers).map_err(|a| SourceError::Io(format!("probe answered {} of 6 paths", a.len())))
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
    ///
    /// One probe tells the kinds apart and holds everything the top layer of
    /// an overlay2 chain needs (`link`, `lower`, `diff/`) and an OCI layout's
    /// `oci-layout` and `index.json`; the chain below the top layer takes two
    /// more, however many layers it has, and an OCI image one more per
    /// manifest, nested index or config it reads.
    pub fn resolve(path: &Path, platform: &str, fs: &impl Probe) -> Result<Self, SourceError> {
        let (link, lower, diff, marker, index) = (
            path.join("link"),
            path.join("lower"),
            path.join("diff"),
            path.join("oci-layout"),
            path.join("index.json"),
        );
        let answers = probe::ask(
            fs,
            &[
                (path, 0),
                (&link, MAX_LINK_BYTES as u32),
                (&lower, overlay2::MAX_LOWER_BYTES as u32),
                (&diff, 0),
                (&marker, crate::oci::MAX_MARKER_BYTES as u32),
                (&index, probe::MAX_HEAD_BYTES as u32),
            ],
        )?;
        let [top, link_info, lower_info, diff_info, marker_info, index_info] = six(answers)?;
        match top {
            Err(e) => return Err(probe::source_error(path, &e)),
            Ok(info) if info.kind == PathKind::Directory => {}
            Ok(info) if info.kind == PathKind::Symlink => {
                return Err(SourceError::Unsupported(format!(
                    "{} is a symlink; name the directory it points to",
                    path.display()
                )));
            }
            Ok(_) => {
                return Err(SourceError::Unsupported(format!(
                    "{} is a file; a source is an overlay2 layer directory or an OCI image layout directory",
                    path.display()
                )));
            }
        }
        // The common case first: an overlay2 layer, recognised by its `link`.
        if let Ok(info) = &link_info
            && info.kind == PathKind::File
        {
            let link = probe::small_file(&link, info, MAX_LINK_BYTES)?;
            return Overlay2Chain::resolve(path, &link, lower_info, diff_info, fs).map(Self::Overlay2);
        }
        if marker_info.is_ok() {
            return OciImage::resolve(path, platform, marker_info, index_info, fs).map(Self::Oci);
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

//! Docker overlay2 layer chains.
//!
//! A layer directory `<root>/<chain-id>` holds `diff/` (the layer's files),
//! `link` (its short id) and, unless it is a base layer, `lower`: the short ids
//! of every layer below it, nearest first, as `l/<id>` joined by `:`. Each
//! `<root>/l/<id>` is a symlink to `../<chain-id>/diff`.
//!
//! Everything here is read from the source and therefore untrusted: every id is
//! checked, every link must stay inside the overlay2 root, and a chain can
//! neither repeat a layer nor grow past [`MAX_LAYERS`].

use std::path::{Component, Path, PathBuf};

use crate::error::SourceError;
use crate::probe::{self, Probe};
use crate::wit::host::{PathInfo, PathKind};
use crate::wit::types::Error;

/// Overlayfs stacks at most 500 lower layers; Docker stops at 125. A longer
/// chain is broken or hostile.
pub const MAX_LAYERS: usize = 128;

/// The longest `lower` file accepted: 128 entries of `l/` and a 26-byte id
/// need 3.6 KiB; this allows ids of up to 64 bytes and more.
pub const MAX_LOWER_BYTES: u64 = 64 * 1024;

/// Checks a short layer id: Docker writes 26 characters of `A-Z0-9`; this
/// accepts 1 to 64 ASCII letters, digits, `_` and `-`, which rules out every
/// path trick.
pub fn is_valid_link_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Parses the contents of a `lower` file into short ids, nearest layer first.
pub fn parse_lower(text: &str) -> Result<Vec<String>, SourceError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::new();
    for entry in text.split(':') {
        let id = entry
            .strip_prefix("l/")
            .ok_or_else(|| SourceError::Unsupported(format!("lower entry {entry:?} is not of the form l/<id>")))?;
        if !is_valid_link_id(id) {
            return Err(SourceError::Unsupported(format!("lower entry {entry:?} has an invalid layer id")));
        }
        if ids.len() == MAX_LAYERS {
            return Err(SourceError::Unsupported(format!(
                "lower names more than {MAX_LAYERS} layers; overlay2 chains are never that deep"
            )));
        }
        if ids.iter().any(|seen| seen == id) {
            return Err(SourceError::Unsupported(format!("lower names layer l/{id} twice: the chain is a cycle")));
        }
        ids.push(id.to_owned());
    }
    Ok(ids)
}

/// Where `l/<id>` points, as a chain directory name directly under the root.
///
/// Docker writes `../<chain-id>/diff`. Anything that, resolved lexically from
/// `<root>/l`, leaves the root or does not end in `<chain-id>/diff` is refused.
pub fn chain_of_link_target(target: &Path) -> Result<String, String> {
    if target.is_absolute() {
        return Err(format!("{} is absolute", target.display()));
    }
    // Start inside `<root>/l`, then walk the target's components.
    let mut stack: Vec<String> = vec!["l".into()];
    for component in target.components() {
        match component {
            Component::Normal(part) => {
                stack.push(part.to_str().ok_or_else(|| format!("{} is not UTF-8", target.display()))?.to_owned())
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if stack.pop().is_none() {
                    return Err(format!("{} escapes the overlay2 root", target.display()));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{} is absolute", target.display()));
            }
        }
    }
    match stack.as_slice() {
        [chain, diff] if diff == "diff" && chain != "l" => Ok(chain.clone()),
        _ => Err(format!("{} does not name <root>/<layer>/diff", target.display())),
    }
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

/// A resolved overlay2 chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlay2Chain {
    /// The overlay2 root (`/var/lib/docker/overlay2`).
    pub root: PathBuf,
    /// Layers from the top (the requested directory) down to the base.
    pub layers: Vec<LayerIdentity>,
    /// The top layer's chain ID (`sha256:<hex>`) in Docker's layer
    /// database, checked against the whole chain
    /// ([`crate::layerdb::chain_id`]); `None` without one (a container's
    /// read-write layer, a bare directory, no or an inconsistent database).
    pub chain_id: Option<String>,
}

impl Overlay2Chain {
    /// Resolves the chain whose top layer directory is `top`, from the
    /// first probe's answers: its `link` (already read), `lower` and
    /// `diff/`. The layers below take two more probes: where each `l/<id>`
    /// points, then each layer directory and its `diff/`.
    pub fn resolve(
        top: &Path,
        link: &[u8],
        lower: Result<PathInfo, Error>,
        diff: Result<PathInfo, Error>,
        fs: &impl Probe,
    ) -> Result<Self, SourceError> {
        let root = top
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                SourceError::Unsupported(format!("{}: an overlay2 layer needs a parent directory", top.display()))
            })?
            .to_path_buf();
        let top_link = link_id(&top.join("link"), link)?;
        let lower_path = top.join("lower");
        let lower = match &lower {
            Ok(info) => probe::small_file(&lower_path, info, MAX_LOWER_BYTES)?,
            // A base layer has no `lower`.
            Err(Error::NotFound(_)) => Vec::new(),
            Err(e) => return Err(probe::source_error(&lower_path, e)),
        };
        let lower = String::from_utf8(lower)
            .map_err(|_| SourceError::Unsupported(format!("{} is not UTF-8", lower_path.display())))?;
        let ids = parse_lower(&lower)?;
        if ids.contains(&top_link) {
            return Err(SourceError::Unsupported(format!(
                "{} lists the layer's own id l/{top_link}: the chain is a cycle",
                lower_path.display()
            )));
        }

        let top_identity = LayerIdentity::from_diff(top, top_link, diff).map_err(|e| match e {
            SourceError::NotFound(_) => SourceError::Unsupported(format!(
                "{} has a link file but no diff/ directory: it is not an overlay2 layer",
                top.display()
            )),
            other => other,
        })?;
        let mut layers = vec![top_identity];
        if ids.is_empty() {
            return Ok(Self { root, layers, chain_id: None });
        }

        // Where each `l/<id>` points.
        let links: Vec<PathBuf> = ids.iter().map(|id| root.join("l").join(id)).collect();
        let answers = probe::ask(fs, &links.iter().map(|p| (p.as_path(), 0)).collect::<Vec<_>>())?;
        let mut dirs = Vec::with_capacity(ids.len());
        for ((id, link), answer) in ids.iter().zip(&links).zip(answers) {
            let info = match answer {
                Ok(info) => info,
                Err(Error::NotFound(_)) => {
                    return Err(SourceError::Unsupported(format!(
                        "lower names layer l/{id}, but {} does not exist",
                        link.display()
                    )));
                }
                Err(e) => return Err(probe::source_error(link, &e)),
            };
            let target = match (info.kind, info.link_target) {
                (PathKind::Symlink, Some(target)) => target,
                _ => return Err(SourceError::Unsupported(format!("{} is not a symlink", link.display()))),
            };
            let target = String::from_utf8(target)
                .map_err(|_| SourceError::Unsupported(format!("lower entry l/{id}: its target is not UTF-8")))?;
            let chain = chain_of_link_target(Path::new(&target))
                .map_err(|why| SourceError::Unsupported(format!("lower entry l/{id}: {why}")))?;
            let dir = root.join(&chain);
            // Under another id, the layer itself or one already listed: a
            // layer below itself, which overlayfs refuses as a loop.
            if Some(std::ffi::OsStr::new(&chain)) == top.file_name() {
                return Err(SourceError::Unsupported(format!(
                    "{} names l/{id}, which points at {} itself: the chain is a cycle",
                    lower_path.display(),
                    top.display()
                )));
            }
            if let Some(seen) = dirs.iter().position(|d| *d == dir) {
                return Err(SourceError::Unsupported(format!(
                    "{} names l/{} and l/{id}, which both point at {}: the chain is a cycle",
                    lower_path.display(),
                    ids[seen],
                    dir.display()
                )));
            }
            dirs.push(dir);
        }

        // Each layer directory, and its `diff/`.
        let diffs: Vec<PathBuf> = dirs.iter().map(|d| d.join("diff")).collect();
        let paths: Vec<(&Path, u32)> =
            dirs.iter().zip(&diffs).flat_map(|(dir, diff)| [(dir.as_path(), 0), (diff.as_path(), 0)]).collect();
        let mut answers = probe::ask(fs, &paths)?.into_iter();
        for (id, layer_dir) in ids.into_iter().zip(&dirs) {
            let (Some(dir_answer), Some(diff_answer)) = (answers.next(), answers.next()) else {
                return Err(SourceError::Io("probe answered too few paths".into()));
            };
            match dir_answer {
                Ok(info) if info.kind == PathKind::Directory => {}
                Ok(_) => {
                    return Err(SourceError::Unsupported(format!(
                        "lower entry l/{id}: {} is not a directory inside the overlay2 root",
                        layer_dir.display()
                    )));
                }
                Err(Error::NotFound(_)) => {
                    return Err(SourceError::Unsupported(format!(
                        "lower entry l/{id} points at {}, which does not exist",
                        layer_dir.display()
                    )));
                }
                Err(e) => return Err(probe::source_error(layer_dir, &e)),
            }
            layers.push(LayerIdentity::from_diff(layer_dir, id, diff_answer)?);
        }
        Ok(Self { root, layers, chain_id: None })
    }

    /// The `diff/` directories, bottom layer first: the order a converter
    /// applies them in.
    pub fn diffs_bottom_up(&self) -> Vec<String> {
        self.layers.iter().rev().map(|l| format!("{}/diff", l.dir)).collect()
    }
}

/// Checks the contents of a `link` file and returns the id.
fn link_id(path: &Path, raw: &[u8]) -> Result<String, SourceError> {
    let text =
        std::str::from_utf8(raw).map_err(|_| SourceError::Unsupported(format!("{} is not UTF-8", path.display())))?;
    let id = text.trim_end_matches('\n');
    if !is_valid_link_id(id) {
        return Err(SourceError::Unsupported(format!("{} holds an invalid layer id {id:?}", path.display())));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_lists_nearest_first_and_tolerates_a_newline() {
        assert_eq!(parse_lower("l/AAA:l/BBB\n").unwrap(), vec!["AAA", "BBB"]);
        assert!(parse_lower("").unwrap().is_empty());
    }

    #[test]
    fn lower_entries_must_be_link_ids() {
        for bad in ["AAA", "l/", "l/../x", "l/a/b", "l/AAA::l/BBB", "/l/AAA", "l/A A", "x/AAA"] {
            assert!(parse_lower(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_repeated_layer_is_a_cycle() {
        let err = parse_lower("l/AAA:l/BBB:l/AAA").unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn a_thousand_layers_are_refused() {
        let text: Vec<String> = (0..1000).map(|i| format!("l/L{i}")).collect();
        let err = parse_lower(&text.join(":")).unwrap_err();
        assert!(err.to_string().contains("more than 128"), "{err}");
    }

    #[test]
    fn link_targets_must_stay_inside_the_root() {
        assert_eq!(chain_of_link_target(Path::new("../abc/diff")).unwrap(), "abc");
        assert_eq!(chain_of_link_target(Path::new("./../abc/./diff")).unwrap(), "abc");
        for bad in [
            "../../etc/diff",
            "/var/lib/docker/overlay2/abc/diff",
            "../abc",
            "../abc/diff/x",
            "../../diff",
            "diff",
            "../l/diff",
        ] {
            assert!(chain_of_link_target(Path::new(bad)).is_err(), "{bad:?} was accepted");
        }
    }
}

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

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::source::{LayerIdentity, SourceError, read_small};

/// Overlayfs stacks at most 500 lower layers; Docker stops at 125. A longer
/// chain is broken or hostile.
pub const MAX_LAYERS: usize = 128;

/// The longest `lower` file accepted: 128 entries of `l/` and a 26-byte id.
const MAX_LOWER_BYTES: u64 = 64 * 1024;

/// Whether `dir` has the two markers of an overlay2 layer directory.
pub fn looks_like_layer(dir: &Path) -> bool {
    let diff = fs::symlink_metadata(dir.join("diff"));
    let link = fs::symlink_metadata(dir.join("link"));
    matches!((diff, link), (Ok(d), Ok(l)) if d.is_dir() && l.is_file())
}

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

/// A resolved overlay2 chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlay2Chain {
    /// The overlay2 root (`/var/lib/docker/overlay2`).
    pub root: PathBuf,
    /// Layers from the top (the requested directory) down to the base.
    pub layers: Vec<LayerIdentity>,
}

impl Overlay2Chain {
    /// Resolves the chain whose top layer directory is `top`.
    pub fn resolve(top: &Path) -> Result<Self, SourceError> {
        let path = top.join("link");
        let link = read_small(&path, 256)?;
        Self::resolve_with_link(top, &link)
    }

    /// Resolves the chain whose top layer directory is `top`, its `link`
    /// file already read.
    pub fn resolve_with_link(top: &Path, link: &[u8]) -> Result<Self, SourceError> {
        let root = top
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                SourceError::Unsupported(format!("{}: an overlay2 layer needs a parent directory", top.display()))
            })?
            .to_path_buf();
        let top_link = link_id(&top.join("link"), link)?;
        let lower_path = top.join("lower");
        let lower = match read_small(&lower_path, MAX_LOWER_BYTES) {
            Ok(bytes) => bytes,
            // A base layer has no `lower`.
            Err(SourceError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
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

        let top_identity = LayerIdentity::of_layer(top, top_link).map_err(|e| match e {
            SourceError::NotFound(_) => SourceError::Unsupported(format!(
                "{} has a link file but no diff/ directory: it is not an overlay2 layer",
                top.display()
            )),
            other => other,
        })?;
        let mut layers = vec![top_identity];
        for id in ids {
            let link = root.join("l").join(&id);
            let target = fs::read_link(&link).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    SourceError::Unsupported(format!("lower names layer l/{id}, but {} does not exist", link.display()))
                }
                std::io::ErrorKind::InvalidInput => {
                    SourceError::Unsupported(format!("{} is not a symlink", link.display()))
                }
                _ => SourceError::io(&link, &e),
            })?;
            let chain = chain_of_link_target(&target)
                .map_err(|why| SourceError::Unsupported(format!("lower entry l/{id}: {why}")))?;
            let layer_dir = root.join(&chain);
            let meta = fs::symlink_metadata(&layer_dir).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SourceError::Unsupported(format!(
                    "lower entry l/{id} points at {}, which does not exist",
                    layer_dir.display()
                )),
                _ => SourceError::io(&layer_dir, &e),
            })?;
            if !meta.is_dir() {
                return Err(SourceError::Unsupported(format!(
                    "lower entry l/{id}: {} is not a directory inside the overlay2 root",
                    layer_dir.display()
                )));
            }
            layers.push(LayerIdentity::of_layer(&layer_dir, id)?);
        }
        Ok(Self { root, layers })
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

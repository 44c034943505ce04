//! Docker's layer database: the chain ID of an overlay2 chain, its portable
//! name.
//!
//! `<docker root>/image/overlay2/layerdb/sha256/<chain id>/` holds, for each
//! committed layer, `cache-id` (the name of its directory under
//! `<docker root>/overlay2/`), `parent` (the chain ID of the layer below,
//! `sha256:<hex>`; absent for a base layer) and `diff` (its diff ID). The
//! chain ID is the same on every engine holding the same layers, and Docker
//! never changes a committed layer, so it names the chain's content.
//!
//! The database is read through the guest's read-only view (the host shows
//! it beside the overlay2 directory) with one directory listing and one probe
//! per [`ENTRIES_PER_PROBE`] layers (a probe answers at most 256 paths). It is
//! untrusted like the rest of the source: every id is checked, every read is
//! bounded, and anything odd (a missing or malformed file, a chain that does
//! not match the overlay2 chain link for link, two chain IDs for one
//! directory) means no chain ID, never an error: the chain keeps its local
//! key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::overlay2::Overlay2Chain;
use crate::probe::{self, Probe};
use crate::wit::host::{PathInfo, PathKind};
use crate::wit::types::Error;

/// More layers than this in the database: no chain ID rather than a slow
/// lookup on every request.
pub const MAX_LAYERS: usize = 4096;

/// The paths one probe may ask about (the WIT contract's limit).
const PROBE_PATHS: usize = 256;

/// Layers per probe: each takes two paths (`cache-id` and `parent`).
pub const ENTRIES_PER_PROBE: usize = PROBE_PATHS / 2;

/// Bytes read of `cache-id` and `parent`: both are shorter (64 and 71 bytes).
const ID_BYTES: u32 = 128;

/// The longest layer directory name accepted as a `cache-id`.
const MAX_DIR_NAME_BYTES: usize = 128;

/// `<docker root>/image/overlay2/layerdb` for the overlay2 directory `root`
/// (the docker root is its parent).
pub fn layerdb_of(overlay2_root: &Path) -> Option<PathBuf> {
    let docker_root = overlay2_root.parent().filter(|p| !p.as_os_str().is_empty())?;
    Some(docker_root.join("image/overlay2/layerdb"))
}

/// Whether `hex` is 64 lowercase hexadecimal digits.
fn is_hex64(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Whether `id` is a chain ID: `sha256:` and 64 lowercase hexadecimal digits.
pub fn is_chain_id(id: &str) -> bool {
    id.strip_prefix("sha256:").is_some_and(is_hex64)
}

/// Whether `name` may name a layer directory: Docker writes 64 hexadecimal
/// digits; this accepts 1 to 128 ASCII letters, digits, `_` and `-`, which
/// rules out every path trick.
pub fn is_cache_id(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DIR_NAME_BYTES
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// The text of a small id file from the probe's answer: a regular file read
/// whole, UTF-8, without surrounding whitespace (Docker writes none, a
/// trailing newline is tolerated). `None` for anything else.
fn id_text(answer: &Result<PathInfo, Error>) -> Option<String> {
    let info = answer.as_ref().ok()?;
    if info.kind != PathKind::File || info.size > u64::from(ID_BYTES) || info.head.len() as u64 != info.size {
        return None;
    }
    let text = std::str::from_utf8(&info.head).ok()?;
    Some(text.strip_suffix('\n').unwrap_or(text).to_owned())
}

/// What the database says of one layer.
#[derive(Debug)]
struct Entry {
    /// Its directory's name, when `cache-id` is valid.
    cache_id: Option<String>,
    /// `Ok(None)` for a base layer (no `parent`), `Ok(Some(hex))` for a
    /// valid parent, `Err(())` for anything else.
    parent: Result<Option<String>, ()>,
}

fn entry(cache_id: &Result<PathInfo, Error>, parent: &Result<PathInfo, Error>) -> Entry {
    let cache_id = id_text(cache_id).filter(|id| is_cache_id(id));
    let parent = match parent {
        Err(Error::NotFound(_)) => Ok(None),
        answer => match id_text(answer) {
            Some(id) if is_chain_id(&id) => Ok(Some(id["sha256:".len()..].to_owned())),
            _ => Err(()),
        },
    };
    Entry { cache_id, parent }
}

/// The name of the directory `dir` (`<root>/<name>`).
fn dir_name(dir: &str) -> Option<&str> {
    Path::new(dir).file_name()?.to_str()
}

/// The chain ID (`sha256:<hex>`) of `chain`'s top layer, found and checked
/// through the layer database beside its overlay2 root; `None` when there is
/// none, it is not readable, or it does not describe this chain exactly.
pub fn chain_id(chain: &Overlay2Chain, fs: &impl Probe) -> Option<String> {
    let db = layerdb_of(&chain.root)?.join("sha256");
    let names = crate::sys::read_dir_at_most(&db, MAX_LAYERS).ok()??;
    let ids: Vec<String> = names.into_iter().filter(|n| is_hex64(n)).collect();
    let dirs: Vec<&str> = chain.layers.iter().map(|l| dir_name(&l.dir)).collect::<Option<_>>()?;
    if !dirs.iter().all(|d| is_cache_id(d)) {
        return None;
    }

    let mut entries = BTreeMap::new();
    for batch in ids.chunks(ENTRIES_PER_PROBE) {
        let paths: Vec<(PathBuf, PathBuf)> =
            batch.iter().map(|id| (db.join(id).join("cache-id"), db.join(id).join("parent"))).collect();
        let requests: Vec<(&Path, u32)> =
            paths.iter().flat_map(|(c, p)| [(c.as_path(), ID_BYTES), (p.as_path(), ID_BYTES)]).collect();
        let answers = probe::ask(fs, &requests).ok()?;
        for (id, pair) in batch.iter().zip(answers.chunks(2)) {
            let [cache_id, parent] = pair else { return None };
            entries.insert(id.as_str(), entry(cache_id, parent));
        }
    }

    // The one layer whose directory is the top's.
    let mut tops = entries.iter().filter(|(_, e)| e.cache_id.as_deref() == Some(dirs[0]));
    let (&top, _) = tops.next()?;
    if tops.next().is_some() {
        return None;
    }
    // Down the parents, one layer of the chain at each step, to a base layer
    // exactly as deep as the chain.
    let mut current = top;
    for (depth, dir) in dirs.iter().enumerate() {
        let entry = entries.get(current)?;
        if entry.cache_id.as_deref() != Some(*dir) {
            return None;
        }
        match (&entry.parent, depth + 1 == dirs.len()) {
            (Ok(None), true) => return Some(format!("sha256:{top}")),
            (Ok(Some(parent)), false) => current = *entries.get_key_value(parent.as_str())?.0,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        let hex = "a".repeat(64);
        assert!(is_chain_id(&format!("sha256:{hex}")));
        for bad in [hex.clone(), format!("sha256:{}", "A".repeat(64)), format!("sha256:{hex}0"), "sha256:".into()] {
            assert!(!is_chain_id(&bad), "{bad:?} was accepted");
        }
        assert!(is_cache_id(&hex) && is_cache_id("abc-init"));
        for bad in ["", "..", "a/b", "a b", &"a".repeat(129)] {
            assert!(!is_cache_id(bad), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_layerdb_is_beside_the_overlay2_directory() {
        assert_eq!(
            layerdb_of(Path::new("/var/lib/docker/overlay2")).unwrap(),
            Path::new("/var/lib/docker/image/overlay2/layerdb")
        );
        assert_eq!(layerdb_of(Path::new("/")), None);
    }
}

//! The cache's blob store as garbage collection sees it: which blobs there
//! are (`blobs/sha256/<hex>`), and which of them each entry needs.
//!
//! An entry built from an image by name needs, to be served offline under
//! `--pull missing` and to be rebuilt without the network:
//!
//! - its layers: its manifest records their paths in the store;
//! - its image manifest: the digest its manifest records with the platform;
//! - the config that image manifest names;
//! - every index in the store that lists that image manifest, directly or
//!   through a nested index (the document a tag named).
//!
//! The guest reads the documents through its read-only view of the cache;
//! only the host removes anything (`host.remove` of `blobs/sha256/<hex>`).
//! Entries of other sources need no blob.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::SourceError;
use crate::manifest::Manifest;
use crate::oci::{self, MAX_DOCUMENT_BYTES};
use crate::wit::types::Error;

/// Where the blobs are, relative to the cache.
pub const BLOB_DIR: &str = "blobs/sha256";

/// One blob of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Its length in bytes.
    pub bytes: u64,
    /// When it was last written or handed to a build (the host sets the
    /// time when it hands a stored blob out), ns since the Unix epoch.
    pub modified_ns: u64,
}

/// The cache-relative path of the blob `hex`.
pub fn blob_path(hex: &str) -> String {
    format!("{BLOB_DIR}/{hex}")
}

/// Whether `name` is a blob's name: 64 lowercase hex digits.
pub fn is_blob_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Every blob of the store under the cache seen at `root`, by hex digest.
/// No store is no blob. A blob removed while it is listed is left out.
pub fn list(root: &Path) -> Result<BTreeMap<String, Blob>, Error> {
    let dir = root.join(BLOB_DIR);
    let names = match crate::sys::read_dir(&dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(SourceError::io(&dir, &e).into()),
    };
    let mut blobs = BTreeMap::new();
    for name in names.into_iter().filter(|n| is_blob_name(n)) {
        let path = dir.join(&name);
        match crate::sys::metadata(&path) {
            Ok(meta) => {
                blobs.insert(name, Blob { bytes: meta.len, modified_ns: meta.modified_ns.unwrap_or(u64::MAX) });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SourceError::io(&path, &e).into()),
        }
    }
    Ok(blobs)
}

/// The blobs an entry's manifest names itself: its layers in the store and
/// its image manifest (for an image the Docker engine exported, its config,
/// which is recorded the same way). Empty for entries of other sources than
/// `registry` and `docker-archive`.
pub fn named_by(manifest: &Manifest) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    if manifest.kind != "registry" && manifest.kind != "docker-archive" {
        return named;
    }
    for layer in &manifest.layers {
        let path = Path::new(layer);
        let in_store = path.parent().is_some_and(|p| p.ends_with(BLOB_DIR));
        if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && in_store
            && is_blob_name(name)
        {
            named.insert(name.to_owned());
        }
    }
    // The platform is recorded as `<platform> sha256:<hex>`.
    if let Some(hex) = manifest
        .platform
        .as_deref()
        .and_then(|p| p.rsplit(' ').next())
        .and_then(|d| d.strip_prefix("sha256:"))
        .filter(|h| is_blob_name(h))
    {
        named.insert(hex.to_owned());
    }
    named
}

/// What a document of the store points to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Document {
    /// An image manifest: its config.
    Image { config: String },
    /// An index: the manifests and indexes it lists.
    Index { children: Vec<String> },
}

/// The documents (image manifests and indexes) of the store, read once.
#[derive(Clone, Debug, Default)]
pub struct Documents {
    by_hex: BTreeMap<String, Document>,
    /// Every blob that may be a JSON document (a manifest, an index, a config): at most
    /// [`MAX_DOCUMENT_BYTES`], starting with `{`.
    json: BTreeSet<String>,
}

fn hex_of(digest: &str) -> Option<String> {
    digest.strip_prefix("sha256:").filter(|h| is_blob_name(h)).map(str::to_owned)
}

impl Documents {
    /// Reads every blob of `blobs` that may be a document: at most
    /// [`MAX_DOCUMENT_BYTES`], starting with `{`. A layer costs one read of
    /// its first byte; anything that does not parse is no document.
    pub fn read(root: &Path, blobs: &BTreeMap<String, Blob>) -> Self {
        let mut by_hex = BTreeMap::new();
        let mut json = BTreeSet::new();
        for (hex, blob) in blobs {
            if blob.bytes > MAX_DOCUMENT_BYTES || blob.bytes < 2 {
                continue;
            }
            let path = root.join(blob_path(hex));
            let Ok((head, _)) = crate::sys::read(&path, 0, 1) else { continue };
            if head != b"{" {
                continue;
            }
            json.insert(hex.clone());
            let Ok((bytes, _)) = crate::sys::read(&path, 0, blob.bytes) else { continue };
            if let Some(document) = Self::parse(&bytes) {
                by_hex.insert(hex.clone(), document);
            }
        }
        Self { by_hex, json }
    }

    /// Whether the blob `hex` may be a document (a manifest, an index or a config): one a
    /// request fetches while it resolves the image, before it takes its build lock.
    pub fn is_document(&self, hex: &str) -> bool {
        self.json.contains(hex)
    }

    fn parse(bytes: &[u8]) -> Option<Document> {
        if let Ok(manifests) = oci::parse_index(bytes) {
            return Some(Document::Index { children: manifests.iter().filter_map(|d| hex_of(&d.digest)).collect() });
        }
        let (config, _) = oci::parse_manifest(bytes).ok()?;
        Some(Document::Image { config: hex_of(&config.digest)? })
    }

    /// Every blob an entry with this manifest needs: what it names
    /// ([`named_by`]), the config of its image manifest, and each index that
    /// leads to that manifest.
    pub fn needed_by(&self, manifest: &Manifest) -> BTreeSet<String> {
        let mut needed = named_by(manifest);
        let configs: Vec<String> = needed
            .iter()
            .filter_map(|hex| match self.by_hex.get(hex) {
                Some(Document::Image { config }) => Some(config.clone()),
                _ => None,
            })
            .collect();
        needed.extend(configs);
        // Indexes that lead to what is needed, nested ones too: until no new one.
        loop {
            let leading: Vec<String> = self
                .by_hex
                .iter()
                .filter(|(hex, doc)| {
                    !needed.contains(*hex)
                        && matches!(doc, Document::Index { children } if children.iter().any(|c| needed.contains(c)))
                })
                .map(|(hex, _)| hex.clone())
                .collect();
            if leading.is_empty() {
                return needed;
            }
            needed.extend(leading);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{AgentRecord, FORMAT};

    fn registry_manifest(layers: Vec<String>, platform: Option<String>) -> Manifest {
        Manifest {
            format: FORMAT,
            key: "ab".repeat(32),
            kind: "registry".into(),
            source: "docker://reg.test/app@sha256:x".into(),
            layers,
            platform,
            agent: AgentRecord { path: "/a".into(), sha256: "cd".repeat(32), size: 1 },
            converter: "exact 1".into(),
            requested_size: None,
            image_bytes: 1,
            created: 1,
            builder: "test".into(),
            image_sha256: None,
        }
    }

    #[test]
    fn an_entry_names_its_layers_in_the_store_and_its_image_manifest() {
        let (a, b, m) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let manifest = registry_manifest(
            vec![format!("/var/cache/rc/blobs/sha256/{a}"), format!("/elsewhere/{b}"), "/x/blobs/sha256/short".into()],
            Some(format!("linux/amd64 sha256:{m}")),
        );
        assert_eq!(named_by(&manifest), BTreeSet::from([a.clone(), m.clone()]));
        // An exported image records its config where a pulled one records its manifest.
        let mut exported = manifest.clone();
        exported.kind = "docker-archive".into();
        assert_eq!(named_by(&exported), BTreeSet::from([a.clone(), m]));
        let mut layout = manifest.clone();
        layout.kind = "oci-layout".into();
        assert!(named_by(&layout).is_empty());
    }

    #[test]
    fn configs_and_the_indexes_that_lead_to_an_image_are_needed_not_their_siblings() {
        let (manifest, config, sibling, inner, outer, other) =
            ("1".repeat(64), "2".repeat(64), "3".repeat(64), "4".repeat(64), "5".repeat(64), "6".repeat(64));
        let documents = Documents {
            json: BTreeSet::new(),
            by_hex: BTreeMap::from([
                (manifest.clone(), Document::Image { config: config.clone() }),
                (sibling.clone(), Document::Image { config: other.clone() }),
                (inner.clone(), Document::Index { children: vec![sibling.clone(), manifest.clone()] }),
                (outer.clone(), Document::Index { children: vec![inner.clone()] }),
                (other.clone(), Document::Index { children: vec![sibling.clone()] }),
            ]),
        };
        let entry = registry_manifest(Vec::new(), Some(format!("linux/amd64 sha256:{manifest}")));
        assert_eq!(documents.needed_by(&entry), BTreeSet::from([manifest, config, inner, outer]));
    }
}

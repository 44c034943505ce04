//! `list`: every entry of the cache, with its manifest and whether it
//! validates.

use super::Cache;
use crate::capabilities::Capabilities;
use crate::error::SourceError;
use crate::key::CacheKey;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::probe::read_small;
use crate::sys;
use crate::validate;
use crate::wit::types::{Entry, Error, SourceKind};

impl<H: Capabilities> Cache<'_, H> {
    /// Lists every entry. See `cache.list` in the WIT.
    pub fn list(&self) -> Result<Vec<Entry>, Error> {
        let images = self.root.join("images");
        let names = match sys::read_dir(&images) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SourceError::io(&images, &e).into()),
        };
        let mut keys = Vec::new();
        for name in &names {
            let stem = name.strip_suffix(".json").or_else(|| name.strip_suffix(".ext4"));
            if let Some(key) = stem.and_then(CacheKey::parse)
                && !keys.contains(&key)
            {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys.iter().map(|key| self.entry(key)).collect())
    }

    fn entry(&self, key: &CacheKey) -> Entry {
        let manifest_path = self.root.join(key.manifest_path());
        let image_path = self.root.join(key.image_path());
        let blank = || Entry {
            key: key.to_string(),
            image: key.image_path(),
            source: String::new(),
            kind: SourceKind::Overlay2,
            agent_sha256: String::new(),
            converter: String::new(),
            image_bytes: sys::metadata(&image_path).map_or(0, |m| m.len),
            created: 0,
            last_used: 0,
            problem: None,
        };
        let manifest = match read_small(&manifest_path, MAX_MANIFEST_BYTES) {
            Ok(bytes) => Manifest::parse(&bytes),
            Err(e) => Err(format!("no readable manifest: {e}")),
        };
        let manifest = match manifest {
            Ok(m) => m,
            Err(problem) => {
                return Entry { problem: Some(problem), ..blank() };
            }
        };
        let last_used = sys::metadata(&manifest_path)
            .ok()
            .and_then(|m| m.modified_ns)
            .map_or(manifest.created, |ns| ns / 1_000_000_000);
        let problem = if manifest.key != key.as_str() {
            Some(format!("the manifest records key {}", manifest.key))
        } else {
            validate::check_image(&image_path, Some(manifest.image_bytes)).err()
        };
        Entry {
            source: manifest.source,
            kind: match manifest.kind.as_str() {
                "oci-layout" => SourceKind::OciLayout,
                "registry" => SourceKind::Registry,
                _ => SourceKind::Overlay2,
            },
            agent_sha256: manifest.agent.sha256,
            converter: manifest.converter,
            image_bytes: manifest.image_bytes,
            created: manifest.created,
            last_used,
            problem,
            ..blank()
        }
    }
}

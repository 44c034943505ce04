//! The cache's lifecycle: sweeping what crashed builders left, evicting
//! entries (and the blobs no entry needs) to fit a size, and verifying every
//! entry.

use std::path::Path;

use std::collections::{BTreeMap, BTreeSet};

use crate::blob_store;
use crate::capabilities::Capabilities;
use crate::error::SourceError;
use crate::evict::{Candidate, blob_may_go, eviction_order};
use crate::flow::Cache;
use crate::key::CacheKey;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::probe::read_small;
use crate::wit::types::{Entry, Error, GcReport, SweepReport, VerifyReport};

/// The key a temporary or lock file belongs to: its name starts with 64
/// hex digits and a dot.
pub fn key_of(name: &str) -> Option<CacheKey> {
    name.get(..64).filter(|_| name.as_bytes().get(64) == Some(&b'.')).and_then(CacheKey::parse)
}

fn names(dir: &Path) -> Result<Vec<String>, Error> {
    match crate::sys::read_dir(dir) {
        Ok(mut names) => {
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SourceError::io(dir, &e).into()),
    }
}

/// What garbage collection knows of the blob store while it evicts.
struct BlobSweep<'a> {
    /// Every blob, by hex digest.
    blobs: &'a BTreeMap<String, blob_store::Blob>,
    /// The documents among them.
    documents: &'a blob_store::Documents,
    /// The blobs each entry needs, in the order of the entries.
    needs: &'a [BTreeSet<String>],
    /// Which entries are still there.
    remaining: Vec<bool>,
    /// Blobs asked for already (gone, or kept by the host).
    tried: BTreeSet<String>,
    /// When the oldest running build started ([`blob_may_go`]).
    builds_since: Option<u64>,
}

impl<H: Capabilities> Cache<'_, H> {
    /// See `cache.sweep` in the WIT.
    pub fn sweep(&self) -> Result<SweepReport, Error> {
        let mut report = SweepReport { removed: Vec::new(), stale_locks: 0, busy: Vec::new() };
        let temporary = names(&self.root().join("tmp"))?;
        let mut keys: Vec<CacheKey> = temporary.iter().filter_map(|n| key_of(n)).collect();
        keys.dedup();
        for key in &keys {
            let mine: Vec<&String> = temporary.iter().filter(|n| key_of(n).as_ref() == Some(key)).collect();
            // Holding the lock proves nobody is building this key.
            match self.host().try_lock(key.as_str())? {
                Some(_lock) => {
                    for name in mine {
                        let path = format!("tmp/{name}");
                        self.host().remove(&path)?;
                        report.removed.push(path);
                    }
                }
                None => report.busy.extend(mine.into_iter().map(|n| format!("tmp/{n}"))),
            }
        }
        for name in names(&self.root().join("locks"))? {
            let Some(key) = name.strip_suffix(".lock").and_then(CacheKey::parse) else { continue };
            if keys.contains(&key) {
                continue;
            }
            // Taking and dropping a free lock removes its file.
            if self.host().try_lock(key.as_str())?.is_some() {
                report.stale_locks += 1;
            }
        }
        Ok(report)
    }

    /// Removes an entry's files under its lock: manifest first, so that a
    /// stop halfway leaves no manifest and so no entry. Returns false when
    /// someone is building the key right now.
    fn remove_entry(&self, key: &CacheKey) -> Result<bool, Error> {
        let Some(_lock) = self.host().try_lock(key.as_str())? else { return Ok(false) };
        self.host().remove(&key.manifest_path())?;
        self.host().remove(&key.image_path())?;
        Ok(true)
    }

    /// See `cache.gc` in the WIT. The cache's size is every entry's image
    /// and every blob of the blob store: blobs no entry needs go first,
    /// whatever the limit (they are garbage); then entries in eviction order
    /// until the cache fits, each taking with it the blobs no remaining entry
    /// needs. A blob stays while a build that may be about to read it is
    /// running ([`blob_may_go`]), and while a pull holds its lock (the host
    /// keeps it; the guest looks again to know).
    pub fn gc(&self, max_bytes: u64, pins: &[String]) -> Result<GcReport, Error> {
        let entries = self.list()?;
        // A pin that names nothing is a mistake to report, not to ignore:
        // the entry it was meant to keep would be evicted.
        for pin in pins {
            let key = crate::evict::pinned_key(pin).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "pin {pin:?} is neither a cache key (64 lowercase hex digits) nor an image path \
                     (images/<key>.ext4); nothing was evicted"
                ))
            })?;
            if !entries.iter().any(|e| e.key == key) {
                return Err(Error::NotFound(format!(
                    "pin {pin:?} names no entry of the cache (see `rootfs-cache list`); nothing was evicted"
                )));
            }
        }
        let blobs = blob_store::list(self.root())?;
        let documents = blob_store::Documents::read(self.root(), &blobs);
        let needs: Vec<BTreeSet<String>> = entries
            .iter()
            .map(|e| {
                let path = self.root().join(format!("images/{}.json", e.key));
                match read_small(&path, MAX_MANIFEST_BYTES).ok().and_then(|b| Manifest::parse(&b).ok()) {
                    Some(manifest) => documents.needed_by(&manifest),
                    None => BTreeSet::new(),
                }
            })
            .collect();
        let bytes_before: u64 =
            entries.iter().map(|e| e.image_bytes).sum::<u64>() + blobs.values().map(|b| b.bytes).sum::<u64>();
        // Times to the nanosecond: the image's modification time is when it
        // was built (nothing writes it later); the manifest's is when the
        // entry was last served (reading it, as validation does, changes
        // neither, where an access time would change under relatime).
        let candidates: Vec<Candidate> = entries
            .iter()
            .map(|e| {
                let images = self.root().join("images");
                let manifest = crate::sys::metadata(&images.join(format!("{}.json", e.key))).ok();
                let image = crate::sys::metadata(&images.join(format!("{}.ext4", e.key))).ok();
                Candidate {
                    key: e.key.clone(),
                    source: e.source.clone(),
                    agent_sha256: e.agent_sha256.clone(),
                    created: image.and_then(|m| m.modified_ns).unwrap_or(e.created.saturating_mul(1_000_000_000)),
                    last_used: manifest
                        .and_then(|m| m.modified_ns)
                        .unwrap_or(e.last_used.saturating_mul(1_000_000_000)),
                    broken: e.problem.is_some(),
                }
            })
            .collect();
        let order = eviction_order(&candidates, pins);
        let mut report = GcReport {
            removed: Vec::new(),
            bytes_before,
            bytes_after: bytes_before,
            kept_pinned: (entries.len() - order.len()) as u32,
        };
        let mut sweep = BlobSweep {
            blobs: &blobs,
            documents: &documents,
            needs: &needs,
            remaining: vec![true; entries.len()],
            tried: BTreeSet::new(),
            builds_since: if blobs.is_empty() { None } else { self.oldest_build()? },
        };
        self.remove_unneeded_blobs(&mut sweep, &mut report)?;
        for i in order {
            if report.bytes_after <= max_bytes {
                break;
            }
            let entry: &Entry = &entries[i];
            let Some(key) = CacheKey::parse(&entry.key) else { continue };
            if self.remove_entry(&key)? {
                report.bytes_after -= entry.image_bytes;
                report.removed.push(entry.clone());
                sweep.remaining[i] = false;
                self.remove_unneeded_blobs(&mut sweep, &mut report)?;
            } else {
                report.kept_pinned += 1;
            }
        }
        Ok(report)
    }

    /// Removes every blob no remaining entry needs and no running build may
    /// be about to read; counts what went.
    fn remove_unneeded_blobs(&self, sweep: &mut BlobSweep<'_>, report: &mut GcReport) -> Result<(), Error> {
        for (hex, blob) in sweep.blobs {
            let needed = sweep.needs.iter().zip(&sweep.remaining).any(|(needs, &kept)| kept && needs.contains(hex));
            let document = sweep.documents.is_document(hex);
            if needed || sweep.tried.contains(hex) || !blob_may_go(blob.modified_ns, document, sweep.builds_since) {
                continue;
            }
            sweep.tried.insert(hex.clone());
            let path = blob_store::blob_path(hex);
            self.host().remove(&path)?;
            // The host keeps a blob whose lock a pull holds: look again.
            match crate::sys::metadata(&self.root().join(&path)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => report.bytes_after -= blob.bytes,
                _ => {}
            }
        }
        Ok(())
    }

    /// When the oldest build running now took its lock (its lock file's
    /// modification time, ns), or `None` when no build runs. Free lock files
    /// go on the way, as in `sweep`.
    fn oldest_build(&self) -> Result<Option<u64>, Error> {
        let mut oldest: Option<u64> = None;
        let dir = self.root().join("locks");
        for name in names(&dir)? {
            let Some(key) = name.strip_suffix(".lock").and_then(CacheKey::parse) else { continue };
            if self.host().try_lock(key.as_str())?.is_some() {
                continue;
            }
            // Unknown (the file went meanwhile): as old as can be, so every blob stays.
            let since = crate::sys::metadata(&dir.join(&name)).ok().and_then(|m| m.modified_ns).unwrap_or(0);
            oldest = Some(oldest.map_or(since, |o| o.min(since)));
        }
        Ok(oldest)
    }

    /// See `cache.verify` in the WIT.
    pub fn verify(&self, fsck: bool) -> Result<VerifyReport, Error> {
        let entries = self.list()?;
        let mut report = VerifyReport { checked: entries.len() as u32, broken: Vec::new() };
        for mut entry in entries {
            if entry.problem.is_none() && fsck {
                let result = self.host().fsck(&entry.image)?;
                if !result.clean {
                    entry.problem = Some(format!("e2fsck -fn exited {}: {}", result.exit_status, result.output_tail));
                }
            }
            if entry.problem.is_some()
                && let Some(key) = CacheKey::parse(&entry.key)
                && self.remove_entry(&key)?
            {
                report.broken.push(entry);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_carry_their_key() {
        let key = "0123456789abcdef".repeat(4);
        assert_eq!(key_of(&format!("{key}.4242-0.ext4")).unwrap().as_str(), key);
        assert_eq!(key_of(&format!("{key}.lock")).unwrap().as_str(), key);
        assert!(key_of(&key).is_none());
        assert!(key_of("stray-file").is_none());
        assert!(key_of(&format!("{}.x", "Z".repeat(64))).is_none());
    }
}

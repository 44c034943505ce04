//! Which entries garbage collection evicts, and in what order.
//!
//! Broken entries go first: they would be rebuilt anyway. Then entries
//! superseded by a newer agent for the same source: the runtime has moved
//! on. Then the least recently used. Pinned entries never go.

/// What eviction needs to know about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The cache key.
    pub key: String,
    /// Its source path.
    pub source: String,
    /// Its agent's digest.
    pub agent_sha256: String,
    /// When it was built (any unit, the same for every candidate).
    pub created: u64,
    /// When it was last served (the same unit).
    pub last_used: u64,
    /// Whether it fails validation.
    pub broken: bool,
}

/// Whether `pin` (a key, or an image path ending in `<key>.ext4`) names `key`.
pub fn pins_key(pin: &str, key: &str) -> bool {
    pin == key
        || pin
            .strip_suffix(".ext4")
            .is_some_and(|p| p.ends_with(key) && (p.len() == key.len() || p[..p.len() - key.len()].ends_with('/')))
}

/// The key a pin names: a key itself (64 lowercase hex digits), or the path
/// of an image, `[…/]<key>.ext4`. `None` for anything else (a partial or
/// uppercase key, another file name).
pub fn pinned_key(pin: &str) -> Option<&str> {
    let name = pin.rsplit('/').next().unwrap_or(pin);
    let key =
        if name.len() == pin.len() { name.strip_suffix(".ext4").unwrap_or(name) } else { name.strip_suffix(".ext4")? };
    crate::key::CacheKey::parse(key).map(|_| key)
}

/// Whether a blob that no remaining entry needs may be removed, given when
/// it was last written or handed out (`modified_ns`), whether it may be a
/// document (a manifest, an index or a config), and when the oldest build
/// running now took its lock (`builds_since`, `None` when none runs).
///
/// A running build may have been handed the blob and not opened it yet. It
/// fetches its layers under its lock, and the host sets a stored blob's time
/// whenever it hands it out, so a layer older than every running build's
/// lock is none of theirs; equal times (a coarse clock) keep it. Documents
/// are fetched while the image is resolved, before the lock, so none goes
/// while a build runs (they are a few KiB).
pub fn blob_may_go(modified_ns: u64, document: bool, builds_since: Option<u64>) -> bool {
    builds_since.is_none_or(|since| !document && modified_ns < since)
}

/// Indices of `entries` in eviction order, pinned ones left out.
pub fn eviction_order(entries: &[Candidate], pins: &[String]) -> Vec<usize> {
    let superseded = |c: &Candidate| {
        entries
            .iter()
            .any(|o| o.source == c.source && o.agent_sha256 != c.agent_sha256 && o.created > c.created && !o.broken)
    };
    let mut order: Vec<usize> =
        (0..entries.len()).filter(|&i| !pins.iter().any(|p| pins_key(p, &entries[i].key))).collect();
    // Rank: broken (0), superseded (1), the rest (2); then least recently used.
    order.sort_by_key(|&i| {
        let c = &entries[i];
        let rank = if c.broken {
            0
        } else if superseded(c) {
            1
        } else {
            2
        };
        (rank, c.last_used, c.created, c.key.clone())
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &str, source: &str, agent: &str, created: u64, last_used: u64) -> Candidate {
        Candidate {
            key: key.into(),
            source: source.into(),
            agent_sha256: agent.into(),
            created,
            last_used,
            broken: false,
        }
    }

    #[test]
    fn broken_then_superseded_then_least_recently_used() {
        let mut broken = c("b", "/s3", "a1", 5, 100);
        broken.broken = true;
        let entries = vec![
            c("new-agent", "/s1", "a2", 20, 30),
            c("old-agent", "/s1", "a1", 10, 90),
            c("lru", "/s2", "a1", 10, 40),
            c("mru", "/s4", "a1", 10, 95),
            broken,
        ];
        let order: Vec<&str> = eviction_order(&entries, &[]).into_iter().map(|i| entries[i].key.as_str()).collect();
        assert_eq!(order, vec!["b", "old-agent", "new-agent", "lru", "mru"]);
    }

    #[test]
    fn a_blob_handed_out_since_a_running_build_started_stays() {
        assert!(blob_may_go(100, false, None));
        assert!(blob_may_go(99, false, Some(100)));
        assert!(!blob_may_go(100, false, Some(100)));
        assert!(!blob_may_go(101, false, Some(100)));
        // Documents come before the lock: none goes while a build runs.
        assert!(blob_may_go(99, true, None));
        assert!(!blob_may_go(99, true, Some(100)));
    }

    #[test]
    fn pinned_entries_never_go() {
        let key = "ab".repeat(32);
        let entries = vec![c(&key, "/s", "a", 1, 1), c("other", "/s", "a", 1, 2)];
        for pin in [key.clone(), format!("images/{key}.ext4"), format!("/var/lib/rootfs-cache/images/{key}.ext4")] {
            let order: Vec<&str> = eviction_order(&entries, std::slice::from_ref(&pin))
                .into_iter()
                .map(|i| entries[i].key.as_str())
                .collect();
            assert_eq!(order, vec!["other"], "{pin}");
        }
        assert!(!pins_key(&format!("x{key}.ext4"), &key));
    }
}

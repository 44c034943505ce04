//! Garbage collection, verification and sweeping, decided by the guest,
//! against the fake adapter (no root needed).

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rootfs_cache::{Capabilities, Config, Request, RootfsCache};
use rootfs_cache_tests::{Overlay2, agent, temp_files};

struct World {
    dir: tempfile::TempDir,
    cache: RootfsCache,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (caps, _) = Capabilities::fake();
        let cache = RootfsCache::open(Config::new(dir.path().join("cache")).capabilities(caps)).unwrap();
        Self { dir, cache }
    }

    /// A one-layer chain named `name`.
    fn source(&self, name: &str) -> PathBuf {
        let mut o = Overlay2::new(&self.dir.path().join(name));
        o.layer(|l| {
            l.file("/etc/name", name.as_bytes(), 0o644);
        })
    }

    async fn build(&self, source: &Path, agent: &Path, mib: u64) -> rootfs_cache::Outcome {
        self.cache.convert(&Request::new(source, agent).size(mib << 20)).await.unwrap()
    }
}

/// Sets when an entry was last used (its manifest's modification time).
fn used_at(image: &Path, secs: u64) {
    let manifest = image.with_extension("json");
    let file = std::fs::File::open(&manifest).unwrap();
    file.set_times(std::fs::FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(secs))).unwrap();
}

#[tokio::test]
async fn gc_evicts_superseded_then_least_recently_used_and_keeps_pins() {
    let w = World::new();
    let (a1, a2) = (agent(w.dir.path(), "agent-1", "one"), agent(w.dir.path(), "agent-2", "two"));
    let (s1, s2, s3) = (w.source("s1"), w.source("s2"), w.source("s3"));
    let old_agent = w.build(&s1, &a1, 10).await;
    let new_agent = w.build(&s1, &a2, 10).await;
    let lru = w.build(&s2, &a1, 10).await;
    let pinned = w.build(&s3, &a1, 10).await;
    used_at(&old_agent.image, 4_000);
    used_at(&new_agent.image, 1_000);
    used_at(&lru.image, 2_000);
    used_at(&pinned.image, 500);

    // 40 MiB in the cache; fit 25 MiB: two entries go.
    let report = w.cache.gc(25 << 20, std::slice::from_ref(&pinned.key)).await.unwrap();
    let removed: Vec<&str> = report.removed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        removed,
        vec![old_agent.key.as_str(), new_agent.key.as_str()],
        "superseded first, then least recently used"
    );
    assert_eq!((report.bytes_before, report.bytes_after), (40 << 20, 20 << 20));
    let left: Vec<String> = w.cache.list().await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&lru.key) && left.contains(&pinned.key));
    assert!(!old_agent.image.exists() && !old_agent.image.with_extension("json").exists());

    // A pin by image path works too; nothing else fits under 0 bytes.
    let report = w.cache.gc(0, &[pinned.image.display().to_string()]).await.unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(w.cache.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_hit_records_its_use_without_rewriting_the_image() {
    let w = World::new();
    let a = agent(w.dir.path(), "agent", "x");
    let s = w.source("s");
    let first = w.build(&s, &a, 10).await;
    used_at(&first.image, 1_000);
    let image_mtime = std::fs::metadata(&first.image).unwrap().modified().unwrap();
    let hit = w.build(&s, &a, 10).await;
    assert!(hit.cached);
    let entry = w.cache.list().await.unwrap().remove(0);
    assert!(entry.last_used > 1_000_000, "the hit did not record its use");
    assert_eq!(std::fs::metadata(&first.image).unwrap().modified().unwrap(), image_mtime, "a hit rewrote the image");
}

#[tokio::test]
async fn gc_removes_broken_entries_first() {
    let w = World::new();
    let a = agent(w.dir.path(), "agent", "x");
    let good = w.build(&w.source("good"), &a, 10).await;
    let broken = w.build(&w.source("broken"), &a, 10).await;
    used_at(&good.image, 1);
    rootfs_cache_tests::open_entry_for_writing(&broken.image).set_len(4096).unwrap();
    let report = w.cache.gc(15 << 20, &[]).await.unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].key, broken.key);
}

#[tokio::test]
async fn verify_finds_and_removes_truncated_zeroed_and_manifestless_entries() {
    let w = World::new();
    let a = agent(w.dir.path(), "agent", "x");
    let good = w.build(&w.source("good"), &a, 10).await;
    let truncated = w.build(&w.source("truncated"), &a, 10).await;
    let zeroed = w.build(&w.source("zeroed"), &a, 10).await;
    let orphan = w.build(&w.source("orphan"), &a, 10).await;
    rootfs_cache_tests::open_entry_for_writing(&truncated.image).set_len(1 << 20).unwrap();
    std::fs::write(&zeroed.image, vec![0u8; 10 << 20]).unwrap();
    std::fs::remove_file(orphan.image.with_extension("json")).unwrap();

    let report = w.cache.verify(false).await.unwrap();
    assert_eq!(report.checked, 4);
    let mut broken: Vec<&str> = report.broken.iter().map(|e| e.key.as_str()).collect();
    broken.sort();
    let mut expected = vec![truncated.key.as_str(), zeroed.key.as_str(), orphan.key.as_str()];
    expected.sort();
    assert_eq!(broken, expected);
    for e in &report.broken {
        assert!(e.problem.is_some());
        assert!(!e.image.exists(), "{} was not removed", e.key);
    }
    let left = w.cache.list().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, good.key);
    assert!(w.cache.verify(false).await.unwrap().broken.is_empty());
}

#[tokio::test]
async fn sweep_removes_what_dead_builders_left_and_stale_locks() {
    let w = World::new();
    let cache = w.cache.cache_dir().to_path_buf();
    let key = "c".repeat(64);
    std::fs::write(cache.join(format!("tmp/{key}.999999-0.ext4")), b"half an image").unwrap();
    std::fs::create_dir(cache.join(format!("tmp/{key}.999999-0.ext4.empty"))).unwrap();
    std::fs::write(cache.join(format!("locks/{}.lock", "d".repeat(64))), b"").unwrap();
    let report = w.cache.sweep().await.unwrap();
    assert_eq!(report.removed.len(), 2, "{report:?}");
    assert_eq!(report.stale_locks, 1);
    assert!(temp_files(&cache).is_empty());
    // (The fake adapter has no lock files to remove; the native tests check that.)
}

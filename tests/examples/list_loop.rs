//! A loop of empty `list` calls, for profiling the per-request overhead.
use rootfs_cache::{Config, RootfsCache};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cache = RootfsCache::open(Config::new(dir.path().join("cache"))).unwrap();
    for _ in 0..20000 {
        cache.list().await.unwrap();
    }
}

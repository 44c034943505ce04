//! A loop of empty `list` calls, for profiling the per-request overhead:
//! `cargo run --release -p rootfs-cache-tests --example list_loop [CACHE_DIR]`
//! (give a cache directory to keep the precompiled component between runs).
use rootfs_cache::{Config, RootfsCache};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cache_dir = std::env::args_os().nth(1).map_or_else(|| dir.path().join("cache"), Into::into);
    let cache = RootfsCache::open(Config::new(cache_dir)).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..20000 {
        cache.list().await.unwrap();
    }
    println!("{:.1} µs per empty list", started.elapsed().as_secs_f64() * 1e6 / 20000.0);
}

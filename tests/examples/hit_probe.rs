//! Where a hit's time goes: `cargo run --release -p rootfs-cache-tests --example hit_probe`.
use std::time::Instant;

use rootfs_cache::{Config, ConverterSpec, Request, RootfsCache};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let agent = rootfs_cache_tests::agent(dir.path(), "vm-agent", "probe");
    let top = rootfs_cache_tests::standard_chain(&dir.path().join("overlay2"));
    let pooling = std::env::var_os("NO_POOLING").is_none();
    let cache = RootfsCache::open(Config::new(dir.path().join("cache")).pooling(pooling)).unwrap();
    let request = Request::new(&top, &agent).converter(ConverterSpec::Exact);
    cache.convert(&request).await.unwrap();
    let mut samples = Vec::new();
    for _ in 0..2000 {
        let started = Instant::now();
        let o = cache.convert(&request).await.unwrap();
        samples.push((started.elapsed().as_micros() as u64, o.timings));
    }
    samples.sort_by_key(|s| s.0);
    let (wall, t) = &samples[samples.len() / 2];
    println!(
        "median wall {wall} µs; in the guest: total {} µs (resolve {}, lookup {})",
        t.total_us, t.resolve_us, t.lookup_us
    );
    let empty = RootfsCache::open(Config::new(dir.path().join("empty"))).unwrap();
    let mut lists: Vec<u64> = (0..2000)
        .map(|_| {
            let started = Instant::now();
            futures_lite(empty.list()).unwrap();
            started.elapsed().as_micros() as u64
        })
        .collect();
    lists.sort();
    println!("an empty list (store, instantiate, one call, one readdir): {} µs", lists[lists.len() / 2]);
}

fn futures_lite<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

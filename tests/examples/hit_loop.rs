//! A loop of hits, for profiling them:
//! `cargo run --release -p rootfs-cache-tests --example hit_loop [WORK_DIR]`
//! (give a work directory to keep the source, the cache and the precompiled
//! component between runs, so that a profile shows only hits; `HITS=N` sets
//! how many, 20,000 by default).
use rootfs_cache::{Config, ConverterSpec, Request, RootfsCache};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let work = std::env::args_os().nth(1).map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let agent = work.join("vm-agent");
    let overlay2 = work.join("overlay2");
    let top = if overlay2.exists() {
        let mut tops: Vec<_> = std::fs::read_dir(&overlay2)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("lower").exists())
            .collect();
        tops.sort();
        tops.pop().expect("a layer with a lower file")
    } else {
        std::fs::create_dir_all(&work).unwrap();
        rootfs_cache_tests::agent(&work, "vm-agent", "probe");
        rootfs_cache_tests::standard_chain(&overlay2)
    };
    let cache = RootfsCache::open(Config::new(work.join("cache"))).unwrap();
    let request = Request::new(&top, &agent).converter(ConverterSpec::Exact);
    cache.convert(&request).await.unwrap();
    let n = std::env::var("HITS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let started = std::time::Instant::now();
    let mut guest = Vec::with_capacity(n);
    for _ in 0..n {
        let outcome = cache.convert(&request).await.unwrap();
        assert!(outcome.cached);
        guest.push((outcome.timings.total_us, outcome.timings.resolve_us, outcome.timings.lookup_us));
    }
    guest.sort();
    let (total, resolve, lookup) = guest[n / 2];
    println!(
        "{:.1} µs per hit; in the guest (median): total {total} µs, resolve {resolve} µs, lookup {lookup} µs",
        started.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

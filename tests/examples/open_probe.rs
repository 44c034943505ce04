//! What opening a cache costs in a new process: `open_probe CACHE_DIR`.
use std::time::Instant;

fn main() {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let runtime = started.elapsed();
    let dir = std::env::args().nth(1).unwrap();
    let t = Instant::now();
    let cache = rootfs_cache::RootfsCache::open(rootfs_cache::Config::new(&dir).pooling(false)).unwrap();
    let open = t.elapsed();
    let t = Instant::now();
    rt.block_on(cache.list()).unwrap();
    let list = t.elapsed();
    println!("runtime {runtime:?}, open {open:?} ({:?}), first call {list:?}", cache.load_path());
}

//! `cargo bench -p rootfs-cache-tests`: what a hit, a cold CLI start, a miss
//! and a herd cost, each beside a baseline measured in the same run. Prints
//! figures and ratios; needs root (real conversions). `BENCHMARKS.md` holds
//! a recorded run.
//!
//! `ROOTFS_BENCH_SOURCE` may name a large overlay2 layer directory (e.g. a
//! debootstrap base from `tests/fixtures/docker-fixtures.sh`) for the miss
//! and memory figures; otherwise a tree of about 200 MB and 7,000 entries is
//! generated.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rootfs_cache::capabilities::converter::exact::ExactConverter;
use rootfs_cache::capabilities::converter::{ConversionJob, Converter, SourceLayers};
use rootfs_cache::{Config, ConverterSpec, Request, RootfsCache};
use rootfs_cache_tests::{Overlay2, XorShift, agent, rootfs_cache_bin, standard_chain};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The latencies of `n` hits for `request`, sorted.
async fn timed_hits(cache: &RootfsCache, request: &Request, n: usize) -> Vec<Duration> {
    let mut hits = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let outcome = cache.convert(request).await.unwrap();
        hits.push(started.elapsed());
        assert!(outcome.cached, "a request expected to hit missed");
    }
    hits.sort();
    hits
}

/// What the original function did on a hit: stat the image, open it, read
/// the two magic bytes.
fn original_hit(image: &Path) -> bool {
    if !image.exists() {
        return false;
    }
    let Ok(mut file) = std::fs::File::open(image) else { return false };
    let mut magic = [0u8; 2];
    file.seek(SeekFrom::Start(0x438)).is_ok() && file.read_exact(&mut magic).is_ok() && magic == [0x53, 0xEF]
}

/// A tree of about 200 MB in about 7,000 entries, like a debootstrap base.
fn generated_source(dir: &Path) -> PathBuf {
    let mut o = Overlay2::new(&dir.join("big"));
    o.layer(|l| {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next_u64();
        for d in 0..200 {
            for f in 0..34 {
                // Mostly small files, some large: 6,800 files, ~200 MB.
                let size = if f == 0 { 900_000 } else { (next() % 8000) as usize };
                let data: Vec<u8> = (0..size).map(|_| next() as u8).collect();
                l.file(&format!("/usr/share/d{d:03}/f{f:02}"), &data, 0o644);
            }
        }
    })
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()))
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !rootfs_cache_tests::is_root() {
        eprintln!("the benchmarks need root (real conversions); skipping");
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let agent = agent(dir.path(), "vm-agent", "bench");
    let top = standard_chain(&dir.path().join("overlay2"));
    let request = Request::new(&top, &agent).converter(ConverterSpec::Exact);
    let cache_dir = dir.path().join("cache");
    let cache = RootfsCache::open(Config::new(&cache_dir)).unwrap();
    let image = cache.convert(&request).await.unwrap().image;

    println!("# rootfs-cache benchmarks\n");
    println!("machine: {} CPUs, {}", std::thread::available_parallelism().map_or(0, |n| n.get()), uname());

    // Hit latency: a fresh sandboxed store per request, through the library.
    for _ in 0..200 {
        assert!(cache.convert(&request).await.unwrap().cached);
    }
    let hits = timed_hits(&cache, &request, 5000).await;
    let mut base = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let started = Instant::now();
        assert!(original_hit(&image));
        base.push(started.elapsed());
    }
    base.sort();
    // The same for an OCI layout as skopeo writes it (no platform in the
    // index: the index, the manifest and the config are read).
    let layout = dir.path().join("oci");
    rootfs_cache_tests::oci::standard_layout(&layout, rootfs_cache_tests::oci::IndexStyle::Skopeo);
    let oci_request = Request::new(&layout, &agent).converter(ConverterSpec::Exact);
    cache.convert(&oci_request).await.unwrap();
    let oci_hits = timed_hits(&cache, &oci_request, 5000).await;
    let (p50, p99, b50, b99) =
        (percentile(&hits, 0.5), percentile(&hits, 0.99), percentile(&base, 0.5), percentile(&base, 0.99));
    println!("\n## hit latency (library API, fresh Store per request, 5,000 requests)\n");
    println!("| | p50 | p99 |\n|---|---:|---:|");
    println!("| rootfs-cache (overlay2 chain) | {} | {} |", us(p50), us(p99));
    println!(
        "| rootfs-cache (OCI layout) | {} | {} |",
        us(percentile(&oci_hits, 0.5)),
        us(percentile(&oci_hits, 0.99))
    );
    println!("| original function (stat, open, read magic) | {} | {} |", us(b50), us(b99));
    println!(
        "| ratio | {:.1}× | {:.1}× |",
        p50.as_secs_f64() / b50.as_secs_f64(),
        p99.as_secs_f64() / b99.as_secs_f64()
    );
    println!("\ngoal: p50 ≤ 50 µs → {}", if p50 <= Duration::from_micros(50) { "met" } else { "not met" });
    if std::env::var_os("ROOTFS_BENCH_HITS_ONLY").is_some() {
        // For profiling the hit path alone.
        return;
    }

    // Hit throughput with two threads.
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (cache, request) = (cache.clone(), request.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < window {
                    cache.convert(&request).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    println!(
        "\n## hit throughput (2 threads, {}s)\n\n{rate:.0} hits/s (goal ≥ 20,000 → {})",
        window.as_secs(),
        if rate >= 20_000.0 { "met" } else { "not met" }
    );

    // Cold CLI hit: a new process, the precompiled component on disk.
    let bin = rootfs_cache_bin();
    let cli = |cache: &Path| {
        let started = Instant::now();
        let out = Command::new(&bin)
            .arg("--cache-dir")
            .arg(cache)
            .arg("convert")
            .arg(&top)
            .arg("--agent")
            .arg(&agent)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        started.elapsed()
    };
    let fresh_cache = dir.path().join("cli-cache");
    let first = cli(&fresh_cache);
    let mut cold = (0..30).map(|_| cli(&fresh_cache)).collect::<Vec<_>>();
    cold.sort();
    let mut spawn = (0..30)
        .map(|_| {
            let started = Instant::now();
            Command::new("/bin/true").status().unwrap();
            started.elapsed()
        })
        .collect::<Vec<_>>();
    spawn.sort();
    println!("\n## cold CLI hit (new process, 30 runs)\n");
    println!("| | median |\n|---|---:|");
    println!("| first run (builds the image and compiles the component) | {} |", ms(first));
    println!("| later runs (hit, precompiled component) | {} |", ms(percentile(&cold, 0.5)));
    println!("| baseline: spawning /bin/true | {} |", ms(percentile(&spawn, 0.5)));
    println!(
        "\ngoal: median ≤ 10 ms → {}",
        if percentile(&cold, 0.5) <= Duration::from_millis(10) { "met" } else { "not met" }
    );

    // Miss overhead: a full convert against the bare converter on the same source.
    let source =
        std::env::var_os("ROOTFS_BENCH_SOURCE").map(PathBuf::from).unwrap_or_else(|| generated_source(dir.path()));
    let source = source.canonicalize().unwrap();
    let diffs = rootfs_cache_tests::chain_diffs(&source);
    let mut bare = Vec::new();
    let mut full = Vec::new();
    let hwm_before = vm_hwm_kib();
    for run in 0..3 {
        let out = dir.path().join(format!("bare-{run}.ext4"));
        let job = ConversionJob {
            source: SourceLayers::Overlay2 { top: source.clone(), diffs: diffs.clone() },
            output: out.clone(),
            size: None,
            key: "0".repeat(64),
            agent: None,
            timeout: Duration::from_secs(600),
            max_bytes: u64::MAX,
        };
        let started = Instant::now();
        ExactConverter::default().convert(job).await.unwrap();
        bare.push(started.elapsed());
        std::fs::remove_file(out).unwrap();
        let miss_cache = RootfsCache::open(Config::new(dir.path().join(format!("miss-{run}")))).unwrap();
        let started = Instant::now();
        let outcome = miss_cache.convert(&Request::new(&source, &agent)).await.unwrap();
        full.push(started.elapsed());
        assert!(!outcome.cached);
        std::fs::remove_dir_all(dir.path().join(format!("miss-{run}"))).unwrap();
    }
    bare.sort();
    full.sort();
    let (b, f) = (percentile(&bare, 0.5), percentile(&full, 0.5));
    println!("\n## miss overhead ({}, median of 3)\n", rootfs_cache_tests::describe_tree(&source));
    println!(
        "| | time |\n|---|---:|\n| bare exact converter | {} |\n| full convert (sandbox, key, lock, convert, validate, publish with fsync) | {} |",
        ms(b),
        ms(f)
    );
    println!("| ratio | {:.2} |", f.as_secs_f64() / b.as_secs_f64());
    println!("\ngoal: ≤ 1.10 → {}", if f.as_secs_f64() / b.as_secs_f64() <= 1.10 { "met" } else { "not met" });

    // Herd: 32 concurrent requests for one cold key, with the large source
    // (a conversion of seconds) and with the small one (milliseconds), where
    // the per-request cost shows.
    println!("\n## herd (32 concurrent requests for one cold key)\n");
    println!("| source | one request | 32 at once | conversions | ratio |\n|---|---:|---:|---:|---:|");
    let mut large_ratio = f64::MAX;
    for (name, herd_request) in [
        (rootfs_cache_tests::describe_tree(&source), Request::new(&source, &agent)),
        (rootfs_cache_tests::describe_tree(&top), request.clone()),
    ] {
        let single_dir = dir.path().join("single");
        let single_cache = RootfsCache::open(Config::new(&single_dir)).unwrap();
        let started = Instant::now();
        single_cache.convert(&herd_request).await.unwrap();
        let single = started.elapsed();
        let herd_dir = dir.path().join("herd");
        let herd_cache = RootfsCache::open(Config::new(&herd_dir)).unwrap();
        let started = Instant::now();
        let herd: Vec<_> = (0..32)
            .map(|_| {
                let (cache, request) = (herd_cache.clone(), herd_request.clone());
                tokio::spawn(async move { cache.convert(&request).await.unwrap() })
            })
            .collect();
        let mut built = 0;
        for h in herd {
            built += usize::from(!h.await.unwrap().cached);
        }
        let all = started.elapsed();
        let ratio = all.as_secs_f64() / single.as_secs_f64();
        if large_ratio == f64::MAX {
            large_ratio = ratio;
            assert_eq!(built, 1);
        }
        println!("| {name} | {} | {} | {built} | {ratio:.2} |", ms(single), ms(all));
        let _ = std::fs::remove_dir_all(single_dir);
        let _ = std::fs::remove_dir_all(herd_dir);
    }
    println!("\ngoal: one conversion, ≤ 1.2× (large source) → {}", if large_ratio <= 1.2 { "met" } else { "not met" });

    // Memory.
    println!("\n## memory\n");
    println!("| | peak |\n|---|---:|");
    println!(
        "| guest linear memory, largest of every request above | {:.1} MiB |",
        cache.peak_guest_memory() as f64 / (1 << 20) as f64
    );
    println!(
        "| host RSS (this process, VmHWM) after the {}-conversions | {:.1} MiB (before them: {:.1} MiB) |",
        rootfs_cache_tests::describe_tree(&source),
        vm_hwm_kib() as f64 / 1024.0,
        hwm_before as f64 / 1024.0
    );
    let _ = Arc::new(());
}

fn uname() -> String {
    let out = Command::new("uname")
        .args(["-srm"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    format!("{cpu}, {out}")
}

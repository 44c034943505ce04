//! `cargo bench -p rootfs-cache-tests --bench remote`: the remote cache (issue 14) against
//! converting here, in one run. Prints figures and ratios, asserts nothing about time.
//!
//! (a) a local conversion (no remote), cold cache, median of the rounds; (b) a fetch of the
//! same image from Debian's `docker-registry` on a loopback port (download, decompress,
//! validate, publish), cold cache, the artifact pushed before, median of the rounds; their
//! ratio (goal: b ≤ 0.5× a); the compressed artifact's size beside the image's length and
//! its allocated size. (c) a fleet: `ROOTFS_BENCH_FLEET` (default 32) processes, each with its
//! own cache, asking at once for one new image (a new agent, so a new key) through one
//! registry: how many built it and how many fetched it, and the total wall time against one
//! conversion.
//!
//! The image is the `base` Docker fixture's OCI layout when `ROOTFS_FIXTURES` names the
//! fixtures (`tests/fixtures/docker-fixtures.sh`), otherwise a generated layout of about
//! 100 MB in 5,000 files (said so). `ROOTFS_BENCH_ROUNDS` sets the rounds (default 3).
//! "Cold" means no entry: the precompiled component (`<cache>/engine/`) of a warm-up is
//! copied into every new cache, so no side pays the compilation. The fleet shrinks (said so)
//! when the disk cannot hold its images.

#[path = "../../host/registry/tests/support/mod.rs"]
mod support;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rootfs_cache_tests::oci::{self, IndexStyle, TarEntry};
use rootfs_cache_tests::{agent, median, rootfs_cache_bin};
use support::{Registry, Setup};

/// The remote cache's repository.
const REPO: &str = "bench/rootfs-cache";

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A layout of one generated layer, about 100 MB in 5,000 files (half of them
/// incompressible), for runs without the fixtures.
fn generated_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("generated");
    let text: Vec<u8> =
        b"The quick brown fox jumps over the lazy dog. ".iter().copied().cycle().take(64 << 10).collect();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..5000u64 {
        let len = 4000 + (i * 7919 % 32_000) as usize;
        let data = if i % 2 == 0 { rootfs_cache_tests::incompressible(len, i + 1) } else { text[..len].to_vec() };
        files.push((format!("usr/share/d{:03}/f{i:05}", i % 100), data));
    }
    let dirs: Vec<String> = (0..100).map(|d| format!("usr/share/d{d:03}/")).collect();
    let mut entries = vec![TarEntry::dir("usr/", 0o755), TarEntry::dir("usr/share/", 0o755)];
    entries.extend(dirs.iter().map(|d| TarEntry::dir(d, 0o755)));
    entries.extend(files.iter().map(|(p, d)| TarEntry::file(p, d, 0o644)));
    oci::layout(&layout, &[oci::tar(&entries)], "amd64", IndexStyle::Skopeo);
    layout
}

/// A new cache directory with the warm-up's precompiled component.
fn cold_cache(path: &Path, engine: &Path) -> PathBuf {
    let dest = path.join("engine");
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(engine).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
    path.to_owned()
}

/// `rootfs-cache --cache-dir CACHE convert SOURCE --agent AGENT --json EXTRA…`.
fn command(cache: &Path, source: &Path, agent: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(rootfs_cache_bin());
    command
        .arg("--cache-dir")
        .arg(cache)
        .arg("convert")
        .arg(source)
        .args(["--json", "--agent"])
        .arg(agent)
        .args(extra)
        .env_remove("ROOTFS_CACHE_AGENT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Parses a finished conversion's JSON, which must have succeeded.
fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "convert: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Converts and returns the JSON and the wall time.
fn convert(cache: &Path, source: &Path, agent: &Path, extra: &[&str]) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    let out = command(cache, source, agent, extra).output().unwrap();
    let took = start.elapsed();
    (json_of(&out), took)
}

/// Bytes allocated to a file (its blocks), against its length.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Bytes free for an unprivileged writer on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let stat = rustix::fs::statvfs(dir).unwrap();
    stat.f_bavail * stat.f_frsize
}

fn main() {
    if !support::require(&["docker-registry", "skopeo"]) {
        return;
    }
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let rounds = env("ROOTFS_BENCH_ROUNDS", 3).max(1);
    let fleet_asked = env("ROOTFS_BENCH_FLEET", 32).max(1);
    let dir = tempfile::Builder::new().prefix("rootfs-cache-remote-bench").tempdir_in("/var/tmp").unwrap();
    let layout = match oci::fixture_layout("base") {
        Some(layout) => {
            println!("image: the `base` fixture, {}", layout.display());
            layout
        }
        None => {
            println!(
                "note: ROOTFS_FIXTURES names no `base` fixture: using a generated layout (~100 MB in 5,000 files)"
            );
            generated_layout(dir.path())
        }
    };
    let registry = Registry::start(Setup::default());
    let remote = format!("{}/{REPO}", registry.host);
    let remote_flags = ["--remote", remote.as_str(), "--insecure-registry", registry.host.as_str()];
    let agent = agent(dir.path(), "vm-agent", "bench");

    // Warm-up: compiles the component once (`list` opens the cache, which compiles it).
    let warm = dir.path().join("warm");
    let out = Command::new(rootfs_cache_bin()).arg("--cache-dir").arg(&warm).args(["list", "--json"]).output().unwrap();
    assert!(out.status.success(), "warm-up: {}", String::from_utf8_lossy(&out.stderr));
    let engine = warm.join("engine");

    // (a) Local conversions, no remote.
    let mut locals = Vec::new();
    let mut built_image = PathBuf::new();
    let mut local_timings = serde_json::Value::Null;
    for round in 0..rounds {
        let cache = cold_cache(&dir.path().join(format!("local-{round}")), &engine);
        let (json, took) = convert(&cache, &layout, &agent, &[]);
        assert_eq!(json["cached"], false);
        println!("local conversion {round}: {}", ms(took));
        locals.push(took);
        built_image = PathBuf::from(json["image"].as_str().unwrap());
        local_timings = json["timings"].clone();
        if round + 1 < rounds {
            let _ = std::fs::remove_dir_all(&cache);
        }
    }

    // The artifact, pushed by one more host.
    let pusher = cold_cache(&dir.path().join("pusher"), &engine);
    let (json, took) = convert(&pusher, &layout, &agent, &remote_flags);
    assert_eq!((json["origin"].as_str(), json["pushed"].as_bool()), (Some("built"), Some(true)), "{json}");
    println!("build and push: {}", ms(took));
    let key = json["key"].as_str().unwrap().to_owned();
    let _ = std::fs::remove_dir_all(&pusher);
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{remote}:{key}")])
        .output()
        .unwrap();
    assert!(raw.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&raw.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let artifact_bytes = manifest["layers"][0]["size"].as_u64().unwrap();

    // (b) Fetches from the registry.
    let mut fetches = Vec::new();
    let mut fetched_image = PathBuf::new();
    let mut fetch_timings = serde_json::Value::Null;
    for round in 0..rounds {
        let cache = cold_cache(&dir.path().join(format!("fetch-{round}")), &engine);
        let (json, took) = convert(&cache, &layout, &agent, &remote_flags);
        assert_eq!(json["origin"], "remote", "{json}");
        println!("fetch {round}: {}", ms(took));
        fetches.push(took);
        fetched_image = PathBuf::from(json["image"].as_str().unwrap());
        fetch_timings = json["timings"].clone();
        if round + 1 < rounds {
            let _ = std::fs::remove_dir_all(&cache);
        }
    }
    let local = median(locals);
    let fetch = median(fetches);
    let length = std::fs::metadata(&built_image).unwrap().len();
    let (built_allocated, fetched_allocated) = (allocated(&built_image), allocated(&fetched_image));
    println!("local conversion's guest timings: {local_timings}");
    println!("fetch's guest timings: {fetch_timings}");
    println!();
    println!("| {rounds} rounds, medians, cold caches | |");
    println!("|---|---:|");
    println!("| (a) local conversion | {} |", ms(local));
    println!("| (b) fetch from the loopback registry | {} |", ms(fetch));
    println!("| **(b) ÷ (a)** (goal ≤ 0.5×) | **{:.2}×** |", fetch.as_secs_f64() / local.as_secs_f64());
    println!("| image length | {} |", mb(length));
    println!("| image allocated, built here / fetched | {} / {} |", mb(built_allocated), mb(fetched_allocated));
    println!(
        "| compressed artifact (ext4+zstd layer) | {} ({:.1} % of the length, {:.1} % of the allocated) |",
        mb(artifact_bytes),
        100.0 * artifact_bytes as f64 / length as f64,
        100.0 * artifact_bytes as f64 / built_allocated as f64
    );
    let _ = std::fs::remove_dir_all(dir.path().join(format!("local-{}", rounds - 1)));
    let _ = std::fs::remove_dir_all(dir.path().join(format!("fetch-{}", rounds - 1)));

    // (c) The fleet: a new agent, so a key nobody has; every host at once.
    let per_host = built_allocated.max(fetched_allocated) + (16 << 20);
    let fits = (free_bytes(dir.path()) * 4 / 5 / per_host) as usize;
    let fleet = fleet_asked.min(fits.max(2));
    if fleet < fleet_asked {
        println!(
            "note: the fleet is {fleet} hosts, not {fleet_asked}: the disk holds {} free, {} per host",
            mb(free_bytes(dir.path())),
            mb(per_host)
        );
    }
    let fleet_agent = rootfs_cache_tests::agent(dir.path(), "vm-agent-fleet", "fleet");
    let caches: Vec<PathBuf> =
        (0..fleet).map(|i| cold_cache(&dir.path().join(format!("fleet-{i:02}")), &engine)).collect();
    let start = Instant::now();
    let children: Vec<_> =
        caches.iter().map(|cache| command(cache, &layout, &fleet_agent, &remote_flags).spawn().unwrap()).collect();
    let mut origins = std::collections::BTreeMap::<String, usize>::new();
    let mut keys = std::collections::BTreeSet::new();
    let mut pushed = 0;
    for child in children {
        let json = json_of(&child.wait_with_output().unwrap());
        *origins.entry(json["origin"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
        keys.insert(json["key"].as_str().unwrap_or_default().to_owned());
        pushed += usize::from(json["pushed"] == true);
    }
    let total = start.elapsed();
    assert_eq!(keys.len(), 1, "the fleet's keys differ: {keys:?}");
    let built = origins.get("built").copied().unwrap_or(0);
    let fetched = origins.get("remote").copied().unwrap_or(0);
    println!();
    println!("| fleet of {fleet} hosts, one new image, one registry | |");
    println!("|---|---:|");
    println!("| conversions done (origin built) | {built} (without a remote: {fleet}) |");
    println!("| fetched (origin remote) | {fetched} |");
    println!("| pushes that succeeded | {pushed} |");
    println!("| total wall time | {} |", ms(total));
    println!("| one local conversion, (a) | {} |", ms(local));
    println!("| **total ÷ one conversion** | **{:.2}×** |", total.as_secs_f64() / local.as_secs_f64());
    println!(
        "| total ÷ ({fleet} conversions one after another) | {:.2}× |",
        total.as_secs_f64() / (local.as_secs_f64() * fleet as f64)
    );
    println!("origins: {origins:?}");
}

//! `cargo bench -p rootfs-cache-tests --bench pull`: converting an image by name
//! (`docker://`) against the two steps it replaces, `skopeo copy` to a layout and then
//! `convert` of that layout, in one run, alternating, each on a cold cache. Prints figures
//! and ratios, asserts nothing about time. Then converts a second image sharing the first's
//! base layer into the same cache and reports the bytes the registry sent for it.
//!
//! The image is the `base` Docker fixture's OCI layout when `ROOTFS_FIXTURES` names the
//! fixtures (`tests/fixtures/docker-fixtures.sh`), otherwise a generated layout (said so).
//! It is pushed with `skopeo copy` to Debian's `docker-registry` on a loopback port. Needs
//! `docker-registry` and `skopeo`; `ROOTFS_BENCH_ROUNDS` sets the rounds (default 5).
//! "Cold" means no entry and no blob: the precompiled component (`<cache>/engine/`) is copied
//! into every new cache from a warm-up run, so neither side pays the compilation.

#[path = "../../host/registry/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rootfs_cache_tests::oci::{self, IndexStyle, TarEntry};
use rootfs_cache_tests::{agent, median, rootfs_cache_bin, sha256_hex};
use support::{Registry, Setup};

/// What one side of one round measured.
struct Sample {
    /// Wall time of the whole side.
    total: Duration,
    /// Wall time of its first step: `skopeo copy` for the two-step side, the whole
    /// `convert` for the pull.
    first: Duration,
    /// The guest's timings of the `convert` (its JSON).
    timings: serde_json::Value,
    /// Bytes the registry sent.
    bytes: u64,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// A layout of one generated layer, about 60 MB in 3,000 files (half of it compressible),
/// for runs without the fixtures.
fn generated_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("generated");
    let text: Vec<u8> =
        b"The quick brown fox jumps over the lazy dog. ".iter().copied().cycle().take(1 << 20).collect();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..3000u64 {
        let len = 1000 + (i * 7919 % 39_000) as usize;
        let data = if i % 2 == 0 { rootfs_cache_tests::incompressible(len, i) } else { text[..len].to_vec() };
        files.push((format!("usr/share/d{:02}/f{i:04}", i % 50), data));
    }
    let dirs: Vec<String> = (0..50).map(|d| format!("usr/share/d{d:02}/")).collect();
    let mut entries = vec![TarEntry::dir("usr/", 0o755), TarEntry::dir("usr/share/", 0o755)];
    entries.extend(dirs.iter().map(|d| TarEntry::dir(d, 0o755)));
    entries.extend(files.iter().map(|(p, d)| TarEntry::file(p, d, 0o644)));
    oci::layout(&layout, &[oci::tar(&entries)], "amd64", IndexStyle::Skopeo);
    layout
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A layout at `dir` of `base`'s image with one more small layer on top: it shares every
/// layer of `base`. Returns the lengths of its new layer, and of its new blobs (that layer,
/// the config and the manifest).
fn derived_layout(base: &Path, dir: &Path) -> (u64, u64) {
    let blobs = base.join("blobs/sha256");
    let index = read_json(&base.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let mut manifest = read_json(&blobs.join(&manifest_digest[7..]));
    let mut config = read_json(&blobs.join(&manifest["config"]["digest"].as_str().unwrap()[7..]));
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let hex = &layer["digest"].as_str().unwrap()[7..];
        let to = dir.join("blobs/sha256").join(hex);
        if std::fs::hard_link(blobs.join(hex), &to).is_err() {
            std::fs::copy(blobs.join(hex), &to).unwrap();
        }
    }
    let data = rootfs_cache_tests::incompressible(512 << 10, 77);
    let tar = oci::tar(&[TarEntry::dir("opt/", 0o755), TarEntry::file("opt/app.bin", &data, 0o755)]);
    let gz = oci::gzip(&tar);
    let digest = oci::write_blob(dir, &gz);
    manifest["layers"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": gz.len()
    }));
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(format!("sha256:{}", sha256_hex(&tar)).into());
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = oci::write_blob(dir, &config);
    manifest["config"]["digest"] = config_digest.into();
    manifest["config"]["size"] = config.len().into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = oci::write_blob(dir, &manifest);
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
        "annotations": { "org.opencontainers.image.ref.name": "latest" } }] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (gz.len() as u64, (gz.len() + config.len() + manifest.len()) as u64)
}

/// Bytes the registry sent in the responses it logged after the first `from` lines, and
/// the number of lines now.
fn bytes_sent(registry: &Registry, from: usize) -> (u64, usize) {
    let log = registry.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("msg=\"response completed")).collect();
    let sent = lines[from.min(lines.len())..]
        .iter()
        .filter_map(|l| l.split("http.response.written=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    (sent, lines.len())
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

/// `rootfs-cache --cache-dir CACHE convert SOURCE --agent AGENT --json EXTRA…`: its JSON.
fn convert(cache: &Path, source: &str, agent: &Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(rootfs_cache_bin())
        .arg("--cache-dir")
        .arg(cache)
        .args(["convert", source, "--json", "--agent"])
        .arg(agent)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "convert {source}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn skopeo_copy(from: &str, to: &str) {
    let out = Command::new("skopeo").args(["copy", "--quiet", "--src-tls-verify=false", from, to]).output().unwrap();
    assert!(out.status.success(), "skopeo copy {from}: {}", String::from_utf8_lossy(&out.stderr));
}

fn main() {
    if !support::require(&["docker-registry", "skopeo"]) {
        return;
    }
    let rounds: usize = std::env::var("ROOTFS_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let dir = tempfile::Builder::new().prefix("rootfs-cache-pull-bench").tempdir_in("/var/tmp").unwrap();
    let layout = match oci::fixture_layout("base") {
        Some(layout) => {
            println!("image: the `base` fixture, {}", layout.display());
            layout
        }
        None => {
            println!("note: ROOTFS_FIXTURES names no `base` fixture: using a generated layout (~60 MB in 3,000 files)");
            generated_layout(dir.path())
        }
    };
    let layer_bytes: u64 =
        std::fs::read_dir(layout.join("blobs/sha256")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    println!("its blobs: {:.1} MB", layer_bytes as f64 / 1e6);
    let registry = Registry::start(Setup::default());
    oci::skopeo_push(&layout, &registry.host, "bench/base:latest", false);
    let second_layout = dir.path().join("second");
    let (own_layer, own_blobs) = derived_layout(&layout, &second_layout);
    oci::skopeo_push(&second_layout, &registry.host, "bench/second:latest", false);
    let agent = agent(dir.path(), "vm-agent", "bench");
    let source = format!("docker://{}/bench/base:latest", registry.host);
    let insecure = ["--insecure-registry", registry.host.as_str()];

    // Warm-up: compiles the component once, and reads the registry's files into the page
    // cache for both sides alike.
    let warm = dir.path().join("warm");
    convert(&warm, &source, &agent, &insecure);
    let engine = warm.join("engine");

    let pull = |round: usize| -> Sample {
        let cache = cold_cache(&dir.path().join(format!("pull-{round}")), &engine);
        let (_, from) = bytes_sent(&registry, usize::MAX);
        let start = Instant::now();
        let json = convert(&cache, &source, &agent, &insecure);
        let total = start.elapsed();
        assert_eq!(json["cached"], false);
        let (bytes, _) = bytes_sent(&registry, from);
        Sample { total, first: total, timings: json["timings"].clone(), bytes }
    };
    let two_step = |round: usize| -> Sample {
        let cache = cold_cache(&dir.path().join(format!("two-step-{round}")), &engine);
        let copy = dir.path().join(format!("copy-{round}"));
        let (_, from) = bytes_sent(&registry, usize::MAX);
        let start = Instant::now();
        skopeo_copy(&source, &format!("oci:{}:latest", copy.display()));
        let first = start.elapsed();
        let json = convert(&cache, &format!("oci:{}:latest", copy.display()), &agent, &[]);
        let total = start.elapsed();
        assert_eq!(json["cached"], false);
        let (bytes, _) = bytes_sent(&registry, from);
        Sample { total, first, timings: json["timings"].clone(), bytes }
    };

    let mut pulls = Vec::new();
    let mut twos = Vec::new();
    for round in 0..rounds {
        // Alternating which goes first, so that neither always follows the other's writes.
        if round % 2 == 0 {
            pulls.push(pull(round));
            twos.push(two_step(round));
        } else {
            twos.push(two_step(round));
            pulls.push(pull(round));
        }
        let (p, t) = (pulls.last().unwrap(), twos.last().unwrap());
        println!(
            "round {round}: pull {} | skopeo copy {} + convert {} = {} | ratio {:.2}",
            ms(p.total),
            ms(t.first),
            ms(t.total - t.first),
            ms(t.total),
            p.total.as_secs_f64() / t.total.as_secs_f64()
        );
        println!("  pull's guest timings: {}", p.timings);
        println!("  layout convert's guest timings: {}", t.timings);
        for name in [format!("two-step-{round}"), format!("copy-{round}")] {
            let _ = std::fs::remove_dir_all(dir.path().join(name));
        }
        if round + 1 < rounds {
            let _ = std::fs::remove_dir_all(dir.path().join(format!("pull-{round}")));
        }
    }
    let pull_median = median(pulls.iter().map(|s| s.total).collect());
    let two_median = median(twos.iter().map(|s| s.total).collect());
    let copy_median = median(twos.iter().map(|s| s.first).collect());
    let layout_convert_median = median(twos.iter().map(|s| s.total - s.first).collect());
    println!();
    println!("| {rounds} rounds, medians | time |");
    println!("|---|---:|");
    println!("| (a) `convert docker://…` (pull and convert), cold cache | {} |", ms(pull_median));
    println!("| (b) `skopeo copy docker://… oci:DIR` | {} |", ms(copy_median));
    println!("| (b) `convert oci:DIR:latest`, cold cache | {} |", ms(layout_convert_median));
    println!("| (b) both | {} |", ms(two_median));
    println!("| **(a) ÷ (b)** (goal ≤ 1.0×) | **{:.2}×** |", pull_median.as_secs_f64() / two_median.as_secs_f64());
    println!("bytes the registry sent: (a) {} per run, (b) {} per run", pulls[0].bytes, twos[0].bytes);

    // The second image, into the last pull's cache: only what it does not share.
    let cache = dir.path().join(format!("pull-{}", rounds - 1));
    let (_, from) = bytes_sent(&registry, usize::MAX);
    let start = Instant::now();
    let json = convert(&cache, &format!("docker://{}/bench/second:latest", registry.host), &agent, &insecure);
    let took = start.elapsed();
    let (bytes, _) = bytes_sent(&registry, from);
    println!(
        "second image (the base's layers + one of {own_layer} bytes), into the same cache: the registry sent \
         {bytes} bytes; its own blobs (that layer, its config and manifest) are {own_blobs}; {} (cached: {})",
        ms(took),
        json["cached"]
    );
}

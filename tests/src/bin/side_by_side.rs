//! `side-by-side FIXTURES.json [OUT.md]`: converts every Docker fixture (as an
//! overlay2 chain and as an OCI layout) with `oci2rootfs` and with `exact`,
//! compares each image with the reference tree, runs `e2fsck -fn`, and times
//! both against bare `mke2fs -d` on the merged tree, all in one run. Prints a
//! Markdown table (and writes it to OUT.md). Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rootfs_cache::{Config, ConverterSpec, Request, RootfsCache};
use rootfs_cache_tests::compare::differences;
use rootfs_cache_tests::{OverlayMount, ReadOnlyMount, agent, fsck, median};

/// Runs per measurement; the median is reported.
const RUNS: usize = 3;

struct Result {
    diffs: Option<usize>,
    fsck: Option<i32>,
    time: Option<Duration>,
    error: Option<String>,
    bytes: u64,
    note: &'static str,
}

/// Whether a manifest of the layout names a zstd layer. Manifests are small
/// JSON blobs; layer blobs (up to gigabytes) are not read.
fn is_zstd(layout: &Path) -> bool {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .map(|d| {
            d.flatten().any(|e| {
                e.metadata().is_ok_and(|m| m.len() <= 64 << 10)
                    && std::fs::read(e.path()).is_ok_and(|b| String::from_utf8_lossy(&b).contains("tar+zstd"))
            })
        })
        .unwrap_or(false)
}

/// A copy of an OCI layout whose index.json names its media type.
fn with_media_type(layout: &Path, scratch: &Path) -> PathBuf {
    let copy = scratch.join("oci-copy");
    let _ = std::fs::remove_dir_all(&copy);
    assert!(Command::new("cp").arg("-a").arg(layout).arg(&copy).status().unwrap().success());
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
    index["mediaType"] = serde_json::json!("application/vnd.oci.image.index.v1+json");
    std::fs::write(copy.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    copy
}

fn added(reference: &Path) -> Vec<Vec<u8>> {
    let mut sbin = b"sbin".to_vec();
    for _ in 0..8 {
        match std::fs::read_link(reference.join(String::from_utf8_lossy(&sbin).as_ref())) {
            Ok(t) => {
                let t = t.to_string_lossy().into_owned();
                sbin = t.strip_prefix('/').map_or_else(|| t.clone().into_bytes(), |a| a.as_bytes().to_vec());
            }
            Err(_) => break,
        }
    }
    if reference.join(String::from_utf8_lossy(&sbin).as_ref()).is_dir() {
        vec![b"lost+found".to_vec(), [sbin.as_slice(), b"/vm-agent"].concat()]
    } else {
        vec![b"lost+found".to_vec(), sbin]
    }
}

async fn convert(source: &Path, agent: &Path, converter: ConverterSpec, reference: &Path, scratch: &Path) -> Result {
    let mut times = Vec::new();
    let mut last = None;
    for run in 0..RUNS {
        let cache_dir = scratch.join(format!("cache-{converter}-{run}").replace([':', '/'], "_"));
        let cache = RootfsCache::open(Config::new(&cache_dir)).expect("cache");
        let started = Instant::now();
        match cache.convert(&Request::new(source, agent).converter(converter.clone())).await {
            Ok(outcome) => {
                // The converter alone, as the guest measured it.
                times.push(Duration::from_micros(outcome.timings.convert_us).min(started.elapsed()));
                if let Some(old) = last.replace((outcome, cache_dir.clone())) {
                    let _ = std::fs::remove_dir_all(old.1);
                }
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&cache_dir);
                return Result { diffs: None, fsck: None, time: None, error: Some(e.to_string()), bytes: 0, note: "" };
            }
        }
    }
    let (outcome, cache_dir) = last.expect("at least one run");
    let mnt = ReadOnlyMount::new(&outcome.image);
    let ignore = added(reference);
    let ignore: Vec<&[u8]> = ignore.iter().map(Vec::as_slice).collect();
    let diffs = differences(reference, &mnt.path, &ignore).len();
    drop(mnt);
    let (code, _) = fsck(&outcome.image);
    let _ = std::fs::remove_dir_all(&cache_dir);
    Result {
        diffs: Some(diffs),
        fsck: Some(code),
        time: Some(median(times)),
        error: None,
        bytes: outcome.image_bytes,
        note: "",
    }
}

fn mke2fs(tree: &Path, bytes: u64, scratch: &Path) -> Option<Duration> {
    let image = scratch.join("mke2fs.img");
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let _ = std::fs::remove_file(&image);
        std::fs::File::create(&image).ok()?.set_len(bytes.max(64 << 20)).ok()?;
        let started = Instant::now();
        let status =
            Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-d"]).arg(tree).arg(&image).status().ok()?;
        times.push(started.elapsed());
        if !status.success() {
            return None;
        }
    }
    let _ = std::fs::remove_file(&image);
    Some(median(times))
}

fn cell(r: &Result) -> String {
    match (&r.error, r.diffs, r.fsck) {
        (Some(e), _, _) => format!("error: {}", e.chars().take(70).collect::<String>().replace('|', "\\|")),
        (None, Some(d), Some(f)) => {
            format!("{d}{} | {}", r.note, if f == 0 { "clean".to_owned() } else { format!("exit {f}") })
        }
        _ => "?".into(),
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(list) = args.first() else {
        eprintln!("usage: side-by-side FIXTURES.json [OUT.md]");
        std::process::exit(2);
    };
    let fixtures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(list).expect("fixtures.json")).expect("JSON");
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let agent = agent(scratch.path(), "vm-agent", "side-by-side");
    let mut rows = vec![
        "| fixture | form | oci2rootfs: differences | oci2rootfs: e2fsck | exact: differences | exact: e2fsck | oci2rootfs | exact | mke2fs -d | exact ÷ oci2rootfs |".to_owned(),
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|".to_owned(),
    ];
    for f in fixtures.as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        for form in ["overlay2", "oci"] {
            let source = PathBuf::from(f[form].as_str().unwrap());
            eprintln!("{name} ({form})…");
            // The reference tree: the kernel's overlay mount, or umoci's unpack.
            let mut _overlay = None;
            let reference = if form == "overlay2" {
                let m = OverlayMount::new(&source);
                let p = m.path.clone();
                _overlay = Some(m);
                p
            } else {
                // umoci reads no zstd: unpack the gzip export of the same image.
                let twin = fixtures
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| PathBuf::from(t["oci"].as_str().unwrap()))
                    .zip(fixtures.as_array().unwrap().iter())
                    .find(|(oci, t)| t["overlay2"] == f["overlay2"] && !is_zstd(oci))
                    .map(|(oci, _)| oci)
                    .filter(|_| is_zstd(&source))
                    .unwrap_or_else(|| source.clone());
                let bundle = scratch.path().join(format!("bundle-{name}"));
                let out = Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:latest", twin.display()))
                    .arg(&bundle)
                    .output()
                    .unwrap();
                if !out.status.success() {
                    rows.push(format!(
                        "| {name} | {form} | umoci cannot unpack it: {} | | | | | | | |",
                        String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("").replace('|', "\\|")
                    ));
                    continue;
                }
                bundle.join("rootfs")
            };
            let mut old = convert(&source, &agent, ConverterSpec::Oci2rootfs, &reference, scratch.path()).await;
            if form == "oci" && old.error.as_deref().is_some_and(|e| e.contains("missing mediaType")) {
                // oci2rootfs rejects skopeo's index.json; time it on a copy
                // that names the index's media type, for a baseline.
                let copy = with_media_type(&source, scratch.path());
                old = convert(&copy, &agent, ConverterSpec::Oci2rootfs, &reference, scratch.path()).await;
                old.note = " (on a copy with `mediaType` added)";
                let _ = std::fs::remove_dir_all(copy);
            }
            let new = convert(&source, &agent, ConverterSpec::Exact, &reference, scratch.path()).await;
            let bare = mke2fs(&reference, new.bytes, scratch.path());
            let ratio = match (old.time, new.time) {
                (Some(o), Some(n)) => format!("{:.2}", n.as_secs_f64() / o.as_secs_f64()),
                _ => "–".into(),
            };
            let (old_cells, new_cells) = (cell(&old), cell(&new));
            let pad = |c: String| if c.contains(" | ") { c } else { format!("{c} | ") };
            rows.push(format!(
                "| {name} | {form} | {} | {} | {} | {} | {} | {ratio} |",
                pad(old_cells),
                pad(new_cells),
                ms(old.time),
                ms(new.time),
                ms(bare)
            ));
            if form == "oci" {
                let _ = std::fs::remove_dir_all(scratch.path().join(format!("bundle-{name}")));
            }
        }
    }
    let table = rows.join("\n");
    println!("{table}");
    if let Some(out) = args.get(1) {
        std::fs::write(out, format!("{table}\n")).expect("writing the table");
    }
}

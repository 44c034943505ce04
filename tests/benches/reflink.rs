//! `cargo bench -p rootfs-cache-tests --bench reflink`: sharing data instead
//! of copying it (issue 17), each figure beside its baseline from the same
//! run, on filesystems the benchmark makes on loop files in `/var/tmp`:
//!
//! - **a miss**, on xfs (`reflink=1`) holding the layers and the cache:
//!   the exact converter cloning (`--reflink auto`) against the same
//!   converter copying (`--reflink never`, what it did before), for a
//!   data-heavy chain (`big`: a base and a 100 MiB file of incompressible
//!   data) and for the base alone (`base`: small files, little to clone).
//!   Goal: the data-heavy miss ≤ 0.3× the copying converter. The same on
//!   ext4, where cloning falls back to copying (both ≈ the same).
//! - **a per-VM copy** of a 1 GiB image: `rootfs-cache clone` (the library
//!   call) against `cp --sparse=always`, on xfs and on ext4. Goal: ≤ 10 ms
//!   on xfs whatever the image's size.
//!
//! The base is the `base` Docker fixture when `ROOTFS_FIXTURES` names the
//! fixtures (copied onto the filesystem with `cp -a`), else a generated
//! tree of 3,000 files (1–64 KiB). Each conversion is a miss in a fresh
//! cache, timed to its published, fsynced entry; the median of 5 runs is
//! shown, the two modes taking turns. Needs root, xfsprogs and e2fsprogs; about 2 minutes.
//! `ROOTFS_BENCH_REFLINK=misses` or `=clones` runs one half.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rootfs_cache::capabilities::converter::exact::ExactConverter;
use rootfs_cache::ext4::Reflink;
use rootfs_cache::{Capabilities, Config, Request, RootfsCache};
use rootfs_cache_tests::scratch_fs::{FsKind, ScratchFs};
use rootfs_cache_tests::{Overlay2, agent, incompressible, is_root, median};

const MIB: u64 = 1 << 20;
const RUNS: usize = 5;

/// The chain directory of the base: the `base` fixture copied onto `fs`,
/// or a generated tree.
fn base(fs: &ScratchFs) -> PathBuf {
    if let Ok(list) = std::env::var("ROOTFS_FIXTURES") {
        let fixtures: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(list).unwrap()).unwrap();
        if let Some(top) = fixtures.as_array().unwrap().iter().find(|f| f["name"] == "base") {
            let top = PathBuf::from(top["overlay2"].as_str().unwrap());
            let out = Command::new("cp").arg("-a").arg(top.parent().unwrap()).arg(fs.dir("fixture")).output().unwrap();
            assert!(out.status.success(), "cp -a: {}", String::from_utf8_lossy(&out.stderr));
            return fs.path.join("fixture/overlay2").join(top.file_name().unwrap());
        }
    }
    Overlay2::new(&fs.dir("generated")).layer(|l| {
        for i in 0..3000u64 {
            let len = 1024 + (i * 7919 % (63 * 1024)) as usize;
            let dir = l.diff.join(format!("usr/share/d{:02}", i % 60));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("f{i}")), incompressible(len, i)).unwrap();
        }
    })
}

/// A layer on `base` holding one 100 MiB file, as the `big` fixture has.
fn big_on(base: &Path) -> PathBuf {
    let root = base.parent().unwrap();
    let base_link = std::fs::read_to_string(base.join("link")).unwrap();
    let mut lower = format!("l/{}", base_link.trim());
    if let Ok(more) = std::fs::read_to_string(base.join("lower")) {
        lower = format!("{lower}:{}", more.trim());
    }
    let top = root.join("big-layer");
    std::fs::create_dir_all(top.join("diff/data")).unwrap();
    std::fs::write(top.join("link"), "BIGLAYER0000000000000000000").unwrap();
    std::fs::write(top.join("lower"), lower).unwrap();
    std::os::unix::fs::symlink("../big-layer/diff", root.join("l/BIGLAYER0000000000000000000")).unwrap();
    let mut data = Vec::with_capacity((100 * MIB) as usize);
    for i in 0..25 {
        data.extend(incompressible((4 * MIB) as usize, 1000 + i));
    }
    std::fs::write(top.join("diff/data/big.bin"), data).unwrap();
    top
}

fn cache(dir: &Path, reflink: Reflink) -> RootfsCache {
    let exact = ExactConverter { reflink, ..Default::default() };
    RootfsCache::open(Config::new(dir).capabilities(Capabilities::native_with_exact(exact))).unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// What the misses of one mode measured: the median time, and the median
/// run's bytes cloned and copied and time in the converter and publishing.
struct Miss {
    time: Duration,
    cloned: u64,
    copied: u64,
    convert_us: u64,
    publish_us: u64,
}

/// One miss of `top` in a fresh cache on `fs`.
async fn miss(fs: &ScratchFs, top: &Path, agent: &Path, reflink: Reflink) -> Miss {
    let dir = fs.dir(&format!("cache-{reflink:?}"));
    let cache = cache(&dir, reflink);
    let started = Instant::now();
    let outcome = cache.convert(&Request::new(top, agent)).await.unwrap();
    let time = started.elapsed();
    assert!(!outcome.cached);
    drop(cache);
    std::fs::remove_dir_all(&dir).unwrap();
    Miss {
        time,
        cloned: outcome.cloned_bytes,
        copied: outcome.copied_bytes,
        convert_us: outcome.timings.convert_us,
        publish_us: outcome.timings.publish_us,
    }
}

/// [`RUNS`] misses in each mode, the modes taking turns so that a change in
/// the machine's load hits both; the median run of each.
async fn misses(fs: &ScratchFs, top: &Path, agent: &Path) -> (Miss, Miss) {
    let (mut cloning, mut copying) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        copying.push(miss(fs, top, agent, Reflink::Never).await);
        cloning.push(miss(fs, top, agent, Reflink::Auto).await);
    }
    let median = |mut runs: Vec<Miss>| {
        runs.sort_by_key(|m| m.time);
        runs.swap_remove(runs.len() / 2)
    };
    (median(cloning), median(copying))
}

async fn conversions(kind: FsKind) {
    let fs = ScratchFs::new(kind, 4 << 30);
    let base = base(&fs);
    let big = big_on(&base);
    let agent = agent(&fs.path, "vm-agent", "bench");
    println!("\n## A miss on {kind:?}, layers and cache on it\n");
    println!(
        "| chain | cloning | copying (`--reflink never`) | ratio | cloned / copied | convert + publish, cloning | copying |\n\
         |---|---:|---:|---:|---|---|---|"
    );
    for (name, top) in [("big (base + 100 MiB file)", &big), ("base", &base)] {
        let (cloning, copying) = misses(&fs, top, &agent).await;
        let steps = |m: &Miss| format!("{} + {} ms", m.convert_us / 1000, m.publish_us / 1000);
        println!(
            "| {name} | {} | {} | {:.2}× | {:.1} / {:.1} MiB | {} | {} |",
            ms(cloning.time),
            ms(copying.time),
            cloning.time.as_secs_f64() / copying.time.as_secs_f64(),
            cloning.cloned as f64 / MIB as f64,
            cloning.copied as f64 / MIB as f64,
            steps(&cloning),
            steps(&copying)
        );
    }
}

async fn clones(kind: FsKind) {
    let fs = ScratchFs::new(kind, 4 << 30);
    let mut o = Overlay2::new(&fs.dir("overlay2"));
    let top = o.layer(|l| {
        let mut data = Vec::with_capacity((600 * MIB) as usize);
        for i in 0..150 {
            data.extend(incompressible((4 * MIB) as usize, 5000 + i));
        }
        std::fs::create_dir_all(l.diff.join("data")).unwrap();
        std::fs::write(l.diff.join("data/blob.bin"), data).unwrap();
    });
    let agent = agent(&fs.path, "vm-agent", "bench");
    let cache = cache(&fs.dir("cache"), Reflink::Auto);
    let mut request = Request::new(&top, &agent);
    request.size = Some(1 << 30);
    let entry = cache.convert(&request).await.unwrap();
    let (mut ours, mut cp) = (Vec::new(), Vec::new());
    let mut method = None;
    for run in 0..RUNS {
        let dest = fs.path.join(format!("vm-{run}.ext4"));
        let started = Instant::now();
        let report = cache.clone_entry(&entry.key, &dest).await.unwrap();
        ours.push(started.elapsed());
        method = Some(report.method);
        std::fs::remove_file(&dest).unwrap();
        let dest = fs.path.join(format!("cp-{run}.ext4"));
        let started = Instant::now();
        let out = Command::new("cp").arg("--sparse=always").arg(&entry.image).arg(&dest).output().unwrap();
        cp.push(started.elapsed());
        assert!(out.status.success());
        std::fs::remove_file(&dest).unwrap();
    }
    let (ours, cp) = (median(ours), median(cp));
    let method = method.map_or_else(String::new, |m| format!("{m:?}").to_lowercase());
    println!("| {kind:?} | {} ({method}) | {} | {:.3}× |", ms(ours), ms(cp), ours.as_secs_f64() / cp.as_secs_f64());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !is_root() || !FsKind::Xfs.available() {
        println!("SKIPPED: the reflink benchmark needs root and xfsprogs (mkfs.xfs)");
        return;
    }
    println!("# Sharing data: cloning against copying, {RUNS} runs each, medians");
    let only = std::env::var("ROOTFS_BENCH_REFLINK").unwrap_or_default();
    if only.is_empty() || only == "misses" {
        conversions(FsKind::Xfs).await;
        conversions(FsKind::Ext4).await;
    }
    if !(only.is_empty() || only == "clones") {
        return;
    }
    println!("\n## A VM's copy of a 1 GiB image (600 MiB of data)\n");
    println!("| filesystem | `clone` | `cp --sparse=always` | ratio |\n|---|---:|---:|---:|");
    clones(FsKind::Xfs).await;
    clones(FsKind::Ext4).await;
}

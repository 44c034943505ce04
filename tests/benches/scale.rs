//! `cargo bench -p rootfs-cache-tests --bench scale`: conversion at scale,
//! each figure beside its baselines from the same run (issue 12):
//!
//! - **1,000,000 small files** (1,000 directories of 1,000 files of 1 to
//!   2,048 bytes) and **one file of 4.5 GiB** of incompressible data, each a
//!   one-layer overlay2 chain on disk;
//! - converted by rootfs-cache (the library, default profile, a miss);
//! - by `mke2fs -t ext4 -d` of the same tree, at the same size and inode
//!   count;
//! - and the floor: reading every file and writing the same bytes to one
//!   file, then `fsync`.
//!
//! The tree is synced to disk and the page cache warmed by one untimed pass
//! over it first, so the three read the same cached tree at rest. Every image is checked with
//! `e2fsck -fn`. Needs root; `ROOTFS_BENCH_SCALE=files` or `=big` runs one
//! half. Takes about 15 minutes and 12 GB of `/var/tmp`.
//!
//! For profiling, `ROOTFS_BENCH_FILES=100000` makes the small-files tree
//! that many files (1,000 a directory; the default is 1,000,000), and
//! `ROOTFS_BENCH_KEEP=DIR` builds the trees in `DIR` and leaves them there
//! (a tree already in `DIR` is reused), so that a profiler can run
//! `rootfs-cache convert DIR/files-overlay2/<layer>` on the same tree again.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rootfs_cache::{Config, ConverterSpec, Request, RootfsCache};
use rootfs_cache_tests::{Overlay2, XorShift, agent, incompressible, is_root, median};

/// How many small files the first case writes: `ROOTFS_BENCH_FILES`, or a
/// million.
fn file_count() -> usize {
    std::env::var("ROOTFS_BENCH_FILES").ok().map_or(1_000_000, |v| v.parse().expect("ROOTFS_BENCH_FILES: a number"))
}

/// Directories of 1,000 small files of varied sizes (1,000 of them by
/// default).
fn million_files(root: &Path) -> PathBuf {
    Overlay2::new(root).layer(|l| {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut buf = vec![0u8; 2048];
        for d in 0..file_count().div_ceil(1000) {
            let dir = l.diff.join(format!("srv/d{d:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..1000 {
                let state = rng.next_u64();
                let len = 1 + (state % 2048) as usize;
                buf[..8].copy_from_slice(&state.to_le_bytes());
                std::fs::write(dir.join(format!("file-{f:04}.dat")), &buf[..len]).unwrap();
            }
        }
    })
}

/// One file of 4.5 GiB of incompressible data, written in 64 MiB chunks.
fn big_file(root: &Path) -> PathBuf {
    Overlay2::new(root).layer(|l| {
        let dir = l.diff.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = File::create(dir.join("big.bin")).unwrap();
        let chunk = 64 << 20;
        for i in 0..(9u64 << 29) / chunk as u64 {
            out.write_all(&incompressible(chunk, i + 1)).unwrap();
        }
        out.sync_all().unwrap();
    })
}

/// Every regular file under `dir`, in directory order.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

/// The floor: every file's bytes read and written to one file, fsynced.
fn floor(diff: &Path, out: &Path) -> Duration {
    let started = Instant::now();
    let mut list = Vec::new();
    files(diff, &mut list);
    let mut sink = File::create(out).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for path in list {
        let mut f = File::open(path).unwrap();
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n]).unwrap();
        }
    }
    sink.sync_all().unwrap();
    started.elapsed()
}

/// `s_inodes_count` of the ext4 image at `path`.
fn inodes_count(path: &Path) -> u32 {
    use std::os::unix::fs::FileExt as _;
    let mut word = [0u8; 4];
    File::open(path).unwrap().read_exact_at(&mut word, 1024).unwrap();
    u32::from_le_bytes(word)
}

/// `mke2fs -t ext4 -d diff` into an image of `bytes` with `inodes` inodes
/// (its default of one per 16 KiB is too few for a million small files),
/// fsynced.
fn mke2fs(diff: &Path, image: &Path, bytes: u64, inodes: u32) -> Duration {
    let started = Instant::now();
    File::create(image).unwrap().set_len(bytes).unwrap();
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-N"])
        .arg(inodes.to_string())
        .arg("-d")
        .arg(diff)
        .arg(image)
        .output()
        .expect("run mke2fs");
    assert!(out.status.success(), "mke2fs: {}", String::from_utf8_lossy(&out.stderr));
    File::open(image).unwrap().sync_all().unwrap();
    started.elapsed()
}

fn e2fsck_clean(image: &Path) -> &'static str {
    let out = Command::new("e2fsck").arg("-fn").arg(image).output().expect("run e2fsck");
    if out.status.success() { "clean" } else { "NOT CLEAN" }
}

/// How many times the floor and ours each run.
const RUNS: usize = 3;

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The top layer of the overlay2 chain `make` builds in `root`, or of the
/// one already there when `keep` (a tree kept from an earlier run).
fn chain(root: &Path, keep: bool, make: fn(&Path) -> PathBuf) -> PathBuf {
    if keep && root.exists() {
        let layer = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.join("diff").is_dir())
            .expect("a kept tree has its layer");
        return layer;
    }
    make(root)
}

async fn case(title: &str, name: &str, dir: &Path, keep: bool, make: fn(&Path) -> PathBuf) {
    let started = Instant::now();
    let top = chain(&dir.join(format!("{name}-overlay2")), keep, make);
    let diff = top.join("diff");
    println!("\n## {title}\n\n(tree written in {})", secs(started.elapsed()));
    // The tree at rest: its own write-back would otherwise land in whichever
    // measurement runs when the kernel gets to it.
    assert!(Command::new("sync").status().expect("run sync").success());
    // Warm the page cache: every file read once, untimed.
    floor(&diff, &dir.join("warm"));
    std::fs::remove_file(dir.join("warm")).unwrap();

    // The floor and ours take turns, three runs each, and the medians count:
    // this machine's memory reclaim (DAMON pageout of pages idle for a
    // minute) moves single runs by a third.
    let (mut floors, mut misses) = (Vec::new(), Vec::new());
    let cache_dir = dir.join(format!("{name}-cache"));
    let request = Request::new(&top, agent(dir, "vm-agent", name)).converter(ConverterSpec::Exact);
    let mut outcome = None;
    for run in 0..RUNS {
        floors.push(floor(&diff, &dir.join("floor")));
        std::fs::remove_file(dir.join("floor")).unwrap();
        if run > 0 {
            std::fs::remove_dir_all(&cache_dir).unwrap();
        }
        let cache = RootfsCache::open(Config::new(&cache_dir)).unwrap();
        let started = Instant::now();
        let converted = cache.convert(&request).await.unwrap();
        misses.push(started.elapsed());
        assert!(!converted.cached);
        println!("(run {}: floor {}, ours {})", run + 1, secs(floors[run]), secs(misses[run]));
        outcome = Some(converted);
    }
    let outcome = outcome.expect("at least one run");
    let (floor_time, ours) = (median(floors), median(misses));
    let bytes = std::fs::metadata(&outcome.image).unwrap().len();
    let ours_fsck = e2fsck_clean(&outcome.image);

    let theirs_image = dir.join(format!("{name}-mke2fs.img"));
    let theirs = mke2fs(&diff, &theirs_image, bytes, inodes_count(&outcome.image));
    let theirs_fsck = e2fsck_clean(&theirs_image);
    std::fs::remove_file(&theirs_image).unwrap();

    println!("\n| | time | e2fsck -fn |\n|---|---:|---|");
    println!("| rootfs-cache convert (a miss) | {} | {ours_fsck} |", secs(ours));
    println!("| `mke2fs -t ext4 -d`, same size | {} | {theirs_fsck} |", secs(theirs));
    println!("| floor (read every file, write one file, fsync) | {} | |", secs(floor_time));
    println!(
        "| ratio to the floor (goal ≤ 1.5×) | {:.2}× | |\n| ratio to mke2fs -d | {:.2}× | |",
        ours.as_secs_f64() / floor_time.as_secs_f64(),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    println!("\nimage: {:.2} GiB (apparent)", bytes as f64 / (1u64 << 30) as f64);
    std::fs::remove_dir_all(&cache_dir).unwrap();
    if !keep {
        std::fs::remove_dir_all(dir.join(format!("{name}-overlay2"))).unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !is_root() {
        println!("SKIPPED: the scale benchmark needs root (real conversions)");
        return;
    }
    let only = std::env::var("ROOTFS_BENCH_SCALE").unwrap_or_default();
    let kept = std::env::var_os("ROOTFS_BENCH_KEEP").map(PathBuf::from);
    let temp = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = match &kept {
        Some(dir) => {
            std::fs::create_dir_all(dir).unwrap();
            dir.as_path()
        }
        None => temp.path(),
    };
    let keep = kept.is_some();
    println!("# rootfs-cache at scale: a miss against `mke2fs -d` and the floor");
    if only.is_empty() || only == "files" {
        let title = format!("{} small files", file_count());
        case(&title, "files", dir, keep, million_files).await;
    }
    if only.is_empty() || only == "big" {
        case("one 4.5 GiB file", "big", dir, keep, big_file).await;
    }
}

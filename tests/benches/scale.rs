//! `cargo bench -p rootfs-cache-tests --bench scale`: conversion at scale,
//! each figure beside its baselines from the same run (issue 12):
//!
//! - **1,000,000 small files** (1,000 directories of 1,000 files of 1 to
//!   2,048 bytes) and **one file of 4.5 GiB** of incompressible data, each a
//!   one-layer overlay2 chain on disk;
//! - converted by rootfs-cache (the library, default profile, a miss);
//! - by `mke2fs -t ext4 -d` of the same tree, at the same size;
//! - and the floor: reading every file and writing the same bytes to one
//!   file, then `fsync`.
//!
//! The page cache is warmed by one untimed pass over the tree first, so the
//! three read the same cached tree. Every image is checked with
//! `e2fsck -fn`. Needs root; `ROOTFS_BENCH_SCALE=files` or `=big` runs one
//! half. Takes about 15 minutes and 12 GB of `/var/tmp`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rootfs_cache::{Config, ConverterSpec, Request, RootfsCache};
use rootfs_cache_tests::{Overlay2, agent, incompressible, is_root};

/// 1,000 directories of 1,000 small files of varied sizes.
fn million_files(root: &Path) -> PathBuf {
    Overlay2::new(root).layer(|l| {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut buf = vec![0u8; 2048];
        for d in 0..1000 {
            let dir = l.diff.join(format!("srv/d{d:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..1000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
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

/// `mke2fs -t ext4 -d diff` into an image of `bytes`, fsynced.
fn mke2fs(diff: &Path, image: &Path, bytes: u64) -> Duration {
    let started = Instant::now();
    File::create(image).unwrap().set_len(bytes).unwrap();
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
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

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn case(title: &str, name: &str, dir: &Path, make: fn(&Path) -> PathBuf) {
    let started = Instant::now();
    let top = make(&dir.join(format!("{name}-overlay2")));
    let diff = top.join("diff");
    println!("\n## {title}\n\n(tree written in {})", secs(started.elapsed()));
    // Warm the page cache: every file read once, untimed.
    floor(&diff, &dir.join("warm"));
    std::fs::remove_file(dir.join("warm")).unwrap();

    let floor_time = floor(&diff, &dir.join("floor"));
    std::fs::remove_file(dir.join("floor")).unwrap();

    let cache_dir = dir.join(format!("{name}-cache"));
    let cache = RootfsCache::open(Config::new(&cache_dir)).unwrap();
    let request = Request::new(&top, agent(dir, "vm-agent", name)).converter(ConverterSpec::Exact);
    let started = Instant::now();
    let outcome = cache.convert(&request).await.unwrap();
    let ours = started.elapsed();
    assert!(!outcome.cached);
    let bytes = std::fs::metadata(&outcome.image).unwrap().len();
    let ours_fsck = e2fsck_clean(&outcome.image);

    let theirs_image = dir.join(format!("{name}-mke2fs.img"));
    let theirs = mke2fs(&diff, &theirs_image, bytes);
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
    drop(cache);
    std::fs::remove_dir_all(&cache_dir).unwrap();
    std::fs::remove_dir_all(dir.join(format!("{name}-overlay2"))).unwrap();
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
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    println!("# rootfs-cache at scale: a miss against `mke2fs -d` and the floor");
    if only.is_empty() || only == "files" {
        case("1,000,000 small files", "files", dir.path(), million_files).await;
    }
    if only.is_empty() || only == "big" {
        case("one 4.5 GiB file", "big", dir.path(), big_file).await;
    }
}

//! `cargo bench -p rootfs-cache-tests --bench vm_ext4`: how fast a guest
//! uses our image, against images `mke2fs` writes from the same tree, in a
//! real micro-VM (`rootfs_cache_tests::vm`). Needs root (conversions, loop
//! mounts), QEMU and the kernel package; without them it prints `SKIPPED:`
//! and why. `BENCHMARKS.md` holds a recorded run.
//!
//! It generates one overlay2-style single-layer directory, deterministic from
//! a seed: `/vm-bench/many` with 100,000 small files with random-looking
//! names, a few thousand ordinary files in nested directories under `/usr`,
//! and `/vm-agent-bench`, the list of 20,000 names to look up in
//! `/vm-bench/many` (half of them absent), whose presence puts the agent in
//! its benchmark mode. From it, each with the test agent at `/sbin/vm-agent`:
//!
//! - **ours**: `rootfs-cache convert` (the library, default converter and
//!   profile);
//! - **mke2fs**: `mke2fs -t ext4 -d` of the merged tree, at our image's size,
//!   block size and inode count;
//! - **mke2fs + e2fsck -fD**: a copy of that one with its directories indexed.
//!
//! Each image boots (a fresh copy each time) three times, interleaved, and
//! the median of each figure is printed: QEMU spawn to the agent's first
//! console line; the agent's cold walk of the whole tree (`readdir` and
//! `lstat` of every entry, right after boot); and, after the guest dropped its
//! caches, the 20,000 lookups (`lstat`), timed inside the VM with
//! `CLOCK_MONOTONIC`.
//!
//! `ROOTFS_VM_BENCH_RUNS` sets the number of boots per image (3).
//!
//! `mke2fs -d` takes many minutes over the 100,000-name directory (it
//! inserts into a linear directory one name at a time), so its two images
//! are kept under the VM harness's directory (`/var/tmp/rootfs-cache-vm/`,
//! `ROOTFS_CACHE_VM_DIR`), keyed by the tree's generator, the agent, the
//! lookup list, our image's geometry and e2fsprogs' version, and a later run
//! of the same tree boots them again (the mtimes in them are the first
//! run's: the tree is the same but for those).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rootfs_cache::{Config, Request, RootfsCache};
use rootfs_cache_tests::vm::{Vm, VmError};
use rootfs_cache_tests::{Overlay2, is_root, median, sha256_hex};

/// The generator's seed.
const SEED: u64 = 0x5eed_0f10_0000;
/// Files in the large directory.
const MANY: usize = 100_000;
/// Names looked up in it; half of them are absent.
const LOOKUPS: usize = 20_000;
/// Where the large directory is in the tree.
const MANY_DIR: &str = "vm-bench/many";
/// Changes with what `generate` writes: the images `mke2fs` made from an
/// earlier tree are kept under this key (with the agent's and the list's
/// bytes, the geometry and e2fsprogs' version).
const GENERATOR: &str = "vm-ext4-tree-1";

/// xorshift64*: a deterministic stream of random-looking numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A random-looking file name of 8 to 40 characters.
    fn name(&mut self) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-.";
        let len = 8 + self.below(33) as usize;
        let mut name: String = (0..len).map(|_| CHARS[self.below(CHARS.len() as u64) as usize] as char).collect();
        // Never `.`, `..` or hidden-looking.
        name.replace_range(0..1, "f");
        name
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Writes the tree into a new single-layer overlay2 directory under `dir`;
/// returns the layer directory and the number of entries in the tree.
fn generate(dir: &Path) -> (PathBuf, usize) {
    let mut rng = Rng(SEED);
    let mut entries = 0;
    let layer = Overlay2::new(&dir.join("overlay2")).layer(|l| {
        let many = l.diff.join(MANY_DIR);
        std::fs::create_dir_all(&many).unwrap();
        entries += 2;
        // The large directory: 100,000 small files.
        let mut names = Vec::with_capacity(MANY);
        let mut taken = HashSet::with_capacity(MANY);
        while names.len() < MANY {
            let name = rng.name();
            if taken.insert(name.clone()) {
                let len = 16 + rng.below(1009) as usize;
                std::fs::write(many.join(&name), rng.bytes(len)).unwrap();
                names.push(name);
            }
        }
        entries += MANY;
        // Ordinary files in nested directories: 150 packages of 20 files in
        // three directories each, 100 B to 32 KiB.
        for p in 0..150 {
            for (d, sub) in ["", "/doc", "/lib/data"].iter().enumerate() {
                let dir = l.diff.join(format!("usr/share/pkg{p:03}{sub}"));
                std::fs::create_dir_all(&dir).unwrap();
                for f in 0..[8, 4, 8][d] {
                    let len = 100 + rng.below(32 << 10) as usize;
                    std::fs::write(dir.join(format!("file{f:02}.dat")), rng.bytes(len)).unwrap();
                }
            }
        }
        entries += 2 + 150 * (3 + 1 + 20);
        std::fs::create_dir(l.diff.join("proc")).unwrap();
        entries += 1;
        // The lookups: half present (distinct names), half absent.
        let mut list = format!("/{MANY_DIR}\n");
        let mut present: Vec<&String> = Vec::with_capacity(LOOKUPS);
        let mut picked = HashSet::new();
        while present.len() < LOOKUPS / 2 {
            let i = rng.below(MANY as u64) as usize;
            if picked.insert(i) {
                present.push(&names[i]);
            }
        }
        let mut absent = Vec::with_capacity(LOOKUPS / 2);
        while absent.len() < LOOKUPS / 2 {
            let name = rng.name();
            if !taken.contains(&name) && taken.insert(name.clone()) {
                absent.push(name);
            }
        }
        let mut all: Vec<&str> = present.iter().map(|s| s.as_str()).chain(absent.iter().map(String::as_str)).collect();
        // Fisher-Yates, so present and absent names alternate at random.
        for i in (1..all.len()).rev() {
            all.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for name in all {
            list.push_str(name);
            list.push('\n');
        }
        std::fs::write(l.diff.join("vm-agent-bench"), list).unwrap();
        entries += 1;
    });
    (layer, entries)
}

/// Runs a command; panics with its output when it fails (`ok` lists the
/// exit codes that count as success).
fn run(cmd: &mut Command, ok: &[i32]) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.code().is_some_and(|c| ok.contains(&c)), "{cmd:?} exited with {}:\n{text}", out.status);
    text
}

/// A field of `dumpe2fs -h`.
fn superblock_field(image: &Path, field: &str) -> u64 {
    let text = run(Command::new("dumpe2fs").arg("-h").arg(image), &[0]);
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("dumpe2fs -h {}: no {field}", image.display()))
}

/// Whether the large directory of `image` is indexed (a hashed directory:
/// `EXT4_INDEX_FL`): "yes", "no", or "?" when `debugfs` cannot tell.
fn indexed(image: &Path) -> &'static str {
    let out = Command::new("debugfs").arg("-R").arg(format!("stat /{MANY_DIR}")).arg(image).output().unwrap();
    let flags = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.split("Flags: ").nth(1))
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok());
    match flags {
        Some(flags) if flags & 0x1000 != 0 => "yes",
        Some(_) => "no",
        None => "?",
    }
}

/// Where the VM harness keeps what it builds (as `Vm::prepare` finds it).
fn vm_dir() -> PathBuf {
    std::env::var_os("ROOTFS_CACHE_VM_DIR").map_or_else(|| "/var/tmp/rootfs-cache-vm".into(), PathBuf::from)
}

/// Writes `mke2fs.ext4`, `mke2fs -t ext4 -d` of the merged tree (the layer
/// and the agent) at our image's size, block size and inode count, and
/// `mke2fs-fD.ext4`, a copy with its directories indexed by `e2fsck -fD`,
/// into `dir`.
fn mke2fs_images(layer: &Path, agent: &Path, dir: &Path, size: u64, block_size: u64, inodes: u64) {
    let merged = dir.join("merged");
    run(Command::new("cp").arg("-a").arg(layer.join("diff")).arg(&merged), &[0]);
    std::fs::create_dir_all(merged.join("sbin")).unwrap();
    run(Command::new("cp").arg(agent).arg(merged.join("sbin/vm-agent")), &[0]);
    run(Command::new("chmod").arg("0755").arg(merged.join("sbin/vm-agent")), &[0]);
    let plain = dir.join("mke2fs.ext4");
    std::fs::File::create(&plain).unwrap().set_len(size).unwrap();
    let started = Instant::now();
    run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", &block_size.to_string(), "-N", &inodes.to_string(), "-d"])
            .arg(&merged)
            .arg(&plain),
        &[0],
    );
    println!("mke2fs -d: {:.1?}", started.elapsed());
    std::fs::remove_dir_all(&merged).unwrap();
    // Exit 1 is "file system modified": the directories were indexed.
    let hashed = dir.join("mke2fs-fD.ext4");
    run(Command::new("cp").arg("--sparse=always").arg(&plain).arg(&hashed), &[0]);
    let started = Instant::now();
    run(Command::new("e2fsck").arg("-fyD").arg(&hashed), &[0, 1]);
    println!("e2fsck -fD: {:.1?}", started.elapsed());
}

/// One figure of a boot.
type Figure = fn(&Boot) -> Duration;

/// What one boot measured.
#[derive(Clone, Copy, Debug)]
struct Boot {
    to_agent: Duration,
    walk: Duration,
    walked: u64,
    lookups: Duration,
    found: u64,
    absent: u64,
}

/// Boots a fresh copy of `image` in benchmark mode and reads its figures.
fn boot(vm: &Vm, image: &Path, work: &Path) -> Result<Boot, VmError> {
    let booted = work.join("booted.ext4");
    run(Command::new("cp").arg("--sparse=always").arg(image).arg(&booted), &[0]);
    let mut running = vm.start(&booted, &[])?;
    let to_agent = running.wait_for("BENCH-AGENT", Duration::from_secs(300))?;
    running.wait_for("BENCH-DONE", Duration::from_secs(3600))?;
    let console = running.console();
    drop(running);
    std::fs::remove_file(&booted).unwrap();
    let fields = |tag: &str| -> Vec<u64> {
        console
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .map(|rest| rest.split_whitespace().filter_map(|f| f.parse().ok()).collect())
            .unwrap_or_default()
    };
    let errors: Vec<&str> = console.lines().filter(|l| l.starts_with("AGENT-ERROR")).collect();
    let (walk, lookup) = (fields("BENCH-WALK "), fields("BENCH-LOOKUP "));
    if !errors.is_empty() || walk.len() != 2 || lookup.len() != 4 {
        return Err(VmError::Failed(format!("the agent's figures are missing or it reported errors:\n{console}")));
    }
    Ok(Boot {
        to_agent,
        walk: Duration::from_nanos(walk[1]),
        walked: walk[0],
        lookups: Duration::from_nanos(lookup[3]),
        found: lookup[1],
        absent: lookup[2],
    })
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !is_root() {
        println!("SKIPPED: the VM benchmark needs root (conversions, loop mounts)");
        return;
    }
    for tool in ["mke2fs", "e2fsck", "dumpe2fs", "debugfs"] {
        if Command::new(tool).arg("-V").output().is_err() {
            println!("SKIPPED: {tool} is not installed (apt-get install e2fsprogs)");
            return;
        }
    }
    let vm = match Vm::prepare() {
        Ok(vm) => vm,
        Err(VmError::Unavailable(why)) => {
            println!("SKIPPED: {why}");
            return;
        }
        Err(e) => panic!("preparing the micro-VM: {e}"),
    };
    let runs: usize = std::env::var("ROOTFS_VM_BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let (_, _, accel) = vm.parts();
    let accel = accel.to_string();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let work = dir.path();

    let started = Instant::now();
    let (layer, entries) = generate(work);
    println!("generated {entries} entries in {:.1?} (seed {SEED:#x})", started.elapsed());

    // (a) ours.
    let cache = RootfsCache::open(Config::new(work.join("cache"))).unwrap();
    let started = Instant::now();
    let ours = cache.convert(&Request::new(&layer, vm.agent())).await.unwrap().image;
    println!("ours: converted in {:.1?}", started.elapsed());
    let size = std::fs::metadata(&ours).unwrap().len();
    let block_size = superblock_field(&ours, "Block size");
    let inodes = superblock_field(&ours, "Inode count");

    // (b) and (c), or the ones an earlier run made from the same tree, agent,
    // geometry and e2fsprogs: `mke2fs -d` inserts into a linear directory
    // one name at a time, which takes it many minutes for 100,000 names.
    let mke2fs_version = run(Command::new("mke2fs").arg("-V"), &[0]);
    let key = sha256_hex(
        &[
            std::fs::read(vm.agent()).unwrap(),
            std::fs::read(layer.join("diff/vm-agent-bench")).unwrap(),
            format!("{GENERATOR} {size} {block_size} {inodes} {mke2fs_version}").into_bytes(),
        ]
        .concat(),
    );
    let kept = vm_dir().join(format!("vm-ext4-bench-{}", &key[..16]));
    let (plain, hashed) = (kept.join("mke2fs.ext4"), kept.join("mke2fs-fD.ext4"));
    if hashed.is_file() {
        println!("mke2fs -d and e2fsck -fD: the images of an earlier run of the same tree ({})", kept.display());
    } else {
        let stage = work.join("mke2fs-images");
        std::fs::create_dir(&stage).unwrap();
        mke2fs_images(&layer, vm.agent(), &stage, size, block_size, inodes);
        let _ = std::fs::remove_dir_all(&kept);
        std::fs::rename(&stage, &kept).unwrap();
    }

    let images = [
        ("ours (rootfs-cache convert)", ours.as_path()),
        ("mke2fs -d", plain.as_path()),
        ("mke2fs -d, e2fsck -fD", hashed.as_path()),
    ];
    for (name, image) in &images {
        let fsck = Command::new("e2fsck").arg("-fn").arg(image).output().unwrap().status;
        let fsck = if fsck.success() { "clean".to_string() } else { format!("NOT clean ({fsck})") };
        println!("{name}: {} MiB, e2fsck -fn {fsck}, large directory indexed: {}", size >> 20, indexed(image));
    }

    // Boots, interleaved so that the machine's drift spreads over all three.
    // An image that fails to boot is reported and left out, so the others
    // still give their figures.
    let mut boots: Vec<Vec<Boot>> = vec![Vec::new(); images.len()];
    let mut failed: Vec<Option<String>> = vec![None; images.len()];
    for run in 0..runs {
        for (i, (name, image)) in images.iter().enumerate() {
            if failed[i].is_some() {
                continue;
            }
            let b = match boot(&vm, image, work) {
                Ok(b) => b,
                Err(e) => {
                    println!("run {}: {name}: FAILED: {e}", run + 1);
                    failed[i] = Some(e.to_string());
                    continue;
                }
            };
            println!(
                "run {}: {name}: agent after {}, walk of {} entries {}, {LOOKUPS} lookups {} ({} found, {} absent)",
                run + 1,
                secs(b.to_agent),
                b.walked,
                secs(b.walk),
                secs(b.lookups),
                b.found,
                b.absent
            );
            if (b.found, b.absent) != (LOOKUPS as u64 / 2, LOOKUPS as u64 / 2) {
                println!("run {}: {name}: FAILED: the lookups found {} names, not {}", run + 1, b.found, LOOKUPS / 2);
                failed[i] = Some("wrong lookup results".into());
                continue;
            }
            boots[i].push(b);
        }
    }

    // `None` for an image that failed.
    let figure = |i: usize, f: Figure| {
        (failed[i].is_none() && !boots[i].is_empty()).then(|| median(boots[i].iter().map(f).collect()))
    };
    let rows: [(&str, Figure); 3] = [
        ("boot to agent (QEMU spawn to the agent's first line)", |b| b.to_agent),
        ("20,000 lookups in the 100,000-entry directory (half absent), cold", |b| b.lookups),
        ("cold walk of the whole tree (readdir + lstat)", |b| b.walk),
    ];
    println!();
    println!(
        "Median of {runs} boots per image under {} ({} entries walked). Boot to agent is timed on the host, the \
         lookups and the walk inside the guest (CLOCK_MONOTONIC).{}",
        accel.to_uppercase(),
        boots.iter().flatten().map(|b| b.walked).max().unwrap_or(0),
        if accel == "tcg" {
            " Figures are under TCG: emulated, many times slower than KVM or bare metal; compare ratios."
        } else {
            ""
        }
    );
    println!();
    println!("| | ours | mke2fs -d | mke2fs -d + e2fsck -fD | ours ÷ indexed (goal ≤ 1.1×) | ours ÷ plain |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!("| large directory indexed | {} | {} | {} | | |", indexed(&ours), indexed(&plain), indexed(&hashed));
    let show = |d: Option<Duration>| d.map_or_else(|| "failed".to_string(), secs);
    let ratio = |x: Option<Duration>, y: Option<Duration>| Some(x?.as_secs_f64() / y?.as_secs_f64());
    for (label, f) in rows {
        let [a, b, c] = [figure(0, f), figure(1, f), figure(2, f)];
        let goal = match ratio(a, c) {
            Some(r) => format!("{r:.2}× ({})", if r <= 1.1 { "met" } else { "not met" }),
            None => "–".into(),
        };
        let plain = ratio(a, b).map_or_else(|| "–".to_string(), |r| format!("{r:.2}×"));
        println!("| {label} | {} | {} | {} | {goal} | {plain} |", show(a), show(b), show(c));
    }
    let per_lookup = |i: usize| {
        figure(i, |b| b.lookups)
            .map_or_else(|| "failed".to_string(), |d| format!("{:.1} µs", d.as_secs_f64() * 1e6 / LOOKUPS as f64))
    };
    println!();
    println!(
        "Per lookup: ours {}, mke2fs -d {}, mke2fs -d + e2fsck -fD {}.",
        per_lookup(0),
        per_lookup(1),
        per_lookup(2)
    );
    for ((name, _), why) in images.iter().zip(&failed) {
        if let Some(why) = why {
            println!("{name} FAILED: {}", why.lines().take(40).collect::<Vec<_>>().join("\n"));
        }
    }
}

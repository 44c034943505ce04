//! Crash consistency (see `rootfs_cache_tests::vm`): a micro-VM boots a
//! converted image whose test agent churns (creates, overwrites, appends
//! to, renames, links and deletes files, makes and removes directories,
//! fsyncs some of it), and the test kills QEMU with `SIGKILL` at a random
//! moment. Then the host's kernel mounts the image (replaying the journal)
//! and unmounts it, and `e2fsck -fn` must find nothing, every run.
//!
//! The same runs on an image of the `minimal` ext4 profile (no journal)
//! show why the journal is the default: the test prints how many of those
//! runs left an unclean filesystem, and asserts nothing about them.
//!
//! The delays and the agent's sequences come from one seed, printed;
//! `ROOTFS_CRASH_SEED=<seed>` replays them (the guest's progress at the
//! kill still varies with the host's speed). `ROOTFS_CRASH_RUNS` changes
//! the number of runs per profile (20). Without root, QEMU or the kernel
//! package it prints `SKIPPED:` and the reason; under `CI=true` it fails
//! instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rootfs_cache::capabilities::converter::exact::ExactConverter;
use rootfs_cache::{Capabilities, Config, ConverterSpec, Ext4Profile, Request, RootfsCache};
use rootfs_cache_tests::vm::Vm;
use rootfs_cache_tests::{fsck, require_root};

/// Runs per profile.
const RUNS: usize = 20;
/// The kill comes this long after the agent said `CHURN-STARTED`: at least
/// `KILL_MIN`, less than `KILL_MIN + KILL_SPREAD`.
const KILL_MIN: Duration = Duration::from_millis(200);
const KILL_SPREAD: Duration = Duration::from_millis(1800);

/// The bundled example chain's top layer.
fn example_chain() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/overlay2/c81e4f2a6b9d0c3e5f7a1b2d4c6e8f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d2e")
}

/// SplitMix64: the test's deterministic sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `ROOTFS_CRASH_SEED`, or one from the clock and the PID.
fn seed() -> u64 {
    if let Ok(seed) = std::env::var("ROOTFS_CRASH_SEED") {
        return seed.trim().parse().expect("ROOTFS_CRASH_SEED must be an unsigned integer");
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Converts the example chain with the test agent and the given profile;
/// returns the cached image.
async fn convert(vm: &Vm, dir: &Path, profile: Ext4Profile) -> PathBuf {
    let exact = ExactConverter { profile, ..Default::default() };
    let config = Config::new(dir.join(format!("cache-{profile}"))).capabilities(Capabilities::native_with_exact(exact));
    let cache = RootfsCache::open(config).unwrap();
    let request = Request::new(example_chain(), vm.agent()).converter(ConverterSpec::Exact);
    cache.convert(&request).await.unwrap().image
}

/// What one run left behind.
struct Run {
    /// Whether the image's journal needed recovery after the kill.
    needed_recovery: bool,
    /// Whether the host's kernel mounted the image.
    mounted: Result<(), String>,
    /// `e2fsck -fn`'s exit code and output after the mount and unmount.
    fsck: (i32, String),
    /// How many operations the agent had reported (every 64th) when killed.
    ops: u64,
    /// From `CHURN-STARTED` to the kill.
    delay: Duration,
    /// What the churn itself reported as failing (a test bug, not a crash).
    errors: Vec<String>,
}

impl Run {
    fn clean(&self) -> bool {
        self.mounted.is_ok() && self.fsck.0 == 0
    }

    /// One line for the log.
    fn summary(&self) -> String {
        let first_problem = self
            .fsck
            .1
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("Pass ") && !l.starts_with("e2fsck ") && !l.contains(".ext4:"))
            .unwrap_or("");
        let mounted = match &self.mounted {
            Ok(()) if self.needed_recovery => "mounted (journal replayed)".to_string(),
            Ok(()) => "mounted".to_string(),
            Err(e) => format!("mount FAILED ({})", e.trim()),
        };
        format!(
            "killed {:.2} s after CHURN-STARTED, >= {} ops; {mounted}; e2fsck -fn exit {}{}",
            self.delay.as_secs_f64(),
            self.ops,
            self.fsck.0,
            if self.fsck.0 == 0 { String::new() } else { format!(" ({first_problem})") }
        )
    }
}

/// Boots a sparse copy of `image` at `copy` with the agent churning from
/// `agent_seed`, kills QEMU `delay` after `CHURN-STARTED`, then mounts the
/// copy on the host, unmounts it and runs `e2fsck -fn`.
fn crash_once(vm: &Vm, image: &Path, copy: &Path, agent_seed: u64, delay: Duration) -> Run {
    let out = Command::new("cp").arg("--sparse=always").arg(image).arg(copy).output().unwrap();
    assert!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));
    let param = format!("vm_agent.churn={agent_seed}");
    let mut running = vm.start(copy, &[&param]).unwrap_or_else(|e| panic!("starting the VM: {e}"));
    running.wait_for("CHURN-STARTED", Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
    let churning = Instant::now();
    std::thread::sleep(delay);
    let delay = churning.elapsed();
    let (console, _) = running.kill().unwrap_or_else(|e| panic!("killing the VM: {e}"));
    let ops = console.lines().filter_map(|l| l.strip_prefix("CHURN ")?.trim().parse().ok()).max().unwrap_or(1);
    let errors = console
        .lines()
        .filter(|l| l.starts_with("CHURN-ERROR") || l.starts_with("AGENT-ERROR"))
        .map(str::to_string)
        .collect();

    let out = Command::new("dumpe2fs").arg("-h").arg(copy).output().unwrap();
    let needed_recovery = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("Filesystem features:") && l.split_whitespace().any(|f| f == "needs_recovery"));

    let dir = tempfile::tempdir().unwrap();
    // `errors=remount-ro`: whatever the image holds, the host's kernel only
    // stops writing to it.
    let out = Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,errors=remount-ro"])
        .arg(copy)
        .arg(dir.path())
        .output()
        .unwrap();
    let mounted = if out.status.success() {
        let out = Command::new("umount").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    Run { needed_recovery, mounted, fsck: fsck(copy), ops, delay, errors }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_image_survives_a_vm_killed_while_writing_and_a_minimal_one_shows_why() {
    require_root!();
    let Some(vm) = Vm::prepare_or_skip() else { return };
    let (kernel, _, accel) = vm.parts();
    let runs = std::env::var("ROOTFS_CRASH_RUNS").map_or(RUNS, |n| n.parse().expect("ROOTFS_CRASH_RUNS"));
    let seed = seed();
    eprintln!(
        "crash test: seed {seed} (replay with ROOTFS_CRASH_SEED={seed}), {runs} runs per profile, {} under {accel}",
        kernel.display()
    );
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut unclean = Vec::new();
    for profile in [Ext4Profile::Default, Ext4Profile::Minimal] {
        let image = convert(&vm, dir.path(), profile).await;
        let copy = dir.path().join(format!("crash-{profile}.ext4"));
        // Each profile replays the same sequence of seeds and delays.
        let mut rng = Rng(seed);
        let (mut count, mut replayed) = (0, 0);
        for run in 1..=runs {
            let agent_seed = rng.next();
            let delay = KILL_MIN + KILL_SPREAD.mul_f64((rng.next() >> 11) as f64 / (1u64 << 53) as f64);
            let result = crash_once(&vm, &image, &copy, agent_seed, delay);
            eprintln!("{profile} run {run}/{runs} (agent seed {agent_seed}): {}", result.summary());
            assert!(
                result.errors.is_empty(),
                "seed {seed}, {profile} run {run}: the churn went wrong inside the VM:\n{}",
                result.errors.join("\n")
            );
            if profile == Ext4Profile::Default {
                assert!(
                    result.clean(),
                    "seed {seed} (ROOTFS_CRASH_SEED={seed}), run {run}/{runs}, agent seed {agent_seed}, killed {:.2} s \
                     after CHURN-STARTED: the journaled image is not clean after a mount and unmount\nmount: {:?}\n\
                     e2fsck -fn exited {}:\n{}",
                    result.delay.as_secs_f64(),
                    result.mounted,
                    result.fsck.0,
                    result.fsck.1
                );
            }
            count += usize::from(!result.clean());
            replayed += usize::from(result.needed_recovery);
        }
        unclean.push((profile, count, replayed));
    }
    let figures: Vec<String> = unclean
        .iter()
        .map(|(profile, n, replayed)| {
            let journal = if *profile == Ext4Profile::Default {
                format!(" ({replayed} journals replayed)")
            } else {
                String::new()
            };
            format!("{profile} profile: {n}/{runs} runs unclean{journal}")
        })
        .collect();
    eprintln!(
        "CRASH FIGURES (seed {seed}): {} — after SIGKILL mid-churn, a host mount and unmount, then e2fsck -fn ({:.0?} in all)",
        figures.join(", "),
        started.elapsed()
    );
}

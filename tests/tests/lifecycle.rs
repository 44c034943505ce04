//! Many callers, crashes and a full disk, against the native adapter: one
//! build per key across threads and processes, a SIGKILL at every phase of a
//! build, and a cache filesystem that fills up. Needs root.

use std::io::BufRead;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use rootfs_cache::{Config, ConverterSpec, Observer, Phase, Request, RootfsCache};
use rootfs_cache_tests::{
    Overlay2, ReadOnlyMount, agent, converter_script, fsck, loop_devices_under, mounts_under, oci2rootfs_cli,
    require_root, rootfs_cache_bin, standard_chain, temp_files,
};

fn mkfifo(path: &Path) {
    rootfs_cache_tests::mknod(path, rustix::fs::FileType::Fifo, 0o600, 0);
}

/// Waits until `child` writes a line to `fifo` (it reached its pause point)
/// or exits; returns the line, or `None` if it exited first.
fn wait_for_pause(child: &mut Child, fifo: &Path) -> Option<String> {
    let reader =
        rustix::fs::open(fifo, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK, rustix::fs::Mode::empty())
            .unwrap();
    let pidfd =
        rustix::process::pidfd_open(rustix::process::Pid::from_child(child), rustix::process::PidfdFlags::empty())
            .unwrap();
    loop {
        let mut fds = [
            rustix::event::PollFd::new(&reader, rustix::event::PollFlags::IN),
            rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN),
        ];
        rustix::event::poll(&mut fds, None).unwrap();
        let (fifo_ready, exited) = (fds[0].revents(), fds[1].revents());
        if fifo_ready.contains(rustix::event::PollFlags::IN) {
            let file = std::fs::File::from(rustix::io::dup(reader.as_fd()).unwrap());
            let mut line = String::new();
            let _ = std::io::BufReader::new(file).read_line(&mut line);
            if !line.is_empty() {
                return Some(line.trim().to_owned());
            }
        }
        if !exited.is_empty() {
            return None;
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

struct World {
    dir: tempfile::TempDir,
    top: PathBuf,
    agent: PathBuf,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let top = standard_chain(&dir.path().join("overlay2"));
        let agent = agent(dir.path(), "vm-agent", "lifecycle");
        Self { dir, top, agent }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn cli(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(rootfs_cache_bin());
        c.arg("--cache-dir")
            .arg(self.cache())
            .arg("convert")
            .arg(&self.top)
            .arg("--agent")
            .arg(&self.agent)
            .args(extra);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    fn assert_clean(&self, what: &str) {
        let cache = self.cache();
        assert_eq!(loop_devices_under(&cache), Vec::<String>::new(), "{what}: loop devices left attached");
        assert_eq!(mounts_under(&cache), Vec::<String>::new(), "{what}: mounts left");
    }
}

#[test]
fn sixteen_processes_for_one_cold_source_convert_once() {
    require_root!();
    let w = World::new();
    let log = w.dir.path().join("converter.log");
    let counting =
        converter_script(w.dir.path(), "counting", &log, &format!("exec '{}' \"$@\"", oci2rootfs_cli().display()));
    let converter = format!("command:{}", counting.display());
    let children: Vec<Child> = (0..16).map(|_| w.cli(&["--converter", &converter]).spawn().unwrap()).collect();
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1, "the converter ran more than once");
    assert!(outputs.iter().all(|o| o == &outputs[0]), "{outputs:?}");
    assert_eq!(std::fs::read_dir(w.cache().join("locks")).unwrap().count(), 0, "lock files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_library_calls_for_one_cold_source_convert_once() {
    require_root!();
    let w = World::new();
    let log = w.dir.path().join("converter.log");
    let counting =
        converter_script(w.dir.path(), "counting", &log, &format!("exec '{}' \"$@\"", oci2rootfs_cli().display()));
    let cache = RootfsCache::open(Config::new(w.cache())).unwrap();
    let request = Request::new(&w.top, &w.agent).converter(ConverterSpec::Command(counting));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let (cache, request) = (cache.clone(), request.clone());
            tokio::spawn(async move { cache.convert(&request).await.unwrap() })
        })
        .collect();
    let mut images = Vec::new();
    for call in calls {
        images.push(call.await.unwrap().image);
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);
    assert!(images.iter().all(|i| i == &images[0]));
}

/// Counts the callers that had to wait for the lock.
struct Waiters(tokio::sync::mpsc::UnboundedSender<()>);

impl Observer for Waiters {
    fn phase_started(&self, phase: Phase) {
        if phase == Phase::WaitingForLock {
            let _ = self.0.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_on_a_failed_build_get_its_error_without_repeating_it() {
    require_root!();
    let w = World::new();
    let log = w.dir.path().join("converter.log");
    let gate = w.dir.path().join("gate");
    mkfifo(&gate);
    // Fails, but only once the test opens the gate.
    let failing = converter_script(
        w.dir.path(),
        "failing",
        &log,
        &format!("read _ < '{}'\necho 'layer 7 is broken' >&2\nexit 1", gate.display()),
    );
    let (tx, mut waiting) = tokio::sync::mpsc::unbounded_channel();
    let cache = RootfsCache::open(Config::new(w.cache()).observer(Arc::new(Waiters(tx)))).unwrap();
    let request = Request::new(&w.top, &w.agent).converter(ConverterSpec::Command(failing));
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let (cache, request) = (cache.clone(), request.clone());
            tokio::spawn(async move { cache.convert(&request).await })
        })
        .collect();
    // One caller builds; the other five report that they wait.
    for _ in 0..5 {
        waiting.recv().await.unwrap();
    }
    std::fs::write(&gate, b"go\n").unwrap();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.class(), "converter-failed");
        assert!(err.to_string().contains("layer 7 is broken"), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1, "a waiter repeated the failed build");
}

/// The phases a build can be killed at: `converting` pauses inside a slow
/// converter; the others are the host's pause points.
const PHASES: &[&str] = &["converting", "mounted", "installed", "fsynced", "renamed", "published"];

/// A child forked by any thread shares the lock's open file description
/// until it execs or exits; releasing the lock must not wait for that, or a
/// waiter blocked on the lock file would stay blocked.
#[test]
fn a_released_lock_is_free_even_while_a_forked_child_holds_a_copy_of_it() {
    use rootfs_cache::cache_dir::CacheDir;
    use rootfs_cache::capabilities::lock::{CrossProcessLock, Flock};
    use rustix::fs::{FlockOperation, flock};

    let dir = tempfile::tempdir().unwrap();
    let cache = CacheDir::open(&dir.path().join("cache")).unwrap();
    let key = "ab".repeat(32);
    let held = Flock.acquire(&cache, &key).unwrap();
    // A waiter has the lock file open, as a blocked one has.
    let waiter = std::fs::File::open(cache.path().join("locks").join(format!("{key}.lock"))).unwrap();
    assert_eq!(flock(&waiter, FlockOperation::NonBlockingLockExclusive), Err(rustix::io::Errno::WOULDBLOCK));
    let copies = rootfs_cache_tests::ForkedCopies::hold();
    drop(held);
    assert_eq!(
        flock(&waiter, FlockOperation::NonBlockingLockExclusive),
        Ok(()),
        "the released lock is still held through the child's copy of its descriptor"
    );
    assert!(Flock.try_acquire(&cache, &key).unwrap().is_some(), "a new taker did not get the released lock");
    copies.release();
}

#[test]
fn a_process_killed_at_any_phase_leaves_nothing_a_later_request_trusts() {
    require_root!();
    for round in 0..3 {
        for &phase in PHASES {
            let w = World::new();
            let what = format!("{phase} (round {round})");
            let fifo = w.dir.path().join("pause");
            mkfifo(&fifo);
            let log = w.dir.path().join("log");
            let mut cmd = if phase == "converting" {
                let slow = converter_script(
                    w.dir.path(),
                    "slow",
                    &log,
                    &format!(
                        "head -c 3000000 /dev/zero > \"$3\"\nread -r pid rest < /proc/self/stat\necho $pid > '{}'\necho converting > '{}'\nexec sleep 600",
                        w.dir.path().join("converter.pid").display(),
                        fifo.display()
                    ),
                );
                w.cli(&["--converter", &format!("command:{}", slow.display())])
            } else {
                // oci2rootfs installs the agent through a mount.
                let mut c = w.cli(&["--converter", "oci2rootfs"]);
                c.env("ROOTFS_CACHE_PAUSE_AT", phase).env("ROOTFS_CACHE_PAUSE_FIFO", &fifo);
                c
            };
            let mut child = cmd.spawn().unwrap();
            let reached = wait_for_pause(&mut child, &fifo);
            assert_eq!(
                reached.as_deref(),
                Some(phase),
                "{what}: {:?}",
                child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            );
            kill(&mut child);

            // The kernel took the mount and the loop device with the process,
            // and the converter with it.
            w.assert_clean(&what);
            if phase == "converting" {
                let pid: i32 =
                    std::fs::read_to_string(w.dir.path().join("converter.pid")).unwrap().trim().parse().unwrap();
                let pidfd = rustix::process::pidfd_open(
                    rustix::process::Pid::from_raw(pid).unwrap(),
                    rustix::process::PidfdFlags::empty(),
                );
                if let Ok(pidfd) = pidfd {
                    // Readable once the process is gone: it was sent SIGKILL with
                    // its parent. (The bound only keeps a broken build from hanging.)
                    let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
                    let bound = rustix::time::Timespec { tv_sec: 60, tv_nsec: 0 };
                    rustix::event::poll(&mut fds, Some(&bound)).unwrap();
                    assert!(!fds[0].revents().is_empty(), "{what}: the converter outlived the killed builder");
                }
            }
            // The next process sweeps and then builds or serves a correct image.
            let out = w.cli(&["--converter", "oci2rootfs", "--json"]).output().unwrap();
            assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
            let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(outcome["cached"], phase == "published", "{what}: {outcome}");
            let image = PathBuf::from(outcome["image"].as_str().unwrap());
            let mnt = ReadOnlyMount::new(&image);
            assert_eq!(
                std::fs::read(mnt.path.join("sbin/vm-agent")).unwrap(),
                std::fs::read(&w.agent).unwrap(),
                "{what}"
            );
            drop(mnt);
            assert_eq!(temp_files(&w.cache()), Vec::<String>::new(), "{what}: temporary files left");
            assert_eq!(std::fs::read_dir(w.cache().join("locks")).unwrap().count(), 0, "{what}: lock files left");
            w.assert_clean(&what);
        }
    }
}

#[test]
fn sweep_keeps_a_live_builders_files_and_removes_them_once_it_is_gone() {
    require_root!();
    let w = World::new();
    let fifo = w.dir.path().join("pause");
    mkfifo(&fifo);
    let mut builder = w.cli(&["--converter", "oci2rootfs"]);
    builder.env("ROOTFS_CACHE_PAUSE_AT", "installed").env("ROOTFS_CACHE_PAUSE_FIFO", &fifo);
    let mut child = builder.spawn().unwrap();
    assert_eq!(wait_for_pause(&mut child, &fifo).as_deref(), Some("installed"));
    let sweep = |w: &World| {
        let out = Command::new(rootfs_cache_bin())
            .arg("--cache-dir")
            .arg(w.cache())
            .args(["sweep", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let alive = sweep(&w);
    assert_eq!(alive["removed"].as_array().unwrap().len(), 0, "{alive}");
    assert_eq!(alive["busy"].as_array().unwrap().len(), 1, "{alive}");
    assert_eq!(temp_files(&w.cache()).len(), 1);
    kill(&mut child);
    let dead = sweep(&w);
    assert_eq!(dead["removed"].as_array().unwrap().len(), 1, "{dead}");
    assert!(temp_files(&w.cache()).is_empty());
    assert_eq!(std::fs::read_dir(w.cache().join("locks")).unwrap().count(), 0);
    w.assert_clean("after the sweep");
}

/// A loop-mounted ext4 filesystem of `mib` MiB at `at`.
struct SmallFs {
    at: PathBuf,
}

impl SmallFs {
    fn new(dir: &Path, mib: u64) -> Self {
        let image = dir.join("small.img");
        std::fs::File::create(&image).unwrap().set_len(mib << 20).unwrap();
        assert!(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).status().unwrap().success());
        let at = dir.join("small");
        std::fs::create_dir(&at).unwrap();
        assert!(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&at).status().unwrap().success());
        Self { at }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_with_no_space_and_keeps_every_published_entry() {
    require_root!();
    let w = World::new();
    let fs = SmallFs::new(w.dir.path(), 64);
    let cache = RootfsCache::open(Config::new(fs.at.join("cache"))).unwrap();
    let small = cache.convert(&Request::new(&w.top, &w.agent)).await.unwrap();

    // 80 MiB of incompressible data does not fit.
    let mut big = Overlay2::new(&w.dir.path().join("big"));
    let big_top = big.layer(|l| {
        let data = rootfs_cache_tests::incompressible(80 << 20, 0x2545_f491_4f6c_dd1du64);
        l.file("/blob", &data, 0o644);
    });
    let err = cache.convert(&Request::new(&big_top, &w.agent)).await.unwrap_err();
    assert_eq!(err.class(), "no-space", "{err}");
    assert!(err.to_string().to_lowercase().contains("no space"), "{err}");
    assert!(temp_files(cache.cache_dir()).is_empty());
    let entries = cache.list().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].problem, None);
    assert_eq!(fsck(&small.image).0, 0);
    let again = cache.convert(&Request::new(&w.top, &w.agent)).await.unwrap();
    assert!(again.cached);
}

//! `command:` converters that misbehave, through the CLI: an output that
//! aliases a file outside the cache, a tree that outlives a SIGKILL or a
//! timeout, a crash, terminal escapes on stderr, an output that is a FIFO
//! or a symlink; and a full disk under the in-process `oci2rootfs`.
//!
//! Converter scripts record the host PIDs of their processes with
//! `read -r pid rest < /proc/self/stat` (the builtin reads the shell's own
//! entry, numbered in our PID namespace), since a converter runs in a PID
//! namespace of its own where `$$` and `$!` mean nothing to us.

use std::ffi::OsStr;
use std::io::BufRead as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rootfs_cache_tests::{
    ReadOnlyMount, agent, converter_script, require_root, rootfs_cache_bin, sha256_hex, snapshot, standard_chain,
    temp_files,
};

/// Longer than any run may take: past it, a run is a hang.
const HANG: Duration = Duration::from_secs(120);

/// How a case must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Exit 0 and an image.
    Image,
    /// This exit status, one `error:` line, and an unchanged cache.
    Exit(i32),
}

/// One misbehaving converter: its script (after the log line) for a world,
/// how the CLI must end, and what its stderr must contain.
struct Case {
    what: &'static str,
    script: fn(&World) -> String,
    expect: Expect,
    says: &'static str,
}

/// A source, an agent, an initialised cache, and a file outside the cache
/// that converters try to alias: a valid ext4 image.
struct World {
    dir: tempfile::TempDir,
    top: PathBuf,
    agent: PathBuf,
    outside: PathBuf,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let top = standard_chain(&dir.path().join("overlay2"));
        let agent = agent(dir.path(), "vm-agent", "hostile-converters");
        let outside = dir.path().join("outside.ext4");
        let out = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal"])
            .arg(&outside)
            .arg("8M")
            .output()
            .unwrap();
        assert!(out.status.success(), "mke2fs: {}", String::from_utf8_lossy(&out.stderr));
        let world = Self { dir, top, agent, outside };
        // The cache exists before any case runs, so "unchanged" compares
        // like with like.
        let out = world.run(world.cli(&["list"]));
        assert!(out.status.success(), "list: {}", String::from_utf8_lossy(&out.stderr));
        world
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A converter script that runs `body` after logging its arguments.
    fn converter(&self, name: &str, body: &str) -> PathBuf {
        converter_script(self.dir.path(), name, &self.path("converter.log"), body)
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(rootfs_cache_bin());
        c.arg("--cache-dir").arg(self.cache()).args(args).env_remove("ROOTFS_CACHE_AGENT");
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    /// `convert` of the standard chain with `converter`, `--json`.
    fn convert(&self, converter: &Path, before: &[&OsStr]) -> Command {
        let mut c = self.cli(&[]);
        c.args(before).arg("convert").arg(&self.top).arg("--agent").arg(&self.agent);
        c.arg("--converter").arg(format!("command:{}", converter.display())).arg("--json");
        c
    }

    /// Runs `command` to its end, which must come within [`HANG`].
    fn run(&self, mut command: Command) -> Output {
        let mut child = command.spawn().unwrap();
        let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
        let pidfd = pidfd_of(child.id() as i32).expect("the child is ours and not reaped");
        if !exits_within(&pidfd, HANG) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} hung for {HANG:?}");
        }
        let status = child.wait().unwrap();
        Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
    }
}

/// Reads a child's pipe to its end on a thread.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// A pidfd for `pid`, or `None` if it is gone.
fn pidfd_of(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(rustix::io::Errno::SRCH) => None,
        Err(e) => panic!("pidfd_open({pid:?}): {e}"),
    }
}

/// Whether the process behind `pidfd` exits within `bound` (a pidfd turns
/// readable when its process exits).
fn exits_within(pidfd: &OwnedFd, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = rustix::time::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
        let mut fds = [rustix::event::PollFd::new(pidfd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// The PIDs a script appended to `file`, one a line.
fn recorded_pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file).unwrap_or_default().lines().map(|l| l.trim().parse().unwrap()).collect()
}

/// Shell: append this shell's host PID to `file`.
fn record_pid(file: &Path) -> String {
    format!("read -r pid rest < /proc/self/stat; echo $pid >> '{}'", file.display())
}

/// Shell: wait (boundedly) until `file` has `lines` lines.
fn await_lines(file: &Path, lines: usize) -> String {
    format!(
        "i=0; while [ \"$(wc -l < '{f}' 2>/dev/null || echo 0)\" -lt {lines} ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done",
        f = file.display()
    )
}

/// Which of `pids` are still alive after waiting up to `bound` for each.
fn survivors(pidfds: Vec<(i32, OwnedFd)>, bound: Duration) -> Vec<i32> {
    let deadline = Instant::now() + bound;
    pidfds
        .into_iter()
        .filter(|(_, fd)| !exits_within(fd, deadline.saturating_duration_since(Instant::now())))
        .map(|(pid, _)| pid)
        .collect()
}

fn pidfds(pids: &[i32]) -> Vec<(i32, OwnedFd)> {
    pids.iter().filter_map(|&pid| pidfd_of(pid).map(|fd| (pid, fd))).collect()
}

/// Identity and contents of a file.
fn fingerprint(path: &Path) -> (u64, u64, u64, String) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.dev(), meta.ino(), meta.nlink(), sha256_hex(&std::fs::read(path).unwrap()))
}

#[test]
fn misbehaving_converters_never_touch_what_is_not_theirs_and_fail_legibly() {
    require_root!();
    let cases = [
        Case {
            what: "output made a hardlink to a file outside the cache",
            script: |w| format!("ln -f '{}' \"$3\"", w.outside.display()),
            expect: Expect::Image,
            says: "",
        },
        Case {
            what: "hardlinks at its output and at the host's own name",
            script: |w| {
                format!("ln -f '{o}' \"$3\"\nln -f '{o}' \"${{3%.converter.ext4}}.ext4\"", o = w.outside.display())
            },
            expect: Expect::Image,
            says: "",
        },
        Case {
            what: "a converter that kills itself with SIGSEGV",
            script: |_| "echo 'about to crash' >&2\nkill -SEGV $$\nsleep 5".into(),
            expect: Expect::Exit(6),
            says: "killed by signal 11 (SIGSEGV)",
        },
        Case {
            what: "terminal escapes and BEL on stderr",
            script: |_| "printf 'layer 3 is bad\\033[2J\\007\\r\\033]0;owned\\007\\n' >&2\nexit 1".into(),
            expect: Expect::Exit(6),
            says: "\\x1b[2J",
        },
        Case {
            what: "output made a FIFO",
            script: |_| "mkfifo \"$3\"".into(),
            expect: Expect::Exit(6),
            says: "its output is a FIFO, not a regular file",
        },
        Case {
            what: "output made a symlink to a file outside the cache",
            script: |w| format!("ln -s '{}' \"$3\"", w.outside.display()),
            expect: Expect::Exit(6),
            says: "its output is a symbolic link, not a regular file",
        },
    ];
    for (index, case) in cases.iter().enumerate() {
        let w = World::new();
        let what = case.what;
        let converter = w.converter(&format!("converter-{index}"), &(case.script)(&w));
        let outside_before = fingerprint(&w.outside);
        let cache_before = snapshot(&w.cache());

        let out = w.run(w.convert(&converter, &[]));
        let (code, stdout, stderr) =
            (out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

        assert_eq!(fingerprint(&w.outside), outside_before, "{what}: the file outside the cache changed");
        assert!(!out.stderr.contains(&0x1b) && !out.stderr.contains(&0x07), "{what}: raw control bytes: {stderr:?}");
        assert!(stderr.contains(case.says), "{what}: stderr does not say {:?}: {stderr}", case.says);
        match case.expect {
            Expect::Image => {
                assert_eq!(code, Some(0), "{what}: {stderr}");
                let outcome: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                let image = PathBuf::from(outcome["image"].as_str().unwrap());
                let meta = std::fs::metadata(&image).unwrap();
                assert_ne!((meta.dev(), meta.ino()), (outside_before.0, outside_before.1), "{what}: image is aliased");
                assert_eq!(meta.nlink(), 1, "{what}: the published image has other names");
                let mnt = ReadOnlyMount::new(&image);
                assert_eq!(std::fs::read(mnt.path.join("sbin/vm-agent")).unwrap(), std::fs::read(&w.agent).unwrap());
            }
            Expect::Exit(expected) => {
                assert_eq!(code, Some(expected), "{what}: {stderr}");
                assert!(stdout.is_empty(), "{what}: printed {stdout}");
                assert!(stderr.starts_with("error: ") && !stderr.contains("panicked"), "{what}: {stderr}");
                assert_eq!(snapshot(&w.cache()), cache_before, "{what}: the cache changed");
            }
        }
        assert_eq!(temp_files(&w.cache()), Vec::<String>::new(), "{what}: temporary files left");
    }
}

/// Waits until the script writes a line to `fifo`, or `child` exits, or
/// [`HANG`] passes; returns the line.
fn wait_for_line(child: &mut Child, fifo: &Path) -> Option<String> {
    use rustix::event::{PollFd, PollFlags};
    let reader = rustix::fs::open(fifo, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK, 0.into()).unwrap();
    let pidfd = pidfd_of(child.id() as i32)?;
    let deadline = Instant::now() + HANG;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = rustix::time::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: 0 };
        let mut fds = [PollFd::new(&reader, PollFlags::IN), PollFd::new(&pidfd, PollFlags::IN)];
        if rustix::event::poll(&mut fds, Some(&timeout)).is_err() {
            continue;
        }
        let (line_ready, exited) = (fds[0].revents().contains(PollFlags::IN), !fds[1].revents().is_empty());
        if line_ready {
            let file = std::fs::File::from(rustix::io::dup(reader.as_fd()).unwrap());
            let mut line = String::new();
            let _ = std::io::BufReader::new(file).read_line(&mut line);
            if !line.is_empty() {
                return Some(line.trim().to_owned());
            }
        }
        if exited {
            return None;
        }
    }
    None
}

#[test]
fn a_sigkilled_builder_takes_the_converters_whole_tree_with_it() {
    require_root!();
    let w = World::new();
    let cache_before = snapshot(&w.cache());
    let (pids, fifo) = (w.path("pids"), w.path("ready"));
    rootfs_cache_tests::mknod(&fifo, rustix::fs::FileType::Fifo, 0o600, 0);
    // A subshell that keeps appending to the converter's output in tmp/, a
    // background sleeper, and the converter itself; then it says so and waits.
    let script = format!(
        "{{ {rec}; while :; do echo growing >> \"$3\"; sleep 0.05; done; }} &
         {{ {rec}; exec sleep 600; }} &
         {rec}
         {wait3}
         echo converting > '{fifo}'
         wait",
        rec = record_pid(&pids),
        wait3 = await_lines(&pids, 3),
        fifo = fifo.display()
    );
    let converter = w.converter("writes-in-the-background", &script);
    let mut child = w.convert(&converter, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let reached = wait_for_line(&mut child, &fifo);
    assert_eq!(reached.as_deref(), Some("converting"), "the converter never reported");
    let tree = recorded_pids(&pids);
    assert_eq!(tree.len(), 3, "{tree:?}");
    let watched = pidfds(&tree);
    assert_eq!(watched.len(), 3, "a process of the tree ended early: {tree:?}");

    child.kill().unwrap();
    child.wait().unwrap();

    // The bound only keeps a broken build from hanging the test.
    assert_eq!(survivors(watched, Duration::from_secs(30)), Vec::<i32>::new(), "processes outlived the builder");
    let out = w.run(w.cli(&["sweep"]));
    assert!(out.status.success(), "sweep: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(temp_files(&w.cache()), Vec::<String>::new(), "tmp/ after the sweep");
    assert_eq!(snapshot(&w.cache()), cache_before, "the cache after the sweep");
}

#[test]
fn a_converter_past_its_timeout_is_killed_with_its_whole_tree() {
    require_root!();
    let w = World::new();
    let cache_before = snapshot(&w.cache());
    let policy = w.path("policy.toml");
    std::fs::write(&policy, "convert_timeout_secs = 2\n").unwrap();
    let pids = w.path("pids");
    let script = format!(
        "head -c 100000 /dev/zero > \"$3\"
         {{ {rec}; {{ {rec}; exec sleep 600; }} & wait; }} &
         {{ {rec}; while :; do echo growing >> \"$3\"; sleep 0.05; done; }} &
         {rec}
         wait",
        rec = record_pid(&pids)
    );
    let converter = w.converter("hangs-with-grandchildren", &script);
    let started = Instant::now();
    let out = w.run(w.convert(&converter, &["--policy".as_ref(), policy.as_os_str()]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("did not finish within 2s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "the timeout took {:?}", started.elapsed());
    let tree = recorded_pids(&pids);
    assert_eq!(tree.len(), 4, "not every process recorded itself before the timeout: {tree:?}");
    assert_eq!(survivors(pidfds(&tree), Duration::from_secs(30)), Vec::<i32>::new(), "processes outlived the timeout");
    assert_eq!(temp_files(&w.cache()), Vec::<String>::new(), "tmp/ after the timeout");
    assert_eq!(snapshot(&w.cache()), cache_before, "the cache after the timeout");
}

/// A tmpfs of `size` mounted at `at`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_under_oci2rootfs_is_no_space() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    // 24 MiB that does not compress, in a cache filesystem of 16 MiB.
    let mut chain = rootfs_cache_tests::Overlay2::new(&dir.path().join("overlay2"));
    let top = chain.layer(|l| {
        let data = rootfs_cache_tests::incompressible(24 << 20, 0x9e37_79b9_7f4a_7c15u64);
        l.file("/blob", &data, 0o644).file("/etc/os-release", b"ID=full\n", 0o644);
    });
    let agent = agent(dir.path(), "vm-agent", "full-disk");
    let fs = Tmpfs::mount(&dir.path().join("small"), "16m");
    let cache = fs.0.join("cache");
    let cli = |args: &[&OsStr]| {
        let out = Command::new(rootfs_cache_bin())
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env_remove("ROOTFS_CACHE_AGENT")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = cli(&["list".as_ref()]);
    assert_eq!(code, Some(0), "{stderr}");
    let before = snapshot(&cache);

    let (code, stderr) = cli(&[
        "convert".as_ref(),
        top.as_os_str(),
        "--agent".as_ref(),
        agent.as_os_str(),
        "--converter".as_ref(),
        "oci2rootfs".as_ref(),
        "--size".as_ref(),
        "128M".as_ref(),
    ]);
    assert_eq!(code, Some(10), "a full disk is not no-space: {stderr}");
    assert!(stderr.to_lowercase().contains("no space"), "{stderr}");
    assert!(!stderr.contains("raise --size"), "{stderr}");
    assert_eq!(temp_files(&cache), Vec::<String>::new());
    assert_eq!(snapshot(&cache), before);
}

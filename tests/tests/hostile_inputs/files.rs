//! FIFOs, devices and endless files where a regular file is expected, and
//! symlinks out of the source (issue 18, points 1 and 8).
//!
//! Every case runs the CLI under a hard deadline: a run that has not exited
//! by then is killed and the test fails, so a hang is a failure, never a
//! stuck suite. Each case checks the exit code and the one-line error, and
//! that the cache is as it was before (or, for `verify`, that only the broken
//! entries are gone).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rootfs_cache_tests::oci::{IndexStyle, standard_layout};
use rootfs_cache_tests::{Overlay2, agent, rootfs_cache_bin, snapshot};

/// Longer than any case needs (the first run compiles the component); a run
/// past it is a hang.
const DEADLINE: Duration = Duration::from_secs(120);

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_owned()
}

/// What one run of the CLI did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the CLI with `args`, waiting for its exit on a pidfd for at most
/// [`DEADLINE`]; a run still going then is killed and fails the test.
fn run_bounded(what: &str, args: &[OsString]) -> Run {
    let out = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(rootfs_cache_bin())
        .args(args)
        .env_remove("ROOTFS_CACHE_AGENT")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let pidfd =
        rustix::process::pidfd_open(rustix::process::Pid::from_child(&child), rustix::process::PidfdFlags::empty())
            .unwrap();
    let started = Instant::now();
    let exited = loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let bound = rustix::event::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap(),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&bound)) {
            Ok(ready) => break ready > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll on the CLI's pidfd: {e}"),
        }
    };
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what}: the CLI did not exit within {DEADLINE:?} (killed); stderr so far: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    }
    let status = child.wait().unwrap();
    eprintln!("{what}: {status} after {:?}", started.elapsed());
    Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&stdout_path).unwrap(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
    }
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The blob a digest names in the layout at `layout`.
fn blob(layout: &Path, digest: &serde_json::Value) -> PathBuf {
    layout.join("blobs/sha256").join(digest.as_str().unwrap().strip_prefix("sha256:").unwrap())
}

/// The standard OCI layout at `dir`, with the paths of its manifest blob and
/// first layer blob.
fn layout(dir: &Path) -> (PathBuf, PathBuf) {
    standard_layout(dir, IndexStyle::Skopeo);
    let manifest = blob(dir, &json_file(&dir.join("index.json"))["manifests"][0]["digest"]);
    let layer = blob(dir, &json_file(&manifest)["layers"][0]["digest"]);
    (manifest, layer)
}

/// One hostile input: the CLI's arguments, the exit code it must give and
/// what its one error line must say.
struct Case {
    what: &'static str,
    args: Vec<OsString>,
    code: i32,
    says: &'static [&'static str],
}

/// Runs a case and checks its answer and that `cache` is still `before`.
fn check(case: &Case, cache: &Path, before: &[(String, u64)]) {
    let run = run_bounded(case.what, &case.args);
    let what = case.what;
    assert_eq!(run.code, case.code, "{what}: exit {}, stderr: {}", run.code, run.stderr);
    assert!(run.stdout.is_empty(), "{what}: printed to stdout: {}", run.stdout);
    assert_eq!(run.stderr.lines().count(), 1, "{what}: not one line: {}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{what}: {}", run.stderr);
    for word in case.says {
        assert!(run.stderr.contains(word), "{what}: the error does not say {word:?}: {}", run.stderr);
    }
    assert!(!run.stderr.contains("os error"), "{what}: a raw system error: {}", run.stderr);
    assert_eq!(snapshot(cache), before, "{what} changed the cache");
}

#[test]
fn non_regular_files_and_escapes_get_typed_errors_in_bounded_time() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let cache = d.join("cache");
    let agent = agent(d, "agent", "files");
    let with_cache = |rest: &[OsString]| [vec![os("--cache-dir"), os(&cache)], rest.to_vec()].concat();
    let convert = |source: &Path| with_cache(&[os("convert"), os(source), os("--agent"), os(&agent)]);

    // One valid entry, so that the cache is not empty.
    let good = d.join("good");
    layout(&good);
    let seed = run_bounded("seed", &convert(&good));
    assert_eq!(seed.code, 0, "{}", seed.stderr);
    let seed_image = PathBuf::from(seed.stdout.trim());

    // The crafted inputs.
    let index_fifo = d.join("index-fifo");
    layout(&index_fifo);
    mkfifo(&index_fifo.join("index.json"));

    let marker_fifo = d.join("marker-fifo");
    layout(&marker_fifo);
    mkfifo(&marker_fifo.join("oci-layout"));

    let manifest_fifo = d.join("manifest-fifo");
    let (manifest, _) = layout(&manifest_fifo);
    mkfifo(&manifest);

    // Declared larger than one probe reads: the guest reads it through WASI.
    let big_manifest_fifo = d.join("big-manifest-fifo");
    let (manifest, _) = layout(&big_manifest_fifo);
    mkfifo(&manifest);
    let mut index = json_file(&big_manifest_fifo.join("index.json"));
    index["manifests"][0]["size"] = serde_json::json!(100_000);
    std::fs::write(big_manifest_fifo.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();

    let layer_fifo = d.join("layer-fifo");
    let (_, layer) = layout(&layer_fifo);
    mkfifo(&layer);
    let short_timeout = d.join("timeout.toml");
    std::fs::write(&short_timeout, "convert_timeout_secs = 3\n").unwrap();

    let index_escape = d.join("index-escape");
    layout(&index_escape);
    std::fs::remove_file(index_escape.join("index.json")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", index_escape.join("index.json")).unwrap();

    let policy_fifo = d.join("policy.toml");
    mkfifo(&policy_fifo);
    let agent_fifo = d.join("agent-fifo");
    mkfifo(&agent_fifo);
    let some_fifo = d.join("image-fifo");
    mkfifo(&some_fifo);

    // overlay2: a `lower` that names the layer itself, under its own id and
    // under another id whose link points at its own diff/.
    let mut o = Overlay2::new(&d.join("overlay2"));
    o.layer(|l| {
        l.file("/etc/os-release", b"ID=base\n", 0o644);
    });
    let top = o.layer(|l| {
        l.file("/etc/motd", b"top\n", 0o644);
    });
    let chain = top.file_name().unwrap().to_str().unwrap().to_owned();
    std::os::unix::fs::symlink(format!("../{chain}/diff"), o.root().join("l/SELFALIAS")).unwrap();
    let lower = std::fs::read_to_string(top.join("lower")).unwrap();
    let mut o2 = Overlay2::new(&d.join("overlay2-own-id"));
    let top_own_id = o2.layer(|_| {});
    let own_id_2 = std::fs::read_to_string(top_own_id.join("link")).unwrap();
    std::fs::write(top_own_id.join("lower"), format!("l/{own_id_2}")).unwrap();
    std::fs::write(top.join("lower"), format!("l/SELFALIAS:{lower}")).unwrap();

    let before = snapshot(&cache);
    let cases = vec![
        Case {
            what: "index.json is a FIFO",
            args: convert(&index_fifo),
            code: 4,
            says: &["unsupported source", "index.json", "not a regular file"],
        },
        Case {
            what: "oci-layout is a FIFO",
            args: convert(&marker_fifo),
            code: 4,
            says: &["oci-layout", "not a regular file"],
        },
        Case {
            what: "the manifest blob is a FIFO",
            args: convert(&manifest_fifo),
            code: 4,
            says: &["not a regular file"],
        },
        Case {
            what: "the manifest blob is a FIFO declared larger than a probe reads",
            args: convert(&big_manifest_fifo),
            code: 4,
            says: &["FIFO", "not a regular file"],
        },
        Case {
            what: "a layer blob is a FIFO, with a 3 s conversion timeout",
            // The layout holds the seed's image, whose key (its manifest and
            // platform) a hit would serve without reading a layer: another
            // size makes it a miss, so that the FIFO is read.
            args: [vec![os("--policy"), os(&short_timeout)], convert(&layer_fifo), vec![os("--size"), os("96M")]]
                .concat(),
            code: 4,
            says: &["not a regular file"],
        },
        Case {
            what: "index.json is a symlink to /etc/passwd",
            args: convert(&index_escape),
            code: 5,
            says: &["denied", "source_roots", "index.json"],
        },
        Case {
            what: "the agent is a FIFO",
            args: with_cache(&[os("convert"), os(&good), os("--agent"), os(&agent_fifo)]),
            code: 2,
            says: &["not a regular file"],
        },
        Case {
            what: "--policy /dev/zero",
            args: with_cache(&[os("--policy"), os("/dev/zero"), os("list")]),
            code: 2,
            says: &["/dev/zero is a character device, not a regular file"],
        },
        Case {
            what: "--policy names a FIFO",
            args: with_cache(&[os("--policy"), os(&policy_fifo), os("list")]),
            code: 2,
            says: &["policy.toml is a FIFO, not a regular file"],
        },
        Case {
            what: "inspect a directory",
            args: with_cache(&[os("inspect"), os(d)]),
            code: 2,
            says: &["invalid request", "is a directory, not a regular file"],
        },
        Case {
            what: "inspect a FIFO",
            args: with_cache(&[os("inspect"), os(&some_fifo)]),
            code: 2,
            says: &["invalid request", "FIFO", "not a regular file"],
        },
        Case {
            what: "overlay2 lower names its own layer under another id",
            args: convert(&top),
            code: 4,
            says: &["unsupported source", "the chain is a cycle"],
        },
        Case {
            what: "overlay2 lower names its own id",
            args: convert(&top_own_id),
            code: 4,
            says: &["unsupported source", "the chain is a cycle"],
        },
    ];
    for case in &cases {
        check(case, &cache, &before);
    }

    // FIFOs in images/: a manifest that is one, and an image that is one
    // behind a manifest that names it.
    let images = cache.join("images");
    let (fifo_manifest_key, fifo_image_key) = ("1".repeat(64), "2".repeat(64));
    mkfifo(&images.join(format!("{fifo_manifest_key}.json")));
    let seed_manifest = seed_image.with_extension("json");
    let seed_key = seed_image.file_stem().unwrap().to_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&seed_manifest).unwrap().replace(&seed_key, &fifo_image_key);
    std::fs::write(images.join(format!("{fifo_image_key}.json")), text).unwrap();
    mkfifo(&images.join(format!("{fifo_image_key}.ext4")));
    let before = snapshot(&cache);

    let list = run_bounded("list with FIFOs in images/", &with_cache(&[os("list"), os("--json")]));
    assert_eq!(list.code, 0, "{}", list.stderr);
    let entries: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let problem = |key: &str| {
        let entry = entries.as_array().unwrap().iter().find(|e| e["key"] == key).unwrap_or_else(|| panic!("{key}"));
        entry["problem"].as_str().map(str::to_owned)
    };
    assert_eq!(problem(&seed_key), None);
    for key in [&fifo_manifest_key, &fifo_image_key] {
        let problem = problem(key).unwrap_or_else(|| panic!("the FIFO entry {key} is not broken"));
        assert!(problem.contains("FIFO") && problem.contains("not a regular file"), "{problem}");
    }
    assert_eq!(snapshot(&cache), before, "list changed the cache");

    for case in [
        Case {
            what: "inspect an image that is a FIFO, by its path in the cache",
            args: with_cache(&[os("inspect"), os(format!("images/{fifo_image_key}.ext4"))]),
            code: 2,
            says: &["invalid request", "FIFO", "not a regular file"],
        },
        Case {
            what: "inspect an image that is a FIFO, by its absolute path",
            args: with_cache(&[os("inspect"), os(images.join(format!("{fifo_image_key}.ext4")))]),
            code: 2,
            says: &["invalid request", "FIFO", "not a regular file"],
        },
    ] {
        check(&case, &cache, &before);
    }

    // gc with room for everything keeps everything.
    let gc =
        run_bounded("gc with FIFOs in images/", &with_cache(&[os("gc"), os("--max-bytes"), os("1T"), os("--json")]));
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert_eq!(snapshot(&cache), before, "gc changed the cache");

    // verify removes exactly the two broken entries.
    let verify = run_bounded("verify with FIFOs in images/", &with_cache(&[os("verify"), os("--json")]));
    assert_eq!(verify.code, 0, "{}", verify.stderr);
    let report: serde_json::Value = serde_json::from_str(&verify.stdout).unwrap();
    let mut broken: Vec<&str> =
        report["broken"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    broken.sort_unstable();
    assert_eq!(broken, [fifo_manifest_key.as_str(), fifo_image_key.as_str()]);
    let expected: Vec<(String, u64)> = before
        .iter()
        .filter(|(name, _)| !name.contains(&fifo_manifest_key) && !name.contains(&fifo_image_key))
        .cloned()
        .collect();
    assert_eq!(snapshot(&cache), expected, "verify removed more than the broken entries");
}

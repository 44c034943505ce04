//! The `rootfs-cache` command as operators use it: output, exit codes, and a
//! corpus of bad input that must each give one clear line, a non-zero exit and
//! an unchanged cache.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_cache_tests::{Overlay2, agent, cli, fsck, require_root, snapshot, standard_chain};

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_owned()
}

fn run(args: &[OsString]) -> (i32, String, String) {
    let refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    cli(&refs)
}

/// The chain's top layer, the agent, the cache directory and its snapshot.
type OneEntry = (PathBuf, PathBuf, PathBuf, Vec<(String, u64)>);

/// `convert TOP --agent AGENT --size 128M`.
fn convert_args(top: &Path, agent: &Path) -> Vec<OsString> {
    vec![os("convert"), os(top), os("--agent"), os(agent), os("--size"), os("128M")]
}

/// A cache holding one entry (the standard chain, 128 MiB) under `d`.
fn cache_with_one_entry(d: &Path) -> OneEntry {
    let top = standard_chain(&d.join("overlay2"));
    let agent = agent(d, "agent", "cli");
    let cache = d.join("cache");
    let (code, _, err) = run(&[vec![os("--cache-dir"), os(&cache)], convert_args(&top, &agent)].concat());
    assert_eq!(code, 0, "{err}");
    let before = snapshot(&cache);
    (top, agent, cache, before)
}

/// Runs each case and checks that it exits with its code, prints one
/// `error:` line and nothing on stdout, does not panic, and leaves `cache`
/// as it was (`before`).
fn assert_each_refused(cases: Vec<(&str, Vec<OsString>, i32)>, cache: &Path, before: &[(String, u64)]) {
    for (what, args, expected) in cases {
        let (code, out, err) = run(&args);
        assert_eq!(code, expected, "{what}: exit {code}, stderr: {err}");
        assert!(out.is_empty(), "{what}: printed to stdout: {out}");
        assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
        assert!(err.starts_with("error: "), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(snapshot(cache), before, "{what} changed the cache");
    }
}

#[test]
fn help_describes_every_command() {
    let (code, out, _) = run(&[os("--help")]);
    assert_eq!(code, 0);
    for word in ["convert", "list", "inspect", "--cache-dir", "--policy"] {
        assert!(out.contains(word), "--help does not mention {word}:\n{out}");
    }
    let (code, out, _) = run(&[os("convert"), os("--help")]);
    assert_eq!(code, 0);
    for word in ["--agent", "--size", "--converter", "--json", "ROOTFS_CACHE_AGENT", "--platform"] {
        assert!(out.contains(word), "convert --help does not mention {word}:\n{out}");
    }
}

#[test]
fn convert_prints_the_image_then_serves_it_from_the_cache() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let top = standard_chain(&dir.path().join("overlay2"));
    let agent = agent(dir.path(), "agent", "cli");
    let cache = dir.path().join("cache");
    let base = [vec![os("--cache-dir"), os(&cache)], convert_args(&top, &agent)].concat();

    let (code, out, err) = run(&base);
    assert_eq!(code, 0, "{err}");
    let image = Path::new(out.trim());
    assert!(image.starts_with(cache.canonicalize().unwrap()) && image.is_file(), "{out}");

    let mut json_args = base.to_vec();
    json_args.push(os("--json"));
    let (code, out, err) = run(&json_args);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["cached"], true);
    assert_eq!(json["image"], image.to_str().unwrap());
    assert_eq!(json["key"].as_str().unwrap().len(), 64);

    let (code, out, _) = run(&[os("--cache-dir"), os(&cache), os("list"), os("--json")]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["key"], json["key"]);
    assert_eq!(list[0]["problem"], serde_json::Value::Null);

    let (code, out, _) = run(&[os("--cache-dir"), os(&cache), os("inspect"), os(image)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ext4 magic:  yes") && out.contains("geometry:    sound"), "{out}");

    // Without --cache-dir, the policy's cache_dir is the cache.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, format!("cache_dir = \"{}\"\n", cache.display())).unwrap();
    let (code, out, err) =
        run(&[vec![os("--policy"), os(&policy)], convert_args(&top, &agent), vec![os("--json")]].concat());
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((json["cached"].as_bool(), json["image"].as_str()), (Some(true), image.to_str()), "{out}");
}

#[test]
fn inspect_reports_a_broken_image_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("zero.ext4");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let (code, out, _) =
        run(&[os("--cache-dir"), os(dir.path().join("cache")), os("inspect"), os(&image), os("--json")]);
    assert_eq!(code, 9);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["magic"], false);
}

#[test]
fn bad_input_gives_one_line_a_non_zero_exit_and_an_unchanged_cache() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (top, agent, cache, before) = cache_with_one_entry(d);

    let file = d.join("file");
    std::fs::write(&file, b"x").unwrap();
    let neither = d.join("neither");
    std::fs::create_dir_all(neither.join("x")).unwrap();
    let mut evil = Overlay2::new(&d.join("evil"));
    let evil_top = evil.layer(|l| {
        l.file("/a", b"a", 0o644);
    });
    std::fs::write(evil_top.join("lower"), "l/ESCAPE").unwrap();
    std::os::unix::fs::symlink("../../overlay2", d.join("evil/l/ESCAPE")).unwrap();
    let cycle = Overlay2::new(&d.join("cycle")).layer(|_| {});
    std::fs::write(cycle.join("lower"), format!("l/{}", std::fs::read_to_string(cycle.join("link")).unwrap())).unwrap();
    let non_utf8 = d.join(OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir_all(&non_utf8).unwrap();
    let long = d.join("x".repeat(4100));
    let a_file_cache = d.join("cache-file");
    std::fs::write(&a_file_cache, b"").unwrap();

    let convert = |source: &OsStr, extra: &[&str]| {
        let mut args = vec![os("--cache-dir"), os(&cache), os("convert"), os(source), os("--agent"), os(&agent)];
        args.extend(extra.iter().map(os));
        args
    };
    let cases: Vec<(&str, Vec<OsString>, i32)> = vec![
        ("missing source", convert(d.join("missing").as_os_str(), &[]), 3),
        ("file as source", convert(file.as_os_str(), &[]), 4),
        ("directory of neither kind", convert(neither.as_os_str(), &[]), 4),
        ("lower escaping the overlay2 root", convert(evil_top.as_os_str(), &[]), 4),
        ("lower naming the layer itself", convert(cycle.as_os_str(), &[]), 4),
        ("empty source", convert(OsStr::new(""), &[]), 2),
        ("non-UTF-8 source", convert(non_utf8.as_os_str(), &[]), 2),
        ("source path of 4100 bytes", convert(long.as_os_str(), &[]), 2),
        ("size of zero", convert(top.as_os_str(), &["--size", "0"]), 2),
        ("size of 2^64", convert(top.as_os_str(), &["--size", "18446744073709551616"]), 2),
        ("size below 1 MiB", convert(top.as_os_str(), &["--size", "4K"]), 2),
        ("unknown converter", convert(top.as_os_str(), &["--converter", "magic"]), 2),
        ("relative converter command", convert(top.as_os_str(), &["--converter", "command:bin/x"]), 2),
        ("missing converter command", convert(top.as_os_str(), &["--converter", "command:/nonexistent/x"]), 3),
        ("bad platform", convert(top.as_os_str(), &["--platform", "amd64"]), 2),
        (
            "missing agent",
            vec![os("--cache-dir"), os(&cache), os("convert"), os(&top), os("--agent"), os(d.join("none"))],
            3,
        ),
        ("agent is a directory", vec![os("--cache-dir"), os(&cache), os("convert"), os(&top), os("--agent"), os(d)], 2),
        ("no agent at all", vec![os("--cache-dir"), os(&cache), os("convert"), os(&top)], 2),
        (
            "cache directory is a file",
            vec![os("--cache-dir"), os(&a_file_cache), os("convert"), os(&top), os("--agent"), os(&agent)],
            2,
        ),
        ("unknown command", vec![os("frobnicate")], 2),
    ];
    assert_each_refused(cases, &cache, &before);
}

#[test]
fn bad_policies_and_hostile_sources_give_one_line_a_non_zero_exit_and_an_unchanged_cache() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (top, agent, cache, before) = cache_with_one_entry(d);

    let policy = |name: &str, text: &str| {
        let path = d.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let cache_str = cache.display().to_string();
    let roots_elsewhere = policy(
        "elsewhere.toml",
        &format!("cache_dir = \"{cache_str}\"\nsource_roots = [\"{}\"]\n", elsewhere.display()),
    );
    let exact_only = policy("exact.toml", &format!("cache_dir = \"{cache_str}\"\nconverters = [\"exact\"]\n"));
    let small_only = policy("small.toml", &format!("cache_dir = \"{cache_str}\"\nmax_image_bytes = 1048576\n"));
    let other_cache = policy("other-cache.toml", &format!("cache_dir = \"{}\"\n", elsewhere.display()));
    let malformed = policy("malformed.toml", "source_roots = [");
    let unknown = policy("unknown.toml", "surprise = true\n");
    let zero = policy("zero.toml", "guest_memory_bytes = 0\n");
    let relative = policy("relative.toml", "agents = [\"vm-agent\"]\n");
    // A chain of 1,000 layers, and an OCI layout whose manifest has wrong types.
    let deep = rootfs_cache_tests::Overlay2::new(&d.join("deep")).layer(|_| {});
    let lower: Vec<String> = (0..1000).map(|i| format!("l/X{i}")).collect();
    std::fs::write(deep.join("lower"), lower.join(":")).unwrap();
    let bad_oci = d.join("bad-oci");
    rootfs_cache_tests::oci::standard_layout(&bad_oci, rootfs_cache_tests::oci::IndexStyle::Skopeo);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(bad_oci.join("index.json")).unwrap()).unwrap();
    let bad_manifest = br#"{"schemaVersion":2,"config":[],"layers":{}}"#;
    let hex = rootfs_cache_tests::sha256_hex(bad_manifest);
    std::fs::write(bad_oci.join("blobs/sha256").join(&hex), bad_manifest).unwrap();
    let mut index = index;
    index["manifests"][0]["digest"] = serde_json::json!(format!("sha256:{hex}"));
    index["manifests"][0]["size"] = serde_json::json!(bad_manifest.len());
    std::fs::write(bad_oci.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let fifo_agent = d.join("agent-fifo");
    rootfs_cache_tests::mknod(&fifo_agent, rustix::fs::FileType::Fifo, 0o600, 0);
    // A fresh cache directory on a read-only mount.
    let ro = d.join("ro");
    std::fs::create_dir(&ro).unwrap();
    assert!(
        Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1M", "tmpfs"]).arg(&ro).status().unwrap().success()
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _ro = Unmount(ro.clone());

    let with_policy = |p: &Path, extra: &[&str]| {
        let mut args = vec![
            os("--cache-dir"),
            os(&cache),
            os("--policy"),
            os(p),
            os("convert"),
            os(&top),
            os("--agent"),
            os(&agent),
        ];
        args.extend(extra.iter().map(os));
        args
    };
    let convert = |source: &Path, agent: &Path| {
        vec![os("--cache-dir"), os(&cache), os("convert"), os(source), os("--agent"), os(agent)]
    };
    let cases: Vec<(&str, Vec<OsString>, i32)> = vec![
        ("a policy file that does not exist", with_policy(&d.join("none.toml"), &[]), 2),
        ("a malformed policy", with_policy(&malformed, &[]), 2),
        ("a policy with an unknown key", with_policy(&unknown, &[]), 2),
        ("a policy with a zero limit", with_policy(&zero, &[]), 2),
        ("a policy with a relative path", with_policy(&relative, &[]), 2),
        ("a source outside the policy's roots", with_policy(&roots_elsewhere, &[]), 5),
        (
            "`..` out of the policy's roots",
            {
                let mut a = with_policy(&roots_elsewhere, &[]);
                a[5] = os(elsewhere.join("..").join("overlay2").join(top.file_name().unwrap()));
                a
            },
            5,
        ),
        ("a converter the policy does not allow", with_policy(&exact_only, &["--converter", "oci2rootfs"]), 5),
        ("a size above the policy's limit", with_policy(&small_only, &["--size", "64M"]), 5),
        ("a cache directory the policy does not serve", with_policy(&other_cache, &[]), 5),
        ("a lower of 1,000 layers", convert(&deep, &agent), 4),
        ("an OCI manifest with wrong types", convert(&bad_oci, &agent), 4),
        ("a FIFO as agent", convert(&top, &fifo_agent), 2),
        ("an empty agent path", convert(&top, Path::new("")), 2),
        ("/dev/null as source", convert(Path::new("/dev/null"), &agent), 4),
        (
            "an empty converter command",
            {
                let mut a = convert(&top, &agent);
                a.extend([os("--converter"), os("command:")]);
                a
            },
            2,
        ),
        (
            "a platform with too many parts",
            {
                let mut a = convert(&top, &agent);
                a.extend([os("--platform"), os("linux/amd64/v8/x")]);
                a
            },
            2,
        ),
        (
            "a cache size budget of zero",
            {
                let mut a = vec![os("--max-cache-bytes"), os("0")];
                a.extend(convert(&top, &agent));
                a
            },
            2,
        ),
        (
            "a new cache directory on a read-only filesystem",
            vec![os("--cache-dir"), os(ro.join("cache")), os("list")],
            2,
        ),
    ];
    assert!(cases.len() + 20 >= 30, "the corpus (with the other test's 20) has fewer than 30 cases");
    assert_each_refused(cases, &cache, &before);
}

/// Whether an image's superblock has `has_journal` (`s_feature_compat`, 0x4).
fn has_journal(image: &Path) -> bool {
    use std::os::unix::fs::FileExt as _;
    let mut compat = [0u8; 4];
    std::fs::File::open(image).unwrap().read_exact_at(&mut compat, 1024 + 0x5C).unwrap();
    u32::from_le_bytes(compat) & 0x4 != 0
}

/// `convert … --json` of `top` into `cache` with `extra` arguments: the image and its key.
fn convert_json(cache: &Path, top: &Path, agent: &Path, extra: &[&str]) -> (PathBuf, String) {
    let mut args = vec![os("--cache-dir"), os(cache), os("convert"), os(top), os("--agent"), os(agent), os("--json")];
    args.extend(extra.iter().map(os));
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    (PathBuf::from(json["image"].as_str().unwrap()), json["key"].as_str().unwrap().to_owned())
}

#[test]
fn the_default_profile_has_a_journal_minimal_has_none_and_each_is_its_own_key() {
    require_root!();
    let d = tempfile::tempdir().unwrap();
    let top = standard_chain(&d.path().join("overlay2"));
    let agent = agent(d.path(), "agent", "profile");
    let cache = d.path().join("cache");
    let (journaled, key) = convert_json(&cache, &top, &agent, &[]);
    assert!(has_journal(&journaled), "the default profile wrote no journal");
    let (minimal, minimal_key) = convert_json(&cache, &top, &agent, &["--ext4-profile", "minimal"]);
    assert!(!has_journal(&minimal), "the minimal profile wrote a journal");
    assert_ne!(key, minimal_key, "the profile is not part of the key");
    for image in [&journaled, &minimal] {
        let (status, report) = fsck(image);
        assert_eq!(status, 0, "{report}");
    }
    let before = snapshot(&cache);
    let bad = vec![os("--cache-dir"), os(&cache), os("convert"), os(&top), os("--agent"), os(&agent)];
    assert_each_refused(
        vec![("an unknown profile", [bad, vec![os("--ext4-profile"), os("tiny")]].concat(), 2)],
        &cache,
        &before,
    );
}

/// Issue 12: 100,000 empty files in 100 directories failed at the default
/// size ("120019 inodes do not fit in 1 groups").
#[test]
fn a_hundred_thousand_empty_files_convert_at_the_default_size() {
    require_root!();
    let d = tempfile::tempdir().unwrap();
    let mut chain = Overlay2::new(&d.path().join("overlay2"));
    let top = chain.layer(|l| {
        for dir in 0..100 {
            let dir = l.diff.join(format!("d{dir:03}"));
            std::fs::create_dir(&dir).unwrap();
            for file in 0..1000 {
                std::fs::File::create(dir.join(format!("f{file:04}"))).unwrap();
            }
        }
    });
    let agent = agent(d.path(), "agent", "many");
    let (image, _) = convert_json(&d.path().join("cache"), &top, &agent, &[]);
    let (status, report) = fsck(&image);
    assert_eq!(status, 0, "{report}");
    // e2fsck's summary: "<image>: <used>/<total> files (…), …".
    let used: u64 = report
        .split_whitespace()
        .find_map(|w| w.split_once('/').filter(|(_, rest)| !rest.is_empty()).and_then(|(n, _)| n.parse().ok()))
        .unwrap_or_else(|| panic!("no file count in e2fsck's summary: {report}"));
    assert!(used >= 100_100, "only {used} inodes in use: {report}");
}

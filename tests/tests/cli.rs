//! The `rootfs-cache` command as operators use it: output, exit codes, and a
//! corpus of bad input that must each give one clear line, a non-zero exit and
//! an unchanged cache.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rootfs_cache_tests::{Overlay2, agent, cli, require_root, snapshot, standard_chain};

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_owned()
}

fn run(args: &[OsString]) -> (i32, String, String) {
    let refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    cli(&refs)
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
    let base =
        [os("--cache-dir"), os(&cache), os("convert"), os(&top), os("--agent"), os(&agent), os("--size"), os("128M")];

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
    let top = standard_chain(&d.join("overlay2"));
    let agent = agent(d, "agent", "cli");
    let cache = d.join("cache");
    let (code, _, err) = run(&[
        os("--cache-dir"),
        os(&cache),
        os("convert"),
        os(&top),
        os("--agent"),
        os(&agent),
        os("--size"),
        os("128M"),
    ]);
    assert_eq!(code, 0, "{err}");
    let before = snapshot(&cache);

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
    for (what, args, expected) in cases {
        let (code, out, err) = run(&args);
        assert_eq!(code, expected, "{what}: exit {code}, stderr: {err}");
        assert!(out.is_empty(), "{what}: printed to stdout: {out}");
        assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
        assert!(err.starts_with("error: "), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(snapshot(&cache), before, "{what} changed the cache");
    }
}

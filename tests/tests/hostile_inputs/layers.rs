//! Crafted layers and layouts: each row is an OCI layout (or a cache) built
//! to break one rule, the CLI's exit code it must get, and a word its one
//! error line must carry. Every refused row leaves the cache as it was.
//! Rows that are accepted are checked for what the image holds.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use rootfs_cache_tests::oci::{
    Compression, IndexStyle, TarEntry, TarKind, layout_edited, layout_with, tar, write_blob,
};
use rootfs_cache_tests::{ReadOnlyMount, agent, cli, fsck, require_root, snapshot};

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_owned()
}

/// A scratch directory with an agent and a cache holding nothing yet.
struct Bench {
    dir: tempfile::TempDir,
    agent: PathBuf,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), "vm-agent", "hostile-layers");
        Self { dir, agent }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `rootfs-cache --cache-dir CACHE [PRE...] convert SOURCE --agent A [POST...]`.
    fn convert(&self, source: &Path, pre: &[OsString], post: &[&str]) -> (i32, String, String) {
        let mut args = vec![os("--cache-dir"), os(self.cache())];
        args.extend(pre.iter().cloned());
        args.extend([os("convert"), os(source), os("--agent"), os(&self.agent), os("--json")]);
        args.extend(post.iter().map(os));
        let refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        cli(&refs)
    }

    /// A policy file with `body`, as `--policy FILE`.
    fn policy(&self, body: &str) -> Vec<OsString> {
        let path = self.dir.path().join("policy.toml");
        std::fs::write(&path, body).unwrap();
        vec![os("--policy"), os(path)]
    }

    /// Converts a small good layout, so that the cache holds an entry, and
    /// returns the cache's snapshot.
    fn with_entry(&self) -> Vec<(String, u64)> {
        let good = self.layout("good", &[one_file_layer("good")]);
        let (code, _, err) = self.convert(&good, &[], &[]);
        assert_eq!(code, 0, "{err}");
        snapshot(&self.cache())
    }

    /// An OCI layout of plain-tar `layers` under `name`.
    fn layout(&self, name: &str, layers: &[Vec<u8>]) -> PathBuf {
        let dir = self.dir.path().join(name);
        let layers: Vec<_> = layers.iter().map(|l| (l.clone(), Compression::None)).collect();
        layout_with(&dir, &layers, "amd64", IndexStyle::Skopeo);
        dir
    }
}

fn image_of(json: &str) -> PathBuf {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    PathBuf::from(v["image"].as_str().unwrap())
}

fn one_file_layer(name: &str) -> Vec<u8> {
    tar(&[TarEntry::file(name, b"data\n", 0o644)])
}

/// One refused row: its layout (or arguments) and what the CLI must say.
struct Refusal {
    what: &'static str,
    exit: i32,
    says: &'static str,
}

fn assert_refused(bench: &Bench, row: &Refusal, (code, out, err): (i32, String, String), before: &[(String, u64)]) {
    assert_eq!(code, row.exit, "{}: exit {code}, stderr: {err}", row.what);
    assert!(out.is_empty(), "{}: printed {out}", row.what);
    assert_eq!(err.lines().count(), 1, "{}: not one line: {err}", row.what);
    assert!(err.contains(row.says), "{}: {err:?} does not say {:?}", row.what, row.says);
    assert!(!err.contains("panicked"), "{}: {err}", row.what);
    assert_eq!(snapshot(&bench.cache()), before, "{} changed the cache", row.what);
}

#[test]
fn layouts_whose_descriptors_lie_are_refused_and_change_nothing() {
    let bench = Bench::new();
    let gz = (one_file_layer("f"), Compression::Gzip);
    let before = bench.with_entry();

    type Edit = Box<dyn Fn(&mut serde_json::Value, &mut serde_json::Value)>;
    let rows: Vec<(Refusal, Edit)> = vec![
        (
            Refusal { what: "a layer descriptor's size larger than the blob", exit: 4, says: "descriptor says" },
            Box::new(|m, _| {
                let size = m["layers"][0]["size"].as_u64().unwrap();
                m["layers"][0]["size"] = (size + 1).into();
            }),
        ),
        (
            Refusal { what: "a layer descriptor's size smaller than the blob", exit: 4, says: "descriptor says" },
            Box::new(|m, _| {
                let size = m["layers"][0]["size"].as_u64().unwrap();
                m["layers"][0]["size"] = (size - 1).into();
            }),
        ),
        (
            Refusal { what: "a diff_id that is not the uncompressed layer's", exit: 4, says: "diff_ids" },
            Box::new(|_, c| c["rootfs"]["diff_ids"][0] = format!("sha256:{}", "0".repeat(64)).into()),
        ),
        (
            Refusal { what: "fewer diff_ids than layers", exit: 4, says: "diff_ids" },
            Box::new(|_, c| c["rootfs"]["diff_ids"] = serde_json::json!([])),
        ),
        (
            Refusal { what: "a config without rootfs", exit: 4, says: "rootfs" },
            Box::new(|_, c| {
                c.as_object_mut().unwrap().remove("rootfs");
            }),
        ),
        (
            Refusal { what: "a diff_id that is not a digest", exit: 4, says: "sha256" },
            Box::new(|_, c| c["rootfs"]["diff_ids"][0] = "md5:abc".into()),
        ),
    ];
    for (i, (row, edit)) in rows.iter().enumerate() {
        let dir = bench.dir.path().join(format!("lying-{i}"));
        layout_edited(&dir, std::slice::from_ref(&gz), "amd64", IndexStyle::Skopeo, |m, c| edit(m, c));
        assert_refused(&bench, row, bench.convert(&dir, &[], &[]), &before);
    }
}

#[test]
fn indexes_nested_too_deep_say_so() {
    let bench = Bench::new();
    let before = bench.with_entry();
    let dir = bench.layout("deep", &[one_file_layer("f")]);
    // Wrap index.json's manifest in eight levels of nested indexes.
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    for _ in 0..8 {
        let bytes = serde_json::to_vec(&index).unwrap();
        let digest = write_blob(&dir, &bytes);
        index = serde_json::json!({ "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": bytes.len()
        }]});
    }
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let row = Refusal { what: "indexes nested eight deep", exit: 4, says: "nest more than" };
    assert_refused(&bench, &row, bench.convert(&dir, &[], &[]), &before);
}

#[test]
fn the_policy_bounds_the_image_whatever_sized_it() {
    let bench = Bench::new();
    let before = bench.with_entry();
    let dir = bench.layout("small", &[one_file_layer("f")]);
    // Sized from its content, the image takes at least 32 MiB of free space.
    let policy = bench.policy("max_image_bytes = 16777216\n");
    let row = Refusal { what: "exact, sized from its content", exit: 5, says: "max_image_bytes" };
    assert_refused(&bench, &row, bench.convert(&dir, &policy, &[]), &before);
    // oci2rootfs makes 512 MiB without --size (and needs index.json's mediaType).
    let with_type = bench.dir.path().join("with-media-type");
    layout_with(&with_type, &[(one_file_layer("f"), Compression::None)], "amd64", IndexStyle::WithPlatform);
    let policy = bench.policy("max_image_bytes = 104857600\n");
    let row = Refusal { what: "oci2rootfs's default size", exit: 5, says: "max_image_bytes" };
    if rootfs_cache_tests::is_root() {
        assert_refused(&bench, &row, bench.convert(&with_type, &policy, &["--converter", "oci2rootfs"]), &before);
    } else {
        eprintln!("SKIPPED (oci2rootfs row): oci2rootfs's agent install needs root");
    }
    // Within the bound, the same layout converts.
    let policy = bench.policy("max_image_bytes = 1073741824\n");
    let (code, out, err) = bench.convert(&dir, &policy, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::metadata(image_of(&out)).unwrap().len() <= 1 << 30);
}

#[test]
fn pins_that_name_no_entry_are_refused_and_evict_nothing() {
    let bench = Bench::new();
    let dir = bench.layout("pinned", &[one_file_layer("f")]);
    let (code, out, err) = bench.convert(&dir, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let key = serde_json::from_str::<serde_json::Value>(&out).unwrap()["key"].as_str().unwrap().to_owned();
    let before = snapshot(&bench.cache());
    let unknown = "f".repeat(64);
    let rows = [
        (Refusal { what: "an unknown key", exit: 3, says: "names no entry" }, unknown),
        (Refusal { what: "an uppercase key", exit: 2, says: "64 lowercase hex" }, key.to_uppercase()),
        (Refusal { what: "a partial key", exit: 2, says: "64 lowercase hex" }, key[..12].to_owned()),
        (Refusal { what: "another file name", exit: 2, says: "64 lowercase hex" }, format!("images/{key}.json")),
    ];
    for (row, pin) in &rows {
        let args = [os("--cache-dir"), os(bench.cache()), os("gc"), os("--max-bytes"), os("0"), os("--pin"), os(pin)];
        let refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        assert_refused(&bench, row, cli(&refs), &before);
    }
    // The key itself, and the image path, are pins that work.
    for pin in [key.clone(), format!("images/{key}.ext4")] {
        let args = [os("--cache-dir"), os(bench.cache()), os("gc"), os("--max-bytes"), os("0"), os("--pin"), os(&pin)];
        let refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let (code, _, err) = cli(&refs);
        assert_eq!(code, 0, "{pin}: {err}");
        assert_eq!(snapshot(&bench.cache()), before, "the pinned entry went");
    }
}

#[test]
fn attribute_errors_read_as_sentences() {
    let bench = Bench::new();
    let layer = tar(&[TarEntry::file("f", b"x", 0o644).xattr("bogus.ns", b"v")]);
    let dir = bench.layout("bogus-xattr", &[layer]);
    let (code, _, err) = bench.convert(&dir, &[], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("namespace"), "{err}");
    for debug in ["UnknownPrefix", "TooLarge(", "NotDirectory(", "[1"] {
        assert!(!err.contains(debug), "Rust debug output in {err:?}");
    }
}

#[test]
fn whiteouts_and_overlay_attributes_follow_the_image_spec() {
    require_root!();
    let bench = Bench::new();
    let lower = tar(&[
        TarEntry::file("lower-gone", b"1", 0o644),
        TarEntry::dir("opq", 0o755),
        TarEntry::file("opq/lower-child", b"1", 0o644),
    ]);
    let upper = tar(&[
        // A whiteout after the file of its own layer: the file stays.
        TarEntry::file("same-layer-after", b"kept", 0o644),
        TarEntry::raw(b".wh.same-layer-after", TarKind::File(b""), 0o644),
        // A whiteout before the file of its own layer: the file stays too.
        TarEntry::raw(b".wh.same-layer-before", TarKind::File(b""), 0o644),
        TarEntry::file("same-layer-before", b"kept", 0o644),
        // A whiteout of a lower layer's file: gone.
        TarEntry::raw(b".wh.lower-gone", TarKind::File(b""), 0o644),
        // An opaque directory keeps what this layer puts in it.
        TarEntry::file("opq/upper-child", b"2", 0o644),
        TarEntry::raw(b"opq/.wh..wh..opq", TarKind::File(b""), 0o644),
        // overlayfs's own attributes never reach the image; others do.
        TarEntry::dir("etc", 0o755).xattr("trusted.overlay.opaque", b"y"),
        TarEntry::file("etc/redirected", b"r", 0o644)
            .xattr("trusted.overlay.redirect", b"/etc")
            .xattr("user.kept", b"yes"),
    ]);
    let dir = bench.layout("whiteouts", &[lower, upper]);
    let (code, out, err) = bench.convert(&dir, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let image = image_of(&out);
    let (fsck_code, fsck_out) = fsck(&image);
    assert_eq!(fsck_code, 0, "{fsck_out}");
    let mnt = ReadOnlyMount::new(&image);
    let root = &mnt.path;
    assert_eq!(std::fs::read(root.join("same-layer-after")).unwrap(), b"kept");
    assert_eq!(std::fs::read(root.join("same-layer-before")).unwrap(), b"kept");
    assert!(!root.join("lower-gone").exists());
    assert!(root.join("opq/upper-child").exists());
    assert!(!root.join("opq/lower-child").exists());
    for path in [root.join("etc"), root.join("etc/redirected")] {
        let names = xattr_names(&path);
        assert!(!names.iter().any(|n| n.starts_with("trusted.overlay.")), "{}: {names:?}", path.display());
    }
    assert!(xattr_names(&root.join("etc/redirected")).contains(&"user.kept".to_owned()));
}

#[test]
fn more_names_than_ext4_can_link_become_copies_and_the_image_checks_clean() {
    require_root!();
    let bench = Bench::new();
    let names: Vec<String> = (0..65_000).map(|i| format!("d/l{i:05}")).collect();
    let mut entries = vec![TarEntry::dir("d", 0o755), TarEntry::file("d/f", b"shared contents\n", 0o644)];
    entries.extend(names.iter().map(|n| TarEntry::raw(n.as_bytes(), TarKind::Hardlink(b"d/f"), 0o644)));
    let dir = bench.layout("links", &[tar(&entries)]);
    let (code, out, err) = bench.convert(&dir, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let image = image_of(&out);
    let (fsck_code, fsck_out) = fsck(&image);
    assert_eq!(fsck_code, 0, "65,001 names: {fsck_out}");
    let mnt = ReadOnlyMount::new(&image);
    use std::os::unix::fs::MetadataExt;
    let first = std::fs::metadata(mnt.path.join("d/f")).unwrap();
    let last = std::fs::metadata(mnt.path.join("d/l64999")).unwrap();
    assert_eq!(first.nlink() + last.nlink(), 65_001, "every name is counted once");
    assert!(first.nlink() <= 65_000 && last.nlink() <= 65_000);
    assert_ne!(first.ino(), last.ino(), "the 65,001st name is a copy");
    assert_eq!(std::fs::read(mnt.path.join("d/l64999")).unwrap(), b"shared contents\n");
}

fn xattr_names(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut buf).unwrap();
    buf[..n].split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

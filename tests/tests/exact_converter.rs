//! The `exact` converter, differentially: every image is mounted read-only
//! and compared entry by entry with the reference (the kernel's overlay
//! mount of the chain; `umoci unpack` of the layout), and checked with
//! `e2fsck -fn`. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_cache::{Config, ConverterSpec, Request, RootfsCache};
use rootfs_cache_tests::compare::differences;
use rootfs_cache_tests::oci::{Compression, IndexStyle, TarEntry, feature_layout, layout_with, tar};
use rootfs_cache_tests::{
    DELETED_MARKER, OverlayMount, ReadOnlyMount, agent, feature_chain, fsck, require_root, snapshot, temp_files,
};

struct World {
    dir: tempfile::TempDir,
    cache: RootfsCache,
    agent: PathBuf,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), "vm-agent", "exact");
        let cache = RootfsCache::open(Config::new(dir.path().join("cache"))).unwrap();
        Self { dir, cache, agent }
    }

    fn request(&self, source: &Path) -> Request {
        Request::new(source, &self.agent).converter(ConverterSpec::Exact)
    }
}

fn assert_identical(reference: &Path, image: &Path) {
    let mnt = ReadOnlyMount::new(image);
    // What the image adds to the container's tree: lost+found, the agent,
    // and /sbin itself when the tree had none.
    let added: &[&[u8]] =
        if reference.join("sbin").exists() { &[b"lost+found", b"sbin/vm-agent"] } else { &[b"lost+found", b"sbin"] };
    let diffs = differences(reference, &mnt.path, added);
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
    let (code, out) = fsck(image);
    assert_eq!(code, 0, "e2fsck -fn:\n{out}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn an_overlay2_chain_converts_with_zero_differences_from_the_kernel_overlay() {
    require_root!();
    let w = World::new();
    let top = feature_chain(&w.dir.path().join("overlay2"));
    let outcome = w.cache.convert(&w.request(&top)).await.unwrap();
    let reference = OverlayMount::new(&top);
    assert_identical(&reference.path, &outcome.image);
    // The agent is there, without a mount of ours.
    let mnt = ReadOnlyMount::new(&outcome.image);
    assert_eq!(std::fs::read(mnt.path.join("sbin/vm-agent")).unwrap(), std::fs::read(&w.agent).unwrap());
    assert_eq!(outcome.timings.inject_us, 0, "exact writes the agent itself");
}

#[tokio::test]
async fn an_oci_layout_converts_with_zero_differences_from_umoci() {
    require_root!();
    if Command::new("umoci").arg("--version").output().is_err() {
        eprintln!("SKIPPED: umoci is not installed (apt-get install umoci); CI installs it");
        assert!(std::env::var_os("CI").is_none(), "CI must have umoci");
        return;
    }
    let w = World::new();
    let layout = w.dir.path().join("oci");
    feature_layout(&layout, IndexStyle::Skopeo);
    let outcome = w.cache.convert(&w.request(&layout)).await.unwrap();
    let bundle = w.dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "umoci unpack: {}", String::from_utf8_lossy(&out.stderr));
    assert_identical(&bundle.join("rootfs"), &outcome.image);
}

#[tokio::test]
async fn zstd_gzip_and_plain_layers_give_the_same_image_content() {
    require_root!();
    let w = World::new();
    let gz = w.dir.path().join("gzip");
    let zst = w.dir.path().join("zstd");
    let base = tar(&[
        TarEntry::dir("etc/", 0o755),
        TarEntry::file("etc/a", b"a\n", 0o644),
        TarEntry::file("etc/gone", b"x", 0o644),
    ]);
    let top = tar(&[
        TarEntry::dir("etc/", 0o755),
        TarEntry::file("etc/.wh.gone", b"", 0o644),
        TarEntry::file("etc/b", b"b\n", 0o600),
    ]);
    layout_with(
        &gz,
        &[(base.clone(), Compression::Gzip), (top.clone(), Compression::None)],
        "amd64",
        IndexStyle::Skopeo,
    );
    layout_with(&zst, &[(base, Compression::Zstd), (top, Compression::Zstd)], "amd64", IndexStyle::WithPlatform);
    let a = w.cache.convert(&w.request(&gz)).await.unwrap();
    let b = w.cache.convert(&w.request(&zst)).await.unwrap();
    assert_identical(&ReadOnlyMount::new(&a.image).path, &b.image);
    assert!(!ReadOnlyMount::new(&b.image).path.join("etc/gone").exists());
}

#[tokio::test]
async fn the_same_inputs_give_a_byte_identical_image() {
    require_root!();
    let w = World::new();
    let top = feature_chain(&w.dir.path().join("overlay2"));
    let first = w.cache.convert(&w.request(&top)).await.unwrap();
    let other = RootfsCache::open(Config::new(w.dir.path().join("cache-2"))).unwrap();
    let second = other.convert(&w.request(&top)).await.unwrap();
    assert_eq!(first.key, second.key);
    assert!(std::fs::read(&first.image).unwrap() == std::fs::read(&second.image).unwrap(), "two builds differ");
}

#[tokio::test]
async fn deleted_data_is_nowhere_in_the_image_file_and_sparse_files_stay_sparse() {
    require_root!();
    let w = World::new();
    let top = feature_chain(&w.dir.path().join("overlay2"));
    let outcome = w.cache.convert(&w.request(&top)).await.unwrap();
    let bytes = std::fs::read(&outcome.image).unwrap();
    assert!(!contains(&bytes, DELETED_MARKER), "data deleted by an upper layer is readable in the image file");
    let mnt = ReadOnlyMount::new(&outcome.image);
    let meta = std::fs::metadata(mnt.path.join("data/sparse")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.size(), 8 << 20);
    assert!(meta.blocks() * 512 <= 64 << 10, "an 8 MiB sparse file uses {} bytes", meta.blocks() * 512);
}

#[tokio::test]
async fn the_image_is_sized_from_its_content_or_exactly_to_the_size_asked() {
    require_root!();
    let w = World::new();
    let top = feature_chain(&w.dir.path().join("overlay2"));
    let sized = w.cache.convert(&w.request(&top)).await.unwrap();
    let info = w.cache.inspect(&sized.image).await.unwrap();
    assert!(info.free_inodes >= 4096, "{info:?}");
    assert!(u64::from(info.block_size) * info.free_blocks >= 32 << 20, "{info:?}");
    assert!(sized.image_bytes < 256 << 20, "an image of {} bytes for a few MiB of content", sized.image_bytes);
    let exact = w.cache.convert(&w.request(&top).size(300 << 20)).await.unwrap();
    assert_eq!(std::fs::metadata(&exact.image).unwrap().len(), 300 << 20);
    let (code, out) = fsck(&exact.image);
    assert_eq!(code, 0, "{out}");
    let err = w.cache.convert(&w.request(&top).size(2 << 20)).await.unwrap_err();
    assert_eq!(err.class(), "converter-failed");
    assert!(err.to_string().contains("raise --size"), "{err}");
}

#[tokio::test]
async fn a_single_layer_chain_converts() {
    require_root!();
    let w = World::new();
    let mut o = rootfs_cache_tests::Overlay2::new(&w.dir.path().join("overlay2"));
    let top = o.layer(|l| {
        // Whiteouts at the root (merged with overlayfs's padding layer) and
        // in a directory only this layer has (listed by overlayfs, absent on
        // lookup): neither is an entry of the image.
        l.file("/hello", b"one layer\n", 0o644).whiteout("/nothing-below").whiteout("/only-here/gone");
    });
    let outcome = w.cache.convert(&w.request(&top)).await.unwrap();
    assert_identical(&OverlayMount::new(&top).path, &outcome.image);
}

#[tokio::test]
async fn bad_layers_are_typed_errors_that_write_nothing_outside_and_leave_nothing() {
    require_root!();
    let w = World::new();
    let outside = w.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let before = snapshot(w.cache.cache_dir());
    let escape_target = outside.display().to_string();
    let gz = |entries: &[TarEntry<'_>]| (tar(entries), Compression::Gzip);
    let mut truncated = rootfs_cache_tests::oci::gzip(&tar(&[TarEntry::file("big", &vec![7u8; 200_000], 0o644)]));
    truncated.truncate(truncated.len() / 2);
    type Layers = Vec<(Vec<u8>, Compression)>;
    let cases: Vec<(&str, Layers)> = vec![
        ("a `..` path", vec![gz(&[TarEntry::file("../evil", b"x", 0o644)])]),
        ("an absolute path", vec![gz(&[TarEntry::file("/evil", b"x", 0o644)])]),
        (
            "a write through a symlink out of the root",
            vec![gz(&[TarEntry::symlink("escape", &escape_target), TarEntry::file("escape/evil", b"x", 0o644)])],
        ),
        (
            "a write through a relative symlink out of the root",
            vec![gz(&[TarEntry::symlink("up", "../../.."), TarEntry::file("up/evil", b"x", 0o644)])],
        ),
        (
            "a hardlink to a path outside",
            vec![gz(&[TarEntry::raw(b"link", rootfs_cache_tests::oci::TarKind::Hardlink(b"../../etc/passwd"), 0o644)])],
        ),
        (
            "a hardlink to a missing file",
            vec![gz(&[TarEntry::raw(b"link", rootfs_cache_tests::oci::TarKind::Hardlink(b"nothing"), 0o644)])],
        ),
    ];
    for (what, layers) in cases {
        let layout = w.dir.path().join(format!("oci-{}", what.replace(' ', "-")));
        layout_with(&layout, &layers, "amd64", IndexStyle::Skopeo);
        let err = w.cache.convert(&w.request(&layout)).await.expect_err(what);
        assert_eq!(err.class(), "unsupported-source", "{what}: {err}");
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "{what} wrote outside");
        assert_eq!(snapshot(w.cache.cache_dir()), before, "{what} left files in the cache");
        assert!(temp_files(w.cache.cache_dir()).is_empty());
    }
    // Broken streams: layouts written by hand with a truncated gzip blob, a
    // corrupt zstd blob, and a blob that does not match its digest.
    for (what, blob, media_type) in [
        ("a truncated gzip stream", truncated.clone(), "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("a corrupt zstd stream", b"\x28\xb5\x2f\xfd garbage".to_vec(), "application/vnd.oci.image.layer.v1.tar+zstd"),
    ] {
        let layout = w.dir.path().join(format!("oci-{}", what.replace(' ', "-")));
        layout_with(
            &layout,
            &[(tar(&[TarEntry::file("ok", b"ok", 0o644)]), Compression::Gzip)],
            "amd64",
            IndexStyle::Skopeo,
        );
        replace_only_layer(&layout, &blob, media_type, true);
        let err = w.cache.convert(&w.request(&layout)).await.expect_err(what);
        assert_eq!(err.class(), "unsupported-source", "{what}: {err}");
        assert_eq!(snapshot(w.cache.cache_dir()), before, "{what} left files in the cache");
    }
    // Other bytes under the old digest: of the same length, the digest check
    // catches them while they stream; of another length, the length check
    // before any converter runs.
    for (what, replacement, says) in [
        ("same length", tar(&[TarEntry::file("ok", b"KO", 0o644)]), "hashes to"),
        ("another length", tar(&[TarEntry::file("ok", &[b'x'; 600], 0o644)]), "descriptor says"),
    ] {
        let layout = w.dir.path().join(format!("oci-digest-mismatch-{}", what.replace(' ', "-")));
        layout_with(
            &layout,
            &[(tar(&[TarEntry::file("ok", b"ok", 0o644)]), Compression::None)],
            "amd64",
            IndexStyle::Skopeo,
        );
        replace_only_layer(&layout, &replacement, "application/vnd.oci.image.layer.v1.tar", false);
        let err = w.cache.convert(&w.request(&layout)).await.unwrap_err();
        assert_eq!(err.class(), "unsupported-source", "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
        assert_eq!(snapshot(w.cache.cache_dir()), before, "{what}");
    }
}

/// Replaces the content of the layout's only layer blob. With `rename`, the
/// blob is stored under its new digest and the manifest updated (a valid
/// layout with bad content); without, the old digest keeps naming new bytes.
fn replace_only_layer(layout: &Path, blob: &[u8], media_type: &str, rename: bool) {
    let blobs = layout.join("blobs/sha256");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_hex = index["manifests"][0]["digest"].as_str().unwrap()[7..].to_owned();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&manifest_hex)).unwrap()).unwrap();
    let old_hex = manifest["layers"][0]["digest"].as_str().unwrap()[7..].to_owned();
    if !rename {
        std::fs::write(blobs.join(&old_hex), blob).unwrap();
        return;
    }
    let new_hex = rootfs_cache_tests::sha256_hex(blob);
    std::fs::write(blobs.join(&new_hex), blob).unwrap();
    manifest["layers"][0] =
        serde_json::json!({ "mediaType": media_type, "digest": format!("sha256:{new_hex}"), "size": blob.len() });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let new_manifest = rootfs_cache_tests::sha256_hex(&bytes);
    std::fs::write(blobs.join(&new_manifest), &bytes).unwrap();
    let mut index = index;
    index["manifests"][0]["digest"] = serde_json::json!(format!("sha256:{new_manifest}"));
    index["manifests"][0]["size"] = serde_json::json!(bytes.len());
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

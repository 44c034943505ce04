//! The guest's decisions, run in the real component under wasmtime, against
//! the fake host adapter: no root, no loop devices, no real converter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rootfs_cache::capabilities::converter::fake::FakeBehaviour;
use rootfs_cache::{Capabilities, Config, Error, FakeHandles, Policy, Request, RootfsCache, SourceKind};
use rootfs_cache_tests::oci::{IndexStyle, standard_layout};
use rootfs_cache_tests::{Overlay2, agent, snapshot, standard_chain, temp_files};

struct World {
    dir: tempfile::TempDir,
    cache: RootfsCache,
    fake: FakeHandles,
    top: PathBuf,
    agent: PathBuf,
}

impl World {
    fn new() -> Self {
        Self::with_policy(|_| Policy::default())
    }

    fn with_policy(policy: impl FnOnce(&Path) -> Policy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let top = standard_chain(&dir.path().join("overlay2"));
        let agent = agent(dir.path(), "vm-agent", "v1");
        let (caps, fake) = Capabilities::fake();
        let config = Config::new(dir.path().join("cache")).capabilities(caps).policy(policy(dir.path()));
        let cache = RootfsCache::open(config).unwrap();
        Self { dir, cache, fake, top, agent }
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache.cache_dir().to_path_buf()
    }

    fn request(&self) -> Request {
        Request::new(&self.top, &self.agent)
    }
}

#[tokio::test]
async fn a_second_request_is_a_hit_and_runs_no_converter() {
    let w = World::new();
    let first = w.cache.convert(&w.request()).await.unwrap();
    assert!(!first.cached);
    assert_eq!(first.kind, SourceKind::Overlay2);
    assert_eq!(w.fake.converter.jobs().len(), 1);
    assert_eq!(w.fake.mounter.installs().len(), 1, "the agent is installed through a mount");
    assert_eq!(w.fake.mounter.installs()[0].target, "/sbin/vm-agent");
    assert_eq!(w.fake.mounter.installs()[0].mode, 0o755);

    let second = w.cache.convert(&w.request()).await.unwrap();
    assert!(second.cached);
    assert_eq!(second.image, first.image);
    assert_eq!(second.key, first.key);
    assert_eq!(w.fake.converter.jobs().len(), 1, "a hit ran the converter");
    assert!(temp_files(&w.cache_dir()).is_empty());
}

#[tokio::test]
async fn the_converter_gets_the_chain_bottom_layer_first() {
    let w = World::new();
    w.cache.convert(&w.request()).await.unwrap();
    let job = &w.fake.converter.jobs()[0];
    let rootfs_cache::capabilities::converter::SourceLayers::Overlay2 { diffs, top } = &job.source else {
        panic!("not an overlay2 job: {:?}", job.source)
    };
    assert_eq!(top, &w.top.canonicalize().unwrap());
    assert_eq!(diffs.len(), 2);
    assert_eq!(diffs[1], w.top.join("diff").canonicalize().unwrap(), "the top layer must be applied last");
}

#[tokio::test]
async fn a_new_agent_gives_a_new_key_and_a_new_image() {
    let w = World::new();
    let first = w.cache.convert(&w.request()).await.unwrap();
    let newer = agent(w.dir.path(), "vm-agent-2", "v2");
    let second = w.cache.convert(&Request::new(&w.top, &newer)).await.unwrap();
    assert!(!second.cached);
    assert_ne!(second.key, first.key);
    assert_ne!(second.image, first.image);
    // The same path with new bytes is a new agent too.
    std::fs::write(&w.agent, b"#!/bin/sh\necho v3\n").unwrap();
    let third = w.cache.convert(&w.request()).await.unwrap();
    assert!(!third.cached);
    assert_ne!(third.key, first.key);
}

#[tokio::test]
async fn a_recreated_layer_at_the_same_path_gives_a_new_key() {
    let w = World::new();
    let first = w.cache.convert(&w.request()).await.unwrap();
    // Delete the whole overlay2 directory and build the same chain again.
    std::fs::remove_dir_all(w.dir.path().join("overlay2")).unwrap();
    let top = standard_chain(&w.dir.path().join("overlay2"));
    assert_eq!(top, w.top);
    let second = w.cache.convert(&w.request()).await.unwrap();
    assert!(!second.cached, "served an image of a layer that no longer exists");
    assert_ne!(second.key, first.key);
}

#[tokio::test]
async fn size_and_converter_are_part_of_the_key() {
    let w = World::new();
    let plain = w.cache.convert(&w.request()).await.unwrap();
    let sized = w.cache.convert(&w.request().size(64 << 20)).await.unwrap();
    assert_ne!(plain.key, sized.key);
    assert!(!sized.cached);
}

#[tokio::test]
async fn a_truncated_image_is_rebuilt_not_served() {
    let w = World::new();
    let first = w.cache.convert(&w.request()).await.unwrap();
    let file = rootfs_cache_tests::open_entry_for_writing(&first.image);
    file.set_len(first.image_bytes / 2).unwrap();
    let second = w.cache.convert(&w.request()).await.unwrap();
    assert!(!second.cached);
    assert!(second.rebuilt_because.as_deref().unwrap().contains("bytes"), "{:?}", second.rebuilt_because);
    assert_eq!(std::fs::metadata(&second.image).unwrap().len(), first.image_bytes);
    assert_eq!(w.fake.converter.jobs().len(), 2);
}

#[tokio::test]
async fn a_zeroed_image_is_rebuilt_not_served() {
    let w = World::new();
    let first = w.cache.convert(&w.request()).await.unwrap();
    std::fs::write(&first.image, vec![0u8; first.image_bytes as usize]).unwrap();
    let second = w.cache.convert(&w.request()).await.unwrap();
    assert!(!second.cached);
    assert!(second.rebuilt_because.as_deref().unwrap().contains("magic"), "{:?}", second.rebuilt_because);
}

#[tokio::test]
async fn an_image_without_its_manifest_is_rebuilt() {
    let w = World::new();
    let first = w.cache.convert(&w.request()).await.unwrap();
    std::fs::remove_file(first.image.with_extension("json")).unwrap();
    let second = w.cache.convert(&w.request()).await.unwrap();
    assert!(!second.cached);
    assert!(second.image.with_extension("json").exists());
}

#[tokio::test]
async fn a_failed_conversion_returns_its_error_and_leaves_nothing() {
    let w = World::new();
    let before = snapshot(&w.cache_dir());
    w.fake.converter.set_behaviour(FakeBehaviour::Fail(Error::ConverterFailed {
        converter: "oci2rootfs".into(),
        exit_status: Some(1),
        stderr_tail: "layer is broken".into(),
    }));
    let err = w.cache.convert(&w.request()).await.unwrap_err();
    assert_eq!(err.class(), "converter-failed");
    assert!(err.to_string().contains("layer is broken"), "{err}");
    assert_eq!(snapshot(&w.cache_dir()), before);
}

#[tokio::test]
async fn a_converter_writing_garbage_is_reported_corrupt_and_nothing_is_published() {
    let w = World::new();
    w.fake.converter.set_behaviour(FakeBehaviour::WriteGarbage);
    let err = w.cache.convert(&w.request()).await.unwrap_err();
    assert_eq!(err.class(), "corrupt", "{err}");
    assert!(temp_files(&w.cache_dir()).is_empty());
    assert!(w.cache.list().await.unwrap().is_empty());
    assert_eq!(w.fake.mounter.mounted(), 0, "a mount outlived its request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_requests_build_once() {
    let w = Arc::new(World::new());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move { w.cache.convert(&w.request()).await.unwrap() }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(w.fake.converter.jobs().len(), 1, "the same key was built more than once");
    assert_eq!(outcomes.iter().filter(|o| !o.cached).count(), 1);
    assert!(outcomes.iter().all(|o| o.image == outcomes[0].image));
}

#[tokio::test]
async fn an_oci_layout_is_keyed_by_its_manifest_and_its_blobs_are_passed_in_order() {
    let w = World::new();
    let layout = w.dir.path().join("oci");
    standard_layout(&layout, IndexStyle::Skopeo);
    let outcome = w.cache.convert(&Request::new(&layout, &w.agent)).await.unwrap();
    assert_eq!(outcome.kind, SourceKind::OciLayout);
    let job = &w.fake.converter.jobs()[0];
    let rootfs_cache::capabilities::converter::SourceLayers::Oci { blobs, platform, .. } = &job.source else {
        panic!("not an OCI job")
    };
    assert_eq!(platform, "linux/amd64");
    assert_eq!(blobs.len(), 2);
    for blob in blobs {
        assert!(blob.media_type.ends_with("tar+gzip"));
        let bytes = std::fs::read(&blob.path).unwrap();
        assert_eq!(format!("sha256:{}", rootfs_cache_tests::sha256_hex(&bytes)), blob.digest);
    }
    // Re-staging a different image at the same path gives a new key.
    std::fs::remove_dir_all(&layout).unwrap();
    rootfs_cache_tests::oci::layout(
        &layout,
        &[rootfs_cache_tests::oci::tar(&[rootfs_cache_tests::oci::TarEntry::file("x", b"y", 0o644)])],
        "amd64",
        IndexStyle::WithPlatform,
    );
    let restaged = w.cache.convert(&Request::new(&layout, &w.agent)).await.unwrap();
    assert_ne!(restaged.key, outcome.key);
}

#[tokio::test]
async fn a_layout_for_another_platform_only_is_refused() {
    let w = World::new();
    let layout = w.dir.path().join("oci");
    standard_layout(&layout, IndexStyle::WithPlatform);
    let err = w.cache.convert(&Request::new(&layout, &w.agent).platform("linux/arm64")).await.unwrap_err();
    assert_eq!(err.class(), "unsupported-source");
    assert!(err.to_string().contains("no image for linux/arm64 (found: linux/amd64)"), "{err}");
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused() {
    let w = World::new();
    let layout = w.dir.path().join("oci");
    standard_layout(&layout, IndexStyle::Skopeo);
    // Corrupt the manifest blob the index points at.
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_owned();
    let blob = layout.join("blobs/sha256").join(digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let err = w.cache.convert(&Request::new(&layout, &w.agent)).await.unwrap_err();
    assert_eq!(err.class(), "unsupported-source");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[tokio::test]
async fn a_source_outside_the_policy_roots_is_denied() {
    let w = World::with_policy(|dir| {
        let allowed = dir.join("allowed");
        std::fs::create_dir_all(&allowed).unwrap();
        Policy { source_roots: Some(vec![allowed.canonicalize().unwrap()]), ..Policy::default() }
    });
    let err = w.cache.convert(&w.request()).await.unwrap_err();
    assert_eq!(err.class(), "denied");
    assert!(err.to_string().contains("source_roots"), "{err}");
}

#[tokio::test]
async fn a_converter_outside_the_policy_is_denied_naming_the_rule() {
    let w = World::with_policy(|_| Policy { converters: Some(vec!["exact".into()]), ..Policy::default() });
    let err = w.cache.convert(&w.request().converter(rootfs_cache::ConverterSpec::Oci2rootfs)).await.unwrap_err();
    assert!(matches!(&err, Error::Denied { rule, .. } if rule == "converters"), "{err}");
}

#[tokio::test]
async fn bad_input_gives_a_typed_error_and_leaves_the_cache_unchanged() {
    let w = World::new();
    w.cache.convert(&w.request()).await.unwrap();
    let before = snapshot(&w.cache_dir());
    let d = w.dir.path();
    let file = d.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let neither = d.join("neither");
    std::fs::create_dir_all(neither.join("something")).unwrap();
    // A chain whose lower entry points outside the overlay2 root.
    let mut evil = Overlay2::new(&d.join("evil"));
    let evil_top = evil.layer(|l| {
        l.file("/a", b"a", 0o644);
    });
    std::fs::write(evil_top.join("lower"), "l/ESCAPE").unwrap();
    std::os::unix::fs::symlink("../../overlay2", d.join("evil/l/ESCAPE")).unwrap();

    let cases: Vec<(&str, Request, &str)> = vec![
        ("missing source", Request::new(d.join("missing"), &w.agent), "not-found"),
        ("file as source", Request::new(&file, &w.agent), "unsupported-source"),
        ("directory of neither kind", Request::new(&neither, &w.agent), "unsupported-source"),
        ("lower escaping the root", Request::new(&evil_top, &w.agent), "unsupported-source"),
        ("missing agent", Request::new(&w.top, d.join("no-agent")), "not-found"),
        ("directory as agent", Request::new(&w.top, d), "invalid-request"),
        ("size of zero", w.request().size(0), "invalid-request"),
        ("size too small", w.request().size(4096), "invalid-request"),
        ("size of 2^64-1", w.request().size(u64::MAX), "invalid-request"),
        ("unknown platform form", w.request().platform("amd64"), "invalid-request"),
        ("empty source", Request::new("", &w.agent), "invalid-request"),
    ];
    for (what, request, class) in cases {
        let err = w.cache.convert(&request).await.expect_err(what);
        assert_eq!(err.class(), class, "{what}: {err}");
        assert!(!err.to_string().contains('\n'), "{what}: a multi-line error: {err}");
        assert_eq!(snapshot(&w.cache_dir()), before, "{what} changed the cache");
    }
}

#[tokio::test]
async fn list_and_inspect_describe_entries() {
    let w = World::new();
    let outcome = w.cache.convert(&w.request().size(16 << 20)).await.unwrap();
    let entries = w.cache.list().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].key, outcome.key);
    assert_eq!(entries[0].problem, None);
    assert_eq!(entries[0].image_bytes, 16 << 20);
    let info = w.cache.inspect(&outcome.image).await.unwrap();
    assert!(info.magic);
    assert_eq!(info.block_size, 4096);
    assert_eq!(info.blocks_count, 4096);
    assert_eq!(info.geometry_error, None);
    // A truncated entry is listed with its problem.
    rootfs_cache_tests::open_entry_for_writing(&outcome.image).set_len(4096).unwrap();
    let entries = w.cache.list().await.unwrap();
    assert!(entries[0].problem.is_some());
    let info = w.cache.inspect(&outcome.image).await.unwrap();
    assert!(info.geometry_error.unwrap().contains("but the file has 4096 bytes"));
}

#[tokio::test]
async fn the_sweep_detaches_what_dead_builders_left_through_the_mounter_and_audits_it() {
    let w = World::with_policy(|dir| Policy { audit_log: Some(dir.join("audit.jsonl")), ..Policy::default() });
    let tmp = w.cache_dir().join("tmp");
    let key = "ab".repeat(32);
    let left = tmp.join(format!("{key}.4242-0.ext4"));
    w.fake.mounter.leave_attached("/dev/loop42", &left);
    // A device on a file that carries no key is not the cache's to detach.
    w.fake.mounter.leave_attached("/dev/loop43", tmp.join("stray.ext4"));
    // Nor is one outside the cache's tmp/.
    w.fake.mounter.leave_attached("/dev/loop44", w.dir.path().join(format!("{key}.1-0.ext4")));

    let report = w.cache.sweep().await.unwrap();
    assert_eq!(report.detached_loop_devices, vec!["/dev/loop42".to_owned()]);
    let detached = w.fake.mounter.detached();
    assert_eq!(detached.len(), 1, "{detached:?}");
    assert_eq!(detached[0].backing, left);

    let log = std::fs::read_to_string(w.dir.path().join("audit.jsonl")).unwrap();
    let line = log.lines().find(|l| l.contains("\"detach\"")).expect("the detach is in the audit log");
    assert!(line.contains("/dev/loop42") && line.contains(&key), "{line}");
}

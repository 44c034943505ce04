//! Images by name (`docker://…`), end to end through the CLI, against a real registry:
//! Debian's `docker-registry` (distribution 2.8) on a loopback port, images pushed with
//! `skopeo copy --preserve-digests` from OCI layouts (the Docker fixtures' when
//! `ROOTFS_FIXTURES` names them, and layouts the tests generate), every converted image
//! compared entry by entry with `umoci unpack` of the same layout.

#[path = "../../host/registry/tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_cache_tests::compare::{added_by_image, differences};
use rootfs_cache_tests::oci::{self, IndexStyle, TarEntry};
use rootfs_cache_tests::{ReadOnlyMount, agent, cli, require_root, snapshot};
use support::{Registry, Setup, require};

/// The tools every test here needs.
const TOOLS: &[&str] = &["docker-registry", "skopeo"];

/// Pushes the image `oci:LAYOUT:latest` (or every image with `all`) to `registry` as `name`.
fn push(layout: &Path, registry: &Registry, name: &str, all: bool) {
    oci::skopeo_push(layout, &registry.host, name, all);
}

/// A small one-layer image whose file says `marker`, for `arch`.
fn small_layout(dir: &Path, marker: &str, arch: &str) -> PathBuf {
    let layout = dir.join(format!("small-{marker}-{arch}"));
    let layer = oci::tar(&[TarEntry::dir("etc/", 0o755), TarEntry::file("etc/marker", marker.as_bytes(), 0o644)]);
    oci::layout(&layout, &[layer], arch, IndexStyle::WithPlatform);
    layout
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `rootfs-cache --cache-dir CACHE convert SOURCE --agent AGENT --json EXTRA…`.
fn convert(cache: &Path, source: &str, agent: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args: Vec<&OsStr> = vec![os("--cache-dir"), cache.as_os_str(), os("convert"), os(source)];
    args.extend([os("--agent"), agent.as_os_str(), os("--json")]);
    args.extend(extra.iter().map(|e| os(e)));
    let (code, stdout, stderr) = cli(&args);
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (code, json, stderr)
}

/// The registry's log lines of requests rootfs-cache made (its user agent), completed with
/// or without an error.
fn our_lines(registry: &Registry) -> Vec<String> {
    registry
        .log()
        .lines()
        .filter(|l| l.contains("msg=\"response completed") && l.contains("useragent=rootfs-cache/"))
        .map(str::to_owned)
        .collect()
}

/// GET requests for blob `hex` made by rootfs-cache.
fn blob_gets(registry: &Registry, hex: &str) -> usize {
    our_lines(registry)
        .iter()
        .filter(|l| l.contains("http.request.method=GET") && l.contains(&format!("/blobs/sha256:{hex}\"")))
        .count()
}

/// Requests rootfs-cache made.
fn our_requests(registry: &Registry) -> usize {
    our_lines(registry).len()
}

/// The layer digests (hex) of the single-image layout `layout`.
fn layer_hexes(layout: &Path) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap()).unwrap();
    manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()[7..].to_owned()).collect()
}

#[test]
fn a_pulled_image_matches_umoci_and_a_tag_pulled_before_is_served_offline() {
    require_root!();
    if !require(&["docker-registry", "skopeo", "umoci"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = oci::base_or_feature_layout(dir.path());
    let registry = Registry::start(Setup::default());
    push(&layout, &registry, "team/app:v1", false);
    let agent = agent(dir.path(), "vm-agent", "pull");
    let cache = dir.path().join("cache");
    let source = format!("docker://{}/team/app:v1", registry.host);
    // The minimal profile: this test is about pulling, not the journal.
    let insecure = ["--insecure-registry", registry.host.as_str(), "--ext4-profile", "minimal"];

    let (code, first, stderr) = convert(&cache, &source, &agent, &insecure);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first["cached"], false);
    assert_eq!(first["kind"], "registry");
    assert_eq!(first["reference"], source.as_str());
    assert!(first["manifest_digest"].as_str().unwrap().starts_with("sha256:"));
    // Every layer downloaded once, into the blob store.
    for hex in layer_hexes(&layout) {
        assert_eq!(blob_gets(&registry, &hex), 1, "blob {hex}");
        assert!(cache.join("blobs/sha256").join(&hex).is_file());
    }

    // Entry by entry, what umoci unpacks from the same layout.
    let image = PathBuf::from(first["image"].as_str().unwrap());
    let mnt = ReadOnlyMount::new(&image);
    let rootfs = oci::umoci_unpack(&layout, &dir.path().join("bundle"));
    let added = added_by_image(&rootfs);
    let ignore: Vec<&[u8]> = added.iter().map(Vec::as_slice).collect();
    let diffs = differences(&rootfs, &mnt.path, &ignore);
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
    drop(mnt);

    // Converting the layout itself is another kind of source (with another key), but a
    // second cache pulling the same image agrees.
    let other = dir.path().join("other-cache");
    let (code, again, stderr) = convert(&other, &source, &agent, &insecure);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again["key"], first["key"]);
    assert_eq!(again["cached"], false);

    // With the registry gone, the tag resolved before is a hit (`--pull missing`).
    drop(registry);
    let before = snapshot(&cache);
    let (code, hit, stderr) = convert(&cache, &source, &agent, &["--ext4-profile", "minimal"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((hit["cached"].as_bool(), &hit["key"]), (Some(true), &first["key"]));
    let (code, hit, stderr) = convert(&cache, &source, &agent, &["--pull", "never", "--ext4-profile", "minimal"]);
    assert_eq!((code, hit["cached"].as_bool()), (0, Some(true)), "{stderr}");
    // `always` must ask the registry, which is gone: an I/O error, and nothing changes.
    let (code, _, stderr) = convert(&cache, &source, &agent, &["--pull", "always", "--ext4-profile", "minimal"]);
    assert_eq!(code, 11, "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert_eq!(snapshot(&cache), before, "a failed pull changed the cache");
}

#[test]
fn pull_policies_unknown_tags_and_the_policy_file() {
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(Setup::default());
    push(&small_layout(dir.path(), "one", "amd64"), &registry, "app:latest", false);
    let agent = agent(dir.path(), "vm-agent", "pull");
    let cache = dir.path().join("cache");
    let source = format!("docker://{}/app", registry.host);
    let insecure = ["--insecure-registry", registry.host.as_str(), "--ext4-profile", "minimal"];

    // Nothing local: `never` fails clearly and changes nothing.
    let (code, _, stderr) = convert(&cache, &source, &agent, &["--pull", "never"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("never pulled into this cache"), "{stderr}");
    assert_eq!(our_requests(&registry), 0);

    let (code, first, stderr) = convert(&cache, &source, &agent, &insecure);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first["reference"], format!("{source}:latest"));

    // A new image under the same tag: `missing` keeps what it resolved, `always` sees it.
    push(&small_layout(dir.path(), "two", "amd64"), &registry, "app:latest", false);
    let (_, same, _) = convert(&cache, &source, &agent, &insecure);
    assert_eq!((same["cached"].as_bool(), &same["key"]), (Some(true), &first["key"]));
    let mut always = insecure.to_vec();
    always.extend(["--pull", "always"]);
    let (code, new, stderr) = convert(&cache, &source, &agent, &always);
    assert_eq!(code, 0, "{stderr}");
    assert_ne!(new["key"], first["key"]);
    assert_ne!(new["manifest_digest"], first["manifest_digest"]);
    assert_eq!(new["cached"], false);
    // …and from then on `missing` serves the new one.
    let (_, later, _) = convert(&cache, &source, &agent, &insecure);
    assert_eq!(later["key"], new["key"]);

    // An unknown tag and an unknown repository are not found; nothing changes.
    let before = snapshot(&cache);
    for missing in [format!("{source}:nope"), format!("docker://{}/nobody/here:v1", registry.host)] {
        let (code, _, stderr) = convert(&cache, &missing, &agent, &insecure);
        assert_eq!(code, 3, "{missing}: {stderr}");
        assert!(stderr.contains("not found"), "{stderr}");
    }
    let (code, _, stderr) = convert(&cache, "docker://127.0.0.1:1/Bad/Name", &agent, &insecure);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(snapshot(&cache), before);

    // A policy file that does not list the registry: denied, and nothing is sent to it.
    let sent = our_requests(&registry);
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "registries = [\"registry.example.com\"]\n").unwrap();
    let mut args: Vec<&OsStr> = vec![os("--cache-dir"), cache.as_os_str(), os("--policy"), policy.as_os_str()];
    args.extend([os("convert"), os(&source), os("--agent"), agent.as_os_str(), os("--pull"), os("always")]);
    let (code, _, stderr) = cli(&args);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("`registries`") && stderr.contains(&registry.host), "{stderr}");
    assert_eq!(our_requests(&registry), sent, "a denied registry was contacted");
    // Listed, but not as insecure: `--insecure-registry` cannot widen the policy.
    std::fs::write(&policy, format!("registries = [\"{}\"]\n", registry.host)).unwrap();
    args.extend([os("--insecure-registry"), os(&registry.host)]);
    let (code, _, stderr) = cli(&args);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("insecure_registries"), "{stderr}");
}

#[test]
fn a_two_platform_index_gives_the_platform_asked_for() {
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(Setup::default());
    // One layout holding both images under one index, as `skopeo copy --all` pushes it.
    let amd = small_layout(dir.path(), "amd", "amd64");
    let arm = small_layout(dir.path(), "arm", "arm64");
    let both = dir.path().join("both");
    std::fs::create_dir_all(both.join("blobs/sha256")).unwrap();
    std::fs::write(both.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for layout in [&amd, &arm] {
        for blob in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            std::fs::copy(blob.path(), both.join("blobs/sha256").join(blob.file_name())).unwrap();
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut descriptor = index["manifests"][0].clone();
        descriptor.as_object_mut().unwrap().remove("annotations");
        manifests.push(descriptor);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
    }))
    .unwrap();
    let index_digest = oci::write_blob(&both, &index);
    let top = serde_json::json!({ "schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest, "size": index.len(),
        "annotations": { "org.opencontainers.image.ref.name": "latest" } }] });
    std::fs::write(both.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    push(&both, &registry, "multi:v1", true);

    let agent = agent(dir.path(), "vm-agent", "pull");
    let cache = dir.path().join("cache");
    let source = format!("docker://{}/multi:v1", registry.host);
    let mut args = vec!["--insecure-registry", registry.host.as_str(), "--ext4-profile", "minimal"];
    let (code, amd64, stderr) = convert(&cache, &source, &agent, &args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(amd64["manifest_digest"], manifests[0]["digest"]);
    args.extend(["--platform", "linux/arm64"]);
    let (code, arm64, stderr) = convert(&cache, &source, &agent, &args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(arm64["manifest_digest"], manifests[1]["digest"]);
    assert_ne!(arm64["key"], amd64["key"]);
    let before = snapshot(&cache);
    let last = args.len() - 1;
    args[last] = "linux/s390x";
    let (code, _, stderr) = convert(&cache, &source, &agent, &args);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("no image for linux/s390x (found: linux/amd64, linux/arm64)"), "{stderr}");
    assert_eq!(snapshot(&cache), before);
}

#[test]
fn sixteen_concurrent_converts_of_one_name_download_each_blob_once() {
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(Setup::default());
    let layout = dir.path().join("big");
    let layers: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let data = rootfs_cache_tests::incompressible(2 << 20, i);
            oci::tar(&[TarEntry::dir("data/", 0o755), TarEntry::file(&format!("data/blob{i}"), &data, 0o644)])
        })
        .collect();
    oci::layout(&layout, &layers, "amd64", IndexStyle::Skopeo);
    push(&layout, &registry, "herd:v1", false);
    let agent = agent(dir.path(), "vm-agent", "pull");
    let cache = dir.path().join("cache");
    let source = format!("docker://{}/herd:v1", registry.host);
    let bin = rootfs_cache_tests::rootfs_cache_bin();
    let children: Vec<_> = (0..16)
        .map(|_| {
            Command::new(&bin)
                .arg("--cache-dir")
                .arg(&cache)
                .args([
                    "convert",
                    &source,
                    "--json",
                    "--ext4-profile",
                    "minimal",
                    "--insecure-registry",
                    &registry.host,
                ])
                .arg("--agent")
                .arg(&agent)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut keys = std::collections::BTreeSet::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        keys.insert(json["key"].as_str().unwrap().to_owned());
    }
    assert_eq!(keys.len(), 1);
    for hex in layer_hexes(&layout) {
        assert_eq!(blob_gets(&registry, &hex), 1, "blob {hex} was downloaded more than once");
    }
    assert_eq!(std::fs::read_dir(cache.join("blobs/tmp")).unwrap().count(), 0);
}

/// `rootfs-cache --cache-dir CACHE gc --max-bytes MAX --json`'s report.
fn gc(cache: &Path, max_bytes: u64) -> serde_json::Value {
    let max = max_bytes.to_string();
    let (code, stdout, stderr) =
        cli(&[os("--cache-dir"), cache.as_os_str(), os("gc"), os("--max-bytes"), os(&max), os("--json")]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// The blobs of a single-image layout (layers, config, image manifest), by hex, with their
/// lengths.
fn layout_blobs(layout: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.metadata().unwrap().len())
        })
        .collect()
}

/// The names in `<cache>/blobs/<area>`.
fn blob_names(cache: &Path, area: &str) -> BTreeSet<String> {
    std::fs::read_dir(cache.join("blobs").join(area))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Holds the store's lock of the digest `hex`, as a pull downloading or holding the blob does.
fn hold_blob_lock(cache: &Path, hex: &str) -> std::fs::File {
    let path = cache.join("blobs/locks").join(format!("{hex}.lock"));
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
    file
}

#[test]
fn gc_evicts_a_pulled_image_with_only_its_own_blobs_and_leaves_a_pull_in_progress_alone() {
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(Setup::default());
    let agent = agent(dir.path(), "vm-agent", "pull");
    let cache = dir.path().join("cache");
    let insecure = ["--insecure-registry", registry.host.as_str(), "--ext4-profile", "minimal"];
    let base_data = rootfs_cache_tests::incompressible(256 << 10, 1);
    let base = oci::tar(&[TarEntry::dir("etc/", 0o755), TarEntry::file("etc/base", &base_data, 0o644)]);
    let mut layouts = Vec::new();
    let mut keys = Vec::new();
    for (i, name) in ["first", "second"].into_iter().enumerate() {
        let data = rootfs_cache_tests::incompressible(64 << 10, 10 + i as u64);
        let own = oci::tar(&[TarEntry::dir("app/", 0o755), TarEntry::file(&format!("app/{name}"), &data, 0o644)]);
        let layout = dir.path().join(name);
        oci::layout(&layout, &[base.clone(), own], "amd64", IndexStyle::Skopeo);
        push(&layout, &registry, &format!("shared/{name}:v1"), false);
        let (code, json, stderr) =
            convert(&cache, &format!("docker://{}/shared/{name}:v1", registry.host), &agent, &insecure);
        assert_eq!(code, 0, "{stderr}");
        let key = json["key"].as_str().unwrap().to_owned();
        // The first is the least recently used.
        rootfs_cache_tests::set_mtime(&cache.join(format!("images/{key}.json")), 1_000_000 + i as i64, 0);
        keys.push(key);
        layouts.push(layout);
    }
    let (first, second) = (layout_blobs(&layouts[0]), layout_blobs(&layouts[1]));
    let shared: Vec<&String> = first.keys().filter(|h| second.contains_key(*h)).collect();
    assert_eq!(shared.len(), 1, "the two images share their base layer only");
    assert_eq!(blob_gets(&registry, shared[0]), 1, "the second image downloaded the base layer again");
    let stored = blob_names(&cache, "sha256");
    assert_eq!(stored, first.keys().chain(second.keys()).cloned().collect(), "the store holds both images");

    // A pull in progress: a stored blob whose lock it holds, and a download under way.
    let held = rootfs_cache_tests::incompressible(1000, 20);
    let held_hex = rootfs_cache_tests::sha256_hex(&held);
    std::fs::write(cache.join("blobs/sha256").join(&held_hex), &held).unwrap();
    let held_lock = hold_blob_lock(&cache, &held_hex);
    let downloading_hex = "d".repeat(64);
    let downloading_lock = hold_blob_lock(&cache, &downloading_hex);
    let partial = cache.join(format!("blobs/tmp/partial-{downloading_hex}.4242-0"));
    std::fs::write(&partial, b"half a blob").unwrap();
    // And garbage: a blob no entry needs, nobody holds.
    let garbage = rootfs_cache_tests::incompressible(3000, 21);
    let garbage_hex = rootfs_cache_tests::sha256_hex(&garbage);
    std::fs::write(cache.join("blobs/sha256").join(&garbage_hex), &garbage).unwrap();
    drop(hold_blob_lock(&cache, &garbage_hex));

    // Whatever the limit, the garbage goes, with its lock file; the held blob stays.
    let report = gc(&cache, u64::MAX);
    assert_eq!(report["removed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["blob_bytes_freed"], 3000, "{report}");
    let mut expected = stored.clone();
    expected.insert(held_hex.clone());
    assert_eq!(blob_names(&cache, "sha256"), expected);
    assert!(!blob_names(&cache, "locks").contains(&format!("{garbage_hex}.lock")));

    // A build running in another process (its key lock held) may be about to read a blob
    // handed out since it took its lock: such a blob stays until the build is over; an older
    // one goes.
    let build_lock_path = cache.join(format!("locks/{}.lock", "e".repeat(64)));
    let build_lock = std::fs::File::create(&build_lock_path).unwrap();
    rustix::fs::flock(&build_lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    rootfs_cache_tests::set_mtime(&build_lock_path, 2_000_000_000, 0);
    let [older, newer] = [(1_999_999_999, 22), (2_000_000_001, 23)].map(|(mtime, seed)| {
        let bytes = rootfs_cache_tests::incompressible(500, seed);
        let path = cache.join("blobs/sha256").join(rootfs_cache_tests::sha256_hex(&bytes));
        std::fs::write(&path, &bytes).unwrap();
        rootfs_cache_tests::set_mtime(&path, mtime, 0);
        path
    });
    let report = gc(&cache, u64::MAX);
    assert_eq!(report["blob_bytes_freed"], 500, "{report}");
    assert!(!older.exists() && newer.exists());
    drop(build_lock);
    let report = gc(&cache, u64::MAX);
    assert_eq!(report["blob_bytes_freed"], 500, "{report}");
    assert!(!newer.exists());
    assert!(!build_lock_path.exists(), "gc took and dropped the free build lock, which removes its file");

    // One byte over: the least recently used image goes with its own layer, config and
    // manifest; the shared base layer stays, and so does the pull in progress.
    let size = report["bytes_after"].as_u64().unwrap();
    let report = gc(&cache, size - 1);
    let removed: Vec<&str> = report["removed"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(removed, [keys[0].as_str()], "{report}");
    let own: u64 = first.iter().filter(|(h, _)| !second.contains_key(*h)).map(|(_, len)| len).sum();
    assert_eq!(report["blob_bytes_freed"], own, "{report}");
    let mut expected: BTreeSet<String> = second.keys().cloned().collect();
    expected.insert(held_hex.clone());
    assert_eq!(blob_names(&cache, "sha256"), expected);
    let locks = blob_names(&cache, "locks");
    assert!(locks.contains(&format!("{held_hex}.lock")) && locks.contains(&format!("{downloading_hex}.lock")));
    assert!(first.keys().filter(|h| !second.contains_key(*h)).all(|h| !locks.contains(&format!("{h}.lock"))));
    assert!(partial.exists(), "a download in progress was disturbed");
    drop((held_lock, downloading_lock));

    // The first image again: only its own blobs are downloaded; the base is still stored.
    let (code, _, stderr) = convert(&cache, &format!("docker://{}/shared/first:v1", registry.host), &agent, &insecure);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(blob_gets(&registry, shared[0]), 1);
    // The second, with the registry gone: still a hit (its documents stayed).
    let second_source = format!("docker://{}/shared/second:v1", registry.host);
    drop(registry);
    let (code, hit, stderr) = convert(&cache, &second_source, &agent, &["--ext4-profile", "minimal"]);
    assert_eq!(
        (code, hit["cached"].as_bool(), hit["key"].as_str()),
        (0, Some(true), Some(keys[1].as_str())),
        "{stderr}"
    );
}

/// Standard base64 of `bytes`, as `config.json`'s `auth` holds `user:password`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// Removes a directory made under `/etc/docker/certs.d` when dropped.
struct CertsDir(PathBuf);

impl Drop for CertsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn tls_with_a_test_ca_and_basic_auth_from_config_json() {
    require_root!();
    if !require(&["docker-registry", "skopeo", "openssl", "htpasswd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = support::make_pki();
    let htpasswd = support::make_htpasswd(dir.path(), "puller", "s3cret-pass");
    let registry = Registry::start(Setup { tls: Some((pki.cert.clone(), pki.key.clone())), htpasswd: Some(htpasswd) });
    let layout = small_layout(dir.path(), "tls", "amd64");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds=puller:s3cret-pass"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/private/app:v1", registry.host))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    let agent = agent(dir.path(), "vm-agent", "pull");
    let cache = dir.path().join("cache");
    let docker_config = dir.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let source = format!("docker://{}/private/app:v1", registry.host);
    let audit = dir.path().join("audit.jsonl");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, format!("registries = [\"{}\"]\naudit_log = \"{}\"\n", registry.host, audit.display()))
        .unwrap();
    let run = || {
        let out = Command::new(rootfs_cache_tests::rootfs_cache_bin())
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--policy")
            .arg(&policy)
            .args(["convert", &source, "--json", "--ext4-profile", "minimal", "--agent"])
            .arg(&agent)
            .env("DOCKER_CONFIG", &docker_config)
            .env_remove("REGISTRY_AUTH_FILE")
            .env("XDG_RUNTIME_DIR", dir.path().join("no-runtime-dir"))
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    // An unknown CA: the error says where to put one.
    let ca_dir = PathBuf::from("/etc/docker/certs.d").join(&registry.host);
    let (code, stderr) = run();
    assert_eq!(code, 11, "{stderr}");
    assert!(stderr.contains(&format!("{}/ca.crt", ca_dir.display())), "{stderr}");

    // With the CA where Docker looks for it, but no credentials: `docker login`.
    std::fs::create_dir_all(&ca_dir).unwrap();
    let _certs = CertsDir(ca_dir.clone());
    std::fs::copy(&pki.ca, ca_dir.join("ca.crt")).unwrap();
    let (code, stderr) = run();
    assert_eq!(code, 11, "{stderr}");
    assert!(stderr.contains("docker login"), "{stderr}");

    // With config.json's credentials it pulls; the password is nowhere.
    let auth = base64(b"puller:s3cret-pass");
    std::fs::write(
        docker_config.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host),
    )
    .unwrap();
    let (code, stderr) = run();
    assert_eq!(code, 0, "{stderr}");
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(audit.contains("\"fetch-blobs\""), "{audit}");
    for secret in ["s3cret-pass", auth.as_str()] {
        assert!(!audit.contains(secret) && !stderr.contains(secret), "a secret leaked");
    }
}

/// Every file of `<cache>/blobs/sha256` hashes to its name, and `<cache>/blobs/tmp` is empty.
fn blob_store_is_clean(cache: &Path) {
    for entry in std::fs::read_dir(cache.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(rootfs_cache_tests::sha256_hex(&bytes), entry.file_name().to_string_lossy(), "a blob is corrupt");
    }
    let left: Vec<_> = std::fs::read_dir(cache.join("blobs/tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left in blobs/tmp: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_pull_leaves_only_what_sweep_removes_and_corrupt_blobs_are_never_used() {
    use support::{Fault, Proxy};
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(Setup::default());
    let layout = dir.path().join("layout");
    let data = rootfs_cache_tests::incompressible(1 << 20, 7);
    let layer = oci::tar(&[TarEntry::dir("data/", 0o755), TarEntry::file("data/blob", &data, 0o644)]);
    oci::layout(&layout, &[layer], "amd64", IndexStyle::Skopeo);
    push(&layout, &registry, "app:v1", false);
    let agent = agent(dir.path(), "vm-agent", "pull");
    let cache = dir.path().join("cache");
    let bin = rootfs_cache_tests::rootfs_cache_bin();
    let convert_through = |proxy: &Proxy| {
        let mut command = Command::new(&bin);
        command
            .arg("--cache-dir")
            .arg(&cache)
            .args(["convert", &format!("docker://{}/app:v1", proxy.host), "--json", "--ext4-profile", "minimal"])
            .args(["--insecure-registry", &proxy.host, "--agent"])
            .arg(&agent)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };

    // A download that stalls halfway, killed: a partial file, which `sweep` removes.
    let proxy = Proxy::start(registry.host.clone(), Fault::Stall, std::time::Duration::ZERO).await;
    let mut child = convert_through(&proxy).spawn().unwrap();
    let tmp = cache.join("blobs/tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some()) {
        assert!(std::time::Instant::now() < deadline, "no download started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(proxy);
    let (code, stdout, stderr) = cli(&[os("--cache-dir"), cache.as_os_str(), os("sweep"), os("--json")]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let removed: Vec<&str> = report["removed"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(removed.iter().any(|r| r.starts_with("blobs/tmp/partial-")), "{stdout}");
    blob_store_is_clean(&cache);
    assert_eq!(std::fs::read_dir(cache.join("images")).unwrap().count(), 0);

    // Corrupt on every attempt: `corrupt` (exit 9), and nothing corrupt is kept.
    let proxy = Proxy::start(registry.host.clone(), Fault::Corrupt(usize::MAX), std::time::Duration::ZERO).await;
    let out = convert_through(&proxy).output().unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    blob_store_is_clean(&cache);
    assert_eq!(std::fs::read_dir(cache.join("images")).unwrap().count(), 0);
    drop(proxy);

    // Corrupt once: retried, and the image is built.
    let proxy = Proxy::start(registry.host.clone(), Fault::Corrupt(1), std::time::Duration::ZERO).await;
    let out = convert_through(&proxy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    blob_store_is_clean(&cache);
}

#[test]
fn a_layer_that_decompresses_past_max_image_bytes_is_denied_and_nothing_is_published() {
    require_root!();
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(Setup::default());
    // 256 MiB of zeroes: a gzip layer of about 250 KiB.
    let zeroes = vec![0u8; 256 << 20];
    let layer = oci::tar(&[TarEntry::dir("opt/", 0o755), TarEntry::file("opt/bomb", &zeroes, 0o644)]);
    let layout = dir.path().join("bomb");
    oci::layout(&layout, &[layer], "amd64", IndexStyle::WithPlatform);
    push(&layout, &registry, "bomb:latest", false);
    let agent = agent(dir.path(), "vm-agent", "pull");
    let cache = dir.path().join("cache");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "registries = [\"{0}\"]\ninsecure_registries = [\"{0}\"]\nmax_image_bytes = {1}\n",
            registry.host,
            64 << 20
        ),
    )
    .unwrap();
    let source = format!("docker://{}/bomb", registry.host);
    let args: Vec<&OsStr> = vec![
        os("--cache-dir"),
        cache.as_os_str(),
        os("--policy"),
        policy.as_os_str(),
        os("convert"),
        os(&source),
        os("--agent"),
        agent.as_os_str(),
    ];
    let (code, _, stderr) = cli(&args);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("`max_image_bytes`") && stderr.contains("unpacks past the limit"), "{stderr}");
    // Nothing was published and no temporary image is left; the verified blobs stay in the
    // store (a cache of the registry, which gc empties).
    let images: Vec<_> = std::fs::read_dir(cache.join("images")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(images.is_empty(), "published: {images:?}");
    let tmp: Vec<_> = std::fs::read_dir(cache.join("tmp")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
}

//! The guest's whole flows (convert, inspect, list, sweep, gc, verify),
//! natively, against the fake host over real files: overlay2 chains and OCI
//! layouts made in temporary directories, and a real cache directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rootfs_cache_guest::fake::{Call, Capability, ConverterOutput, DEFAULT_IMAGE_BYTES, FakeHost, write_image};
use rootfs_cache_guest::flow::{AGENT_MODE, AGENT_TARGET, Cache};
use rootfs_cache_guest::key::sha256_hex;
use rootfs_cache_guest::manifest::Manifest;
use rootfs_cache_guest::wit::host::FsckResult;
use rootfs_cache_guest::wit::types::{
    ConvertRequest, ConverterFailure, Denial, Error, Origin, Outcome, PullPolicy, RemoteOptions, RemoteVerify,
    SourceKind,
};

const MIB: u64 = 1 << 20;

/// A Docker-shaped overlay2 chain under `root`: one layer per id, the first
/// the base, each with a file in its `diff/`. Returns the top layer's
/// directory.
fn overlay2(root: &Path, ids: &[&str]) -> PathBuf {
    std::fs::create_dir_all(root.join("l")).unwrap();
    let mut lower: Vec<String> = Vec::new();
    let mut top = PathBuf::new();
    for id in ids {
        let dir = root.join(id.to_lowercase());
        std::fs::create_dir_all(dir.join("diff")).unwrap();
        std::fs::write(dir.join("diff").join(format!("{id}.txt")), id).unwrap();
        std::fs::write(dir.join("link"), id).unwrap();
        if !lower.is_empty() {
            std::fs::write(dir.join("lower"), lower.join(":")).unwrap();
        }
        std::os::unix::fs::symlink(format!("../{}/diff", id.to_lowercase()), root.join("l").join(id)).unwrap();
        lower.insert(0, format!("l/{id}"));
        top = dir;
    }
    top
}

/// Writes `bytes` as a blob of the layout at `root`; returns its digest.
fn blob(root: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    std::fs::write(root.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

/// The descriptor JSON of a blob.
fn descriptor(media_type: &str, digest: &str, size: usize, extra: &str) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}{extra}}}"#)
}

/// An OCI image layout at `root` with one linux/amd64 image of two gzip
/// layers. Returns the manifest's digest, and the layers' digests and diff
/// IDs.
fn oci_layout(root: &Path) -> (String, Vec<(String, String)>) {
    oci_layout_of(root, &[b"layer one", b"layer two"])
}

/// An OCI image layout at `root` with one linux/amd64 image of these gzip
/// layers, bottom first. Returns what [`oci_layout`] does.
fn oci_layout_of(root: &Path, layer_bytes: &[&[u8]]) -> (String, Vec<(String, String)>) {
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    let layers: Vec<(String, String, usize)> = layer_bytes
        .iter()
        .map(|bytes| {
            (blob(root, bytes), format!("sha256:{}", sha256_hex(&[bytes, &b" unpacked"[..]].concat())), bytes.len())
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|(_, id, _)| format!("\"{id}\"")).collect();
    let config = format!(
        r#"{{"os":"linux","architecture":"amd64","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_digest = blob(root, config.as_bytes());
    let layer_descriptors: Vec<String> = layers.iter().map(|(d, _, size)| descriptor(gzip, d, *size, "")).collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len(), ""),
        layer_descriptors.join(",")
    );
    let manifest_digest = blob(root, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        descriptor(
            "application/vnd.oci.image.manifest.v1+json",
            &manifest_digest,
            manifest.len(),
            r#","platform":{"os":"linux","architecture":"amd64"}"#
        )
    );
    std::fs::write(root.join("index.json"), index).unwrap();
    (manifest_digest, layers.into_iter().map(|(d, id, _)| (d, id)).collect())
}

/// A cache with its fake host, an agent and an overlay2 chain `a`, `b`, `c`
/// (top) to convert.
struct Env {
    dir: tempfile::TempDir,
    host: FakeHost,
    agent: String,
    source: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost::new(dir.path().join("cache")).unwrap();
        let agent = dir.path().join("vm-agent");
        std::fs::write(&agent, b"#!/bin/sh\necho agent\n").unwrap();
        let top = overlay2(&dir.path().join("overlay2"), &["AAA", "BBB", "CCC"]);
        Self { host, agent: path(&agent), source: path(&top), dir }
    }

    fn cache(&self) -> Cache<'_, FakeHost> {
        Cache::new(&self.host, self.host.cache_dir())
    }

    fn request(&self) -> ConvertRequest {
        request(&self.source, &self.agent)
    }

    fn convert(&self) -> Result<Outcome, Error> {
        self.cache().convert(&self.request())
    }

    /// `<cache>/<relative>`.
    fn at(&self, relative: &str) -> PathBuf {
        self.host.cache_dir().join(relative)
    }

    /// The names in the cache area `area`, sorted.
    fn names(&self, area: &str) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(self.at(area)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    fn manifest(&self, key: &str) -> Manifest {
        Manifest::parse(&std::fs::read(self.at(&format!("images/{key}.json"))).unwrap()).unwrap()
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn request(source: &str, agent: &str) -> ConvertRequest {
    ConvertRequest {
        source: source.into(),
        agent: agent.into(),
        size: None,
        converter: "oci2rootfs".into(),
        platform: None,
        pull: None,
        remote: None,
    }
}

/// Sets a file's modification time to `secs` after the Unix epoch.
fn set_mtime(path: &Path, secs: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// Where `wanted` first appears in `calls`.
fn position(calls: &[Call], wanted: impl Fn(&Call) -> bool) -> usize {
    calls.iter().position(wanted).unwrap_or_else(|| panic!("no such call in {calls:#?}"))
}

fn converter_failure() -> Error {
    Error::ConverterFailed(ConverterFailure {
        converter: "oci2rootfs".into(),
        exit_status: Some(1),
        stderr_tail: "mkfs.ext4: out of cheese".into(),
    })
}

fn denial(rule: &str) -> Error {
    Error::Denied(Denial { rule: rule.into(), detail: "refused by the test".into() })
}

// --- convert ---------------------------------------------------------------

#[test]
fn a_miss_builds_and_publishes_the_entry_with_its_manifest() {
    let env = Env::new();
    let outcome = env.convert().unwrap();
    assert!(!outcome.cached);
    assert_eq!(outcome.kind, SourceKind::Overlay2);
    assert_eq!(outcome.rebuilt_because, None);
    assert_eq!(outcome.image, format!("images/{}.ext4", outcome.key));
    assert_eq!(outcome.image_bytes, DEFAULT_IMAGE_BYTES);

    let jobs = env.host.jobs();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    let overlay2 = env.dir.path().join("overlay2");
    let diffs: Vec<String> = job.layers.iter().map(|l| l.path.clone()).collect();
    assert_eq!(diffs, ["aaa", "bbb", "ccc"].map(|d| format!("{}/{d}/diff", overlay2.display())));
    assert!(job.output.starts_with(&format!("tmp/{}.", outcome.key)), "{}", job.output);
    assert_eq!(
        (job.key.as_str(), job.source.as_str(), job.agent.as_ref()),
        (outcome.key.as_str(), env.source.as_str(), None)
    );

    // The converter does not install the agent: the guest mounts and installs it.
    let agent_sha256 = sha256_hex(&std::fs::read(&env.agent).unwrap());
    let installs = env.host.installs();
    assert_eq!(installs.len(), 1);
    let (image, file) = &installs[0];
    assert_eq!(image, &job.output);
    assert_eq!((file.source.as_str(), file.sha256.as_str()), (env.agent.as_str(), agent_sha256.as_str()));
    assert_eq!((file.target.as_str(), file.mode), (AGENT_TARGET, AGENT_MODE));
    assert_eq!(env.host.count(Capability::Unmount), 1);

    // Published: the image under its key, the manifest beside it, nothing left in tmp/.
    assert_eq!(env.names("images"), [format!("{}.ext4", outcome.key), format!("{}.json", outcome.key)]);
    assert!(env.names("tmp").is_empty());
    assert!(!env.host.is_held(&outcome.key));
    let manifest = env.manifest(&outcome.key);
    assert_eq!(manifest.key, outcome.key);
    assert_eq!(manifest.kind, "overlay2");
    assert_eq!(manifest.source, env.source);
    assert_eq!(manifest.layers, diffs);
    assert_eq!(manifest.platform, None);
    assert_eq!(
        (manifest.agent.path.as_str(), manifest.agent.sha256.as_str()),
        (env.agent.as_str(), agent_sha256.as_str())
    );
    assert_eq!(manifest.agent.size, std::fs::metadata(&env.agent).unwrap().len());
    assert_eq!(manifest.converter, "fake 1");
    assert_eq!(manifest.requested_size, None);
    assert_eq!(manifest.image_bytes, DEFAULT_IMAGE_BYTES);
    assert!(manifest.builder.starts_with("rootfs-cache-guest "), "{}", manifest.builder);
    let published = env.host.calls().into_iter().find_map(|c| match c {
        Call::Publish { staged, image, manifest_json, .. } => Some((staged, image, manifest_json)),
        _ => None,
    });
    let (staged, image, json) = published.unwrap();
    assert_eq!((staged, image), (job.output.clone(), outcome.image.clone()));
    // What was published is what the guest gave, with the image's SHA-256 added by the host.
    let image_sha256 = sha256_hex(&std::fs::read(env.at(&outcome.image)).unwrap());
    let given = Manifest { image_sha256: Some(image_sha256), ..Manifest::parse(json.as_bytes()).unwrap() };
    assert_eq!(given, manifest);
    // A build records no use.
    assert_eq!(env.host.count(Capability::RecordUse), 0);
}

#[test]
fn a_hit_runs_no_converter_and_records_its_use_at_most_once_a_minute() {
    let env = Env::new();
    let built = env.convert().unwrap();
    let manifest = env.at(&format!("images/{}.json", built.key));

    // Built just now: the hit is served without recording its use.
    let hit = env.convert().unwrap();
    assert!(hit.cached);
    assert_eq!(
        (hit.key.as_str(), hit.image.as_str(), hit.image_bytes),
        (built.key.as_str(), built.image.as_str(), built.image_bytes)
    );
    assert_eq!(hit.rebuilt_because, None);
    assert_eq!(env.host.count(Capability::RunConverter), 1);
    assert_eq!(env.host.count(Capability::Lock), 1, "a hit takes no lock");
    assert_eq!(env.host.count(Capability::RecordUse), 0);

    // Last used long ago: this hit records its use, which touches the manifest.
    set_mtime(&manifest, 1_000_000);
    assert!(env.convert().unwrap().cached);
    assert_eq!(env.host.calls().last(), Some(&Call::RecordUse(format!("images/{}.json", built.key))));
    assert!(mtime(&manifest) > UNIX_EPOCH + Duration::from_secs(1_000_000));
    // ... and the next one, within the minute, does not.
    assert!(env.convert().unwrap().cached);
    assert_eq!(env.host.count(Capability::RecordUse), 1);
    assert_eq!(env.host.count(Capability::RunConverter), 1);
}

#[test]
fn an_oci_layout_is_built_from_its_verified_layers() {
    let env = Env::new();
    let layout = env.dir.path().join("layout");
    let (manifest_digest, layers) = oci_layout(&layout);
    let outcome = env.cache().convert(&request(&path(&layout), &env.agent)).unwrap();
    assert_eq!(outcome.kind, SourceKind::OciLayout);
    let job = &env.host.jobs()[0];
    assert_eq!(job.platform, "linux/amd64");
    let got: Vec<(String, String, String)> =
        job.layers.iter().map(|l| (l.digest.clone(), l.diff_id.clone(), l.media_type.clone())).collect();
    let want: Vec<(String, String, String)> = layers
        .iter()
        .map(|(d, id)| (d.clone(), id.clone(), "application/vnd.oci.image.layer.v1.tar+gzip".into()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(job.layers[0].path, format!("{}/blobs/sha256/{}", layout.display(), &layers[0].0[7..]));
    assert_eq!(job.layers[0].size, 9);
    let manifest = env.manifest(&outcome.key);
    assert_eq!(manifest.kind, "oci-layout");
    assert_eq!(manifest.platform, Some(format!("linux/amd64 {manifest_digest}")));
    assert_eq!(manifest.layers, job.layers.iter().map(|l| l.path.clone()).collect::<Vec<_>>());
    // Another platform is another image, which this layout does not have.
    let mut arm = request(&path(&layout), &env.agent);
    arm.platform = Some("linux/arm64".into());
    let err = env.cache().convert(&arm).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedSource(m) if m.contains("no image for linux/arm64")), "{err:?}");
}

/// Serves the image of the layout at `layout` from the fake host's registry
/// as `reference` (its index as the tag's document, every blob by digest).
fn serve_layout(host: &FakeHost, layout: &Path, reference: &str) {
    let index = std::fs::read(layout.join("index.json")).unwrap();
    host.serve_manifest(reference, &index, "application/vnd.oci.image.index.v1+json");
    let repository = reference.rsplit_once(':').unwrap().0;
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let digest = host.serve_blob(&bytes);
        host.serve_manifest(&format!("{repository}@{digest}"), &bytes, "");
    }
}

#[test]
fn an_image_by_name_is_resolved_fetched_and_built_like_a_layout() {
    let env = Env::new();
    let layout = env.dir.path().join("layout");
    let (manifest_digest, layers) = oci_layout(&layout);
    let reference = "docker://reg.test:5000/team/app:1";
    serve_layout(&env.host, &layout, reference);
    let outcome = env.cache().convert(&request(reference, &env.agent)).unwrap();
    assert_eq!(outcome.kind, SourceKind::Registry);
    assert_eq!(outcome.reference.as_deref(), Some(reference));
    assert_eq!(outcome.manifest_digest.as_deref(), Some(manifest_digest.as_str()));
    let job = &env.host.jobs()[0];
    assert_eq!(job.kind, SourceKind::Registry);
    assert_eq!(job.source, reference);
    let cache = env.host.cache_dir().display().to_string();
    let got: Vec<(String, String)> = job.layers.iter().map(|l| (l.path.clone(), l.diff_id.clone())).collect();
    let want: Vec<(String, String)> =
        layers.iter().map(|(d, id)| (format!("{cache}/blobs/sha256/{}", &d[7..]), id.clone())).collect();
    assert_eq!(got, want);
    assert_eq!(env.manifest(&outcome.key).source, format!("docker://reg.test:5000/team/app@{manifest_digest}"));

    // A hit needs the documents only; the blobs are not asked for again.
    env.host.clear_calls();
    let hit = env.cache().convert(&request(reference, &env.agent)).unwrap();
    assert!(hit.cached);
    assert_eq!(hit.key, outcome.key);
    assert_eq!(env.host.count(Capability::FetchBlobs), 0);
    assert!(env.host.calls().contains(&Call::FetchManifest(reference.into(), PullPolicy::Missing)));

    // The key is the content's: another cache, another tag, the same key.
    let other = Env::new();
    serve_layout(&other.host, &layout, "docker://elsewhere.test/mirror/app:latest");
    let again = other.cache().convert(&request("docker://elsewhere.test/mirror/app", &other.agent)).unwrap();
    assert_eq!(again.key, outcome.key);

    // An absent platform lists the ones there are; an unknown tag is not found.
    let mut arm = request(reference, &env.agent);
    arm.platform = Some("linux/arm64".into());
    let err = env.cache().convert(&arm).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedSource(m) if m.contains("no image for linux/arm64 (found: linux/amd64)")),
        "{err:?}"
    );
    let err = env.cache().convert(&request("docker://reg.test:5000/team/app:2", &env.agent)).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = env.cache().convert(&request("docker://reg.test:5000/Team/app", &env.agent)).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
}

#[test]
fn a_layout_image_is_chosen_by_its_ref_name_with_oci_colon() {
    let env = Env::new();
    let layout = env.dir.path().join("layout");
    let (manifest_digest, _) = oci_layout(&layout);
    let index = std::fs::read_to_string(layout.join("index.json")).unwrap();
    let named =
        index.replace(r#""platform":"#, r#""annotations":{"org.opencontainers.image.ref.name":"v1"},"platform":"#);
    std::fs::write(layout.join("index.json"), named).unwrap();
    let outcome = env.cache().convert(&request(&format!("oci:{}:v1", path(&layout)), &env.agent)).unwrap();
    assert_eq!(outcome.manifest_digest.as_deref(), Some(manifest_digest.as_str()));
    assert_eq!(env.host.jobs()[0].source, path(&layout));
    let err = env.cache().convert(&request(&format!("oci:{}:v2", path(&layout)), &env.agent)).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("no image named \"v2\"") && m.contains("found: v1")),
        "{err:?}"
    );
    // A bare oci:PATH is the path.
    let bare = env.cache().convert(&request(&format!("oci:{}", path(&layout)), &env.agent)).unwrap();
    assert_eq!(bare.manifest_digest, outcome.manifest_digest);
}

#[test]
fn a_converter_that_installs_the_agent_needs_no_mount() {
    let env = Env::new();
    env.host.set_converter("exact 1", true);
    let outcome = env.convert().unwrap();
    assert_eq!(env.host.count(Capability::MountImage), 0);
    let job = &env.host.jobs()[0];
    let agent = job.agent.as_ref().expect("the job carries the agent");
    assert_eq!(
        (agent.target.as_str(), agent.mode, agent.source.as_str()),
        (AGENT_TARGET, AGENT_MODE, env.agent.as_str())
    );
    assert_eq!(env.manifest(&outcome.key).converter, "exact 1");
    // The converter's identity is part of the key: the other converter's entry is another one.
    env.host.set_converter("fake 1", false);
    assert_ne!(env.convert().unwrap().key, outcome.key);
}

#[test]
fn a_requested_size_is_passed_on_and_recorded() {
    let env = Env::new();
    let mut sized = env.request();
    sized.size = Some(4 * MIB);
    let outcome = env.cache().convert(&sized).unwrap();
    assert_eq!(outcome.image_bytes, 4 * MIB);
    assert_eq!(env.host.jobs()[0].size, Some(4 * MIB));
    assert_eq!(env.manifest(&outcome.key).requested_size, Some(4 * MIB));
    assert_ne!(env.convert().unwrap().key, outcome.key, "the size is part of the key");
}

// --- rebuilds --------------------------------------------------------------

/// Breaks the built entry with `damage`, converts again and checks that it
/// was rebuilt, its old files removed (manifest first) before the converter
/// ran. Returns why it was rebuilt.
fn rebuilt_after(damage: impl FnOnce(&Env, &str)) -> String {
    let env = Env::new();
    let key = env.convert().unwrap().key;
    damage(&env, &key);
    env.host.clear_calls();
    let outcome = env.convert().unwrap();
    assert!(!outcome.cached);
    assert_eq!(outcome.key, key);
    let calls = env.host.calls();
    let manifest_gone = position(&calls, |c| *c == Call::Remove(format!("images/{key}.json")));
    let image_gone = position(&calls, |c| *c == Call::Remove(format!("images/{key}.ext4")));
    let converted = position(&calls, |c| matches!(c, Call::RunConverter(_)));
    assert!(manifest_gone < image_gone && image_gone < converted, "{calls:#?}");
    // The new entry is whole again.
    assert_eq!(env.manifest(&key).key, key);
    assert!(env.convert().unwrap().cached);
    outcome.rebuilt_because.expect("a rebuild says why")
}

#[test]
fn a_truncated_image_is_rebuilt() {
    let why = rebuilt_after(|env, key| {
        let image = std::fs::OpenOptions::new().write(true).open(env.at(&format!("images/{key}.ext4"))).unwrap();
        image.set_len(DEFAULT_IMAGE_BYTES / 2).unwrap();
    });
    assert!(why.contains(&format!("the image has {} bytes, its manifest records", DEFAULT_IMAGE_BYTES / 2)), "{why}");
}

#[test]
fn a_missing_image_is_rebuilt() {
    let why = rebuilt_after(|env, key| std::fs::remove_file(env.at(&format!("images/{key}.ext4"))).unwrap());
    assert!(why.starts_with("the image: "), "{why}");
}

#[test]
fn a_manifest_of_another_key_is_rebuilt() {
    let why = rebuilt_after(|env, key| {
        let path = env.at(&format!("images/{key}.json"));
        let json = std::fs::read_to_string(&path).unwrap().replace(key, &"0".repeat(64));
        std::fs::write(&path, json).unwrap();
    });
    assert!(why.starts_with("the manifest records key"), "{why}");
}

#[test]
fn an_image_without_manifest_is_rebuilt() {
    let why = rebuilt_after(|env, key| std::fs::remove_file(env.at(&format!("images/{key}.json"))).unwrap());
    assert!(why.contains("has no manifest"), "{why}");
}

// --- locks -----------------------------------------------------------------

#[test]
fn an_entry_published_while_waiting_for_the_lock_is_served_as_a_hit() {
    let env = Env::new();
    let key = env.convert().unwrap().key;
    // Another builder holds the key and publishes the entry while we wait.
    let aside = env.dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for name in [format!("{key}.ext4"), format!("{key}.json")] {
        std::fs::rename(env.at(&format!("images/{name}")), aside.join(&name)).unwrap();
    }
    env.host.hold(&key);
    let (images, key_for_hook) = (env.at("images"), key.clone());
    env.host.on_lock(&key, move || {
        for name in [format!("{key_for_hook}.ext4"), format!("{key_for_hook}.json")] {
            std::fs::rename(aside.join(&name), images.join(&name)).unwrap();
        }
    });
    env.host.clear_calls();
    let outcome = env.convert().unwrap();
    assert!(outcome.cached);
    assert_eq!(outcome.rebuilt_because, None);
    assert_eq!(env.host.count(Capability::Lock), 1);
    assert_eq!(env.host.count(Capability::RunConverter), 0);
    assert_eq!(env.host.count(Capability::Publish), 0);
    assert!(!env.host.is_held(&key), "the lock was let go");
    assert!(!env.at(&format!("locks/{key}.lock")).exists());
}

#[test]
fn a_failed_converter_leaves_nothing_and_fails_the_lock() {
    let env = Env::new();
    env.host.fail(Capability::RunConverter, converter_failure());
    assert_eq!(env.convert().unwrap_err(), converter_failure());
    let calls = env.host.calls();
    let Some(Call::RunConverter(job)) = calls.iter().find(|c| matches!(c, Call::RunConverter(_))).cloned() else {
        panic!("no converter ran")
    };
    assert!(calls.contains(&Call::Remove(job.output.clone())), "the staged image is removed: {calls:#?}");
    assert!(calls.contains(&Call::LockFail { key: job.key.clone(), reason: converter_failure() }));
    assert_eq!(env.host.count(Capability::Publish), 0);
    assert!(env.names("tmp").is_empty());
    assert!(env.names("images").is_empty());
    assert!(!env.host.is_held(&job.key));
}

#[test]
fn a_failure_after_the_converter_wrote_removes_its_image() {
    let env = Env::new();
    let failure = Error::MountFailed("no loop device".into());
    env.host.fail(Capability::MountImage, failure.clone());
    assert_eq!(env.convert().unwrap_err(), failure);
    let job = env.host.jobs().pop().unwrap();
    assert!(env.host.removed().contains(&job.output));
    assert!(env.names("tmp").is_empty(), "the converter's image was removed");
    assert!(env.names("images").is_empty());
}

// --- errors ------------------------------------------------------------------

#[test]
fn malformed_requests_are_invalid_before_any_host_call() {
    let env = Env::new();
    let with = |change: &dyn Fn(&mut ConvertRequest)| {
        let mut request = env.request();
        change(&mut request);
        request
    };
    let bad = [
        with(&|r| r.source = "relative/path".into()),
        with(&|r| r.source = String::new()),
        with(&|r| r.source = format!("{}/../x", env.source)),
        with(&|r| r.agent = "agent".into()),
        with(&|r| r.converter = "mkfs".into()),
        with(&|r| r.converter = "command:relative".into()),
        with(&|r| r.size = Some(1)),
        with(&|r| r.size = Some(u64::MAX)),
        with(&|r| r.platform = Some("linux".into())),
    ];
    for request in bad {
        let err = env.cache().convert(&request).unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{request:?}: {err:?}");
    }
    assert_eq!(env.host.calls(), []);
}

#[test]
fn sources_that_are_missing_or_of_no_kind_are_told_apart() {
    let env = Env::new();
    let missing = env.dir.path().join("missing");
    let err = env.cache().convert(&request(&path(&missing), &env.agent)).unwrap_err();
    assert_eq!(err, Error::NotFound(format!("{}: no such file or directory", missing.display())));
    let err = env.cache().convert(&request(&path(env.dir.path()), &env.agent)).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedSource(m) if m.contains("is neither an overlay2 layer")), "{err:?}");
    let agentless = request(&env.source, &path(&env.dir.path().join("no-agent")));
    assert!(matches!(env.cache().convert(&agentless).unwrap_err(), Error::NotFound(_)));
    // A broken chain is an unsupported source.
    std::fs::remove_file(env.dir.path().join("overlay2/l/AAA")).unwrap();
    let err = env.convert().unwrap_err();
    assert!(matches!(&err, Error::UnsupportedSource(m) if m.contains("does not exist")), "{err:?}");
    assert_eq!(env.host.count(Capability::RunConverter), 0);
}

#[test]
fn a_probe_outside_the_source_roots_is_denied() {
    let env = Env::new();
    let host = env.host.clone().with_source_roots([env.dir.path().join("elsewhere")]);
    let err = Cache::new(&host, host.cache_dir()).convert(&env.request()).unwrap_err();
    assert!(matches!(&err, Error::Denied(d) if d.rule == "source_roots"), "{err:?}");
}

/// Every capability's error reaches the caller unchanged; one that fails
/// after the build started also leaves no temporary image and fails the
/// lock with it.
#[test]
fn every_error_of_every_capability_passes_through_unchanged() {
    let cases = [
        (Capability::Probe, denial("source_roots")),
        (Capability::Probe, Error::Io("probe: broken pipe".into())),
        (Capability::DigestFile, denial("agents")),
        (Capability::DigestFile, Error::NotFound("/agent: gone".into())),
        (Capability::DescribeConverter, denial("converters")),
        (Capability::DescribeConverter, Error::InvalidRequest("unknown converter".into())),
        (Capability::Lock, Error::Io("locks/x.lock: read-only filesystem".into())),
        (Capability::Lock, converter_failure()),
        (Capability::RunConverter, converter_failure()),
        (Capability::RunConverter, Error::Timeout("the converter ran for 600 s".into())),
        (Capability::RunConverter, Error::NoSpace("tmp/x: no space left on device".into())),
        (Capability::RunConverter, Error::UnsupportedSource("layer digest mismatch".into())),
        (Capability::RunConverter, denial("max_image_bytes")),
        (Capability::MountImage, Error::MountFailed("no loop device".into())),
        (Capability::Install, Error::InjectFailed("agent digest mismatch".into())),
        (Capability::Install, Error::NoSpace("image full".into())),
        (Capability::Unmount, Error::MountFailed("umount: busy".into())),
        (Capability::Publish, Error::NoSpace("images/: no space left on device".into())),
        (Capability::Publish, Error::Io("fsync: input/output error".into())),
        (Capability::Publish, Error::Corrupt("test".into())),
    ];
    for (capability, error) in cases {
        let env = Env::new();
        env.host.fail(capability, error.clone());
        assert_eq!(env.convert().unwrap_err(), error, "{capability:?}");
        assert!(env.names("images").is_empty(), "{capability:?} published");
        assert!(env.names("tmp").is_empty(), "{capability:?} left a temporary image");
        let built = env.host.count(Capability::RunConverter) > 0;
        let failed: Vec<Error> = env
            .host
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::LockFail { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(failed, if built { vec![error.clone()] } else { vec![] }, "{capability:?}");
        if capability == Capability::Install {
            // The mount was dropped, which unmounts.
            assert!(env.host.calls().iter().any(|c| matches!(c, Call::DropMount(_))));
        }
    }
}

#[test]
fn garbage_from_the_converter_is_corrupt_and_never_mounted() {
    let env = Env::new();
    env.host.set_converter_output(ConverterOutput::Garbage);
    let err = env.convert().unwrap_err();
    assert!(matches!(&err, Error::Corrupt(m) if m.starts_with("the converter produced an unusable image")), "{err:?}");
    assert_eq!(env.host.count(Capability::MountImage), 0);
    assert!(env.names("tmp").is_empty());
    assert!(env.names("images").is_empty());
}

#[test]
fn failures_around_a_hit_or_a_rebuild_pass_through() {
    let env = Env::new();
    let key = env.convert().unwrap().key;
    set_mtime(&env.at(&format!("images/{key}.json")), 1_000_000);
    env.host.fail(Capability::RecordUse, Error::Io("utimensat: read-only".into()));
    assert_eq!(env.convert().unwrap_err(), Error::Io("utimensat: read-only".into()));
    env.host.succeed(Capability::RecordUse);

    std::fs::remove_file(env.at(&format!("images/{key}.ext4"))).unwrap();
    env.host.fail(Capability::Remove, denial("cache_dir"));
    assert_eq!(env.convert().unwrap_err(), denial("cache_dir"));
    assert_eq!(env.host.count(Capability::RunConverter), 1, "nothing was built over an entry it could not remove");
}

// --- inspect -----------------------------------------------------------------

#[test]
fn inspect_reads_images_by_cache_path_or_absolute_path() {
    let env = Env::new();
    let outcome = env.convert().unwrap();
    env.host.clear_calls();
    let info = env.cache().inspect(&outcome.image).unwrap();
    assert!(info.magic);
    assert_eq!(
        (info.file_bytes, info.block_size, info.blocks_count),
        (DEFAULT_IMAGE_BYTES, 4096, DEFAULT_IMAGE_BYTES / 4096)
    );
    assert_eq!((info.label.as_str(), info.geometry_error), ("fake-rootfs", None));

    let absolute = env.dir.path().join("elsewhere.ext4");
    write_image(&absolute, 2 * MIB, ConverterOutput::Valid).unwrap();
    let info = env.cache().inspect(&path(&absolute)).unwrap();
    assert_eq!((info.magic, info.file_bytes, info.geometry_error), (true, 2 * MIB, None));

    let garbage = env.dir.path().join("garbage.ext4");
    std::fs::write(&garbage, vec![0u8; 64 << 10]).unwrap();
    let info = env.cache().inspect(&path(&garbage)).unwrap();
    assert!(!info.magic);
    assert!(info.geometry_error.unwrap().contains("no ext4 magic"));
    std::fs::write(&garbage, b"short").unwrap();
    let info = env.cache().inspect(&path(&garbage)).unwrap();
    assert_eq!(info.geometry_error.as_deref(), Some("5 bytes is too short for an ext4 superblock"));

    for bad in ["", "../outside.ext4", "images/../../x", "/a/../b", "/a//b"] {
        assert!(matches!(env.cache().inspect(bad), Err(Error::InvalidRequest(_))), "{bad:?}");
    }
    assert!(matches!(env.cache().inspect("images/missing.ext4"), Err(Error::NotFound(_))));
    assert!(
        matches!(env.cache().inspect(&path(env.dir.path())), Err(Error::InvalidRequest(m)) if m.contains("is a directory"))
    );
    assert_eq!(env.host.calls(), [], "inspect reads the image itself");
}

// --- list --------------------------------------------------------------------

#[test]
fn list_shows_every_entry_and_what_is_wrong_with_the_broken_ones() {
    let env = Env::new();
    assert_eq!(env.cache().list().unwrap(), []);
    let overlay = env.convert().unwrap();
    let layout = env.dir.path().join("layout");
    oci_layout(&layout);
    let oci = env.cache().convert(&request(&path(&layout), &env.agent)).unwrap();
    std::fs::write(env.at("images/not-a-key.json"), "{}").unwrap();

    let entries = env.cache().list().unwrap();
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    let mut want = vec![overlay.key.as_str(), oci.key.as_str()];
    want.sort();
    assert_eq!(keys, want, "sorted by key, stray names skipped");
    let of = |key: &str| env.cache().list().unwrap().into_iter().find(|e| e.key == key).unwrap();
    let entry = of(&overlay.key);
    assert_eq!(
        (entry.kind, entry.source.as_str(), entry.problem.as_deref()),
        (SourceKind::Overlay2, env.source.as_str(), None)
    );
    assert_eq!((entry.converter.as_str(), entry.image_bytes), ("fake 1", DEFAULT_IMAGE_BYTES));
    assert_eq!(entry.agent_sha256, sha256_hex(&std::fs::read(&env.agent).unwrap()));
    assert_eq!(entry.image, overlay.image);
    assert!(entry.created > 0 && entry.last_used >= entry.created - 1);
    assert_eq!(of(&oci.key).kind, SourceKind::OciLayout);

    // Broken: a truncated image, then no manifest, then another key's manifest.
    let image = std::fs::OpenOptions::new().write(true).open(env.at(&overlay.image)).unwrap();
    image.set_len(MIB).unwrap();
    let problem = of(&overlay.key).problem.unwrap();
    assert!(problem.contains("manifest records"), "{problem}");
    let manifest = env.at(&format!("images/{}.json", oci.key));
    let json = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, json.replace(&oci.key, &"0".repeat(64))).unwrap();
    assert_eq!(of(&oci.key).problem, Some(format!("the manifest records key {}", "0".repeat(64))));
    std::fs::remove_file(&manifest).unwrap();
    let entry = of(&oci.key);
    assert!(entry.problem.unwrap().starts_with("no readable manifest: "));
    assert_eq!((entry.source.as_str(), entry.image_bytes), ("", DEFAULT_IMAGE_BYTES));
}

// --- sweep -------------------------------------------------------------------

#[test]
fn sweep_removes_what_dead_builders_left_and_keeps_live_ones() {
    let env = Env::new();
    let (dead, live, stale, busy_lock) = ("1".repeat(64), "2".repeat(64), "3".repeat(64), "4".repeat(64));
    for name in [format!("{dead}.99-1.ext4"), format!("{dead}.99-2.ext4"), format!("{live}.98-1.ext4"), "stray".into()]
    {
        std::fs::write(env.at(&format!("tmp/{name}")), "partial").unwrap();
    }
    for key in [&dead, &live, &stale, &busy_lock] {
        std::fs::write(env.at(&format!("locks/{key}.lock")), "").unwrap();
    }
    env.host.hold(&live);
    env.host.hold(&busy_lock);

    let report = env.cache().sweep().unwrap();
    assert_eq!(report.removed, [format!("tmp/{dead}.99-1.ext4"), format!("tmp/{dead}.99-2.ext4")]);
    assert_eq!(report.busy, [format!("tmp/{live}.98-1.ext4")]);
    assert_eq!(report.stale_locks, 1);
    assert_eq!(env.names("tmp"), [format!("{live}.98-1.ext4"), "stray".into()]);
    // The dead builder's and the stale lock files went with their locks.
    assert_eq!(env.names("locks"), [format!("{live}.lock"), format!("{busy_lock}.lock")]);

    env.host.fail(Capability::TryLock, Error::Io("flock: interrupted".into()));
    assert_eq!(env.cache().sweep().unwrap_err(), Error::Io("flock: interrupted".into()));
}

// --- gc ----------------------------------------------------------------------

/// Three entries of 4, 8 and 12 MiB (one source, three sizes), last used
/// in that order. Returns their keys.
fn three_entries(env: &Env) -> [String; 3] {
    [4, 8, 12].map(|mib| {
        let mut sized = env.request();
        sized.size = Some(mib * MIB);
        let key = env.cache().convert(&sized).unwrap().key;
        set_mtime(&env.at(&format!("images/{key}.json")), 1_000_000 + mib);
        key
    })
}

#[test]
fn gc_evicts_the_least_recently_used_first_down_to_the_limit() {
    let env = Env::new();
    let [small, medium, large] = three_entries(&env);
    let report = env.cache().gc(20 * MIB, &[]).unwrap();
    assert_eq!(report.removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), [small.as_str()]);
    assert_eq!((report.bytes_before, report.bytes_after, report.kept_pinned), (24 * MIB, 20 * MIB, 0));
    assert!(!env.at(&format!("images/{small}.ext4")).exists());
    assert!(!env.at(&format!("images/{small}.json")).exists());

    // A pinned entry stays, even when it is the least recently used left.
    set_mtime(&env.at(&format!("images/{large}.json")), 1);
    let report = env.cache().gc(0, &[format!("images/{large}.ext4")]).unwrap();
    assert_eq!(report.removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), [medium.as_str()]);
    assert_eq!((report.bytes_after, report.kept_pinned), (12 * MIB, 1));
    assert_eq!(env.names("images"), [format!("{large}.ext4"), format!("{large}.json")]);
}

#[test]
fn gc_with_a_bad_pin_evicts_nothing() {
    let env = Env::new();
    three_entries(&env);
    let before = env.names("images");
    env.host.clear_calls();
    let err = env.cache().gc(0, &["abc".into()]).unwrap_err();
    assert!(matches!(&err, Error::InvalidRequest(m) if m.contains("nothing was evicted")), "{err:?}");
    let err = env.cache().gc(0, &["f".repeat(64)]).unwrap_err();
    assert!(matches!(&err, Error::NotFound(m) if m.contains("nothing was evicted")), "{err:?}");
    assert_eq!(env.names("images"), before);
    assert_eq!(env.host.count(Capability::Remove), 0);
}

#[test]
fn gc_keeps_an_entry_being_rebuilt() {
    let env = Env::new();
    let [small, ..] = three_entries(&env);
    env.host.hold(&small);
    let report = env.cache().gc(20 * MIB, &[]).unwrap();
    assert!(report.removed.iter().all(|e| e.key != small));
    assert_eq!(report.kept_pinned, 1);
    assert!(env.at(&format!("images/{small}.ext4")).exists());
}

/// The blobs of the cache's store, by hex digest, sorted.
fn blobs(env: &Env) -> Vec<String> {
    if !env.at("blobs/sha256").exists() {
        return Vec::new();
    }
    env.names("blobs/sha256")
}

/// The blobs of the layout at `layout`, by hex digest.
fn layout_blobs(layout: &Path) -> BTreeSet<String> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .chain([sha256_hex(&std::fs::read(layout.join("index.json")).unwrap())])
        .collect()
}

/// Two images by name sharing their base layer, each converted; the first
/// is the least recently used. Returns their keys and the blobs (layers,
/// configs, manifests, indexes) of each.
fn two_pulled_images(env: &Env) -> ([String; 2], [BTreeSet<String>; 2]) {
    let mut keys = Vec::new();
    let mut sets = Vec::new();
    for (i, name) in ["first", "second"].into_iter().enumerate() {
        let layout = env.dir.path().join(name);
        oci_layout_of(&layout, &[b"the shared base layer", name.as_bytes()]);
        let reference = format!("docker://reg.test:5000/team/{name}:1");
        serve_layout(&env.host, &layout, &reference);
        let key = env.cache().convert(&request(&reference, &env.agent)).unwrap().key;
        set_mtime(&env.at(&format!("images/{key}.json")), 1_000_000 + i as u64);
        keys.push(key);
        sets.push(layout_blobs(&layout));
    }
    (keys.try_into().unwrap(), sets.try_into().unwrap())
}

fn blob_bytes(env: &Env, hexes: &BTreeSet<String>) -> u64 {
    hexes.iter().map(|h| std::fs::metadata(env.at(&format!("blobs/sha256/{h}"))).unwrap().len()).sum()
}

#[test]
fn gc_evicting_a_pulled_image_takes_its_own_blobs_and_keeps_the_shared_base() {
    let env = Env::new();
    let ([first, second], [first_blobs, second_blobs]) = two_pulled_images(&env);
    let all: BTreeSet<String> = first_blobs.union(&second_blobs).cloned().collect();
    assert_eq!(blobs(&env).into_iter().collect::<BTreeSet<_>>(), all, "every document and layer is in the store");
    let shared: BTreeSet<String> = first_blobs.intersection(&second_blobs).cloned().collect();
    assert_eq!(shared.len(), 1, "only the base layer is shared");
    let own: BTreeSet<String> = first_blobs.difference(&shared).cloned().collect();
    let own_bytes = blob_bytes(&env, &own);
    let total = 2 * DEFAULT_IMAGE_BYTES + blob_bytes(&env, &all);

    // Under the limit: nothing goes, blobs included.
    let report = env.cache().gc(total, &[]).unwrap();
    assert_eq!((report.removed.len(), report.bytes_before, report.bytes_after), (0, total, total));
    assert_eq!(env.host.count(Capability::Remove), 0);

    // One byte over: the least recently used entry goes, with the blobs only it needed.
    let report = env.cache().gc(total - 1, &[]).unwrap();
    assert_eq!(report.removed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), [first.as_str()]);
    assert_eq!(report.bytes_after, total - DEFAULT_IMAGE_BYTES - own_bytes);
    assert_eq!(blobs(&env).into_iter().collect::<BTreeSet<_>>(), second_blobs);
    assert!(env.at(&format!("images/{second}.ext4")).exists());

    // The entry left is still served.
    let hit = env.cache().convert(&request("docker://reg.test:5000/team/second:1", &env.agent)).unwrap();
    assert!(hit.cached);
}

#[test]
fn gc_removes_blobs_no_entry_needs_and_keeps_those_a_pull_holds() {
    let env = Env::new();
    let ([first, _], [first_blobs, second_blobs]) = two_pulled_images(&env);
    let stray = [b"left by a pull whose build failed".as_slice(), b"another"].map(|b| {
        let hex = sha256_hex(b);
        std::fs::write(env.at(&format!("blobs/sha256/{hex}")), b).unwrap();
        std::fs::create_dir_all(env.at("blobs/locks")).unwrap();
        std::fs::write(env.at(&format!("blobs/locks/{hex}.lock")), b"").unwrap();
        hex
    });
    env.host.hold_blob(&stray[1]);
    let before = blob_bytes(&env, &first_blobs.union(&second_blobs).cloned().collect());
    // Garbage goes whatever the limit; a held blob stays, and is not counted as freed.
    let report = env.cache().gc(u64::MAX, &[]).unwrap();
    assert!(report.removed.is_empty());
    assert_eq!(report.bytes_before - report.bytes_after, 33);
    assert!(!env.at(&format!("blobs/sha256/{}", stray[0])).exists());
    assert!(!env.at(&format!("blobs/locks/{}.lock", stray[0])).exists(), "its lock file goes with it");
    assert!(env.at(&format!("blobs/sha256/{}", stray[1])).exists());
    assert!(env.at(&format!("blobs/locks/{}.lock", stray[1])).exists());
    assert_eq!(blob_bytes(&env, &first_blobs.union(&second_blobs).cloned().collect()), before);

    // A pinned entry keeps its blobs, even at a limit of zero.
    let report = env.cache().gc(0, std::slice::from_ref(&first)).unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(
        blobs(&env).into_iter().collect::<BTreeSet<_>>(),
        first_blobs.into_iter().chain([stray[1].clone()]).collect()
    );
}

#[test]
fn gc_keeps_blobs_a_running_build_may_be_about_to_read() {
    let env = Env::new();
    let ([first, second], [first_blobs, second_blobs]) = two_pulled_images(&env);
    // Another process builds a key now; it took its lock after the blobs were handed out
    // to the first image, not before those of the second.
    let building = "9".repeat(64);
    env.host.hold(&building);
    let lock_file = env.at(&format!("locks/{building}.lock"));
    std::fs::write(&lock_file, b"").unwrap();
    for hex in &first_blobs {
        set_mtime(&env.at(&format!("blobs/sha256/{hex}")), 1_000);
    }
    set_mtime(&lock_file, 2_000);
    for hex in &second_blobs {
        set_mtime(&env.at(&format!("blobs/sha256/{hex}")), 3_000);
    }
    // The first image's own layer is older than the build: it goes. Its documents (index,
    // manifest, config) stay too, old as they are: a build fetches those before its lock.
    let own_layers: Vec<String> = first_blobs
        .difference(&second_blobs)
        .filter(|h| !std::fs::read(env.at(&format!("blobs/sha256/{h}"))).unwrap().starts_with(b"{"))
        .cloned()
        .collect();
    assert_eq!(own_layers.len(), 1);
    let report = env.cache().gc(0, &[]).unwrap();
    assert_eq!(report.removed.len(), 2, "{report:?}");
    let left: BTreeSet<String> = blobs(&env).into_iter().collect();
    let expected: BTreeSet<String> =
        first_blobs.union(&second_blobs).filter(|h| **h != own_layers[0]).cloned().collect();
    assert_eq!(left, expected);
    assert!(!env.at(&format!("images/{first}.ext4")).exists() && !env.at(&format!("images/{second}.ext4")).exists());

    // Once the build is over, the next gc takes them.
    env.host.release(&building);
    env.cache().gc(0, &[]).unwrap();
    assert!(blobs(&env).is_empty());
}

// --- verify ------------------------------------------------------------------

#[test]
fn verify_removes_entries_that_fail_fsck_or_validation() {
    let env = Env::new();
    let [small, medium, large] = three_entries(&env);
    // Without fsck, only validation: nothing is wrong, and e2fsck never runs.
    let report = env.cache().verify(false).unwrap();
    assert_eq!((report.checked, report.broken.len()), (3, 0));
    assert_eq!(env.host.count(Capability::Fsck), 0);

    env.host.set_fsck_of(
        &format!("images/{medium}.ext4"),
        FsckResult { clean: false, exit_status: 4, output_tail: "inode 12 has a bad extent".into() },
    );
    let truncated = std::fs::OpenOptions::new().write(true).open(env.at(&format!("images/{small}.ext4"))).unwrap();
    truncated.set_len(MIB).unwrap();
    let report = env.cache().verify(true).unwrap();
    assert_eq!(report.checked, 3);
    let broken: Vec<(&str, &str)> =
        report.broken.iter().map(|e| (e.key.as_str(), e.problem.as_deref().unwrap_or(""))).collect();
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken.contains(&(medium.as_str(), "e2fsck -fn exited 4: inode 12 has a bad extent")), "{broken:?}");
    assert!(broken.iter().any(|(key, problem)| *key == small && problem.contains("manifest records")), "{broken:?}");
    assert_eq!(env.host.count(Capability::Fsck), 2, "a broken entry is not fsck'd");
    assert_eq!(env.names("images"), [format!("{large}.ext4"), format!("{large}.json")]);

    env.host.fail(Capability::Fsck, Error::Timeout("e2fsck ran for 600 s".into()));
    assert_eq!(env.cache().verify(true).unwrap_err(), Error::Timeout("e2fsck ran for 600 s".into()));
}

/// The inspect document of an image `id` for `platform` (`os`, `arch`), with
/// the storage driver `driver` and, for overlay2, the top layer `top`.
fn inspect_document(id: &str, arch: &str, driver: &str, top: Option<&str>) -> Vec<u8> {
    let data =
        top.map_or_else(String::new, |t| format!(r#","Data":{{"UpperDir":"{t}/diff","MergedDir":"{t}/merged"}}"#));
    format!(r#"{{"Id":"{id}","Os":"linux","Architecture":"{arch}","GraphDriver":{{"Name":"{driver}"{data}}}}}"#)
        .into_bytes()
}

#[test]
fn a_docker_daemon_image_with_overlay2_is_its_chain_and_shares_the_paths_entry() {
    let env = Env::new();
    let id = format!("sha256:{}", "1".repeat(64));
    let inspect = inspect_document(&id, "amd64", "overlay2", Some(&env.source));
    env.host.serve_daemon_image(&["app:dev"], &inspect, &[]);
    let by_path = env.convert().unwrap();
    let outcome = env.cache().convert(&request("docker-daemon:app:dev", &env.agent)).unwrap();
    assert_eq!(outcome.kind, SourceKind::Overlay2);
    assert_eq!(outcome.reference.as_deref(), Some("docker-daemon:app:dev"));
    assert_eq!((outcome.key.as_str(), outcome.cached), (by_path.key.as_str(), true), "one entry for both names");
    assert_eq!(env.host.count(Capability::ExportDaemonImage), 0);

    // Another platform, an unknown image, a bad name.
    let mut arm = request("docker-daemon:app:dev", &env.agent);
    arm.platform = Some("linux/arm64".into());
    let err = env.cache().convert(&arm).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedSource(m) if m.contains("is for linux/amd64")), "{err:?}");
    let err = env.cache().convert(&request("docker-daemon:other", &env.agent)).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = env.cache().convert(&request("docker-daemon:../x", &env.agent)).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
}

/// A `docker save` archive of one image: its config (for `arch`, with the
/// layers' diff IDs), the layers as `<n>/layer.tar`, and `manifest.json`.
fn saved_image(layers: &[&[u8]], arch: &str) -> (String, Vec<(String, Vec<u8>)>) {
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("\"sha256:{}\"", sha256_hex(l))).collect();
    let config = format!(
        r#"{{"os":"linux","architecture":"{arch}","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let hex = sha256_hex(config.as_bytes());
    let names: Vec<String> = (0..layers.len()).map(|i| format!("\"{i}/layer.tar\"")).collect();
    let manifest = format!(r#"[{{"Config":"{hex}.json","RepoTags":["app:dev"],"Layers":[{}]}}]"#, names.join(","));
    let mut files = vec![(format!("{hex}.json"), config.into_bytes())];
    files.extend(layers.iter().enumerate().map(|(i, l)| (format!("{i}/layer.tar"), l.to_vec())));
    files.push(("manifest.json".into(), manifest.into_bytes()));
    (format!("sha256:{hex}"), files)
}

#[test]
fn a_docker_daemon_image_without_overlay2_is_exported_and_keyed_by_its_id() {
    let env = Env::new();
    let (id, files) = saved_image(&[b"layer one", b"layer two"], "amd64");
    let archive: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let inspect = inspect_document(&id, "amd64", "vfs", None);
    env.host.serve_daemon_image(&["app:dev", &id], &inspect, &archive);
    let outcome = env.cache().convert(&request("docker-daemon:app:dev", &env.agent)).unwrap();
    assert_eq!(outcome.kind, SourceKind::DockerArchive);
    assert_eq!(outcome.reference.as_deref(), Some("docker-daemon:app:dev"));
    assert!(env.host.calls().contains(&Call::ExportDaemonImage(id.clone())), "exported by its ID");
    let job = &env.host.jobs()[0];
    assert_eq!(job.kind, SourceKind::DockerArchive);
    let cache = env.host.cache_dir().display().to_string();
    let got: Vec<(String, String)> = job.layers.iter().map(|l| (l.path.clone(), l.diff_id.clone())).collect();
    let want: Vec<(String, String)> = [&b"layer one"[..], b"layer two"]
        .iter()
        .map(|l| {
            let hex = sha256_hex(l);
            (format!("{cache}/blobs/sha256/{hex}"), format!("sha256:{hex}"))
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(env.manifest(&outcome.key).source, format!("docker-daemon:{id}"));
    // The same image under its ID is the same entry.
    let by_id = env.cache().convert(&request(&format!("docker-daemon:{id}"), &env.agent)).unwrap();
    assert_eq!((by_id.key.as_str(), by_id.cached), (outcome.key.as_str(), true));
}

#[test]
fn an_exported_archive_that_does_not_hold_up_is_refused_and_nothing_is_published() {
    let env = Env::new();
    let (id, mut files) = saved_image(&[b"layer one"], "amd64");
    // A layer whose bytes are not the config's diff ID.
    files[1].1 = b"another layer".to_vec();
    let archive: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    env.host.serve_daemon_image(&["bad-layer", &id], &inspect_document(&id, "amd64", "vfs", None), &archive);
    let err = env.cache().convert(&request("docker-daemon:bad-layer", &env.agent)).unwrap_err();
    assert!(matches!(&err, Error::Corrupt(m) if m.contains("diff ID")), "{err:?}");

    // An export whose config is not the inspected image.
    let (other_id, files) = saved_image(&[b"layer one"], "amd64");
    let archive: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let claimed = format!("sha256:{}", "2".repeat(64));
    env.host.serve_daemon_image(&["liar", &claimed], &inspect_document(&claimed, "amd64", "vfs", None), &archive);
    let err = env.cache().convert(&request("docker-daemon:liar", &env.agent)).unwrap_err();
    assert!(matches!(&err, Error::Corrupt(m) if m.contains(&other_id)), "{err:?}");

    // No manifest.json, and a config for another platform.
    let (arm_id, files) = saved_image(&[b"layer one"], "arm64");
    let archive: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    env.host.serve_daemon_image(&["arm", &arm_id], &inspect_document(&arm_id, "arm64", "vfs", None), &archive);
    let err = env.cache().convert(&request("docker-daemon:arm", &env.agent)).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedSource(m) if m.contains("is for linux/arm64")), "{err:?}");
    let without: Vec<(&str, &[u8])> = archive.iter().filter(|(n, _)| *n != "manifest.json").copied().collect();
    env.host.serve_daemon_image(&["nomanifest", &arm_id], &inspect_document(&arm_id, "arm64", "vfs", None), &without);
    let err = env.cache().convert(&request("docker-daemon:nomanifest", &env.agent)).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedSource(m) if m.contains("no manifest.json")), "{err:?}");
    assert!(env.host.jobs().is_empty(), "nothing was converted");
    assert!(env.names("images").is_empty(), "nothing was published");
}

// --- the remote cache --------------------------------------------------------

/// A request for the image `reference` through the remote cache.
fn remote_request(reference: &str, agent: &str, verify: RemoteVerify) -> ConvertRequest {
    ConvertRequest {
        remote: Some(RemoteOptions { repository: "cache.test/fleet/images".into(), push: true, verify }),
        ..request(reference, agent)
    }
}

/// Two hosts of one fleet: their own caches and copies of one agent, one
/// registry serving the image `docker://reg.test/app:1`, one remote cache.
fn fleet() -> (Env, Env, String) {
    let (a, b) = (Env::new(), Env::new());
    let layout = a.dir.path().join("layout");
    oci_layout(&layout);
    let reference = "docker://reg.test/app:1".to_owned();
    for host in [&a.host, &b.host] {
        serve_layout(host, &layout, &reference);
    }
    b.host.share_remote(a.host.remote());
    std::fs::copy(&a.agent, &b.agent).unwrap();
    (a, b, reference)
}

#[test]
fn a_host_fetches_what_another_built_and_pushed_without_converting() {
    let (a, b, reference) = fleet();
    let built = a.cache().convert(&remote_request(&reference, &a.agent, RemoteVerify::Digest)).unwrap();
    assert_eq!((built.origin, built.pushed, built.shareable), (Origin::Built, true, true));
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
    assert_eq!(a.host.count(Capability::RemoteManifest), 1, "a miss asks the remote cache first");

    let fetched = b.cache().convert(&remote_request(&reference, &b.agent, RemoteVerify::Digest)).unwrap();
    assert_eq!((fetched.origin, fetched.cached, fetched.pushed), (Origin::Remote, false, false));
    assert_eq!(fetched.key, built.key);
    assert_eq!(fetched.remote_digest, built.remote_digest);
    assert_eq!(b.host.count(Capability::RunConverter), 0);
    assert_eq!(b.host.count(Capability::FetchBlobs), 0, "the source's layers are not downloaded");
    assert_eq!(std::fs::read(b.at(&fetched.image)).unwrap(), std::fs::read(a.at(&built.image)).unwrap());
    let manifest = b.manifest(&fetched.key);
    assert!(manifest.layers.is_empty());
    assert_eq!(manifest.source, a.manifest(&built.key).source);

    let hit = b.cache().convert(&remote_request(&reference, &b.agent, RemoteVerify::Digest)).unwrap();
    assert_eq!((hit.origin, hit.cached), (Origin::Local, true));

    // A local key is never shared.
    let local = b
        .cache()
        .convert(&ConvertRequest { source: b.source.clone(), ..remote_request("", &b.agent, RemoteVerify::Digest) })
        .unwrap();
    assert_eq!((local.origin, local.shareable, local.pushed), (Origin::Built, false, false));
    assert_eq!(b.host.count(Capability::RemotePushImage), 0);
}

#[test]
fn a_remote_artifact_that_lies_is_refused_and_the_image_is_built_here() {
    let (a, b, reference) = fleet();
    let built = a.cache().convert(&remote_request(&reference, &a.agent, RemoteVerify::Digest)).unwrap();
    let remote = a.host.remote();
    // The image blob replaced by other bytes under the same digest.
    {
        let mut remote = remote.lock().unwrap();
        let digest = remote.blobs.iter().find(|(_, b)| b.len() as u64 == built.image_bytes).unwrap().0.clone();
        let blob = remote.blobs.get_mut(&digest).unwrap();
        blob[5000] ^= 1;
    }
    let outcome = b.cache().convert(&remote_request(&reference, &b.agent, RemoteVerify::Digest)).unwrap();
    assert_eq!(outcome.origin, Origin::Built);
    assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
    assert!(outcome.warnings[0].contains("cache.test/fleet/images"), "{:?}", outcome.warnings);
    assert!(b.names("tmp").is_empty(), "the refused download is removed: {:?}", b.names("tmp"));
    assert_eq!(std::fs::read(b.at(&outcome.image)).unwrap(), std::fs::read(a.at(&built.image)).unwrap());

    // An artifact tagged with this key but holding another key's image.
    let (c, d, reference) = fleet();
    let mut other = remote_request(&reference, &c.agent, RemoteVerify::Digest);
    other.size = Some(64 << 20);
    let x = c.cache().convert(&other).unwrap();
    let y_key = c.cache().convert(&remote_request(&reference, &c.agent, RemoteVerify::Digest)).unwrap().key;
    {
        let remote = c.host.remote();
        let mut remote = remote.lock().unwrap();
        let x_manifest = remote.manifests[&x.key].clone();
        remote.manifests.insert(y_key.clone(), x_manifest);
    }
    let outcome = d.cache().convert(&remote_request(&reference, &d.agent, RemoteVerify::Digest)).unwrap();
    assert_eq!(outcome.origin, Origin::Built);
    assert!(outcome.warnings[0].contains("holds the image of key"), "{:?}", outcome.warnings);
}

#[test]
fn verify_rebuild_compares_and_a_mismatch_publishes_nothing() {
    let (a, b, reference) = fleet();
    a.cache().convert(&remote_request(&reference, &a.agent, RemoteVerify::Digest)).unwrap();
    let same = b.cache().convert(&remote_request(&reference, &b.agent, RemoteVerify::Rebuild)).unwrap();
    assert_eq!(same.origin, Origin::Remote);
    assert_eq!(b.host.count(Capability::RunConverter), 1, "rebuilt to compare");
    assert!(b.names("tmp").is_empty(), "{:?}", b.names("tmp"));

    // A third host whose converter makes other bytes: the remote's image,
    // however well-formed, is not what it builds.
    let c = Env::new();
    let layout = a.dir.path().join("layout");
    serve_layout(&c.host, &layout, &reference);
    c.host.share_remote(a.host.remote());
    std::fs::copy(&a.agent, &c.agent).unwrap();
    c.host.set_converter_output(ConverterOutput::Valid);
    // Change the remote's image in place, fixing up every digest, so that
    // only a rebuild can tell.
    lie_about_the_image(&a.host, &same.key);
    let err = c.cache().convert(&remote_request(&reference, &c.agent, RemoteVerify::Rebuild)).unwrap_err();
    assert!(matches!(&err, Error::Corrupt(m) if m.contains("the remote cache lied")), "{err:?}");
    assert!(!c.at(&same.image).exists(), "nothing is published");
    assert!(c.names("tmp").is_empty(), "{:?}", c.names("tmp"));
}

/// Rewrites the remote artifact of `key` so that its image differs from
/// what a host builds while every digest and annotation stays consistent.
fn lie_about_the_image(host: &FakeHost, key: &str) {
    use rootfs_cache_guest::remote::{ArtifactManifest, Descriptor, RemoteEntry, annotation};
    let remote = host.remote();
    let mut remote = remote.lock().unwrap();
    let manifest: ArtifactManifest = serde_json::from_slice(&remote.manifests[key]).unwrap();
    let mut image = remote.blobs[&manifest.layers[0].digest].clone();
    image[8192] ^= 0x55;
    let image_sha = sha256_hex(&image);
    let mut entry: RemoteEntry = serde_json::from_slice(&remote.blobs[&manifest.config.digest]).unwrap();
    entry.image_sha256 = image_sha.clone();
    let config = entry.to_json();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let layer_digest = format!("sha256:{image_sha}");
    let mut lying = ArtifactManifest::new(
        &entry,
        Descriptor { digest: config_digest.clone(), size: config.len() as u64, ..manifest.config.clone() },
        Descriptor { digest: layer_digest.clone(), size: image.len() as u64, ..manifest.layers[0].clone() },
        None,
    );
    lying.annotations.insert(annotation::IMAGE_SHA256.into(), layer_digest.clone());
    remote.blobs.insert(config_digest, config);
    remote.blobs.insert(layer_digest, image);
    remote.manifests.insert(key.into(), lying.to_json());
}

#[test]
fn an_unreachable_remote_or_a_refused_push_is_a_warning() {
    let (a, _b, reference) = fleet();
    a.host.fail(Capability::RemoteManifest, Error::Io("registry cache.test: connection refused".into()));
    a.host.fail(Capability::RemotePushImage, denial("registries"));
    let outcome = a.cache().convert(&remote_request(&reference, &a.agent, RemoteVerify::Digest)).unwrap();
    assert_eq!((outcome.origin, outcome.pushed), (Origin::Built, false));
    assert_eq!(outcome.warnings.len(), 2, "{:?}", outcome.warnings);
    assert!(outcome.warnings[0].contains("connection refused"), "{:?}", outcome.warnings);
    assert!(outcome.warnings[1].contains("not pushed"), "{:?}", outcome.warnings);
    assert!(a.at(&outcome.image).exists(), "the local entry is kept");
}

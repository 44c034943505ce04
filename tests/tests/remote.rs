//! A remote cache through an OCI registry (issue 14), end to end through the CLI, with real
//! parts: Debian's `docker-registry` (distribution 2.8) on a loopback port, `skopeo` and
//! `curl` to look at and tamper with what it stores, and a small token service
//! (`rootfs_cache_tests::token_server`) for credentials that may pull but not push.
//!
//! Several hosts are several `rootfs-cache` processes, each with its own cache directory,
//! policy, audit log and credentials, and its own copy of the source at its own path (an OCI
//! layout copied with `cp -a`; the `base` Docker fixture's when `ROOTFS_FIXTURES` names it).
//! Each new cache gets the precompiled component (`<cache>/engine/`) of a warm-up run, as the
//! benchmarks do: "cold" means no entry, and the tests are about the registry, not about
//! compiling the guest.
//!
//! What they show: a second host gets the first one's image byte for byte with `origin:
//! remote` and no `run-converter`, and the artifact is what a user inspects with `skopeo`;
//! eight cold hosts at once all get one sound image; an unreachable registry, a blob
//! corrupted in the registry's storage, an artifact tagged with another image's key and
//! read-only credentials each give a warning and a local build (exit 0); `--verify-remote
//! rebuild` accepts a true artifact and calls a lying one `corrupt`; TLS with a test CA and
//! basic auth; a source from the same registry is the artifact's `subject`; a bare overlay2
//! directory is not shareable and never reaches the registry.

#[path = "../../host/registry/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rootfs_cache_tests::oci::{self, IndexStyle, TarEntry};
use rootfs_cache_tests::token_server::{self, TokenServer, User};
use rootfs_cache_tests::{fsck, require_root, rootfs_cache_bin, sha256_hex};
use serde_json::{Value, json};
use support::{Registry, Setup, require};

/// The tools most tests here need.
const TOOLS: &[&str] = &["docker-registry", "skopeo", "curl", "e2fsck"];

/// The repository of the remote cache in every test's registry.
const REPO: &str = "rootfs-cache/images";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ARTIFACT_TYPE: &str = "application/vnd.rootfs-cache.image.v1";
const CONFIG_TYPE: &str = "application/vnd.rootfs-cache.entry.v1+json";
const LAYER_TYPE: &str = "application/vnd.rootfs-cache.image.v1.ext4+zstd";
const KEY: &str = "io.github.rootfs-cache.key";
const SOURCE: &str = "io.github.rootfs-cache.source";
const AGENT_SHA256: &str = "io.github.rootfs-cache.agent.sha256";
const CONVERTER: &str = "io.github.rootfs-cache.converter";
const IMAGE_SIZE: &str = "io.github.rootfs-cache.image.size";
const IMAGE_SHA256: &str = "io.github.rootfs-cache.image.sha256";

/// Exit code of an error of class `corrupt` (tests/tests/cli.rs, `Error::exit_code`).
const EXIT_CORRUPT: i32 = 9;

/// What one `convert` gave: its exit code, its JSON (`Null` when stdout is not JSON), its
/// stderr.
type Outcome = (i32, Value, String);

/// How the hosts of a test reach the remote cache.
#[derive(Clone)]
struct Remote {
    /// `HOST:PORT`.
    host: String,
    /// Plain HTTP (`--insecure-registry`, the policy's `insecure_registries`).
    insecure: bool,
    /// More hosts the policy's `registries` allows (a token service).
    more_registries: Vec<String>,
    /// The `config.json` every host reads (`DOCKER_CONFIG`), if any.
    docker_config: Option<String>,
    /// Named in the policy file (`remote`, `remote_push`, `remote_verify`) instead of by
    /// flags.
    in_policy: bool,
    /// More policy lines (e.g. `remote_verify = "rebuild"`), with `in_policy`.
    policy_extra: String,
}

impl Remote {
    /// The plain-HTTP registry at `host`, given by flags.
    fn plain(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            insecure: true,
            more_registries: Vec::new(),
            docker_config: None,
            in_policy: false,
            policy_extra: String::new(),
        }
    }

    /// `HOST:PORT/REPO`.
    fn spec(&self) -> String {
        format!("{}/{REPO}", self.host)
    }
}

/// Where a host's source comes from.
enum Source<'a> {
    /// A copy, made for the host at a path of its own, of this OCI layout.
    Copy(&'a Path),
    /// An image by name (`docker://…`), the same on every host.
    Name(&'a str),
    /// A copy, made for the host at a path of its own, of the overlay2 directory `.0`
    /// (with `cp -a`: whiteouts and `trusted.*` attributes kept); the source is its layer
    /// directory named `.1`.
    Overlay2(&'a Path, &'a str),
}

/// One host of the fleet: a cache directory, a policy with an audit log, credentials, and
/// its own copy of the source.
struct Host {
    name: String,
    cache: PathBuf,
    source: String,
    agent: PathBuf,
    policy: PathBuf,
    audit: PathBuf,
    docker_config: PathBuf,
    runtime_dir: PathBuf,
    /// The remote's flags (none when the policy names it).
    flags: Vec<String>,
}

impl Host {
    /// A host under `dir/name`, reaching `remote`, installing `agent`.
    fn new(dir: &Path, name: &str, source: Source<'_>, remote: &Remote, agent: &Path) -> Self {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let source = match source {
            Source::Copy(layout) => {
                let copy = home.join("images").join(format!("{name}-layout"));
                std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
                let out = Command::new("cp").arg("-a").arg(layout).arg(&copy).output().unwrap();
                assert!(out.status.success(), "cp -a: {}", String::from_utf8_lossy(&out.stderr));
                copy.to_str().unwrap().to_owned()
            }
            Source::Name(name) => name.to_owned(),
            Source::Overlay2(root, top) => {
                let copy = home.join("var-lib-docker").join(format!("{name}-overlay2"));
                std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
                let out = Command::new("cp").arg("-a").arg(root).arg(&copy).output().unwrap();
                assert!(out.status.success(), "cp -a: {}", String::from_utf8_lossy(&out.stderr));
                copy.join(top).to_str().unwrap().to_owned()
            }
        };
        let audit = home.join("audit.jsonl");
        let mut registries = vec![remote.host.clone()];
        registries.extend(remote.more_registries.iter().cloned());
        let quoted = |hosts: &[String]| hosts.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ");
        let mut policy = format!("audit_log = \"{}\"\nregistries = [{}]\n", audit.display(), quoted(&registries));
        if remote.insecure {
            policy += &format!("insecure_registries = [\"{}\"]\n", remote.host);
        }
        let mut flags = Vec::new();
        if remote.in_policy {
            policy += &format!("remote = \"{}\"\nremote_push = true\n{}", remote.spec(), remote.policy_extra);
        } else {
            flags.extend(["--remote".to_owned(), remote.spec()]);
            if remote.insecure {
                flags.extend(["--insecure-registry".to_owned(), remote.host.clone()]);
            }
        }
        let policy_path = home.join("policy.toml");
        std::fs::write(&policy_path, policy).unwrap();
        let docker_config = home.join("docker");
        std::fs::create_dir_all(&docker_config).unwrap();
        if let Some(config) = &remote.docker_config {
            std::fs::write(docker_config.join("config.json"), config).unwrap();
        }
        let cache = home.join("cache");
        seed_engine(&cache);
        Self {
            name: name.to_owned(),
            cache,
            source,
            agent: agent.to_owned(),
            policy: policy_path,
            audit,
            docker_config,
            runtime_dir: home.join("no-runtime-dir"),
            flags,
        }
    }

    /// `rootfs-cache --cache-dir CACHE --policy POLICY convert SOURCE --agent AGENT --json
    /// [--remote …] EXTRA…`, with this host's credentials and nobody else's.
    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(rootfs_cache_bin());
        command
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--policy")
            .arg(&self.policy)
            .args(["convert", &self.source, "--json", "--agent"])
            .arg(&self.agent)
            .args(&self.flags)
            .args(extra)
            .env("DOCKER_CONFIG", &self.docker_config)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("ROOTFS_CACHE_AGENT")
            .env_remove("ROOTFS_CACHE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Converts, and waits.
    fn convert(&self, extra: &[&str]) -> Outcome {
        finish(self.command(extra).spawn().unwrap())
    }

    /// Starts a conversion; [`finish`] waits for it.
    fn spawn(&self, extra: &[&str]) -> Child {
        self.command(extra).spawn().unwrap()
    }

    /// The entry `key`'s image and manifest in this host's cache.
    fn entry(&self, key: &str) -> (PathBuf, PathBuf) {
        let images = self.cache.join("images");
        (images.join(format!("{key}.ext4")), images.join(format!("{key}.json")))
    }

    /// The `capability` of every line of this host's audit log (none if there is no log).
    fn capabilities(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines()
            .map(|l| {
                let line: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", self.name));
                line["capability"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    /// Whether this host ran a converter (its audit log has a `run-converter` line).
    fn ran_converter(&self) -> bool {
        self.capabilities().iter().any(|c| c == "run-converter")
    }

    /// Its audit log, as text.
    fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit).unwrap_or_default()
    }

    /// Checks that `outcome` is a success served with `origin`, with the JSON fields of the
    /// remote cache; returns the image's path.
    fn expect(&self, outcome: &Outcome, origin: &str) -> PathBuf {
        let (code, json, stderr) = outcome;
        assert_eq!(*code, 0, "{}: exit {code}: {stderr}", self.name);
        assert_eq!(json["origin"], origin, "{}: {json}\n{stderr}", self.name);
        assert_eq!(json["shareable"], true, "{}: an OCI layout's key is portable: {json}", self.name);
        assert!(json["warnings"].is_array(), "{}: no warnings array: {json}", self.name);
        assert!(json["pushed"].is_boolean(), "{}: no pushed: {json}", self.name);
        assert!(json["remote_digest"].is_null() || json["remote_digest"].is_string(), "{}: {json}", self.name);
        for warning in warnings(json) {
            assert!(stderr.contains(&warning), "{}: the warning {warning:?} is not on stderr: {stderr}", self.name);
        }
        let key = key_of(json);
        let (image, manifest) = self.entry(&key);
        assert!(image.is_file() && manifest.is_file(), "{}: no entry {key}: {json}", self.name);
        assert_eq!(Path::new(json["image"].as_str().unwrap()).file_name(), image.file_name(), "{json}");
        image
    }
}

/// Waits for a conversion started by [`Host::spawn`].
fn finish(child: Child) -> Outcome {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A `convert` JSON's key.
fn key_of(json: &Value) -> String {
    let key = json["key"].as_str().unwrap_or_else(|| panic!("no key: {json}"));
    assert!(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()), "not a 64-hex key: {key}");
    key.to_owned()
}

/// A `convert` JSON's warnings.
fn warnings(json: &Value) -> Vec<String> {
    json["warnings"].as_array().map(|w| w.iter().map(|w| w.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

/// SHA-256 of a file's bytes, hex.
fn file_sha256(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// Copies the precompiled component of a warm-up cache into the new cache `cache`. The
/// warm-up (`rootfs-cache list`, which compiles it) runs once per test process, into a
/// directory of the target's scratch space made anew by each process.
fn seed_engine(cache: &Path) {
    static SEED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let seed = SEED.get_or_init(|| {
        let seed = Path::new(env!("CARGO_TARGET_TMPDIR")).join("remote-tests-engine-seed");
        let _ = std::fs::remove_dir_all(&seed);
        let out = Command::new(rootfs_cache_bin()).arg("--cache-dir").arg(&seed).args(["list", "--json"]).output();
        assert!(out.as_ref().is_ok_and(|o| o.status.success()), "warm-up: {out:?}");
        seed.join("engine")
    });
    let dest = cache.join("engine");
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(seed).into_iter().flatten().flatten() {
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
}

/// The bytes of file `i` of [`generated_layout`]`(…, marker, …)`: a few KiB, incompressible
/// for even `i`.
fn generated_file(marker: &str, i: u64) -> Vec<u8> {
    let len = 1000 + (i * 7919 % 15_000) as usize;
    if i.is_multiple_of(2) {
        let seed = marker.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))) | 1;
        rootfs_cache_tests::incompressible(len, seed + i)
    } else {
        b"All work and no play makes a fleet convert twice. ".iter().copied().cycle().take(len).collect()
    }
}

/// An OCI layout at `dir/name` of one layer: `/etc/marker` saying `marker`, and `files`
/// files of [`generated_file`] under `/usr/share/data`.
fn generated_layout(dir: &Path, name: &str, marker: &str, files: u64) -> PathBuf {
    let layout = dir.join(name);
    let data: Vec<(String, Vec<u8>)> =
        (0..files).map(|i| (format!("usr/share/data/d{:02}/f{i:05}", i % 20), generated_file(marker, i))).collect();
    let dirs: Vec<String> = (0..20.min(files)).map(|d| format!("usr/share/data/d{d:02}/")).collect();
    let mut entries = vec![
        TarEntry::dir("etc/", 0o755),
        TarEntry::file("etc/marker", marker.as_bytes(), 0o644),
        TarEntry::dir("usr/", 0o755),
        TarEntry::dir("usr/share/", 0o755),
        TarEntry::dir("usr/share/data/", 0o755),
    ];
    entries.extend(dirs.iter().map(|d| TarEntry::dir(d, 0o755)));
    entries.extend(data.iter().map(|(p, d)| TarEntry::file(p, d, 0o644)));
    oci::layout(&layout, &[oci::tar(&entries)], "amd64", IndexStyle::Skopeo);
    layout
}

/// The `base` Docker fixture's layout when `ROOTFS_FIXTURES` names it, else a generated one.
fn base_or_generated(dir: &Path) -> PathBuf {
    match oci::fixture_layout("base") {
        Some(layout) => layout,
        None => generated_layout(dir, "generated", "base", 400),
    }
}

/// The agent every host installs (the same bytes, at the same path, as a fleet's hosts
/// have).
fn fleet_agent(dir: &Path) -> PathBuf {
    rootfs_cache_tests::agent(dir, "vm-agent", "remote")
}

/// `skopeo inspect --raw docker://HOST/REPO:TAG`: the manifest's bytes, as stored.
fn inspect_raw(host: &str, tag: &str, creds: Option<&str>) -> Vec<u8> {
    let mut command = Command::new("skopeo");
    command.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(creds) = creds {
        command.arg(format!("--creds={creds}"));
    }
    let out = command.arg(format!("docker://{host}/{REPO}:{tag}")).output().unwrap();
    assert!(out.status.success(), "skopeo inspect --raw {tag}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// `curl` with `args`; its stdout (a failure panics).
fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl").args(["-sS", "--fail-with-body"]).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

/// Blob `digest` of the remote repository at the plain-HTTP registry `host`.
fn get_blob(host: &str, digest: &str) -> Vec<u8> {
    curl(&["-L", &format!("http://{host}/v2/{REPO}/blobs/{digest}")])
}

/// Uploads `bytes` as a blob of the remote repository (`POST` then `PUT`, the protocol's
/// monolithic upload); returns its digest.
fn upload_blob(host: &str, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(bytes));
    let head = curl(&["-i", "-X", "POST", &format!("http://{host}/v2/{REPO}/blobs/uploads/")]);
    let head = String::from_utf8_lossy(&head);
    let location = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no Location: {head}"));
    let location = if location.starts_with('/') { format!("http://{host}{location}") } else { location.to_owned() };
    let separator = if location.contains('?') { '&' } else { '?' };
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.path().display()),
        &format!("{location}{separator}digest={digest}"),
    ]);
    digest
}

/// Puts `manifest` in the remote repository as `tag` (an OCI image manifest).
fn put_manifest(host: &str, tag: &str, manifest: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifest).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {OCI_MANIFEST}"),
        "--data-binary",
        &format!("@{}", file.path().display()),
        &format!("http://{host}/v2/{REPO}/manifests/{tag}"),
    ]);
}

/// A manifest's annotation `name`.
fn annotation<'a>(manifest: &'a Value, name: &str) -> &'a str {
    manifest["annotations"][name].as_str().unwrap_or_else(|| panic!("no annotation {name}: {manifest}"))
}

/// Standard base64 of `user:password`, as `config.json`'s `auth` holds it.
fn docker_auth(registry: &str, user: &str, password: &str) -> String {
    let auth = token_server::base64(format!("{user}:{password}").as_bytes(), token_server::STANDARD, true);
    format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#)
}

#[test]
fn a_second_host_gets_the_first_hosts_image_from_the_registry_byte_for_byte() {
    require_root!();
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::start(Setup::default());
    let remote = Remote::plain(&registry.host);
    let layout = base_or_generated(d);
    let agent = fleet_agent(d);

    // A host that may not push builds, and leaves the registry as it was.
    let quiet = Host::new(d, "quiet", Source::Copy(&layout), &remote, &agent);
    let out = quiet.convert(&["--no-remote-push"]);
    quiet.expect(&out, "built");
    let key = key_of(&out.1);
    assert_eq!((&out.1["pushed"], &out.1["remote_digest"]), (&json!(false), &Value::Null), "{}", out.1);
    assert!(!registry.has_tag(REPO, &key), "--no-remote-push pushed");

    // Host A: the same key from its own copy at its own path; built and pushed.
    let a = Host::new(d, "a", Source::Copy(&layout), &remote, &agent);
    let out = a.convert(&[]);
    let image_a = a.expect(&out, "built");
    assert_eq!(key_of(&out.1), key, "the key depends on where the layout is");
    assert_eq!(out.1["pushed"], true, "{}", out.1);
    assert_eq!(out.1["warnings"], json!([]), "{}", out.1);
    let digest = out.1["remote_digest"].as_str().unwrap_or_else(|| panic!("no remote_digest: {}", out.1)).to_owned();
    assert!(registry.has_tag(REPO, &key));
    assert!(a.ran_converter(), "A has no run-converter line: {}", a.audit_text());

    // Host B: A's image, byte for byte, without converting anything.
    let b = Host::new(d, "b", Source::Copy(&layout), &remote, &agent);
    let out = b.convert(&[]);
    let image_b = b.expect(&out, "remote");
    assert_eq!(key_of(&out.1), key);
    assert_eq!(out.1["cached"], false, "{}", out.1);
    assert_eq!(out.1["pushed"], false, "{}", out.1);
    assert_eq!(out.1["remote_digest"], digest.as_str(), "{}", out.1);
    assert_eq!(out.1["warnings"], json!([]), "{}", out.1);
    let image_sha256 = file_sha256(&image_b);
    assert_eq!(image_sha256, file_sha256(&image_a), "B's image is not A's");
    assert!(!b.capabilities().is_empty(), "B has no audit log");
    assert!(!b.ran_converter(), "B ran a converter: {}", b.audit_text());
    let (code, report) = fsck(&image_b);
    assert_eq!(code, 0, "e2fsck -fn: {report}");

    // The artifact, as a user inspects it.
    let raw = inspect_raw(&registry.host, &key, None);
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), digest, "remote_digest is not the manifest's digest");
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["schemaVersion"], 2, "{manifest}");
    assert_eq!(manifest["mediaType"], OCI_MANIFEST, "{manifest}");
    assert_eq!(manifest["artifactType"], ARTIFACT_TYPE, "{manifest}");
    assert_eq!(manifest["config"]["mediaType"], CONFIG_TYPE, "{manifest}");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], LAYER_TYPE, "{manifest}");
    assert_eq!(annotation(&manifest, KEY), key);
    assert_eq!(annotation(&manifest, IMAGE_SHA256), format!("sha256:{image_sha256}"));
    assert_eq!(annotation(&manifest, IMAGE_SIZE), std::fs::metadata(&image_b).unwrap().len().to_string());
    let agent_sha256 = file_sha256(&agent);
    assert_eq!(annotation(&manifest, AGENT_SHA256).trim_start_matches("sha256:"), agent_sha256, "{manifest}");
    assert!(annotation(&manifest, SOURCE).starts_with("sha256:"), "{manifest}");
    assert!(!annotation(&manifest, CONVERTER).is_empty(), "{manifest}");
    assert!(manifest.get("subject").is_none_or(Value::is_null), "a layout has no subject in the registry: {manifest}");
    // Its config is the entry's manifest; its layer, the image compressed with zstd.
    let config = get_blob(&registry.host, manifest["config"]["digest"].as_str().unwrap());
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["key"], key.as_str(), "{config}");
    let layer = get_blob(&registry.host, layers[0]["digest"].as_str().unwrap());
    assert_eq!(layers[0]["size"], layer.len(), "{manifest}");
    let image = zstd::decode_all(layer.as_slice()).unwrap();
    assert_eq!(sha256_hex(&image), image_sha256, "the layer does not decompress to the image");

    // B again: its own cache now.
    let out = b.convert(&[]);
    b.expect(&out, "local");
    assert_eq!((&out.1["cached"], key_of(&out.1)), (&json!(true), key));
}

#[test]
fn eight_hosts_started_cold_at_once_all_get_one_valid_image() {
    require_root!();
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::start(Setup::default());
    // The remote from the policy file this time (`remote`, `remote_push`).
    let remote = Remote { in_policy: true, ..Remote::plain(&registry.host) };
    let layout = generated_layout(d, "layout", "eight", 400);
    let agent = fleet_agent(d);
    let hosts: Vec<Host> =
        (0..8).map(|i| Host::new(d, &format!("host{i}"), Source::Copy(&layout), &remote, &agent)).collect();
    let children: Vec<Child> = hosts.iter().map(|h| h.spawn(&["--ext4-profile", "minimal"])).collect();
    let outcomes: Vec<Outcome> = children.into_iter().map(finish).collect();

    let mut digests = std::collections::BTreeSet::new();
    let mut origins = std::collections::BTreeMap::<String, usize>::new();
    for (host, outcome) in hosts.iter().zip(&outcomes) {
        let origin = outcome.1["origin"].as_str().unwrap_or_default().to_owned();
        assert!(origin == "built" || origin == "remote", "{}: {}\n{}", host.name, outcome.1, outcome.2);
        let image = host.expect(outcome, &origin);
        *origins.entry(origin).or_default() += 1;
        digests.insert(file_sha256(&image));
        let (code, report) = fsck(&image);
        assert_eq!(code, 0, "{}: e2fsck -fn: {report}", host.name);
    }
    println!("eight cold hosts: {origins:?}");
    assert_eq!(digests.len(), 1, "the hosts' images differ: {digests:?}");
    let keys: std::collections::BTreeSet<String> = outcomes.iter().map(|o| key_of(&o.1)).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = keys.into_iter().next().unwrap();
    assert!(registry.has_tag(REPO, &key), "nobody pushed");

    // What the race left in the registry is sound: a ninth host fetches it.
    let ninth = Host::new(d, "host8", Source::Copy(&layout), &remote, &agent);
    let out = ninth.convert(&["--ext4-profile", "minimal"]);
    let image = ninth.expect(&out, "remote");
    assert!(digests.contains(&file_sha256(&image)));
    assert!(!ninth.ran_converter(), "{}", ninth.audit_text());
}

#[test]
fn an_unreachable_registry_is_a_warning_and_the_image_is_built_here() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A loopback port nobody listens on.
    let down = format!("127.0.0.1:{}", support::free_port());
    let remote = Remote::plain(&down);
    let layout = generated_layout(d, "layout", "down", 50);
    let host = Host::new(d, "host", Source::Copy(&layout), &remote, &fleet_agent(d));
    let out = host.convert(&["--ext4-profile", "minimal"]);
    let image = host.expect(&out, "built");
    assert_eq!((&out.1["pushed"], &out.1["remote_digest"]), (&json!(false), &Value::Null), "{}", out.1);
    let warned = warnings(&out.1);
    assert!(!warned.is_empty(), "no warning: {}\n{}", out.1, out.2);
    assert!(out.2.to_lowercase().contains("warning"), "{}", out.2);
    assert!(host.ran_converter());
    let (code, report) = fsck(&image);
    assert_eq!(code, 0, "{report}");

    // A local hit does not need the remote: no warning.
    let out = host.convert(&["--ext4-profile", "minimal"]);
    host.expect(&out, "local");
    assert_eq!(out.1["cached"], true);
    assert_eq!(out.1["warnings"], json!([]), "{}", out.1);
}

#[test]
fn a_blob_corrupted_in_the_registrys_storage_is_refused_and_the_image_rebuilt() {
    require_root!();
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::start(Setup::default());
    let remote = Remote::plain(&registry.host);
    let layout = generated_layout(d, "layout", "corrupt", 200);
    let agent = fleet_agent(d);
    let minimal = ["--ext4-profile", "minimal"];

    let a = Host::new(d, "a", Source::Copy(&layout), &remote, &agent);
    let out = a.convert(&minimal);
    let image_a = a.expect(&out, "built");
    assert_eq!(out.1["pushed"], true, "{}", out.1);
    let key = key_of(&out.1);

    // One byte of the layer's bytes in the registry's storage, flipped (the length kept).
    let manifest: Value = serde_json::from_slice(&inspect_raw(&registry.host, &key, None)).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let data = registry.blob_data(&layer);
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    // (`digest`, the default, named.)
    let c = Host::new(d, "c", Source::Copy(&layout), &remote, &agent);
    let out = c.convert(&["--ext4-profile", "minimal", "--verify-remote", "digest"]);
    let image_c = c.expect(&out, "built");
    let hex = layer.trim_start_matches("sha256:");
    assert!(warnings(&out.1).iter().any(|w| w.contains(hex)), "no warning names {layer}: {}\n{}", out.1, out.2);
    assert!(c.ran_converter());
    assert_eq!(file_sha256(&image_c), file_sha256(&image_a), "C's own build differs from A's");
}

#[test]
fn an_artifact_tagged_with_one_key_but_holding_another_image_is_refused() {
    require_root!();
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::start(Setup::default());
    let remote = Remote::plain(&registry.host);
    let one = generated_layout(d, "one", "image X", 100);
    let two = generated_layout(d, "two", "image Y", 100);
    let agent = fleet_agent(d);
    let minimal = ["--ext4-profile", "minimal"];

    let x = Host::new(d, "x", Source::Copy(&one), &remote, &agent);
    let out = x.convert(&minimal);
    let image_x = x.expect(&out, "built");
    let key_x = key_of(&out.1);
    let y = Host::new(d, "y", Source::Copy(&two), &remote, &agent);
    let out = y.convert(&minimal);
    let image_y = y.expect(&out, "built");
    let key_y = key_of(&out.1);
    assert_ne!(key_x, key_y);
    assert!(registry.has_tag(REPO, &key_x) && registry.has_tag(REPO, &key_y));
    assert_ne!(file_sha256(&image_x), file_sha256(&image_y));

    // X's artifact, tagged with Y's key.
    let raw_x = inspect_raw(&registry.host, &key_x, None);
    put_manifest(&registry.host, &key_y, &raw_x);
    assert_eq!(inspect_raw(&registry.host, &key_y, None), raw_x, "the re-tag did not take");

    let z = Host::new(d, "z", Source::Copy(&two), &remote, &agent);
    let out = z.convert(&minimal);
    let image_z = z.expect(&out, "built");
    assert_eq!(key_of(&out.1), key_y);
    assert!(!warnings(&out.1).is_empty(), "a wrong artifact refused without a warning: {}\n{}", out.1, out.2);
    assert!(z.ran_converter());
    assert_eq!(file_sha256(&image_z), file_sha256(&image_y), "Z's image is not Y's");
}

#[test]
fn the_token_service_grants_pull_to_the_reader_and_push_to_the_writer() {
    // The harness of the read-only test, checked with skopeo alone: without this, a push
    // refused there could be a token service that refuses everything.
    if !require(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = TokenServer::start(&[
        User::new("reader", "read-only-pw", &["pull"]),
        User::new("writer", "w-pw", &["pull", "push"]),
    ]);
    let registry = Registry::start_configured(Setup::default(), "", &token.registry_auth_config());
    let layout = generated_layout(dir.path(), "layout", "token", 5);
    let copy = |creds: &str| {
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false", &format!("--dest-creds={creds}")])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{}/{REPO}:probe", registry.host))
            .output()
            .unwrap()
    };
    let out = copy("reader:read-only-pw");
    assert!(!out.status.success(), "the reader pushed");
    assert!(!registry.has_tag(REPO, "probe"));
    let out = copy("writer:w-pw");
    assert!(
        out.status.success(),
        "the writer cannot push: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        registry.log()
    );
    assert!(registry.has_tag(REPO, "probe"));
    // The reader may read it; a wrong password may not.
    inspect_raw(&registry.host, "probe", Some("reader:read-only-pw"));
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds=reader:wrong"])
        .arg(format!("docker://{}/{REPO}:probe", registry.host))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong password was accepted");
    let grants = token.grants();
    // `USER SCOPES -> GRANTED`: the reader asked to push and was granted `pull` alone.
    let granted = |user: &str| -> Vec<String> {
        grants
            .iter()
            .filter(|g| g.starts_with(&format!("{user} ")))
            .filter_map(|g| g.split_once(" -> ").map(|(_, granted)| granted.to_owned()))
            .collect()
    };
    let pull = format!("repository:{REPO}:pull");
    assert!(granted("reader").contains(&pull), "{grants:?}");
    assert!(granted("reader").iter().all(|g| !g.contains("push")), "{grants:?}");
    assert!(granted("writer").iter().any(|g| g.contains(&format!("{pull},push"))), "{grants:?}");
}

#[test]
fn read_only_credentials_refuse_the_push_with_a_warning_and_keep_the_entry() {
    require_root!();
    if !require(&["docker-registry", "skopeo", "openssl", "e2fsck"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // distribution 2.8's htpasswd lets every user push: a token service grants `pull` alone.
    let token = TokenServer::start(&[
        User::new("reader", "read-only-pw", &["pull"]),
        User::new("writer", "read-write-pw", &["pull", "push"]),
    ]);
    let registry = Registry::start_configured(Setup::default(), "", &token.registry_auth_config());
    let with = |user: &str, password: &str| Remote {
        more_registries: vec![token.host.clone()],
        docker_config: Some(docker_auth(&registry.host, user, password)),
        ..Remote::plain(&registry.host)
    };
    let layout = generated_layout(d, "layout", "read-only", 100);
    let agent = fleet_agent(d);
    let minimal = ["--ext4-profile", "minimal"];

    let reader = Host::new(d, "reader", Source::Copy(&layout), &with("reader", "read-only-pw"), &agent);
    let out = reader.convert(&minimal);
    let image = reader.expect(&out, "built");
    let key = key_of(&out.1);
    assert_eq!((&out.1["pushed"], &out.1["remote_digest"]), (&json!(false), &Value::Null), "{}", out.1);
    assert!(!warnings(&out.1).is_empty(), "a refused push without a warning: {}\n{}", out.1, out.2);
    assert!(!registry.has_tag(REPO, &key), "the reader pushed");
    assert!(
        token.grants().iter().any(|g| g.starts_with("reader ")),
        "the reader's credentials were not used: {:?}",
        token.grants()
    );
    // The entry stays, and serves.
    assert_eq!(fsck(&image).0, 0);
    let again = reader.convert(&minimal);
    reader.expect(&again, "local");

    // With push rights, the same conversion is pushed…
    let writer = Host::new(d, "writer", Source::Copy(&layout), &with("writer", "read-write-pw"), &agent);
    let out = writer.convert(&minimal);
    writer.expect(&out, "built");
    assert_eq!(out.1["pushed"], true, "{}\n{}", out.1, out.2);
    assert!(registry.has_tag(REPO, &key));
    // …and a reader fetches it.
    let fetcher = Host::new(d, "fetcher", Source::Copy(&layout), &with("reader", "read-only-pw"), &agent);
    let out = fetcher.convert(&minimal);
    let fetched = fetcher.expect(&out, "remote");
    assert_eq!(file_sha256(&fetched), file_sha256(&image));
}

#[test]
fn verify_remote_rebuild_accepts_a_true_artifact_and_calls_a_lying_one_corrupt() {
    require_root!();
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::start(Setup::default());
    let remote = Remote::plain(&registry.host);
    let marker = "image K";
    let layout = generated_layout(d, "layout", marker, 100);
    let agent = fleet_agent(d);
    let minimal = ["--ext4-profile", "minimal"];

    let truth = Host::new(d, "truth", Source::Copy(&layout), &remote, &agent);
    let out = truth.convert(&minimal);
    let image_k = truth.expect(&out, "built");
    let key = key_of(&out.1);
    assert_eq!(out.1["pushed"], true, "{}", out.1);

    // A true artifact, fetched, rebuilt and compared: remote.
    let b = Host::new(d, "b", Source::Copy(&layout), &remote, &agent);
    let out = b.convert(&["--ext4-profile", "minimal", "--verify-remote", "rebuild"]);
    let image_b = b.expect(&out, "remote");
    assert_eq!(file_sha256(&image_b), file_sha256(&image_k));
    assert!(b.ran_converter(), "`rebuild` did not rebuild: {}", b.audit_text());

    // The lie: the true image with one byte of a file's data changed (data blocks have no
    // checksum: still a sound ext4 of the right length, UUID and geometry), compressed,
    // with the annotations and the entry made to agree with its bytes. Only a rebuild can
    // tell.
    let mut lie = std::fs::read(&image_k).unwrap();
    let needle = generated_file(marker, 10);
    let found: Vec<usize> = lie.windows(64).enumerate().filter(|(_, w)| *w == &needle[..64]).map(|(i, _)| i).collect();
    assert_eq!(found.len(), 1, "file 10's data is not once in the image");
    lie[found[0] + 32] ^= 0xff;
    let lie_sha256 = sha256_hex(&lie);
    let layer = zstd::encode_all(lie.as_slice(), 3).unwrap();
    let layer_digest = upload_blob(&registry.host, &layer);
    let mut manifest: Value = serde_json::from_slice(&inspect_raw(&registry.host, &key, None)).unwrap();
    let mut config: Value =
        serde_json::from_slice(&get_blob(&registry.host, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(config["key"], key.as_str(), "{config}");
    if config.get("image_sha256").is_some() {
        config["image_sha256"] = json!(lie_sha256);
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = upload_blob(&registry.host, &config);
    manifest["config"]["digest"] = json!(config_digest);
    manifest["config"]["size"] = json!(config.len());
    manifest["layers"][0]["digest"] = json!(layer_digest);
    manifest["layers"][0]["size"] = json!(layer.len());
    manifest["annotations"][IMAGE_SHA256] = json!(format!("sha256:{lie_sha256}"));
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    put_manifest(&registry.host, &key, &manifest);

    // `remote_verify = "rebuild"` from the policy file: corrupt, and nothing published.
    let policy_remote = Remote { in_policy: true, policy_extra: "remote_verify = \"rebuild\"\n".into(), ..remote };
    let c = Host::new(d, "c", Source::Copy(&layout), &policy_remote, &agent);
    let (code, json, stderr) = c.convert(&minimal);
    assert_eq!(code, EXIT_CORRUPT, "a lying artifact was not corrupt: {json}\n{stderr}");
    let (image, entry) = c.entry(&key);
    assert!(!image.exists() && !entry.exists(), "a lying artifact's key was published");
    // The audit log names what lied: the layer (or the artifact, or the image it holds).
    let audit = c.audit_text();
    assert!(
        [&layer_digest, &manifest_digest, &lie_sha256].iter().any(|d| audit.contains(d.trim_start_matches("sha256:"))),
        "the audit log names none of the lying layer {layer_digest}, artifact {manifest_digest}, image \
         sha256:{lie_sha256}:\n{audit}"
    );
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
    if !require(&["docker-registry", "skopeo", "openssl", "htpasswd", "e2fsck"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = support::make_pki();
    let htpasswd = support::make_htpasswd(d, "fleet", "s3cret-fleet-pass");
    let registry = Registry::start(Setup { tls: Some((pki.cert.clone(), pki.key.clone())), htpasswd: Some(htpasswd) });
    let ca_dir = PathBuf::from("/etc/docker/certs.d").join(&registry.host);
    std::fs::create_dir_all(&ca_dir).unwrap();
    let _certs = CertsDir(ca_dir.clone());
    std::fs::copy(&pki.ca, ca_dir.join("ca.crt")).unwrap();
    let config = docker_auth(&registry.host, "fleet", "s3cret-fleet-pass");
    let remote = Remote { insecure: false, docker_config: Some(config.clone()), ..Remote::plain(&registry.host) };
    let layout = generated_layout(d, "layout", "tls", 100);
    let agent = fleet_agent(d);
    let minimal = ["--ext4-profile", "minimal"];

    let a = Host::new(d, "a", Source::Copy(&layout), &remote, &agent);
    let out = a.convert(&minimal);
    let image_a = a.expect(&out, "built");
    assert_eq!(out.1["pushed"], true, "{}\n{}", out.1, out.2);
    let key = key_of(&out.1);
    assert!(registry.has_tag(REPO, &key));

    let b = Host::new(d, "b", Source::Copy(&layout), &remote, &agent);
    let out = b.convert(&minimal);
    let image_b = b.expect(&out, "remote");
    assert_eq!(file_sha256(&image_b), file_sha256(&image_a));
    assert!(!b.ran_converter());
    assert_eq!(fsck(&image_b).0, 0);
    let auth = config.split("\"auth\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    for host in [&a, &b] {
        let audit = host.audit_text();
        assert!(!audit.is_empty());
        for secret in ["s3cret-fleet-pass", auth.as_str()] {
            assert!(!audit.contains(secret), "{}: a secret in the audit log", host.name);
        }
    }
}

#[test]
fn a_source_from_the_same_registry_is_the_artifacts_subject() {
    require_root!();
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::start(Setup::default());
    let remote = Remote::plain(&registry.host);
    let layout = generated_layout(d, "layout", "subject", 50);
    oci::skopeo_push(&layout, &registry.host, "team/app:v1", false);
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let source_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let source_size = index["manifests"][0]["size"].as_u64().unwrap();
    let source = format!("docker://{}/team/app:v1", registry.host);
    let agent = fleet_agent(d);
    let minimal = ["--ext4-profile", "minimal"];

    let a = Host::new(d, "a", Source::Name(&source), &remote, &agent);
    let out = a.convert(&minimal);
    a.expect(&out, "built");
    assert_eq!(out.1["pushed"], true, "{}", out.1);
    let key = key_of(&out.1);
    let manifest: Value = serde_json::from_slice(&inspect_raw(&registry.host, &key, None)).unwrap();
    assert_eq!(manifest["subject"]["digest"], source_digest, "{manifest}");
    assert_eq!(manifest["subject"]["size"], source_size, "{manifest}");
    assert_eq!(manifest["subject"]["mediaType"], OCI_MANIFEST, "{manifest}");
    assert_eq!(annotation(&manifest, SOURCE), source_digest, "{manifest}");

    let b = Host::new(d, "b", Source::Name(&source), &remote, &agent);
    let out = b.convert(&minimal);
    b.expect(&out, "remote");
    assert_eq!(key_of(&out.1), key);
}

#[test]
fn a_bare_overlay2_directory_is_not_shareable_and_never_leaves_the_host() {
    require_root!();
    if !require(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = Registry::start(Setup::default());
    let remote = Remote::plain(&registry.host);
    // Layer directories with no Docker layer database around them: no chain ID.
    let root = d.join("overlay2");
    let top = rootfs_cache_tests::standard_chain(&root);
    let top_name = top.file_name().unwrap().to_str().unwrap();
    let agent = fleet_agent(d);
    let minimal = ["--ext4-profile", "minimal"];

    // Two hosts with a copy each: neither fetches, neither pushes.
    for name in ["a", "b"] {
        let host = Host::new(d, name, Source::Overlay2(&root, top_name), &remote, &agent);
        let (code, json, stderr) = host.convert(&minimal);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert_eq!(json["shareable"], false, "{name}: {json}");
        assert_eq!(json["origin"], "built", "{name}: {json}");
        assert_eq!((&json["pushed"], &json["remote_digest"]), (&json!(false), &Value::Null), "{name}: {json}");
        assert!(host.ran_converter());
        let (image, _) = host.entry(&key_of(&json));
        assert_eq!(fsck(&image).0, 0);
    }
    // Neither asked the registry (which nobody else uses here) for an artifact nor sent
    // it one.
    let asked: Vec<String> = registry
        .log()
        .lines()
        .filter(|l| l.contains("/manifests/") || l.contains("/blobs/"))
        .map(str::to_owned)
        .collect();
    assert!(asked.is_empty(), "a key that is not shareable went to the registry:\n{}", asked.join("\n"));
    assert!(
        !registry.dir.path().join("data/docker/registry/v2/repositories").join(REPO).exists(),
        "something was pushed"
    );
}

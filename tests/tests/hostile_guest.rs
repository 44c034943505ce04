//! The sandbox against a hostile guest: a component that implements the
//! rootfs-cache world and tries to reach outside the cache, exhaust the host
//! or keep what it took (`tests/hostile/`). Every attack is refused (a
//! `denied` error naming the rule) or stopped (a trap); nothing outside the
//! cache changes, whatever the guest held is released, and the same host
//! keeps serving. Needs root (real loop devices and mounts).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rootfs_cache::{ComponentSource, Config, ConverterSpec, Error, Limits, Policy, RemoteCache, Request, RootfsCache};
use rootfs_cache_tests::{agent, loop_devices_under, require_root, snapshot, standard_chain, temp_files};

fn hostile_component() -> ComponentSource {
    let path = std::env::var_os("ROOTFS_CACHE_HOSTILE_COMPONENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("components/hostile.wasm"));
    ComponentSource::File(path)
}

struct World {
    dir: tempfile::TempDir,
    cache: RootfsCache,
    top: PathBuf,
    agent: PathBuf,
    outside: PathBuf,
}

impl World {
    fn new() -> Self {
        Self::with_remote(None)
    }

    /// A world whose cache has `remote` as its remote cache (its registry
    /// allowed by the policy).
    fn with_remote(remote: Option<RemoteCache>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let top = standard_chain(&dir.path().join("overlay2"));
        let agent = agent(dir.path(), "vm-agent", "hostile");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"do not touch").unwrap();
        let cache_dir = dir.path().join("cache");
        let policy = Policy {
            cache_dir: Some(cache_dir.clone()),
            source_roots: Some(vec![top.parent().unwrap().canonicalize().unwrap()]),
            agents: Some(vec![agent.canonicalize().unwrap()]),
            converters: Some(vec!["exact".into()]),
            limits: Limits {
                guest_memory_bytes: 32 << 20,
                guest_time: Duration::from_millis(300),
                max_resources: 8,
                ..Limits::default()
            },
            audit_log: Some(dir.path().join("audit.jsonl")),
            registries: Some(remote.iter().map(|r| r.registry().to_owned()).collect()),
            docker_engines: Some(Vec::new()),
            ..Policy::default()
        };
        let mut config = Config::new(&cache_dir).policy(policy).component(hostile_component());
        if let Some(remote) = remote {
            config = config.remote(remote);
        }
        let cache = RootfsCache::open(config).unwrap();
        // A symlink in tmp/ pointing out of the cache.
        std::os::unix::fs::symlink(outside.join("precious"), cache.cache_dir().join("tmp/escape")).unwrap();
        std::os::unix::fs::symlink(&outside, cache.cache_dir().join("tmp/escapedir")).unwrap();
        Self { dir, cache, top, agent, outside }
    }

    async fn attack(&self, name: &str) -> Result<rootfs_cache::Outcome, Error> {
        let request =
            Request::new(&self.top, &self.agent).converter(ConverterSpec::Command(format!("/attack/{name}").into()));
        self.cache.convert(&request).await
    }

    fn outside_is_untouched(&self, what: &str) {
        assert_eq!(std::fs::read(self.outside.join("precious")).unwrap(), b"do not touch", "{what}");
        assert_eq!(std::fs::read_dir(&self.outside).unwrap().count(), 1, "{what} wrote outside the cache");
        assert!(!Path::new("/tmp/outside.ext4").exists(), "{what}");
        assert!(
            !self.dir.path().join("outside.ext4").exists() && !self.dir.path().join("evil.ext4").exists(),
            "{what}"
        );
    }
}

fn denied(result: Result<rootfs_cache::Outcome, Error>, rule: &str, what: &str) {
    match result {
        Err(Error::Denied { rule: r, .. }) if r == rule => {}
        other => panic!("{what}: expected a denial by `{rule}`, got {other:?}"),
    }
}

fn trapped(result: Result<rootfs_cache::Outcome, Error>, what: &str) -> String {
    match result {
        Err(Error::GuestTrap(why)) => why,
        other => panic!("{what}: expected the guest to be stopped, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_refused_or_stopped_and_the_host_keeps_serving() {
    require_root!();
    let w = World::new();
    assert_eq!(w.attack("noop").await.unwrap().key, "noop");

    for (attack, rule) in [
        ("convert-into-parent", "cache_dir"),
        ("convert-into-absolute", "cache_dir"),
        ("convert-into-images", "cache_dir"),
        ("layers-outside-roots", "source_roots"),
        ("mount-outside", "cache_dir"),
        ("mount-published", "cache_dir"),
        ("install-from-outside", "agents"),
        ("publish-outside", "cache_dir"),
        ("publish-mismatched", "cache_dir"),
        ("remove-outside", "cache_dir"),
        ("agent-outside", "agents"),
        ("converter-outside", "converters"),
        ("probe-outside", "source_roots"),
        ("probe-through-symlinked-dir", "source_roots"),
        ("remote-without-one", "remote"),
        ("remote-image-into-parent", "remote"),
        ("remote-push-without-one", "remote"),
        ("digest-outside", "cache_dir"),
    ] {
        denied(w.attack(attack).await, rule, attack);
        w.outside_is_untouched(attack);
        assert_eq!(w.attack("noop").await.unwrap().key, "noop", "the host stopped serving after {attack}");
    }

    // The read-only probe: no `..`, no flood, no huge reads, and a symlink
    // is reported, never followed out of the cache.
    for attack in ["probe-dotdot", "probe-many", "probe-huge-read", "probe-many-reads"] {
        let err = w.attack(attack).await.unwrap_err();
        assert_eq!(err.class(), "invalid-request", "{attack}: {err}");
    }
    assert_eq!(w.attack("probe-symlink").await.unwrap().key, "not followed");
    std::fs::remove_file(w.cache.cache_dir().join("tmp/escapedir")).unwrap();

    // Through a symlink in tmp/ that points out of the cache: no mount of it,
    // and removing it removes the link, not what it points at.
    assert!(w.attack("mount-through-symlink").await.is_err());
    w.outside_is_untouched("mount-through-symlink");
    w.attack("remove-symlink").await.unwrap();
    w.outside_is_untouched("remove-symlink");

    // WASI: outside the preopens nothing is visible, and the preopens are read-only.
    for attack in ["read-outside", "read-dotdot", "write-preopen"] {
        let err = w.attack(attack).await.unwrap_err();
        assert_eq!(err.class(), "io", "{attack}: {err}");
    }
    assert!(!w.cache.cache_dir().join("images/evil").exists());

    // Limits: time, memory, payload size, held resources.
    let why = trapped(w.attack("endless-loop").await, "endless-loop");
    assert!(why.contains("time") || why.contains("interrupt"), "{why}");
    trapped(w.attack("unbounded-memory").await, "unbounded-memory");
    let why = trapped(w.attack("huge-string").await, "huge-string");
    assert!(why.contains("limit"), "{why}");
    let why = trapped(w.attack("many-locks").await, "many-locks");
    assert!(why.contains("holds 8"), "{why}");
    assert_eq!(std::fs::read_dir(w.cache.cache_dir().join("locks")).unwrap().count(), 0, "locks outlived the guest");
    let why = trapped(w.attack("many-mounts").await, "many-mounts");
    assert!(why.contains("holds 8"), "{why}");
    assert_eq!(loop_devices_under(w.cache.cache_dir()), Vec::<String>::new(), "mounts outlived the guest");
    trapped(w.attack("leave-a-temporary-image").await, "leave-a-temporary-image");
    assert_eq!(temp_files(w.cache.cache_dir()), Vec::<String>::new(), "a temporary image outlived the guest");
    w.outside_is_untouched("the limits");
    assert_eq!(w.attack("noop").await.unwrap().key, "noop");
    assert!(snapshot(&w.cache.cache_dir().join("images")).is_empty());

    // Every call, allowed or not, is in the audit log.
    let audit = std::fs::read_to_string(w.dir.path().join("audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let verdicts = |v: &str| lines.iter().filter(|l| l["verdict"] == v).count();
    assert!(verdicts("denied") >= 12, "{audit}");
    assert!(verdicts("trapped") >= 3, "{audit}");
    assert!(verdicts("allowed") >= 1, "{audit}");
    for line in &lines {
        for field in ["time", "request", "capability", "arguments", "verdict", "duration_us"] {
            assert!(line.get(field).is_some(), "an audit line without {field}: {line}");
        }
    }
    let denial = lines.iter().find(|l| l["verdict"] == "denied").unwrap();
    assert!(denial["error"].as_str().unwrap().contains("denied by policy rule"), "{denial}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_remote_cache_the_guest_still_writes_only_new_files_under_tmp() {
    require_root!();
    // Nothing listens on port 9: every refusal below comes before the network.
    let w = World::with_remote(Some(RemoteCache::new("127.0.0.1:9/hostile").unwrap().push(false)));
    denied(w.attack("remote-image-into-parent").await, "cache_dir", "remote-image-into-parent");
    w.outside_is_untouched("remote-image-into-parent");
    // The remote's push is turned off: a push is refused, nothing is sent.
    denied(w.attack("remote-push-without-one").await, "remote_push", "remote-push-without-one");
    // A remote that cannot be reached is an `io` error to the guest.
    let err = w.attack("remote-without-one").await.unwrap_err();
    assert_eq!(err.class(), "io", "{err}");
    assert_eq!(w.attack("noop").await.unwrap().key, "noop");
    // Only the world's own two symlinks are in tmp/.
    assert_eq!(temp_files(w.cache.cache_dir()), ["escape", "escapedir"]);
}

#[tokio::test]
async fn a_component_that_imports_more_than_the_host_provides_is_refused() {
    // A component importing wasi:sockets: not the component this host runs.
    let wat = r#"(component
        (import "wasi:sockets/network@0.2.0" (instance))
    )"#;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path().join("cache"))
        .component(ComponentSource::Bytes(std::sync::Arc::new(wat.as_bytes().to_vec())));
    let err = RootfsCache::open(config).err().expect("a component with sockets was loaded");
    assert_eq!(err.class(), "component");
    assert!(err.to_string().contains("wasi:sockets"), "{err}");
}

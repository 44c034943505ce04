//! The client against a real registry (`docker-registry`, distribution 2.8) on loopback:
//! plain HTTP, TLS with a test CA, and htpasswd basic auth; a counting and faulty proxy in
//! front of it for the download-once and retry tests.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rootfs_cache_registry::{
    AuthFiles, BlobOutcome, BlobRequest, BlobStore, Digest, NoProgress, Progress, Reference, RegistryClient,
    RegistryConfig, RegistryError,
};
use support::{Fault, Image, Proxy, Registry, Setup, require};

const TOOLS: [&str; 2] = ["docker-registry", "skopeo"];

fn reference(text: &str) -> Reference {
    text.parse().unwrap()
}

fn digest(text: &str) -> Digest {
    text.parse().unwrap()
}

/// A client that reaches `hosts` over plain HTTP, with no CA directory and no credentials.
fn insecure_client(hosts: &[&str]) -> (RegistryClient, tempfile::TempDir) {
    let empty = tempfile::tempdir().unwrap();
    let mut config = RegistryConfig::new(Vec::<String>::new())
        .certs_dir(empty.path().join("certs.d"))
        .auth_files(AuthFiles::new([]));
    for host in hosts {
        config = config.insecure(*host);
    }
    (RegistryClient::new(config), empty)
}

fn blob_requests(image: &Image) -> Vec<BlobRequest> {
    vec![
        BlobRequest::new(digest(&support::sha256(&image.config)), Some(image.config.len() as u64)),
        BlobRequest::new(digest(&image.layer_digest()), Some(image.layer.len() as u64)),
    ]
}

fn temp_files(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("blobs/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_by_tag_and_by_digest() {
    if !require(&TOOLS) {
        return;
    }
    let registry = Registry::start(Setup::default());
    let image = Image::new(1, 10_000);
    image.push(&registry, "team/app:v1", None);
    let (client, _dir) = insecure_client(&[&registry.host]);

    let by_tag = client.fetch_manifest(&reference(&format!("docker://{}/team/app:v1", registry.host))).await.unwrap();
    assert_eq!(by_tag.bytes, image.manifest, "skopeo keeps the manifest's bytes");
    assert_eq!(by_tag.digest.to_string(), support::sha256(&image.manifest));
    assert_eq!(by_tag.media_type.as_deref(), Some("application/vnd.oci.image.manifest.v1+json"));

    let pinned = reference(&format!("{}/team/app@{}", registry.host, by_tag.digest));
    let by_digest = client.fetch_manifest(&pinned).await.unwrap();
    assert_eq!(by_digest, by_tag);

    // A digest the registry does not have is not found; so are an unknown tag and repository.
    let absent = reference(&format!("{}/team/app@{}", registry.host, Digest::of(b"absent")));
    assert!(matches!(client.fetch_manifest(&absent).await, Err(RegistryError::NotFound { .. })));
    let err = client.fetch_manifest(&reference(&format!("{}/team/app:v2", registry.host))).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("team/app:v2"), "{err}");
    let err = client.fetch_manifest(&reference(&format!("{}/team/nothing:v1", registry.host))).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_verified_into_the_store_once() {
    if !require(&TOOLS) {
        return;
    }
    let registry = Registry::start(Setup::default());
    let image = Image::new(2, 3 << 20);
    image.push(&registry, "app:v1", None);
    let proxy = Proxy::start(registry.host.clone(), Fault::None, Duration::ZERO).await;
    let (client, _dir) = insecure_client(&[&proxy.host]);
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let repo = reference(&format!("{}/app", proxy.host));

    #[derive(Default)]
    struct Seen {
        finished: std::sync::Mutex<Vec<(String, u64)>>,
        advanced: std::sync::Mutex<std::collections::BTreeMap<String, Vec<u64>>>,
    }
    impl Progress for Seen {
        fn advanced(&self, digest: &Digest, received: u64) {
            self.advanced.lock().unwrap().entry(digest.to_string()).or_default().push(received);
        }
        fn finished(&self, digest: &Digest, downloaded: u64) {
            self.finished.lock().unwrap().push((digest.to_string(), downloaded));
        }
    }
    let seen = Seen::default();
    let fetched = client.fetch_blobs(&store, &repo, &blob_requests(&image), &seen).await.unwrap();
    assert_eq!(fetched.len(), 2);
    assert_eq!(std::fs::read(&fetched[0].path).unwrap(), image.config);
    assert_eq!(std::fs::read(&fetched[1].path).unwrap(), image.layer);
    assert_eq!(fetched[1].path, store_dir.path().join("blobs/sha256").join(&image.layer_digest()[7..]));
    assert!(fetched.iter().all(|f| f.outcome == BlobOutcome::Downloaded { attempts: 1 }), "{fetched:?}");
    assert_eq!(proxy.blob_gets.load(Ordering::SeqCst), 2);
    assert!(seen.finished.lock().unwrap().contains(&(image.layer_digest(), image.layer.len() as u64)));
    // Bytes per blob as they arrive: increasing, ending at the blob's length.
    let advanced = seen.advanced.lock().unwrap()[&image.layer_digest()].clone();
    assert!(advanced.len() > 1 && advanced.is_sorted(), "{:?}", &advanced[..advanced.len().min(5)]);
    assert_eq!(advanced.last(), Some(&(image.layer.len() as u64)));
    assert!(temp_files(store_dir.path()).is_empty());

    // Again: nothing is downloaded.
    let again = client.fetch_blobs(&store, &repo, &blob_requests(&image), &NoProgress).await.unwrap();
    assert!(again.iter().all(|f| f.outcome == BlobOutcome::Present), "{again:?}");
    assert_eq!(proxy.blob_gets.load(Ordering::SeqCst), 2, "a present blob is not fetched again");

    // An unknown blob is not found, and leaves nothing behind.
    let unknown = BlobRequest::new(Digest::of(b"nowhere"), None);
    let err = client.fetch_blob(&store, &repo, &unknown, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    assert!(!store.contains(&unknown.digest));
    assert!(temp_files(store_dir.path()).is_empty());
}

/// The cross-process half of `concurrent_fetches_download_once`: does nothing unless run by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_fetch() {
    let Ok(host) = std::env::var("REGISTRY_TEST_CHILD_HOST") else { return };
    let store = BlobStore::open(std::env::var("REGISTRY_TEST_CHILD_STORE").unwrap()).unwrap();
    let blob = BlobRequest::new(digest(&std::env::var("REGISTRY_TEST_CHILD_DIGEST").unwrap()), None);
    let (client, _dir) = insecure_client(&[&host]);
    let fetched = client.fetch_blob(&store, &reference(&format!("{host}/app")), &blob, &NoProgress).await.unwrap();
    println!("CHILD-OUTCOME {:?}", fetched.outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fetches_download_once() {
    if !require(&TOOLS) {
        return;
    }
    let registry = Registry::start(Setup::default());
    let image = Image::new(3, 2 << 20);
    image.push(&registry, "app:v1", None);
    // The delay keeps the first download in flight while the others arrive.
    let proxy = Proxy::start(registry.host.clone(), Fault::None, Duration::from_millis(300)).await;
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let (client, _dir) = insecure_client(&[&proxy.host]);
    let client = Arc::new(client);
    let repo = reference(&format!("{}/app", proxy.host));
    let blob = BlobRequest::new(digest(&image.layer_digest()), Some(image.layer.len() as u64));

    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_fetch", "--exact", "--nocapture", "--test-threads=1"])
        .env("REGISTRY_TEST_CHILD_HOST", &proxy.host)
        .env("REGISTRY_TEST_CHILD_STORE", store_dir.path())
        .env("REGISTRY_TEST_CHILD_DIGEST", image.layer_digest())
        .output();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, store, repo, blob) = (client.clone(), store.clone(), repo.clone(), blob.clone());
            tokio::spawn(async move { client.fetch_blob(&store, &repo, &blob, &NoProgress).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap().outcome);
    }
    let child = child.await.unwrap();
    let child_out = String::from_utf8_lossy(&child.stdout).into_owned();
    assert!(child.status.success(), "child: {child_out}{}", String::from_utf8_lossy(&child.stderr));
    let child_outcome = support::lines(&child.stdout).into_iter().find(|l| l.contains("CHILD-OUTCOME")).unwrap();
    if child_outcome.contains("Downloaded") {
        outcomes.push(BlobOutcome::Downloaded { attempts: 1 });
    }
    assert_eq!(proxy.blob_gets.load(Ordering::SeqCst), 1, "17 fetches in 2 processes, one download");
    assert_eq!(outcomes.iter().filter(|o| matches!(o, BlobOutcome::Downloaded { .. })).count(), 1, "{outcomes:?}");
    assert_eq!(std::fs::read(store.path(&blob.digest)).unwrap(), image.layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faulty_streams_are_retried_once_then_corrupt() {
    if !require(&TOOLS) {
        return;
    }
    let registry = Registry::start(Setup::default());
    let image = Image::new(4, 1 << 20);
    image.push(&registry, "app:v1", None);
    let layer = BlobRequest::new(digest(&image.layer_digest()), Some(image.layer.len() as u64));
    // With and without the expected size: the digest alone must catch a corrupt byte.
    let unsized_layer = BlobRequest::new(layer.digest.clone(), None);

    for (fault, blob) in [
        (Fault::Corrupt(1), &layer),
        (Fault::Corrupt(1), &unsized_layer),
        (Fault::Truncate(1), &layer),
        (Fault::Truncate(1), &unsized_layer),
    ] {
        let proxy = Proxy::start(registry.host.clone(), fault, Duration::ZERO).await;
        let (client, _dir) = insecure_client(&[&proxy.host]);
        let store_dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(store_dir.path()).unwrap();
        let repo = reference(&format!("{}/app", proxy.host));
        let fetched =
            client.fetch_blob(&store, &repo, blob, &NoProgress).await.unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(fetched.outcome, BlobOutcome::Downloaded { attempts: 2 }, "{fault:?}");
        assert_eq!(std::fs::read(&fetched.path).unwrap(), image.layer);
        assert_eq!(proxy.blob_gets.load(Ordering::SeqCst), 2);
        assert!(temp_files(store_dir.path()).is_empty());
    }

    for fault in [Fault::Corrupt(usize::MAX), Fault::Truncate(usize::MAX)] {
        let proxy = Proxy::start(registry.host.clone(), fault, Duration::ZERO).await;
        let (client, _dir) = insecure_client(&[&proxy.host]);
        let store_dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(store_dir.path()).unwrap();
        let repo = reference(&format!("{}/app", proxy.host));
        let err = client.fetch_blob(&store, &repo, &unsized_layer, &NoProgress).await.unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt { .. }), "{fault:?}: {err:?}");
        let message = err.to_string();
        assert!(message.contains(&image.layer_digest()), "{message}");
        let said =
            if fault == Fault::Corrupt(usize::MAX) { "the bytes received have digest" } else { "the stream broke" };
        assert!(message.contains(said), "{message}");
        assert_eq!(proxy.blob_gets.load(Ordering::SeqCst), 2, "one retry, no more");
        assert!(!store.contains(&layer.digest), "nothing at the final name");
        assert!(temp_files(store_dir.path()).is_empty(), "no temporary file left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_the_ca_in_certs_d() {
    if !require(&[TOOLS[0], TOOLS[1], "openssl"]) {
        return;
    }
    let pki = support::make_pki();
    let registry = Registry::start(Setup { tls: Some((pki.cert.clone(), pki.key.clone())), htpasswd: None });
    let image = Image::new(5, 1000);
    image.push(&registry, "app:v1", None);
    let name = reference(&format!("{}/app:v1", registry.host));

    let certs = tempfile::tempdir().unwrap();
    let config = || RegistryConfig::new([registry.host.clone()]).certs_dir(certs.path()).auth_files(AuthFiles::new([]));
    // Without the CA: a TLS error naming the host and where its CA goes.
    let err = RegistryClient::new(config()).fetch_manifest(&name).await.unwrap_err();
    let ca_path = certs.path().join(&registry.host).join("ca.crt");
    match &err {
        RegistryError::Tls { host, ca_path: said, reason } => {
            assert_eq!(host, &registry.host);
            assert_eq!(said, &ca_path);
            assert!(reason.contains("certificate"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&registry.host) && message.contains(&ca_path.display().to_string()), "{message}");

    // With it, as Docker finds it.
    std::fs::create_dir_all(ca_path.parent().unwrap()).unwrap();
    std::fs::copy(&pki.ca, &ca_path).unwrap();
    let client = RegistryClient::new(config());
    let manifest = client.fetch_manifest(&name).await.unwrap();
    assert_eq!(manifest.bytes, image.manifest);
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let fetched = client.fetch_blobs(&store, &name, &blob_requests(&image), &NoProgress).await.unwrap();
    assert_eq!(std::fs::read(&fetched[1].path).unwrap(), image.layer);

    // A CA file that is not a certificate is a clear error, not an untrusted host.
    std::fs::write(&ca_path, "not a certificate\n").unwrap();
    let err = RegistryClient::new(config()).fetch_manifest(&name).await.unwrap_err();
    assert!(matches!(err, RegistryError::Certificate { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_http_needs_the_insecure_mark() {
    if !require(&TOOLS) {
        return;
    }
    let registry = Registry::start(Setup::default());
    let certs = tempfile::tempdir().unwrap();
    let client = RegistryClient::new(
        RegistryConfig::new([registry.host.clone()]).certs_dir(certs.path()).auth_files(AuthFiles::new([])),
    );
    let err = client.fetch_manifest(&reference(&format!("{}/app:v1", registry.host))).await.unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "TLS attempted and failed: {err:?}");
    assert!(err.to_string().contains("insecure"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_auth_from_config_json() {
    if !require(&[TOOLS[0], TOOLS[1], "htpasswd"]) {
        return;
    }
    const PASSWORD: &str = "pw-Zq8-hunter2-secret";
    let files = tempfile::tempdir().unwrap();
    let htpasswd = support::make_htpasswd(files.path(), "alice", PASSWORD);
    // Basic auth over plain HTTP (marked insecure): distribution allows htpasswd without TLS
    // on loopback, and the TLS path has its own test.
    let registry = Registry::start(Setup { tls: None, htpasswd: Some(htpasswd) });
    let image = Image::new(6, 1000);
    image.push(&registry, "private/app:v1", Some(&format!("alice:{PASSWORD}")));
    let name = reference(&format!("{}/private/app:v1", registry.host));
    let certs = tempfile::tempdir().unwrap();
    let client_with = |auth_files: Vec<std::path::PathBuf>| {
        RegistryClient::new(
            RegistryConfig::new(Vec::<String>::new())
                .insecure(registry.host.clone())
                .certs_dir(certs.path())
                .auth_files(AuthFiles::new(auth_files)),
        )
    };
    let write_config = |name: &str, body: String| {
        let path = files.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    // Credentials from a Docker config.json.
    let good = write_config(
        "config.json",
        format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, registry.host, b64(&format!("alice:{PASSWORD}"))),
    );
    let client = client_with(vec![good]);
    assert_eq!(client.fetch_manifest(&name).await.unwrap().bytes, image.manifest);
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    client.fetch_blobs(&store, &name, &blob_requests(&image), &NoProgress).await.unwrap();
    assert!(store.contains(&digest(&image.layer_digest())));

    // Without: unauthorized, and the message says `docker login HOST`.
    let err = client_with(vec![]).fetch_manifest(&name).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { status: 401, .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("docker login {}", registry.host)), "{err}");
    let blob = BlobRequest::new(digest(&image.layer_digest()), None);
    let other_store = BlobStore::open(tempfile::tempdir().unwrap().keep()).unwrap();
    let err = client_with(vec![]).fetch_blob(&other_store, &name, &blob, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");

    // A wrong password: unauthorized, and neither password appears in the error or its Debug.
    let wrong_password = format!("{PASSWORD}-wrong");
    let bad = write_config(
        "bad.json",
        format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, registry.host, b64(&format!("alice:{wrong_password}"))),
    );
    let client = client_with(vec![bad]);
    let err = client.fetch_manifest(&name).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    for text in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
        assert!(!text.contains(PASSWORD) && !text.contains(&b64(&format!("alice:{wrong_password}"))), "{text}");
    }

    // A credential helper holds them: named as unsupported, only because the registry asked.
    let helper = write_config("helper.json", format!(r#"{{"credHelpers":{{"{}":"secretservice"}}}}"#, registry.host));
    let err = client_with(vec![helper]).fetch_manifest(&name).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("docker-credential-secretservice") && message.contains("not supported"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_outside_the_allow_list_are_denied_without_a_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let (client, _dir) = insecure_client(&["127.0.0.1:1"]);
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let name = reference(&format!("{host}/app:v1"));
    let err = client.fetch_manifest(&name).await.unwrap_err();
    assert!(matches!(&err, RegistryError::Denied { host: h } if *h == host), "{err:?}");
    assert!(err.to_string().contains("not allowed"), "{err}");
    let blob = BlobRequest::new(Digest::of(b"x"), None);
    assert!(matches!(client.fetch_blob(&store, &name, &blob, &NoProgress).await, Err(RegistryError::Denied { .. })));
    assert_eq!(listener.accept().map_err(|e| e.kind()).unwrap_err(), std::io::ErrorKind::WouldBlock, "no connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_hosts() {
    let port = support::free_port();
    let host = format!("127.0.0.1:{port}");
    let (client, _dir) = insecure_client(&[&host]);
    let err = client.fetch_manifest(&reference(&format!("{host}/app:v1"))).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    let err = client.fetch_manifest(&reference("no-such-host.invalid/app:v1")).await.unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err:?}");
    let (client, _dir) = insecure_client(&["no-such-host.invalid"]);
    let err = client.fetch_manifest(&reference("no-such-host.invalid/app:v1")).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_over_4_mib_are_too_large() {
    // distribution refuses to store a manifest over 4 MiB, so a tiny fake registry serves one.
    let body = Arc::new(vec![b' '; (4 << 20) + 1]);
    for with_length in [true, false] {
        let (host, task) = support::fake_registry(body.clone(), with_length).await;
        let (client, _dir) = insecure_client(&[&host]);
        let err = client.fetch_manifest(&reference(&format!("{host}/big:v1"))).await.unwrap_err();
        assert!(matches!(err, RegistryError::TooLarge { limit: 4194304, .. }), "{err:?}");
        task.abort();
    }
    // Exactly 4 MiB is accepted.
    let (host, task) = support::fake_registry(Arc::new(vec![b' '; 4 << 20]), false).await;
    let (client, _dir) = insecure_client(&[&host]);
    let manifest = client.fetch_manifest(&reference(&format!("{host}/big:v1"))).await.unwrap();
    assert_eq!(manifest.bytes.len(), 4 << 20);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_pull_leaves_only_what_sweep_removes() {
    if !require(&TOOLS) {
        return;
    }
    let registry = Registry::start(Setup::default());
    let image = Image::new(7, 2 << 20);
    image.push(&registry, "app:v1", None);
    let stalling = Proxy::start(registry.host.clone(), Fault::Stall, Duration::ZERO).await;
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let blob = BlobRequest::new(digest(&image.layer_digest()), Some(image.layer.len() as u64));

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_fetch", "--exact", "--nocapture", "--test-threads=1"])
        .env("REGISTRY_TEST_CHILD_HOST", &stalling.host)
        .env("REGISTRY_TEST_CHILD_STORE", store_dir.path())
        .env("REGISTRY_TEST_CHILD_DIGEST", image.layer_digest())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until the child has written part of the blob.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let partial = loop {
        let names = temp_files(store_dir.path());
        let written = names
            .iter()
            .map(|n| store_dir.path().join("blobs/tmp").join(n))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
        if let Some(path) = written {
            break path;
        }
        assert!(std::time::Instant::now() < deadline, "the child wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(partial.file_name().unwrap().to_string_lossy().starts_with(rootfs_cache_registry::TEMP_PREFIX));
    // While the pull runs, its file is not stale.
    assert_eq!(store.sweep(false).unwrap(), vec![]);
    child.kill().await.unwrap();

    assert!(!store.contains(&blob.digest), "nothing at the final name");
    let stale = store.sweep(false).unwrap();
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].path, partial);
    assert!(stale[0].bytes > 0 && stale[0].bytes < image.layer.len() as u64);
    assert!(partial.exists(), "listing removes nothing");
    assert_eq!(store.sweep(true).unwrap(), stale);
    assert!(temp_files(store_dir.path()).is_empty());

    // The pull, done again, completes.
    let (client, _dir) = insecure_client(&[&registry.host]);
    let repo = reference(&format!("{}/app", registry.host));
    let fetched = client.fetch_blob(&store, &repo, &blob, &NoProgress).await.unwrap();
    assert_eq!(std::fs::read(fetched.path).unwrap(), image.layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_services_and_redirects_outside_the_allow_list_are_denied() {
    use support::{fake_server, response};
    // A host no request may reach.
    let forbidden = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    forbidden.set_nonblocking(true).unwrap();
    let forbidden_host = forbidden.local_addr().unwrap().to_string();
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();

    // A registry whose token service is elsewhere: the credentials would go there.
    let realm = format!("WWW-Authenticate: Bearer realm=\"http://{forbidden_host}/token\",service=\"test\"\r\n");
    let (host, task) =
        fake_server(Arc::new(move |_head: &str| response("401 Unauthorized", &realm, b"{}", true))).await;
    let (client, _dir) = insecure_client(&[&host]);
    let err = client.fetch_manifest(&reference(&format!("{host}/app:v1"))).await.unwrap_err();
    assert!(matches!(&err, RegistryError::Denied { host: h } if *h == forbidden_host), "{err:?}");
    task.abort();

    // A registry that redirects to a host that is not allowed, and one that is.
    let blob_body = b"redirected blob".to_vec();
    let blob_digest = Digest::of(&blob_body);
    let body = blob_body.clone();
    let (cdn, cdn_task) = fake_server(Arc::new(move |_head: &str| response("200 OK", "", &body, true))).await;
    let (cdn_ok, forbidden_for_redirect) = (cdn.clone(), forbidden_host.clone());
    let (host, task) = fake_server(Arc::new(move |head: &str| {
        let line = head.lines().next().unwrap_or_default();
        if line.contains("/manifests/") || line.contains("/blobs/sha256:0") {
            response("302 Found", &format!("Location: http://{forbidden_for_redirect}/x\r\n"), b"", true)
        } else if line.contains("/blobs/") {
            response("307 Temporary Redirect", &format!("Location: http://{cdn_ok}/blob\r\n"), b"", true)
        } else {
            response("200 OK", "", b"{}", true)
        }
    }))
    .await;
    let (client, _dir) = insecure_client(&[&host, &cdn]);
    let repo = reference(&format!("{host}/app:v1"));
    let err = client.fetch_manifest(&repo).await.unwrap_err();
    assert!(matches!(&err, RegistryError::Denied { host: h } if *h == forbidden_host), "{err:?}");
    let zero: Digest = format!("sha256:0{}", "1".repeat(63)).parse().unwrap();
    let err = client.fetch_blob(&store, &repo, &BlobRequest::new(zero.clone(), None), &NoProgress).await.unwrap_err();
    assert!(matches!(&err, RegistryError::Denied { host: h } if *h == forbidden_host), "{err:?}");
    assert!(!store.contains(&zero) && temp_files(store_dir.path()).is_empty());
    // Redirected to an allowed host (as Docker Hub sends blobs to its CDN): followed.
    let fetched = client.fetch_blob(&store, &repo, &BlobRequest::new(blob_digest, None), &NoProgress).await.unwrap();
    assert_eq!(std::fs::read(fetched.path).unwrap(), blob_body);
    task.abort();
    cdn_task.abort();

    assert_eq!(forbidden.accept().map_err(|e| e.kind()).unwrap_err(), std::io::ErrorKind::WouldBlock, "no connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_credentials_from_auth_json() {
    use base64::Engine as _;
    use support::{fake_server, header, response};
    const PASSWORD: &str = "tok-pw-7731-secret";
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("bob:{PASSWORD}")));
    // The server's own address is known only once it listens: the handler reads it from Host.
    let (host, task) = fake_server(Arc::new(move |head: &str| {
        let line = head.lines().next().unwrap_or_default();
        let me = header(head, "host").unwrap_or_default();
        let challenge = format!("WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"fake\"\r\n");
        if line.starts_with("GET /token?") {
            let scoped = line.contains("scope=repository%3Ateam%2Fapp%3Apull")
                || line.contains("scope=repository:team/app:pull");
            if header(head, "authorization") == Some(basic.as_str()) && scoped {
                response("200 OK", "Content-Type: application/json\r\n", br#"{"token":"tok-123"}"#, true)
            } else {
                response("401 Unauthorized", "", b"{}", true)
            }
        } else if line.starts_with("GET /v2/team/app/manifests/v1 ")
            && header(head, "authorization") == Some("Bearer tok-123")
        {
            response("200 OK", "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n", &manifest, true)
        } else {
            response("401 Unauthorized", &challenge, b"{}", true)
        }
    }))
    .await;
    let files = tempfile::tempdir().unwrap();
    let auth_json = files.path().join("auth.json");
    std::fs::write(
        &auth_json,
        format!(
            r#"{{"auths":{{"{host}/team":{{"auth":"{}"}}}}}}"#,
            base64::engine::general_purpose::STANDARD.encode(format!("bob:{PASSWORD}"))
        ),
    )
    .unwrap();
    let client_with = |files: Vec<std::path::PathBuf>| {
        RegistryClient::new(
            RegistryConfig::new(Vec::<String>::new())
                .insecure(host.clone())
                .certs_dir("/nonexistent")
                .auth_files(AuthFiles::new(files)),
        )
    };
    let name = reference(&format!("{host}/team/app:v1"));
    let fetched = client_with(vec![auth_json]).fetch_manifest(&name).await.unwrap();
    assert_eq!(fetched.bytes, br#"{"schemaVersion":2}"#);
    let err = client_with(vec![]).fetch_manifest(&name).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("docker login {host}")), "{err}");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_download_three_at_a_time() {
    if !require(&TOOLS) {
        return;
    }
    let registry = Registry::start(Setup::default());
    let images: Vec<Image> = (10..13).map(|seed| Image::new(seed, 200_000)).collect();
    for (i, image) in images.iter().enumerate() {
        image.push(&registry, &format!("multi:v{i}"), None);
    }
    // Each blob response is held a while, so the downloads overlap as much as the client lets them.
    let proxy = Proxy::start(registry.host.clone(), Fault::None, Duration::from_millis(250)).await;
    let (client, _dir) = insecure_client(&[&proxy.host]);
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let blobs: Vec<BlobRequest> = images.iter().flat_map(blob_requests).collect();
    let fetched =
        client.fetch_blobs(&store, &reference(&format!("{}/multi", proxy.host)), &blobs, &NoProgress).await.unwrap();
    assert_eq!(
        fetched.iter().map(|f| &f.digest).collect::<Vec<_>>(),
        blobs.iter().map(|b| &b.digest).collect::<Vec<_>>()
    );
    assert_eq!(proxy.blob_gets.load(Ordering::SeqCst), 6);
    assert_eq!(proxy.max_in_flight.load(Ordering::SeqCst), rootfs_cache_registry::MAX_CONCURRENT_DOWNLOADS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_and_its_manifests() {
    if !require(&TOOLS) {
        return;
    }
    let registry = Registry::start(Setup::default());
    let images = [Image::new(20, 1000), Image::new(21, 1000)];
    let index = support::push_index(&registry, "multi:v1", &images);
    let (client, _dir) = insecure_client(&[&registry.host]);

    let fetched = client.fetch_manifest(&reference(&format!("{}/multi:v1", registry.host))).await.unwrap();
    assert_eq!(fetched.bytes, index);
    assert_eq!(fetched.media_type.as_deref(), Some("application/vnd.oci.image.index.v1+json"));
    // The caller picks a platform's manifest from the index and asks for it by digest.
    let arm64 = reference(&format!("{}/multi@{}", registry.host, support::sha256(&images[1].manifest)));
    let manifest = client.fetch_manifest(&arm64).await.unwrap();
    assert_eq!(manifest.bytes, images[1].manifest);
    assert_eq!(manifest.media_type.as_deref(), Some("application/vnd.oci.image.manifest.v1+json"));
}

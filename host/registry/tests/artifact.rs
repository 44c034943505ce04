//! Cache entries as OCI artifacts against a real registry (`docker-registry`, distribution
//! 2.8) on loopback: a sparse image pushed compressed and fetched back sparse, the config and
//! manifest pushed and fetched, a corrupted blob refused, a second push skipped, and a push
//! without the right to push refused clearly.

mod support;

use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::Path;
use std::sync::Mutex;

use rootfs_cache_registry::{
    AuthFiles, Digest, NoProgress, OCI_MANIFEST_TYPE, Progress, Reference, RegistryClient, RegistryConfig,
    RegistryError,
};
use support::{Registry, Setup, require};

const TOOLS: [&str; 1] = ["docker-registry"];
const ENTRY_TYPE: &str = "application/vnd.rootfs-cache.entry.v1+json";
const IMAGE_TYPE: &str = "application/vnd.rootfs-cache.image.v1.ext4+zstd";

fn reference(text: &str) -> Reference {
    text.parse().unwrap()
}

fn client(host: &str, auth_files: Vec<std::path::PathBuf>) -> (RegistryClient, tempfile::TempDir) {
    let empty = tempfile::tempdir().unwrap();
    let config = RegistryConfig::new(Vec::<String>::new())
        .insecure(host)
        .certs_dir(empty.path().join("certs.d"))
        .auth_files(AuthFiles::new(auth_files));
    (RegistryClient::new(config), empty)
}

/// A 64 MiB file, holes but for a few runs of data.
fn sparse_image(path: &Path) -> Vec<u8> {
    let file = File::create(path).unwrap();
    file.set_len(64 << 20).unwrap();
    let mut state = 0x1234_5678_u64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    };
    file.write_all_at(&noise(300_000), 1 << 20).unwrap();
    file.write_all_at(b"superblock", 1024).unwrap();
    file.write_all_at(&noise(5000), 40 << 20).unwrap();
    file.write_all_at(&noise(100), (64 << 20) - 100).unwrap();
    std::fs::read(path).unwrap()
}

fn manifest(config: &[u8], config_digest: &Digest, image: &Digest, image_size: u64) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST_TYPE}","artifactType":"{ENTRY_TYPE}","config":{{"mediaType":"{ENTRY_TYPE}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{IMAGE_TYPE}","digest":"{image}","size":{image_size}}}]}}"#,
        config.len()
    )
    .into_bytes()
}

/// Each progress call, in order.
#[derive(Default)]
struct Calls(Mutex<Vec<String>>);

impl Progress for Calls {
    fn started(&self, digest: &Digest, size: Option<u64>) {
        self.0.lock().unwrap().push(format!("started {digest} {size:?}"));
    }
    fn advanced(&self, _: &Digest, received: u64) {
        self.0.lock().unwrap().push(format!("advanced {received}"));
    }
    fn finished(&self, digest: &Digest, bytes: u64) {
        self.0.lock().unwrap().push(format!("finished {digest} {bytes}"));
    }
}

/// Blob upload sessions the registry has begun, from its log.
fn uploads_begun(registry: &Registry) -> usize {
    registry.log().lines().filter(|l| l.contains("http.request.method=POST") && l.contains("/blobs/uploads/")).count()
}

fn empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).unwrap().next().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entry_round_trips_through_a_registry() {
    if !require(&TOOLS) {
        return;
    }
    let registry = Registry::start(Setup::default());
    let (client, _dir) = client(&registry.host, vec![]);
    let work = tempfile::tempdir().unwrap();
    let image_path = work.path().join("image.ext4");
    let original = sparse_image(&image_path);
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let key = "0123456789abcdef".repeat(4);
    let tagged = reference(&format!("{}/rootfs-cache/entries:{key}", registry.host));

    // Push: the image compressed (small: mostly holes), the config, the manifest.
    let calls = Calls::default();
    let image = client.push_zstd_image(&tagged, &image_path, &scratch, &calls).await.unwrap();
    assert!(image.size < 1 << 20, "{} compressed bytes", image.size);
    assert!(empty_dir(&scratch), "the compressed copy is gone");
    let calls = calls.0.into_inner().unwrap();
    assert_eq!(calls.first().unwrap(), &format!("started {} Some({})", image.digest, image.size));
    assert_eq!(calls.last().unwrap(), &format!("finished {} {}", image.digest, image.size));
    let config = br#"{"key":"entry","files":3}"#.to_vec();
    let config_blob = client.push_blob_bytes(&tagged, &config).await.unwrap();
    assert_eq!(config_blob.digest, Digest::of(&config));
    assert_eq!(config_blob.size, config.len() as u64);
    let manifest = manifest(&config, &config_blob.digest, &image.digest, image.size);
    let manifest_digest = client.push_manifest_bytes(&tagged, &manifest, OCI_MANIFEST_TYPE).await.unwrap();
    assert_eq!(manifest_digest, Digest::of(&manifest));

    // Pushing again uploads nothing (HEAD finds the blobs) and gives the same descriptors:
    // the compression is deterministic.
    let before = uploads_begun(&registry);
    assert!(before >= 2, "the log shows the uploads: {}", registry.log());
    let calls = Calls::default();
    assert_eq!(client.push_zstd_image(&tagged, &image_path, &scratch, &calls).await.unwrap(), image);
    assert_eq!(calls.0.into_inner().unwrap(), vec![format!("finished {} 0", image.digest)]);
    assert_eq!(client.push_blob_bytes(&tagged, &config).await.unwrap(), config_blob);
    assert_eq!(uploads_begun(&registry), before, "no upload the second time");
    assert!(empty_dir(&scratch));

    // Fetch: the manifest by its tag; a missing tag or repository is None.
    let fetched = client.fetch_tagged_manifest(&tagged).await.unwrap().expect("the tag exists");
    assert_eq!(fetched.bytes, manifest);
    assert_eq!(fetched.digest, manifest_digest);
    assert_eq!(fetched.media_type.as_deref(), Some(OCI_MANIFEST_TYPE));
    let missing_tag = reference(&format!("{}/rootfs-cache/entries:{}", registry.host, "f".repeat(64)));
    assert_eq!(client.fetch_tagged_manifest(&missing_tag).await.unwrap(), None);
    let missing_repo = reference(&format!("{}/nothing/here:{key}", registry.host));
    assert_eq!(client.fetch_tagged_manifest(&missing_repo).await.unwrap(), None);

    // The config, verified against its digest and size.
    assert_eq!(client.fetch_blob_bytes(&tagged, &config_blob.digest, config_blob.size).await.unwrap(), config);
    let err = client.fetch_blob_bytes(&tagged, &config_blob.digest, config_blob.size + 1).await.unwrap_err();
    assert!(matches!(err, RegistryError::Corrupt { .. }), "{err:?}");
    let err = client.fetch_blob_bytes(&tagged, &config_blob.digest, 5 << 20).await.unwrap_err();
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err:?}");

    // The image: the same bytes, the same holes, the same SHA-256.
    let out_path = work.path().join("fetched.ext4");
    let mut out = File::create(&out_path).unwrap();
    let calls = Calls::default();
    let unpacked =
        client.fetch_zstd_image(&tagged, &image.digest, image.size, &mut out, 64 << 20, &calls).await.unwrap();
    assert_eq!(unpacked.bytes, 64 << 20);
    assert_eq!(unpacked.sha256, Digest::of(&original));
    assert_eq!(std::fs::read(&out_path).unwrap(), original);
    let allocated = out.metadata().unwrap().blocks() * 512;
    assert!(allocated <= 400 << 10, "{allocated} bytes allocated for ~310 KB of data");
    assert_eq!(calls.0.into_inner().unwrap().last().unwrap(), &format!("finished {} {}", image.digest, image.size));

    // A limit below the image's length: refused, and the file left empty.
    let mut out = File::create(work.path().join("bomb.ext4")).unwrap();
    let err =
        client.fetch_zstd_image(&tagged, &image.digest, image.size, &mut out, 32 << 20, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::TooLarge { limit, .. } if limit == 32 << 20), "{err:?}");
    assert!(err.to_string().contains(&image.digest.to_string()), "{err}");
    assert_eq!(out.metadata().unwrap().len(), 0);

    // A wrong declared size is refused, naming the digest.
    let mut out = File::create(work.path().join("size.ext4")).unwrap();
    let err = client
        .fetch_zstd_image(&tagged, &image.digest, image.size - 1, &mut out, 64 << 20, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&image.digest.to_string()), "{err}");

    // The blob corrupted in the registry's storage: refused, naming the digest, file emptied.
    let data = registry
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&image.digest.hex()[..2])
        .join(image.digest.hex())
        .join("data");
    let mut stored = std::fs::read(&data).unwrap();
    assert_eq!(stored.len() as u64, image.size);
    let mid = stored.len() / 2;
    stored[mid] ^= 0x55;
    std::fs::write(&data, &stored).unwrap();
    let mut out = File::create(work.path().join("corrupt.ext4")).unwrap();
    let err =
        client.fetch_zstd_image(&tagged, &image.digest, image.size, &mut out, 64 << 20, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::Corrupt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&image.digest.to_string()) && message.contains("digest"), "{message}");
    assert_eq!(out.metadata().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_needs_credentials_that_may_push() {
    if !require(&[TOOLS[0], "htpasswd"]) {
        return;
    }
    use base64::Engine as _;
    const PASSWORD: &str = "push-pw-4417-secret";
    let files = tempfile::tempdir().unwrap();
    let htpasswd = support::make_htpasswd(files.path(), "carol", PASSWORD);
    let registry = Registry::start(Setup { tls: None, htpasswd: Some(htpasswd) });
    let name = reference(&format!("{}/team/entries:{}", registry.host, "a".repeat(64)));

    // Without credentials: a clear refusal to push, which names the repository.
    let (anonymous, _dir) = client(&registry.host, vec![]);
    let err = anonymous.push_blob_bytes(&name, b"config").await.unwrap_err();
    assert!(matches!(err, RegistryError::PushDenied { status: 401, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("push") && message.contains("team/entries"), "{message}");
    let err = anonymous.push_manifest_bytes(&name, b"{}", OCI_MANIFEST_TYPE).await.unwrap_err();
    assert!(matches!(err, RegistryError::PushDenied { .. }), "{err:?}");
    let image = files.path().join("image");
    std::fs::write(&image, b"not much").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let err = anonymous.push_zstd_image(&name, &image, scratch.path(), &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::PushDenied { .. }), "{err:?}");
    assert!(empty_dir(scratch.path()));

    // With them (from config.json): pushed, and fetched back.
    let config = files.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("carol:{PASSWORD}"));
    std::fs::write(&config, format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host)).unwrap();
    let (client, _dir) = client(&registry.host, vec![config]);
    let blob = client.push_blob_bytes(&name, b"config").await.unwrap();
    let pushed = client.push_zstd_image(&name, &image, scratch.path(), &NoProgress).await.unwrap();
    assert_eq!(client.fetch_blob_bytes(&name, &blob.digest, blob.size).await.unwrap(), b"config");
    let out_dir = tempfile::tempdir().unwrap();
    let mut out = File::create(out_dir.path().join("out")).unwrap();
    let unpacked = client.fetch_zstd_image(&name, &pushed.digest, pushed.size, &mut out, 1 << 20, &NoProgress).await;
    assert_eq!(unpacked.unwrap().sha256, Digest::of(b"not much"));
    assert!(!format!("{err:?}").contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_ask_for_a_push_token_and_upload_only_to_allowed_hosts() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use support::{fake_server, header, response};
    let evil_contacts = Arc::new(AtomicUsize::new(0));
    let contacts = evil_contacts.clone();
    let (host, task) = fake_server(Arc::new(move |head: &str| {
        let line = head.lines().next().unwrap_or_default();
        let me = header(head, "host").unwrap_or_default();
        let challenge = format!("WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"fake\"\r\n");
        let bearer = header(head, "authorization");
        if line.starts_with("GET /token?") {
            // Push rights on team/app only; team/readonly may be pulled.
            if line.contains("repository%3Ateam%2Fapp%3Apull%2Cpush") {
                response("200 OK", "Content-Type: application/json\r\n", br#"{"token":"push-tok"}"#, true)
            } else {
                response("401 Unauthorized", "", br#"{"details":"access denied"}"#, true)
            }
        } else if line.starts_with("HEAD /v2/team/app/blobs/sha256:") && bearer == Some("Bearer push-tok") {
            response("404 Not Found", "", b"", true)
        } else if line.starts_with("POST /v2/team/app/blobs/uploads/ ") && bearer == Some("Bearer push-tok") {
            // An upload location on a host the client may not contact.
            response("202 Accepted", "Location: http://uploads.invalid:9/v2/upload/1\r\n", b"", true)
        } else if line.contains("upload/1") {
            contacts.fetch_add(1, Ordering::SeqCst);
            response("201 Created", "", b"", true)
        } else {
            response("401 Unauthorized", &challenge, b"{}", true)
        }
    }))
    .await;
    let (client, _dir) = client(&host, vec![]);

    let err = client.push_blob_bytes(&reference(&format!("{host}/team/app:x")), b"blob").await.unwrap_err();
    assert!(matches!(&err, RegistryError::Denied { host } if host == "uploads.invalid:9"), "{err:?}");
    assert_eq!(evil_contacts.load(Ordering::SeqCst), 0);

    let err = client.push_blob_bytes(&reference(&format!("{host}/team/readonly:x")), b"blob").await.unwrap_err();
    assert!(matches!(err, RegistryError::PushDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("team/readonly"), "{err}");
    task.abort();
}

/// The futures the host spawns are `Send`.
#[allow(dead_code, reason = "only compiled: the bounds are the test")]
fn futures_are_send(client: &RegistryClient, name: &Reference, digest: &Digest, out: &mut File, path: &Path) {
    fn send<T: Send>(_: T) {}
    send(client.fetch_tagged_manifest(name));
    send(client.fetch_blob_bytes(name, digest, 1));
    send(client.fetch_zstd_image(name, digest, 1, out, 1, &NoProgress));
    send(client.push_zstd_image(name, path, path, &NoProgress));
    send(client.push_blob_bytes(name, b""));
    send(client.push_manifest_bytes(name, b"", OCI_MANIFEST_TYPE));
}

/// What [`slow_registry`] does with a blob `PUT`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Put {
    /// Never reads the body.
    Ignore,
    /// Reads the body, never answers.
    Swallow,
    /// Reads the body slowly (64 KiB every 20 ms), then answers 201.
    Slowly,
}

/// A registry that answers everything but blob `PUT`s at once.
async fn slow_registry(put: Put) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let line = head.lines().next().unwrap_or_default().to_owned();
                let answer = if line.starts_with("PUT ") {
                    if put == Put::Ignore {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    }
                    let length: u64 = support::header(&head, "content-length").unwrap().parse().unwrap();
                    let mut body = vec![0u8; 64 << 10];
                    let mut read = 0;
                    while read < length {
                        read += conn.read(&mut body).await.unwrap() as u64;
                        if put == Put::Slowly {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    }
                    if put == Put::Swallow {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    }
                    support::response("201 Created", "", b"", true)
                } else if line.starts_with("HEAD ") {
                    support::response("404 Not Found", "", b"", true)
                } else if line.starts_with("POST ") {
                    support::response("202 Accepted", "Location: /v2/team/app/blobs/uploads/1?state=x\r\n", b"", true)
                } else {
                    support::response("200 OK", "", b"{}", true)
                };
                let _ = conn.write_all(&answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (host, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_may_outlast_the_read_timeout_but_not_stall() {
    for put in [Put::Ignore, Put::Swallow, Put::Slowly] {
        let (host, task) = slow_registry(put).await;
        let empty = tempfile::tempdir().unwrap();
        let mut config = RegistryConfig::new(Vec::<String>::new())
            .insecure(&host)
            .certs_dir(empty.path())
            .auth_files(AuthFiles::new([]));
        config.read_timeout = std::time::Duration::from_secs(1);
        let client = RegistryClient::new(config);
        let name = reference(&format!("{host}/team/app:x"));
        // More than the sockets buffer when nobody reads; 3 s to upload at 3 MiB/s; 1 MiB to
        // swallow (the answer is then awaited 1 s + 1 s per MiB).
        let len = if put == Put::Swallow { 1u32 << 20 } else { 10 << 20 };
        let blob: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let started = std::time::Instant::now();
        let result = client.push_blob_bytes(&name, &blob).await;
        let elapsed = started.elapsed();
        match put {
            Put::Slowly => {
                assert_eq!(result.unwrap().size, blob.len() as u64);
                assert!(elapsed > std::time::Duration::from_secs(2), "{elapsed:?}");
            }
            Put::Ignore | Put::Swallow => {
                let err = result.unwrap_err();
                assert!(matches!(err, RegistryError::Unreachable { .. }), "{put:?}: {err:?}");
                let expected = if put == Put::Swallow { "no answer" } else { "stopped reading" };
                assert!(err.to_string().contains(expected), "{err}");
                assert!(elapsed < std::time::Duration::from_secs(30), "{elapsed:?}");
            }
        }
        task.abort();
    }
}

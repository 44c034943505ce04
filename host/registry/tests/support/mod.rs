//! Real parts for the registry tests: Debian's `docker-registry` (distribution 2.8) on a
//! loopback port, fixtures pushed with `skopeo copy`, certificates made with `openssl`,
//! passwords with `htpasswd -B`, and a small counting and faulty HTTP proxy.

#![allow(dead_code, reason = "each test binary uses a different part of the support module")]

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Whether the tools are here; outside CI a missing one skips the test, in CI it fails.
pub fn require(tools: &[&str]) -> bool {
    for tool in tools {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
        if !found {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "{tool} is not installed (CI=true): apt-get install docker-registry apache2-utils skopeo openssl"
                );
            }
            println!("SKIPPED: {tool} is not installed (apt-get install docker-registry apache2-utils skopeo openssl)");
            return false;
        }
    }
    true
}

/// A free loopback port (bound, then released for the registry to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// How a registry is set up.
#[derive(Default)]
pub struct Setup {
    /// `(certificate, key)` PEM files: serve TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// An htpasswd file: require basic auth.
    pub htpasswd: Option<PathBuf>,
}

/// A running `docker-registry`, killed when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Its storage and configuration.
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry and waits (bounded, no fixed sleep) until it accepts connections.
    pub fn start(setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = &setup.tls {
            config += &format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display());
        }
        if let Some(htpasswd) = &setup.htpasswd {
            config += &format!("auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n", htpasswd.display());
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry starts");
        let mut registry = Self { child, host, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited ({status}): {}", registry.log());
            }
            assert!(Instant::now() < deadline, "docker-registry did not listen within 20 s: {}", registry.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    /// Starts a registry like [`Registry::start`], with `storage_extra` (YAML indented by
    /// two spaces, e.g. `  maintenance:\n    readonly:\n      enabled: true\n`) added to its
    /// `storage:` section and `extra` (top-level YAML, e.g. an `auth: token:` section) to its
    /// configuration.
    pub fn start_configured(setup: Setup, storage_extra: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{storage_extra}http:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = &setup.tls {
            config += &format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display());
        }
        if let Some(htpasswd) = &setup.htpasswd {
            config += &format!("auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n", htpasswd.display());
        }
        config += extra;
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry starts");
        let mut registry = Self { child, host, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited ({status}): {}", registry.log());
            }
            assert!(Instant::now() < deadline, "docker-registry did not listen within 20 s: {}", registry.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    /// The directory of the registry's storage holding blob `digest`'s bytes
    /// (`<root>/docker/registry/v2/blobs/sha256/<xx>/<hex>/data`).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.path().join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Whether repository `repo` has tag `tag`, read from the registry's storage (so that it
    /// needs no credentials).
    pub fn has_tag(&self, repo: &str, tag: &str) -> bool {
        self.dir
            .path()
            .join("data/docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/tags")
            .join(tag)
            .join("current/link")
            .is_file()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small image: one layer of pseudo-random bytes, a config, a manifest.
pub struct Image {
    /// The OCI layout holding it.
    pub layout: tempfile::TempDir,
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

pub fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl Image {
    /// An image whose layer has `layer_len` bytes derived from `seed`.
    pub fn new(seed: u64, layer_len: usize) -> Self {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let layer: Vec<u8> = (0..layer_len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            sha256(&layer)
        )
        .into_bytes();
        Self::with_blobs(layer, config)
    }

    fn with_blobs(layer: Vec<u8>, config: Vec<u8>) -> Self {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
            sha256(&config),
            config.len(),
            sha256(&layer),
            layer.len()
        )
        .into_bytes();
        let layout = tempfile::tempdir().unwrap();
        let blobs = layout.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        for blob in [&layer, &config, &manifest] {
            std::fs::write(blobs.join(&sha256(blob)[7..]), blob).unwrap();
        }
        std::fs::write(layout.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#,
            sha256(&manifest),
            manifest.len()
        );
        std::fs::write(layout.path().join("index.json"), index).unwrap();
        Self { layout, layer, config, manifest }
    }

    /// Pushes the image to `registry` as `name:tag` with `skopeo copy`.
    pub fn push(&self, registry: &Registry, name: &str, creds: Option<&str>) {
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            command.arg(format!("--dest-creds={creds}"));
        }
        let output = command
            .arg(format!("oci:{}:v1", self.layout.path().display()))
            .arg(format!("docker://{}/{name}", registry.host))
            .output()
            .unwrap();
        assert!(output.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&output.stderr));
    }

    pub fn layer_digest(&self) -> String {
        sha256(&self.layer)
    }
}

/// Pushes a two-platform index of `images` (linux/amd64, linux/arm64, …) to `registry` as
/// `name:tag` with `skopeo copy --all`; returns the index's bytes.
pub fn push_index(registry: &Registry, name: &str, images: &[Image]) -> Vec<u8> {
    let layout = tempfile::tempdir().unwrap();
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut entries = Vec::new();
    for (image, arch) in images.iter().zip(["amd64", "arm64", "riscv64"]) {
        for blob in [&image.layer, &image.config, &image.manifest] {
            std::fs::write(blobs.join(&sha256(blob)[7..]), blob).unwrap();
        }
        entries.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
            sha256(&image.manifest),
            image.manifest.len()
        ));
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes();
    std::fs::write(blobs.join(&sha256(&index)[7..]), &index).unwrap();
    std::fs::write(layout.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let top = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#,
        sha256(&index),
        index.len()
    );
    std::fs::write(layout.path().join("index.json"), top).unwrap();
    let output = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.path().display()))
        .arg(format!("docker://{}/{name}", registry.host))
        .output()
        .unwrap();
    assert!(output.status.success(), "skopeo copy --all: {}", String::from_utf8_lossy(&output.stderr));
    index
}

/// A CA and a server certificate for 127.0.0.1, made with `openssl`.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir.path()).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=rootfs-cache test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    Pki { ca: p("ca.crt"), cert: p("server.crt"), key: p("server.key"), dir }
}

/// An htpasswd file (bcrypt, `htpasswd -B`) with one user.
pub fn make_htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let path = dir.join("htpasswd");
    let out = Command::new("htpasswd").args(["-Bbc"]).arg(&path).args([user, password]).output().unwrap();
    assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
    path
}

/// What the proxy does to blob responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing.
    None,
    /// Flip one byte of the first `n` blob bodies.
    Corrupt(usize),
    /// Cut the first `n` blob bodies in half and close.
    Truncate(usize),
    /// Send half of every blob body, then nothing more (as a pull killed midway sees it).
    Stall,
}

/// A counting, optionally faulty HTTP/1.1 proxy in front of a plain-HTTP registry. Every
/// connection carries one request (it forces `Connection: close`).
pub struct Proxy {
    pub host: String,
    /// Blob GETs seen.
    pub blob_gets: Arc<AtomicUsize>,
    /// The most blob GETs in flight at once.
    pub max_in_flight: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy to `upstream`, delaying each blob response by `delay`.
    pub async fn start(upstream: String, fault: Fault, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let blob_gets = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (counter, max) = (blob_gets.clone(), max_in_flight.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let (upstream, counter, max, in_flight) =
                    (upstream.clone(), counter.clone(), max.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let flight = Flight { now: &in_flight, max: &max };
                    let _ = serve(client, &upstream, &counter, &flight, fault, delay).await;
                });
            }
        });
        Self { host, blob_gets, max_in_flight, task }
    }
}

/// Blob requests in flight now, and the most at once.
struct Flight<'a> {
    now: &'a AtomicUsize,
    max: &'a AtomicUsize,
}

async fn serve(
    mut client: tokio::net::TcpStream,
    upstream: &str,
    counter: &AtomicUsize,
    flight: &Flight<'_>,
    fault: Fault,
    delay: Duration,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_owned();
    let is_blob_get = request_line.starts_with("GET ") && request_line.contains("/blobs/sha256:");
    let n = if is_blob_get { counter.fetch_add(1, Ordering::SeqCst) } else { usize::MAX };
    if is_blob_get {
        let now = flight.now.fetch_add(1, Ordering::SeqCst) + 1;
        flight.max.fetch_max(now, Ordering::SeqCst);
    }
    let result = forward(&mut client, upstream, &text, is_blob_get, n, fault, delay).await;
    if is_blob_get {
        flight.now.fetch_sub(1, Ordering::SeqCst);
    }
    result
}

async fn forward(
    client: &mut tokio::net::TcpStream,
    upstream: &str,
    text: &str,
    is_blob_get: bool,
    n: usize,
    fault: Fault,
    delay: Duration,
) -> std::io::Result<()> {
    let mut rewritten = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            rewritten += line;
            rewritten += "\r\n";
        }
    }
    rewritten += "Connection: close\r\n\r\n";
    let mut server = tokio::net::TcpStream::connect(upstream).await?;
    server.write_all(rewritten.as_bytes()).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    if is_blob_get {
        tokio::time::sleep(delay).await;
        let body_at = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |i| i + 4);
        let ok = response.starts_with(b"HTTP/1.1 200");
        match fault {
            Fault::Corrupt(times) if ok && n < times && body_at < response.len() => {
                let mid = body_at + (response.len() - body_at) / 2;
                response[mid] ^= 0x55;
            }
            Fault::Truncate(times) if ok && n < times => {
                let mid = body_at + (response.len() - body_at) / 2;
                response.truncate(mid);
            }
            Fault::Stall if ok => {
                let mid = body_at + (response.len() - body_at) / 2;
                client.write_all(&response[..mid]).await?;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            _ => {}
        }
    }
    client.write_all(&response).await?;
    client.shutdown().await?;
    Ok(())
}

/// The raw HTTP response a [`fake_server`] sends for a request's head (the request line and
/// the headers).
pub type Handler = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

/// A tiny HTTP server: each connection gets one response, `handler(request head)`, and is
/// closed.
pub async fn fake_server(handler: Handler) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = conn.write_all(&handler(&String::from_utf8_lossy(&head))).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (host, task)
}

/// A response with `status`, extra header lines and `body` (with a `Content-Length` when
/// `with_length`; else the body ends with the connection).
pub fn response(status: &str, headers: &str, body: &[u8], with_length: bool) -> Vec<u8> {
    let length = if with_length { format!("Content-Length: {}\r\n", body.len()) } else { String::new() };
    let mut out = format!("HTTP/1.1 {status}\r\n{headers}{length}Connection: close\r\n\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// The value of header `name` in a request head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A fake registry answering `GET /v2/` with 200 and any manifest request with `body`.
pub async fn fake_registry(body: Arc<Vec<u8>>, with_length: bool) -> (String, tokio::task::JoinHandle<()>) {
    fake_server(Arc::new(move |head: &str| {
        if head.lines().next().unwrap_or_default().contains("/manifests/") {
            response("200 OK", "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n", &body, with_length)
        } else {
            response("200 OK", "", b"{}", true)
        }
    }))
    .await
}

/// Lines of a child's output, for the cross-process test.
pub fn lines(output: &[u8]) -> Vec<String> {
    BufReader::new(output).lines().map_while(Result::ok).collect()
}

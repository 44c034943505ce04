//! A minimal token service for a registry's `auth.token` (the Docker registry token
//! protocol), for tests that need credentials narrower than distribution's htpasswd gives
//! (every htpasswd user may push): each user is granted only the actions listed for them.
//!
//! One thread, plain HTTP/1.1, one request per connection. `GET /token?service=…&scope=…`
//! with basic credentials answers `{"token": JWT, "access_token": JWT, "expires_in": 300}`;
//! the JWT is RS256 (RSASSA-PKCS1-v1_5 with SHA-256), signed by `openssl dgst -sha256 -sign`,
//! and its header carries the signing certificate (`x5c`), a self-signed one that the
//! registry trusts through `rootcertbundle`. Wrong credentials get 401; none get a token
//! granting nothing, as Docker's token services do.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `service` (the token's audience) the registry is configured with.
pub const SERVICE: &str = "rootfs-cache-test-registry";

/// The token's issuer the registry is configured to trust.
pub const ISSUER: &str = "rootfs-cache-test-token-issuer";

/// A user of the token service: name, password, and the repository actions granted
/// (`pull`, `push`, `delete`, `*`), on every repository.
#[derive(Clone, Debug)]
pub struct User {
    /// The basic credentials' user name.
    pub name: String,
    /// Its password.
    pub password: String,
    /// The actions it is granted on any repository.
    pub actions: Vec<String>,
}

impl User {
    /// A user granted `actions`.
    pub fn new(name: &str, password: &str, actions: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            password: password.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

/// A running token service; stopped when dropped.
pub struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The signing certificate (PEM): the registry's `rootcertbundle`.
    pub cert: PathBuf,
    /// What it granted, one line per token: `USER SCOPE… -> GRANTED…` (`-` for anonymous).
    pub grants: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the serving thread needs.
struct State {
    users: Vec<User>,
    key: PathBuf,
    /// The certificate's DER, standard base64 (an `x5c` entry).
    x5c: String,
    grants: Arc<Mutex<Vec<String>>>,
}

impl TokenServer {
    /// Makes a key and a self-signed certificate with `openssl` and starts serving on a
    /// loopback port (listening before this returns).
    pub fn start(users: &[User]) -> Self {
        let dir = tempfile::tempdir().unwrap();
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
            "token.key",
            "-out",
            "token.crt",
            "-days",
            "2",
            "-subj",
            "/CN=rootfs-cache test token issuer",
        ]);
        run(&["x509", "-in", "token.crt", "-outform", "DER", "-out", "token.der"]);
        let der = std::fs::read(dir.path().join("token.der")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let grants = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            users: users.to_vec(),
            key: dir.path().join("token.key"),
            x5c: base64(&der, STANDARD, true),
            grants: grants.clone(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let state = state.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &state);
                });
            }
        });
        Self { host, cert: dir.path().join("token.crt"), grants, dir, stop, thread: Some(thread) }
    }

    /// The token endpoint, the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.host)
    }

    /// The registry configuration's `auth:` section for this service (top-level YAML).
    pub fn registry_auth_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.cert.display()
        )
    }

    /// The directory holding its key and certificate.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Lines of [`TokenServer::grants`] so far.
    pub fn grants(&self) -> Vec<String> {
        self.grants.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `conn`.
fn serve(conn: TcpStream, state: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let end = line == "\r\n" || line == "\n";
        head.push(line.trim_end().to_owned());
        if end {
            break;
        }
    }
    let request_line = head.first().cloned().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let authorization = head.iter().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("authorization").then(|| value.trim().to_owned())
    });
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut conn = conn;
    if method != "GET" || path != "/token" {
        return conn.write_all(&response("404 Not Found", "", b"not found\n"));
    }
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let user = match authorization.as_deref() {
        None => None,
        Some(value) => {
            let found = state.users.iter().find(|u| {
                value.strip_prefix("Basic ").map(str::trim)
                    == Some(base64(format!("{}:{}", u.name, u.password).as_bytes(), STANDARD, true).as_str())
            });
            match found {
                Some(user) => Some(user),
                None => {
                    return conn.write_all(&response(
                        "401 Unauthorized",
                        "WWW-Authenticate: Basic realm=\"token\"\r\n",
                        b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"bad credentials\"}]}",
                    ));
                }
            }
        }
    };
    let service = params.iter().find(|(k, _)| k == "service").map_or(SERVICE, |(_, v)| v.as_str());
    let scopes: Vec<&str> = params.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.as_str()).collect();
    let mut access = Vec::new();
    let mut granted_text = Vec::new();
    for scope in &scopes {
        // `repository:NAME:ACTIONS`; NAME may hold a port (`HOST:PORT/REPO` is not used
        // here, but split from the right anyway).
        let Some((kind_and_name, actions)) = scope.rsplit_once(':') else { continue };
        let Some((kind, name)) = kind_and_name.split_once(':') else { continue };
        let allowed = user.map(|u| u.actions.clone()).unwrap_or_default();
        let granted: Vec<&str> = actions.split(',').filter(|a| allowed.iter().any(|g| g == a || g == "*")).collect();
        granted_text.push(format!("{kind}:{name}:{}", granted.join(",")));
        access.push(serde_json::json!({ "type": kind, "name": name, "actions": granted }));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let subject = user.map_or("", |u| u.name.as_str());
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", state.grants.lock().unwrap().len()),
        "access": access,
    });
    let header = serde_json::json!({ "typ": "JWT", "alg": "RS256", "x5c": [state.x5c] });
    let signing_input = format!(
        "{}.{}",
        base64(header.to_string().as_bytes(), URL_SAFE, false),
        base64(claims.to_string().as_bytes(), URL_SAFE, false)
    );
    let signature = sign(&state.key, signing_input.as_bytes())?;
    let token = format!("{signing_input}.{}", base64(&signature, URL_SAFE, false));
    state.grants.lock().unwrap().push(format!(
        "{} {} -> {}",
        if subject.is_empty() { "-" } else { subject },
        scopes.join(" "),
        granted_text.join(" ")
    ));
    let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 }).to_string();
    conn.write_all(&response("200 OK", "Content-Type: application/json\r\n", body.as_bytes()))
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (JWT's RS256) of `data` with the PEM key at `key`.
fn sign(key: &Path, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("openssl dgst: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(out.stdout)
}

/// A complete response that closes the connection.
fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len())
        .into_bytes();
    out.extend_from_slice(body);
    out
}

/// `%XX` and `+` decoding of a query component (a malformed escape is kept as it is).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The standard base64 alphabet.
pub const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The URL-safe base64 alphabet (JWTs).
pub const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of `bytes` in `alphabet`, padded with `=` when `pad`.
pub fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(base64(plain.as_bytes(), STANDARD, true), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff], URL_SAFE, false), "-_8");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("repository%3Acache%2Fimages%3Apull%2Cpush"), "repository:cache/images:pull,push");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }
}

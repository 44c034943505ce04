//! Credentials as Docker and Podman find them.
//!
//! Files are read in Podman's order: `$REGISTRY_AUTH_FILE` (default
//! `${XDG_RUNTIME_DIR}/containers/auth.json`, or `/run/containers/<uid>/auth.json` without
//! `XDG_RUNTIME_DIR`), then `$DOCKER_CONFIG/config.json` (default
//! `~/.docker/config.json`). In each, the `auths` map's `auth` field (base64 of
//! `user:password`) is used; keys may be `HOST[:PORT]`, a URL such as
//! `https://index.docker.io/v1/`, or (Podman) `HOST/namespace`, the most specific winning.
//! `credHelpers` and `credsStore` name programs this crate does not run: they are only reported,
//! when the registry asks for credentials.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::RegistryError;
use crate::reference::DOCKER_HUB;

/// A password or token: never printed, by `Debug` or otherwise.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A user name and password for HTTP basic auth (and for the token service, when the registry
/// asks for a token).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &self.password).finish()
    }
}

/// What the files say about one registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Found {
    /// Basic credentials from an `auths` entry.
    Credentials(Credentials),
    /// A credential helper holds them (`credHelpers` or `credsStore`), which is not supported.
    Helper(String),
    /// Nothing: pull anonymously.
    Anonymous,
}

/// The credential files to read, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFiles {
    files: Vec<PathBuf>,
}

impl AuthFiles {
    /// Docker's and Podman's files, from the environment (see the module documentation).
    pub fn from_env() -> Self {
        let mut files = Vec::new();
        match std::env::var_os("REGISTRY_AUTH_FILE") {
            Some(file) => files.push(PathBuf::from(file)),
            None => match std::env::var_os("XDG_RUNTIME_DIR") {
                Some(runtime) => files.push(Path::new(&runtime).join("containers/auth.json")),
                // Podman's fallback without a runtime directory (root's usual case).
                None => files
                    .push(PathBuf::from(format!("/run/containers/{}/auth.json", rustix::process::getuid().as_raw()))),
            },
        }
        match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => files.push(Path::new(&dir).join("config.json")),
            None => {
                if let Some(home) = std::env::var_os("HOME") {
                    files.push(Path::new(&home).join(".docker/config.json"));
                }
            }
        }
        Self { files }
    }

    /// Exactly these files, in this order (missing ones are skipped).
    pub fn new(files: impl IntoIterator<Item = PathBuf>) -> Self {
        Self { files: files.into_iter().collect() }
    }

    /// The files, in the order they are read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// What the files hold for `repository` on `registry`: the first file with an entry wins.
    pub fn lookup(&self, registry: &str, repository: &str) -> Result<Found, RegistryError> {
        for file in &self.files {
            let text = match std::fs::read(file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RegistryError::Credentials { path: file.clone(), reason: e.to_string() }),
            };
            let found = lookup_in(&text, registry, repository)
                .map_err(|reason| RegistryError::Credentials { path: file.clone(), reason })?;
            if found != Found::Anonymous {
                return Ok(found);
            }
        }
        Ok(Found::Anonymous)
    }
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

/// Docker Hub's historical names all mean `docker.io`.
fn canonical_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        other => other,
    }
}

/// An `auths` key as `HOST[/namespace]`: a URL's scheme and path are dropped (Docker's legacy
/// keys), a bare key keeps its namespace (Podman's).
fn normalize_key(key: &str) -> String {
    let (had_scheme, rest) = match key.split_once("://") {
        Some((_, rest)) => (true, rest),
        None => (false, key),
    };
    let rest = rest.trim_end_matches('/');
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = canonical_host(host);
    if had_scheme || path.is_empty() { host.to_owned() } else { format!("{host}/{path}") }
}

fn lookup_in(text: &[u8], registry: &str, repository: &str) -> Result<Found, String> {
    // serde_json's messages give a line and column, never the content.
    let config: ConfigFile = serde_json::from_slice(text)
        .map_err(|e| format!("not valid JSON at line {} column {}", e.line(), e.column()))?;
    let registry = canonical_host(registry);
    let entries: Vec<(String, &AuthEntry)> = config.auths.iter().map(|(k, v)| (normalize_key(k), v)).collect();
    // The most specific key first: HOST/a/b/c, HOST/a/b, HOST/a, HOST.
    let mut candidates = Vec::new();
    let mut scope = format!("{registry}/{repository}");
    loop {
        candidates.push(scope.clone());
        match scope.rfind('/') {
            Some(i) => scope.truncate(i),
            None => break,
        }
    }
    for candidate in &candidates {
        for (key, entry) in &entries {
            if key != candidate {
                continue;
            }
            if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
                return decode(auth, key).map(Found::Credentials);
            }
        }
    }
    let helper = config
        .cred_helpers
        .iter()
        .find(|(key, _)| normalize_key(key) == registry)
        .map(|(_, name)| format!("the credential helper docker-credential-{name} (credHelpers)"))
        .or_else(|| {
            config.creds_store.map(|name| format!("the credential store docker-credential-{name} (credsStore)"))
        });
    Ok(helper.map_or(Found::Anonymous, Found::Helper))
}

fn decode(auth: &str, key: &str) -> Result<Credentials, String> {
    let bad = || format!("the `auth` of {key:?} is not base64 of user:password");
    let raw = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Credentials { username: user.to_owned(), password: Secret::new(password) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn finds_by_host_url_and_namespace() {
        let text = format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}},
                "example.com:5000": {{"auth": "{}"}},
                "example.com:5000/team": {{"auth": "{}"}}}}}}"#,
            b64("hub:p1"),
            b64("host:p2"),
            b64("team:p3")
        );
        let user = |registry: &str, repo: &str| match lookup_in(text.as_bytes(), registry, repo).unwrap() {
            Found::Credentials(c) => c.username,
            other => panic!("{other:?}"),
        };
        assert_eq!(user("docker.io", "library/alpine"), "hub");
        assert_eq!(user("example.com:5000", "other/app"), "host");
        assert_eq!(user("example.com:5000", "team/app"), "team");
        assert_eq!(lookup_in(text.as_bytes(), "example.org", "a").unwrap(), Found::Anonymous);
    }

    #[test]
    fn helpers_are_reported_not_run() {
        let text = br#"{"auths": {"a.example": {}}, "credHelpers": {"b.example": "pass"}, "credsStore": "desktop"}"#;
        assert!(
            matches!(lookup_in(text, "b.example", "x").unwrap(), Found::Helper(h) if h.contains("docker-credential-pass"))
        );
        assert!(matches!(lookup_in(text, "a.example", "x").unwrap(), Found::Helper(h) if h.contains("credsStore")));
    }

    #[test]
    fn secrets_stay_hidden() {
        let text = format!(r#"{{"auths": {{"h.example": {{"auth": "{}"}}}}}}"#, b64("u:hunter2"));
        let found = lookup_in(text.as_bytes(), "h.example", "r").unwrap();
        let Found::Credentials(c) = &found else { panic!() };
        assert_eq!(c.password.expose(), "hunter2");
        assert!(!format!("{found:?}").contains("hunter2"));
        let err = lookup_in(br#"{"auths": {"h": {"auth": "!!!"}}}"#, "h", "r").unwrap_err();
        assert!(!err.contains("!!!"), "{err}");
        let err = lookup_in(b"{\"auths\": hunter2", "h", "r").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}

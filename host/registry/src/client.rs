//! The configured client: per registry host and set of credentials, built lazily, an
//! `oci-client` for the token handshake and a `reqwest` client for the manifest and blob
//! requests (redirects only to allowed hosts); the allow-list is checked before either is used.

use std::collections::HashMap;
use std::sync::Arc;

use oci_client::RegistryOperation;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::config::RegistryConfig;
use crate::credentials::{Credentials, Found};
use crate::error::RegistryError;
use crate::reference::Reference;

/// A client of the OCI distribution API, limited by a [`RegistryConfig`].
///
/// Cheap to share (`Arc` it); every method takes `&self` and may run concurrently.
pub struct RegistryClient {
    pub(crate) config: RegistryConfig,
    hosts: tokio::sync::Mutex<HashMap<(String, Found), Arc<HostClient>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The clients for one host and one set of credentials.
pub(crate) struct HostClient {
    pub(crate) host: String,
    pub(crate) oci: oci_client::Client,
    pub(crate) http: reqwest::Client,
    /// The same without a read timeout, for blob uploads: `reqwest`'s read timeout runs from
    /// the request's start to the response's headers, so a large upload would outlast it.
    /// Uploads watch for stalls themselves.
    pub(crate) upload_http: reqwest::Client,
    pub(crate) auth: RegistryAuth,
    pub(crate) basic: Option<Credentials>,
    pub(crate) helper: Option<String>,
    pub(crate) scheme: &'static str,
}

/// The user agent sent with every request.
const USER_AGENT: &str = concat!("rootfs-cache/", env!("CARGO_PKG_VERSION"));

impl RegistryClient {
    /// A client with this configuration. Nothing is read or contacted until a fetch.
    pub fn new(config: RegistryConfig) -> Self {
        Self { config, hosts: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Refuses a host outside the allow-list, before anything is sent.
    pub(crate) fn check_allowed(&self, reference: &Reference) -> Result<(), RegistryError> {
        if self.config.is_allowed(reference.registry()) {
            Ok(())
        } else {
            Err(RegistryError::Denied { host: reference.registry().to_owned() })
        }
    }

    /// The clients for `reference`'s host and the credentials the files hold for its repository.
    pub(crate) async fn host_client(&self, reference: &Reference) -> Result<Arc<HostClient>, RegistryError> {
        self.check_allowed(reference)?;
        let host = reference.registry().to_owned();
        let found = self.config.auth_files.lookup(&host, reference.repository())?;
        let key = (host, found);
        if let Some(client) = self.hosts.lock().await.get(&key) {
            return Ok(client.clone());
        }
        // Built without holding the map, so a slow host does not hold up the others; two
        // callers racing for one host may both build, and the first to finish is kept.
        let client = Arc::new(self.build_host_client(&key.0, &key.1).await?);
        Ok(self.hosts.lock().await.entry(key).or_insert(client).clone())
    }

    async fn build_host_client(&self, host: &str, found: &Found) -> Result<HostClient, RegistryError> {
        let roots = self.host_roots(host)?;
        let insecure = self.config.is_insecure(host);
        let oci_config = ClientConfig {
            protocol: if insecure { ClientProtocol::Http } else { ClientProtocol::Https },
            extra_root_certificates: roots
                .iter()
                .map(|der| Certificate { encoding: CertificateEncoding::Der, data: der.to_vec() })
                .collect(),
            platform_resolver: None,
            connect_timeout: Some(self.config.connect_timeout),
            read_timeout: Some(self.config.read_timeout),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let oci = oci_client::Client::try_from(oci_config)
            .map_err(|e| RegistryError::Protocol { host: host.to_owned(), reason: format!("client set-up: {e}") })?;
        let mut certs = Vec::new();
        for der in &roots {
            certs.push(reqwest::Certificate::from_der(der).map_err(|e| RegistryError::Certificate {
                path: self.config.certs_dir.join(host),
                reason: e.to_string(),
            })?);
        }
        let http = self.http_client(host, &certs, Some(self.config.read_timeout))?;
        let upload_http = self.http_client(host, &certs, None)?;
        let (auth, basic, helper) = match found {
            Found::Credentials(c) => {
                (RegistryAuth::Basic(c.username.clone(), c.password.expose().to_owned()), Some(c.clone()), None)
            }
            Found::Helper(helper) => (RegistryAuth::Anonymous, None, Some(helper.clone())),
            Found::Anonymous => (RegistryAuth::Anonymous, None, None),
        };
        let client = HostClient {
            host: host.to_owned(),
            oci,
            http,
            upload_http,
            auth,
            basic,
            helper,
            scheme: if insecure { "http" } else { "https" },
        };
        self.check_realm(&client).await?;
        Ok(client)
    }

    /// A `reqwest` client trusting `certs` beside the system's roots, following redirects only
    /// to allowed hosts, with the configured timeouts (the read timeout only when given).
    fn http_client(
        &self,
        host: &str,
        certs: &[reqwest::Certificate],
        read_timeout: Option<std::time::Duration>,
    ) -> Result<reqwest::Client, RegistryError> {
        let allowed = self.config.clone();
        let mut builder = reqwest::Client::builder()
            .tls_certs_merge(certs.iter().cloned())
            .connect_timeout(self.config.connect_timeout)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                let target = host_port(attempt.url()).unwrap_or_default();
                if attempt.previous().len() >= 10 {
                    attempt.error("too many redirects")
                } else if allowed.is_allowed(&target) {
                    attempt.follow()
                } else {
                    attempt.error(DeniedRedirect(target))
                }
            }));
        if let Some(timeout) = read_timeout {
            builder = builder.read_timeout(timeout);
        }
        builder
            .build()
            .map_err(|e| RegistryError::Protocol { host: host.to_owned(), reason: format!("client set-up: {e}") })
    }

    /// Asks `GET /v2/` (unauthenticated, as every client's first request) and refuses a
    /// registry whose token service is on a host outside the allow-list: `oci-client` would
    /// send it the credentials.
    async fn check_realm(&self, host: &HostClient) -> Result<(), RegistryError> {
        let url = format!("{}://{}/v2/", host.scheme, Reference::registry_for_oci(&host.host));
        let response = host.http.get(&url).send().await.map_err(|e| self.classify_transport(&host.host, &e))?;
        let challenge = response
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(bearer_realm);
        let Some(realm) = challenge else { return Ok(()) };
        let target = reqwest::Url::parse(&realm).ok().as_ref().and_then(host_port).ok_or_else(|| {
            RegistryError::Protocol { host: host.host.clone(), reason: format!("token service {realm:?} is not a URL") }
        })?;
        if self.config.is_allowed(&target) || target == host.host {
            Ok(())
        } else {
            Err(RegistryError::Denied { host: target })
        }
    }

    /// `GET <scheme>://<host>/v2/<repository>/<path>` with the authorization the registry asks
    /// for (a token from its token service, or basic credentials), redirects followed only to
    /// allowed hosts; a status other than success is an error about `what`.
    pub(crate) async fn get(
        &self,
        host: &HostClient,
        reference: &Reference,
        path: &str,
        accept: &str,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let token = self.token(host, reference, RegistryOperation::Pull, what).await?;
        let url = format!("{}{path}", repository_url(host, reference));
        let request = authorize(host, token.as_deref(), host.http.get(&url).header(reqwest::header::ACCEPT, accept));
        let response = request.send().await.map_err(|e| self.classify_transport(&host.host, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.status(host, what, status.as_u16()));
        }
        Ok(response)
    }

    /// The bearer token for `operation` on `reference`'s repository, from the registry's token
    /// service (`None` when the registry asks for basic auth or for nothing).
    pub(crate) async fn token(
        &self,
        host: &HostClient,
        reference: &Reference,
        operation: RegistryOperation,
        what: &str,
    ) -> Result<Option<String>, RegistryError> {
        host.oci.auth(&reference.to_oci(), &host.auth, operation).await.map_err(|e| self.classify_oci(host, what, e))
    }

    /// Every certificate of every `*.crt` in `<certs_dir>/HOST[:PORT]/`, as Docker reads them.
    fn host_roots(&self, host: &str) -> Result<Vec<CertificateDer<'static>>, RegistryError> {
        let dir = self.config.certs_dir.join(host);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RegistryError::Certificate { path: dir, reason: e.to_string() }),
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "crt"))
            .collect();
        files.sort();
        let mut roots = Vec::new();
        for path in files {
            let bad = |reason: String| RegistryError::Certificate { path: path.clone(), reason };
            let pem = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
            let before = roots.len();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.push(cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?);
            }
            if roots.len() == before {
                return Err(bad("no PEM certificate in the file".to_owned()));
            }
        }
        Ok(roots)
    }
}

/// `<scheme>://<host>/v2/<repository>/`, the prefix of every request about `reference`'s
/// repository.
pub(crate) fn repository_url(host: &HostClient, reference: &Reference) -> String {
    format!("{}://{}/v2/{}/", host.scheme, reference.to_oci().resolve_registry(), reference.repository())
}

/// `request` with the authorization the registry asked for: the token if there is one, else
/// the basic credentials if there are any.
pub(crate) fn authorize(
    host: &HostClient,
    token: Option<&str>,
    request: reqwest::RequestBuilder,
) -> reqwest::RequestBuilder {
    match (token, &host.basic) {
        (Some(token), _) => request.bearer_auth(token),
        (None, Some(basic)) => request.basic_auth(&basic.username, Some(basic.password.expose())),
        (None, None) => request,
    }
}

/// `HOST[:PORT]` of a URL, the port only when the URL names one (as allow-lists write hosts).
pub(crate) fn host_port(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// The `realm` of a `Bearer` challenge.
fn bearer_realm(challenge: &str) -> Option<String> {
    let (scheme, params) = challenge.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let at = params.find("realm=\"")? + "realm=\"".len();
    let end = params[at..].find('"')?;
    Some(params[at..at + end].to_owned())
}

/// A redirect to a host outside the allow-list, refused before connecting.
#[derive(Debug)]
pub(crate) struct DeniedRedirect(pub(crate) String);

impl std::fmt::Display for DeniedRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirect to {} refused: not an allowed registry", self.0)
    }
}

impl std::error::Error for DeniedRedirect {}

//! The configured client: one `oci-client` (and one plain HTTP client for manifests) per
//! registry host and set of credentials, built lazily; the allow-list is checked before either
//! is used.

use std::collections::HashMap;
use std::sync::Arc;

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
        let mut hosts = self.hosts.lock().await;
        if let Some(client) = hosts.get(&(host.clone(), found.clone())) {
            return Ok(client.clone());
        }
        let client = Arc::new(self.build_host_client(&host, &found).await?);
        hosts.insert((host, found), client.clone());
        Ok(client)
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
        let allowed = self.config.clone();
        let http = reqwest::Client::builder()
            .tls_certs_merge(certs)
            .connect_timeout(self.config.connect_timeout)
            .read_timeout(self.config.read_timeout)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                let url = attempt.url();
                let target = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_owned(),
                    (None, _) => String::new(),
                };
                if attempt.previous().len() >= 10 {
                    attempt.error("too many redirects")
                } else if allowed.is_allowed(&target) {
                    attempt.follow()
                } else {
                    attempt.error(DeniedRedirect(target))
                }
            }))
            .build()
            .map_err(|e| RegistryError::Protocol { host: host.to_owned(), reason: format!("client set-up: {e}") })?;
        let (auth, basic, helper) = match found {
            Found::Credentials(c) => {
                (RegistryAuth::Basic(c.username.clone(), c.password.expose().to_owned()), Some(c.clone()), None)
            }
            Found::Helper(helper) => (RegistryAuth::Anonymous, None, Some(helper.clone())),
            Found::Anonymous => (RegistryAuth::Anonymous, None, None),
        };
        // Blob requests take their authorization from the auth stored for the registry.
        let oci_host = Reference::registry_for_oci(host);
        oci.store_auth_if_needed(&oci_host, &auth).await;
        Ok(HostClient {
            host: host.to_owned(),
            oci,
            http,
            auth,
            basic,
            helper,
            scheme: if insecure { "http" } else { "https" },
        })
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

/// A redirect to a host outside the allow-list, refused before connecting.
#[derive(Debug)]
pub(crate) struct DeniedRedirect(pub(crate) String);

impl std::fmt::Display for DeniedRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redirect to {} refused: not an allowed registry", self.0)
    }
}

impl std::error::Error for DeniedRedirect {}

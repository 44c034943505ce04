//! Lower-level errors (`oci-client`, `reqwest`, `rustls`, the socket) sorted into
//! [`RegistryError`]'s classes.

use std::error::Error as StdError;
use std::io;

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::client::{DeniedRedirect, HostClient, RegistryClient};
use crate::error::RegistryError;

impl RegistryClient {
    /// `oci-client`'s error for a request about `what`.
    pub(crate) fn classify_oci(&self, host: &HostClient, what: &str, error: OciDistributionError) -> RegistryError {
        match error {
            OciDistributionError::RequestError(e) => self.classify_transport(&host.host, &e),
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
                self.unauthorized(host, what, 401)
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::NameUnknown
                            | OciErrorCode::ManifestUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    RegistryError::NotFound { host: host.host.clone(), what: what.to_owned() }
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized)) {
                    self.unauthorized(host, what, 401)
                } else if codes.iter().any(|c| matches!(c, OciErrorCode::Denied)) {
                    self.unauthorized(host, what, 403)
                } else {
                    RegistryError::Protocol { host: host.host.clone(), reason: envelope.to_string() }
                }
            }
            OciDistributionError::ServerError { code, .. } => self.status(host, what, code),
            other => RegistryError::Protocol { host: host.host.clone(), reason: other.to_string() },
        }
    }

    /// A non-success HTTP status for a request about `what`.
    pub(crate) fn status(&self, host: &HostClient, what: &str, code: u16) -> RegistryError {
        match code {
            401 | 403 => self.unauthorized(host, what, code),
            404 => RegistryError::NotFound { host: host.host.clone(), what: what.to_owned() },
            _ => RegistryError::Protocol { host: host.host.clone(), reason: format!("HTTP {code} for {what}") },
        }
    }

    fn unauthorized(&self, host: &HostClient, what: &str, status: u16) -> RegistryError {
        RegistryError::Unauthorized {
            host: host.host.clone(),
            what: what.to_owned(),
            status,
            helper: host.helper.clone(),
        }
    }

    /// A request that failed before an HTTP answer: a connection, TLS, a redirect refused.
    pub(crate) fn classify_transport(&self, host: &str, error: &reqwest::Error) -> RegistryError {
        let host_name = host.to_owned();
        let mut innermost = error.to_string();
        for cause in causes(error) {
            if let Some(denied) = cause.downcast_ref::<DeniedRedirect>() {
                return RegistryError::Denied { host: denied.0.clone() };
            }
            if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
                let reason = match tls {
                    rustls::Error::InvalidCertificate(problem) => {
                        format!("the server's certificate is not trusted ({problem:?})")
                    }
                    other => format!(
                        "the TLS handshake failed ({other}); if {host_name} serves plain HTTP, it must be named an \
                         insecure registry"
                    ),
                };
                return RegistryError::Tls { ca_path: self.config.ca_path(&host_name), host: host_name, reason };
            }
            innermost = cause.to_string();
        }
        if error.is_connect() || error.is_timeout() {
            RegistryError::Unreachable { host: host_name, reason: innermost }
        } else {
            RegistryError::Protocol { host: host_name, reason: innermost }
        }
    }
}

/// An error and its causes, as one line (`error decoding response body: end of file before
/// message length reached`).
pub(crate) fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in causes(error) {
        let text = cause.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The chain of causes, looking inside `io::Error`s too (whose `source` skips the error they
/// wrap).
fn causes<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        out.push(cause);
        next = match cause.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => cause.source(),
        };
        if out.len() > 32 {
            break;
        }
    }
    out
}

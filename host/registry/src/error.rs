//! The errors a pull can end with, one variant per class a CLI maps to an exit code.
//!
//! No variant carries a credential: messages name hosts, references, digests and files, and
//! the text of lower-level errors (which never contain the `Authorization` header).

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The host is not in the client's allow-list; nothing was sent.
    #[error("registry {host} is not allowed (it is not among the registries this client may contact)")]
    Denied {
        /// The host as `HOST[:PORT]`.
        host: String,
    },
    /// The connection failed before TLS or HTTP: unknown host, refused, unreachable, timed out.
    #[error("registry {host} is unreachable: {reason}")]
    Unreachable {
        /// The host as `HOST[:PORT]`.
        host: String,
        /// What the resolver or the socket said.
        reason: String,
    },
    /// The TLS handshake failed, most often because the server's certificate is not trusted.
    #[error(
        "TLS with registry {host} failed: {reason}; if {host} uses its own certificate authority, put the CA's \
         certificate (PEM) at {}",
        ca_path.display()
    )]
    Tls {
        /// The host as `HOST[:PORT]`.
        host: String,
        /// What the TLS library said (for example the certificate's problem).
        reason: String,
        /// Where a CA for this host is looked for: `<certs.d>/HOST:PORT/ca.crt`.
        ca_path: PathBuf,
    },
    /// HTTP 401 or 403: no credentials, wrong ones, or no access to this repository.
    #[error("registry {host} refused access to {what} (HTTP {status}){}; log in with `docker login {host}`", helper_note(.helper))]
    Unauthorized {
        /// The host as `HOST[:PORT]`.
        host: String,
        /// The reference or blob that was asked for.
        what: String,
        /// 401 or 403.
        status: u16,
        /// A credential helper (`credHelpers`/`credsStore`) that holds this host's credentials,
        /// which this client does not run.
        helper: Option<String>,
    },
    /// HTTP 401 or 403 on a push: the credentials (or their absence) do not allow pushing to
    /// this repository. Pulling may still work.
    #[error(
        "registry {host} does not let these credentials push to {repository} (HTTP {status}){}; log in with \
         `docker login {host}` as a user who may push there",
        helper_note(.helper)
    )]
    PushDenied {
        /// The host as `HOST[:PORT]`.
        host: String,
        /// The repository pushed to.
        repository: String,
        /// 401 or 403.
        status: u16,
        /// A credential helper that holds this host's credentials, which this client does not run.
        helper: Option<String>,
    },
    /// HTTP 404, or the registry's `NAME_UNKNOWN`/`MANIFEST_UNKNOWN`/`BLOB_UNKNOWN`.
    #[error("not found in registry {host}: {what}")]
    NotFound {
        /// The host as `HOST[:PORT]`.
        host: String,
        /// The repository, tag or digest that was asked for.
        what: String,
    },
    /// A manifest or index larger than the limit.
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The reference that was asked for.
        what: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The bytes do not match their digest or length, or the stream ended early, after a retry.
    #[error("{digest} from {what} is corrupt: {reason}")]
    Corrupt {
        /// The digest the bytes should have.
        digest: Digest,
        /// The reference or repository it came from.
        what: String,
        /// The mismatch (digest, length, a stream that ended early).
        reason: String,
    },
    /// The registry answered something the distribution API does not allow here.
    #[error("registry {host} answered unexpectedly: {reason}")]
    Protocol {
        /// The host as `HOST[:PORT]`.
        host: String,
        /// The status or what was wrong.
        reason: String,
    },
    /// A credentials file (`config.json`, `auth.json`) could not be read or parsed.
    #[error("credentials file {}: {reason}", path.display())]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What was wrong (never the file's content).
        reason: String,
    },
    /// A CA certificate in the certs.d directory could not be read or parsed.
    #[error("CA certificate {}: {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A local file of an image transfer could not be read or written: the image a push
    /// compresses, its compressed copy in the scratch directory, the file a download fills.
    #[error("{what}: {source}")]
    File {
        /// What was done, naming the file when it has a path.
        what: String,
        /// The system's error.
        source: io::Error,
    },
    /// The blob store could not be read or written.
    #[error("blob store {}: {source}", path.display())]
    Store {
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

fn helper_note(helper: &Option<String>) -> String {
    match helper {
        Some(helper) => format!(
            "; its credentials are kept by {helper}, which is not supported: store them in the \
             `auths` map of config.json or auth.json instead"
        ),
        None => String::new(),
    }
}

impl RegistryError {
    pub(crate) fn store(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Store { path: path.into(), source }
    }
}

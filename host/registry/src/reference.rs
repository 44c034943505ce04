//! Image references as Docker and skopeo users write them.
//!
//! `[docker://][HOST[:PORT]/]REPO[:TAG][@sha256:HEX]`, with Docker Hub's defaults: a name
//! without a host is on `docker.io`, a one-component repository there is under `library/`,
//! and a name without a tag or digest means `latest`. The first component is a host when it
//! contains a `.` or a `:`, or is `localhost` (Docker's rule).

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Docker Hub, the registry of a name without a host.
pub const DOCKER_HUB: &str = "docker.io";

/// A reference to one image (a manifest or an index) in a registry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a reference does not parse; each names the text it refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing to parse.
    #[error("empty image reference")]
    Empty,
    /// A transport other than `docker://` (for example `oci:` or `docker-daemon:`).
    #[error("image reference {0:?}: only docker:// references name a registry")]
    Transport(String),
    /// The host part is not `HOST[:PORT]`.
    #[error("image reference {reference:?}: {host:?} is not a registry host (HOST or HOST:PORT)")]
    Host {
        /// The whole reference.
        reference: String,
        /// The host part.
        host: String,
    },
    /// A repository component breaks the distribution spec's grammar.
    #[error(
        "image reference {reference:?}: repository {repository:?} is not valid (lowercase letters, digits and \
         single separators `.`, `_`, `__`, `-` between path components)"
    )]
    Repository {
        /// The whole reference.
        reference: String,
        /// The repository part.
        repository: String,
    },
    /// The tag is not `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error("image reference {reference:?}: tag {tag:?} is not valid (up to 128 letters, digits, `_`, `.`, `-`)")]
    Tag {
        /// The whole reference.
        reference: String,
        /// The tag part.
        tag: String,
    },
    /// The digest after `@` is not a sha256 digest.
    #[error("image reference {reference:?}: {source}")]
    Digest {
        /// The whole reference.
        reference: String,
        /// Why the digest was refused.
        source: DigestError,
    },
    /// The name is longer than the 255 characters Docker allows.
    #[error("image reference {0:?}: the name is longer than 255 characters")]
    TooLong(String),
}

impl Reference {
    /// The registry as `HOST[:PORT]` (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository, `library/` included for Docker Hub's official images.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference names one (`latest` when it names neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one; a fetch then checks the bytes against it.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository at `digest` (for example a platform's manifest picked from an index).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self { registry: self.registry.clone(), repository: self.repository.clone(), tag: None, digest: Some(digest) }
    }

    /// What the manifests endpoint is asked for: the digest if there is one, else the tag.
    pub(crate) fn manifest_selector(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The name `oci-client` files a host's credentials and tokens under (`index.docker.io`
    /// for Docker Hub).
    pub(crate) fn registry_for_oci(host: &str) -> String {
        oci_client::Reference::with_tag(host.to_owned(), "x".to_owned(), "latest".to_owned())
            .resolve_registry()
            .to_owned()
    }

    /// The same reference in `oci-client`'s type.
    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        match &self.digest {
            Some(digest) => {
                oci_client::Reference::with_digest(self.registry.clone(), self.repository.clone(), digest.to_string())
            }
            None => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                self.tag.clone().unwrap_or_else(|| "latest".to_owned()),
            ),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, ReferenceError> {
        let text = match input.split_once("://") {
            Some(("docker", rest)) => rest,
            Some(_) => return Err(ReferenceError::Transport(input.to_owned())),
            None => input,
        };
        // `docker://` is skopeo's only transport here; `oci:PATH` and `docker-daemon:NAME` are not
        // registry references (a `:` before any `/` that is followed by a non-port is one of those).
        if let Some((scheme, _)) = text.split_once(':')
            && matches!(
                scheme,
                "oci" | "docker-daemon" | "oci-archive" | "docker-archive" | "dir" | "containers-storage"
            )
        {
            return Err(ReferenceError::Transport(input.to_owned()));
        }
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let digest = digest
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest { reference: input.to_owned(), source })?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        // The tag is after the last `:` of the last path component (a `:` before a `/` is a port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if name.len() > 255 {
            return Err(ReferenceError::TooLong(input.to_owned()));
        }
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(ReferenceError::Tag { reference: input.to_owned(), tag: tag.to_owned() });
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                if !valid_host(first) {
                    return Err(ReferenceError::Host { reference: input.to_owned(), host: first.to_owned() });
                }
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_owned() } else { registry };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_repository(&repository) {
            return Err(ReferenceError::Repository { reference: input.to_owned(), repository });
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag.map(str::to_owned),
        };
        Ok(Self { registry, repository, tag, digest })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `HOST[:PORT]`: DNS labels or an IPv4 address, or `[IPv6]`, and an optional decimal port.
fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else { return false };
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("ok", Some(port)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return false;
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The distribution spec's `path-component(/path-component)*`, each
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_repository(repository: &str) -> bool {
    repository.split('/').all(|component| {
        let bytes = component.as_bytes();
        if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            if is_alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !is_alnum(bytes[i]) {
                i += 1;
            }
            let separator = &component[start..i];
            let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
            if !ok {
                return false;
            }
        }
        true
    })
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Reference {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("alpine");
        assert_eq!((r.registry(), r.repository(), r.tag()), ("docker.io", "library/alpine", Some("latest")));
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        let r = parse("docker://team/app:1.4");
        assert_eq!((r.registry(), r.repository(), r.tag()), ("docker.io", "team/app", Some("1.4")));
        let r = parse("index.docker.io/busybox");
        assert_eq!((r.registry(), r.repository()), ("docker.io", "library/busybox"));
    }

    #[test]
    fn hosts_ports_tags_digests() {
        let r = parse("docker://127.0.0.1:5000/team/app:v1");
        assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "team/app", Some("v1")));
        let r = parse("localhost/app");
        assert_eq!((r.registry(), r.repository(), r.tag()), ("localhost", "app", Some("latest")));
        let hex = "a".repeat(64);
        let r = parse(&format!("registry.example.com:443/a/b/c@sha256:{hex}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().hex(), hex);
        assert_eq!(r.manifest_selector(), format!("sha256:{hex}"));
        let r = parse(&format!("example.com/app:1@sha256:{hex}"));
        assert_eq!((r.tag(), r.manifest_selector()), (Some("1"), format!("sha256:{hex}")));
        let r = parse("[::1]:5000/app:x");
        assert_eq!(r.registry(), "[::1]:5000");
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!("".parse::<Reference>(), Err(ReferenceError::Empty));
        assert!(matches!("oci:/tmp/layout".parse::<Reference>(), Err(ReferenceError::Transport(_))));
        assert!(matches!("http://example.com/app".parse::<Reference>(), Err(ReferenceError::Transport(_))));
        assert!(matches!("Alpine".parse::<Reference>(), Err(ReferenceError::Repository { .. })));
        assert!(matches!("example.com/a//b".parse::<Reference>(), Err(ReferenceError::Repository { .. })));
        assert!(matches!("example.com/a--".parse::<Reference>(), Err(ReferenceError::Repository { .. })));
        assert!(matches!("example.com:99999/a".parse::<Reference>(), Err(ReferenceError::Host { .. })));
        assert!(matches!("exa_mple.com/a".parse::<Reference>(), Err(ReferenceError::Host { .. })));
        assert!(matches!("app:".parse::<Reference>(), Err(ReferenceError::Tag { .. })));
        assert!(matches!("app:-x".parse::<Reference>(), Err(ReferenceError::Tag { .. })));
        assert!(matches!("app@sha256:12".parse::<Reference>(), Err(ReferenceError::Digest { .. })));
        assert!(matches!(format!("a/{}", "b".repeat(300)).parse::<Reference>(), Err(ReferenceError::TooLong(_))));
        let e = "Alpine".parse::<Reference>().unwrap_err().to_string();
        assert!(e.contains("\"Alpine\""), "{e}");
    }
}

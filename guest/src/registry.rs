//! Images by name: `docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`.
//!
//! The host does the network's part (`host.fetch-manifest`, `host.fetch-blobs`): it sends
//! bytes and stores blobs. Everything the registry sends is parsed here, by the rules of
//! [`crate::oci`] that layouts use too, and checked against its digest before it is parsed:
//! the top document against the digest the host reports (and the reference's, when it names
//! one), nested manifests and the config against their descriptors.

use std::cell::RefCell;

use crate::error::SourceError;
use crate::key::sha256_hex;
use crate::oci::{self, Descriptor, Documents, Platform};
use crate::wit::host::{BlobRequest, FetchedBlob, FetchedManifest};
use crate::wit::types::{Error, PullPolicy};

/// The scheme of a source pulled from a registry.
pub const SCHEME: &str = "docker://";
/// Docker Hub, the registry of a name without a host.
pub const DOCKER_HUB: &str = "docker.io";
/// The longest reference accepted.
const MAX_REFERENCE_BYTES: usize = 4095;

/// The host calls that fetch from a registry.
pub trait Puller {
    /// `host.fetch-manifest`.
    fn fetch_manifest(&self, reference: &str, pull: PullPolicy) -> Result<FetchedManifest, Error>;
    /// `host.fetch-blobs`.
    fn fetch_blobs(&self, reference: &str, blobs: &[BlobRequest], pull: PullPolicy) -> Result<Vec<FetchedBlob>, Error>;
}

/// A parsed `docker://` reference, Docker Hub's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// `REPO`, e.g. `library/alpine`.
    pub repository: String,
    /// The tag, unless only a digest was given.
    pub tag: Option<String>,
    /// `sha256:<hex>`, when the reference pins one.
    pub digest: Option<String>,
}

fn invalid(source: &str, why: &str) -> Error {
    Error::InvalidRequest(format!("source {source:?} is not a valid docker:// reference: {why}"))
}

impl ImageRef {
    /// Parses `docker://[HOST[:PORT]/]REPO[:TAG][@sha256:HEX]`. A first component with a `.`
    /// or a `:`, or `localhost`, is the registry; without one the registry is Docker Hub,
    /// and a one-component name is under `library/`. No tag and no digest means `latest`.
    pub fn parse(source: &str) -> Result<Self, Error> {
        let rest = source.strip_prefix(SCHEME).ok_or_else(|| invalid(source, "it does not start with docker://"))?;
        if source.len() > MAX_REFERENCE_BYTES {
            return Err(invalid(source, "it is too long"));
        }
        let (name, digest) = match rest.split_once('@') {
            Some((name, digest)) => {
                oci::sha256_of_digest(digest).map_err(|e| invalid(source, &e.to_string()))?;
                (name, Some(digest.to_owned()))
            }
            None => (rest, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(name[last_slash + i + 1..].to_owned())),
            None => (name, None),
        };
        if let Some(tag) = &tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
                && !tag.starts_with(['.', '-']);
            if !ok {
                return Err(invalid(source, "a tag is 1 to 128 of A-Z, a-z, 0-9, _, . and -"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest.to_owned()),
            _ if name.contains('/') => (DOCKER_HUB, name.to_owned()),
            _ => (DOCKER_HUB, format!("library/{name}")),
        };
        let host_ok = !registry.is_empty()
            && registry.bytes().all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c))
            && !registry.starts_with(['.', '-', ':']);
        if !host_ok {
            return Err(invalid(source, &format!("{registry:?} is not a host name with an optional port")));
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !repository.split('/').all(component_ok) {
            return Err(invalid(
                source,
                "a repository is /-separated components of a-z, 0-9, ., _ and -, each starting and ending with a letter or digit",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_owned()) } else { tag };
        Ok(Self { registry: registry.to_owned(), repository, tag, digest })
    }

    /// `docker://HOST/REPO`, without tag or digest.
    pub fn repository_url(&self) -> String {
        format!("{SCHEME}{}/{}", self.registry, self.repository)
    }

    /// The repository's reference to the document `digest` names.
    pub fn at(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repository_url())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repository_url())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The image selected from a registry for one platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledImage {
    /// The reference, defaults filled in.
    pub reference: ImageRef,
    /// The platform it was selected for.
    pub platform: String,
    /// Digest of the selected image manifest.
    pub manifest_digest: String,
    /// The image config's descriptor.
    pub config: Descriptor,
    /// The layers' descriptors, bottom first.
    pub layers: Vec<Descriptor>,
    /// When the registry is contacted.
    pub pull: PullPolicy,
    /// The selected manifest's descriptor (its media type, digest and
    /// length): what an artifact made from this image names as its
    /// `subject`. For an image behind nested indexes, the document the
    /// reference named.
    pub manifest: Box<Descriptor>,
}

/// The registry's documents, through the host; the top document the host
/// answered first is kept, so it is not fetched twice.
struct RegistryDocuments<'a, H: Puller> {
    reference: &'a ImageRef,
    pull: PullPolicy,
    host: &'a H,
    top: RefCell<Option<(String, Vec<u8>)>>,
}

impl<H: Puller> Documents for RegistryDocuments<'_, H> {
    fn document(&self, desc: &Descriptor, config: bool) -> Result<Vec<u8>, SourceError> {
        oci::sha256_of_digest(&desc.digest)?;
        if desc.size > oci::MAX_DOCUMENT_BYTES {
            return Err(SourceError::Unsupported(format!(
                "{} declares {} bytes; documents are limited to {}",
                desc.digest,
                desc.size,
                oci::MAX_DOCUMENT_BYTES
            )));
        }
        let bytes = if let Some((digest, bytes)) = self.top.borrow().as_ref()
            && *digest == desc.digest
        {
            Some(bytes.clone())
        } else {
            None
        };
        let bytes = match bytes {
            Some(bytes) => bytes,
            None if config => {
                let ask = BlobRequest { digest: desc.digest.clone(), size: desc.size, read: true };
                let repository = self.reference.repository_url();
                let mut answer = self.host.fetch_blobs(&repository, &[ask], self.pull).map_err(SourceError::Host)?;
                answer.pop().and_then(|b| b.contents).ok_or_else(|| {
                    SourceError::Io(format!("the host returned no contents for the config {}", desc.digest))
                })?
            }
            None => {
                self.host.fetch_manifest(&self.reference.at(&desc.digest), self.pull).map_err(SourceError::Host)?.bytes
            }
        };
        oci::check_blob(desc, &bytes, &self.origin())?;
        Ok(bytes)
    }

    fn origin(&self) -> String {
        self.reference.to_string()
    }
}

impl PulledImage {
    /// Resolves `reference` to the image for `platform`: the host fetches the document the
    /// reference names; an index is searched for the platform (nested indexes and manifests
    /// fetched by digest), a manifest's config must be for the platform.
    pub fn resolve(
        reference: &ImageRef,
        platform: &str,
        pull: PullPolicy,
        host: &impl Puller,
    ) -> Result<Self, SourceError> {
        let wanted = Platform::parse(platform)
            .ok_or_else(|| SourceError::Unsupported(format!("platform {platform:?} is not os/arch[/variant]")))?;
        let top = host.fetch_manifest(&reference.to_string(), pull).map_err(SourceError::Host)?;
        let actual = format!("sha256:{}", sha256_hex(&top.bytes));
        let named = reference.digest.as_deref().unwrap_or(&top.digest);
        if actual != named {
            return Err(SourceError::Host(Error::Corrupt(format!(
                "{reference} answered a document that hashes to {actual}, not {named}"
            ))));
        }
        let index = oci::is_index(&top.media_type, &top.bytes);
        let named = Descriptor {
            media_type: if top.media_type.is_empty() { oci::MANIFEST_TYPE.to_owned() } else { top.media_type.clone() },
            digest: actual.clone(),
            size: top.bytes.len() as u64,
            platform: None,
            annotations: None,
        };
        let docs = RegistryDocuments { reference, pull, host, top: RefCell::new(None) };
        let candidates = if index {
            oci::parse_index(&top.bytes)?
        } else {
            *docs.top.borrow_mut() = Some((actual, top.bytes));
            vec![named.clone()]
        };
        let (manifest_digest, (config, layers)) = oci::select_image(&docs, &candidates, &wanted)?;
        let manifest = candidates
            .iter()
            .find(|d| d.digest == manifest_digest)
            .map(|d| Descriptor { platform: None, annotations: None, ..d.clone() })
            .unwrap_or(named)
            .into();
        Ok(Self {
            reference: reference.clone(),
            platform: wanted.to_string(),
            manifest_digest,
            config,
            layers,
            pull,
            manifest,
        })
    }

    /// Fetches the config (and reads its diff IDs), then the layers, into the cache's blob
    /// store; returns each layer's stored path and diff ID, bottom first.
    pub fn fetch_layers(&self, host: &impl Puller) -> Result<Vec<(String, String)>, Error> {
        let docs = RegistryDocuments { reference: &self.reference, pull: self.pull, host, top: RefCell::new(None) };
        let diff_ids = oci::parse_diff_ids(&docs.document(&self.config, true)?, &self.config, self.layers.len())?;
        let asks: Vec<BlobRequest> =
            self.layers.iter().map(|l| BlobRequest { digest: l.digest.clone(), size: l.size, read: false }).collect();
        let blobs = host.fetch_blobs(&self.reference.repository_url(), &asks, self.pull)?;
        if blobs.len() != asks.len() {
            return Err(Error::Io(format!("the host answered {} of {} blobs", blobs.len(), asks.len())));
        }
        Ok(blobs.into_iter().map(|b| b.path).zip(diff_ids).collect())
    }

    /// What a cache entry of this image records as its source: the image by digest, so that
    /// every tag naming it shares one entry.
    pub fn source_name(&self) -> String {
        self.reference.at(&self.manifest_digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_docker_hub_defaults() {
        let r = ImageRef::parse("docker://alpine").unwrap();
        assert_eq!(r.to_string(), "docker://docker.io/library/alpine:latest");
        let r = ImageRef::parse("docker://127.0.0.1:5000/team/app:1.4").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("1.4"))
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("docker://localhost/app@{digest}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(digest.as_str())));
        assert_eq!(ImageRef::parse("docker://me/app").unwrap().to_string(), "docker://docker.io/me/app:latest");
    }

    #[test]
    fn bad_references_are_invalid_requests() {
        for bad in [
            "docker://",
            "docker://Upper/app",
            "docker://host:5000/app:",
            "docker://host:5000/app@sha256:abc",
            "docker://host:5000//app",
            "docker://host:5000/app:bad tag",
            "docker://host:5000/../app",
        ] {
            assert!(matches!(ImageRef::parse(bad), Err(Error::InvalidRequest(_))), "{bad:?} was accepted");
        }
    }
}

//! Manifests and indexes by reference, raw: the bytes, their media type and digest, bounded.
//! Parsing them is the caller's business.

use sha2::{Digest as _, Sha256};

use crate::client::RegistryClient;
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::reference::Reference;

/// The media types asked for, most preferred first: OCI and Docker indexes and manifests.
pub const ACCEPTED_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A manifest or index as the registry sent it.
#[derive(Clone, PartialEq, Eq)]
pub struct RawManifest {
    /// The bytes, unparsed.
    pub bytes: Vec<u8>,
    /// The `Content-Type` the registry gave, without parameters (`None` if it gave none).
    pub media_type: Option<String>,
    /// The SHA-256 of `bytes`: checked against the reference's digest when it has one.
    pub digest: Digest,
}

impl std::fmt::Debug for RawManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawManifest")
            .field("bytes", &self.bytes.len())
            .field("media_type", &self.media_type)
            .field("digest", &self.digest)
            .finish()
    }
}

impl RegistryClient {
    /// Fetches the manifest or index `reference` names (its digest if it has one, else its
    /// tag), refusing more than the configured limit (4 MiB) and bytes that do not match the
    /// reference's digest or the registry's `Docker-Content-Digest`.
    pub async fn fetch_manifest(&self, reference: &Reference) -> Result<RawManifest, RegistryError> {
        self.fetch_manifest_accepting(reference, &ACCEPTED_MEDIA_TYPES.join(", ")).await
    }

    /// [`Self::fetch_manifest`], asking for the media types `accept` lists.
    pub(crate) async fn fetch_manifest_accepting(
        &self,
        reference: &Reference,
        accept: &str,
    ) -> Result<RawManifest, RegistryError> {
        let host = self.host_client(reference).await?;
        let what = reference.to_string();
        let path = format!("manifests/{}", reference.manifest_selector());
        let mut response = self.get(&host, reference, &path, accept, &what).await?;
        let limit = self.config.max_manifest_bytes;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(RegistryError::TooLarge { what, limit });
        }
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let media_type = header("content-type").map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let announced = header("docker-content-digest");
        let mut bytes = Vec::new();
        let mut hasher = Sha256::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify_transport(&host.host, &e))? {
            if bytes.len() as u64 + chunk.len() as u64 > limit {
                return Err(RegistryError::TooLarge { what, limit });
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        let digest = Digest::from_sha256(hasher.finalize().into());
        let corrupt = |expected: Digest, source: &str| RegistryError::Corrupt {
            reason: format!("the manifest's bytes have digest {digest}, not the {source}"),
            digest: expected,
            what: what.clone(),
        };
        if let Some(expected) = reference.digest()
            && *expected != digest
        {
            return Err(corrupt(expected.clone(), "reference's"));
        }
        if let Some(announced) = announced.and_then(|a| a.parse::<Digest>().ok())
            && announced != digest
        {
            return Err(corrupt(announced, "Docker-Content-Digest the registry sent"));
        }
        Ok(RawManifest { bytes, media_type, digest })
    }
}

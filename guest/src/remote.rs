//! The remote cache: entries shared between hosts through an OCI registry.
//!
//! One entry is one OCI 1.1 artifact, an image manifest tagged with the cache
//! key: its `artifactType` is [`ARTIFACT_TYPE`], its config a
//! [`RemoteEntry`] (what the entry is, without any host's paths), its one
//! layer the ext4 image compressed with zstd, and its annotations repeat
//! what a user inspecting it wants to see (the key, the source's digest, the
//! agent's digest, the converter, the image's length and SHA-256).
//!
//! The host moves bytes ([`Remote`]); every document is written and parsed
//! here. Nothing the registry sends is trusted: a manifest or config that
//! does not parse, names another key, another source, agent, converter or
//! size, or an image whose length or SHA-256 is not what the annotations
//! say, is refused before anything is published.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::key::sha256_hex;
use crate::wit::host::{FetchedImage, FetchedManifest, FileDigest, PushedBlob};
use crate::wit::types::Error;

/// The artifact's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.rootfs-cache.image.v1";
/// The config's media type: a [`RemoteEntry`] as JSON.
pub const CONFIG_TYPE: &str = "application/vnd.rootfs-cache.entry.v1+json";
/// The layer's media type: the ext4 image, compressed with zstd.
pub const LAYER_TYPE: &str = "application/vnd.rootfs-cache.image.v1.ext4+zstd";
/// The media type of an OCI image manifest, which an artifact is.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The [`RemoteEntry`] format this guest writes and accepts.
pub const REMOTE_FORMAT: u32 = 1;
/// The largest config accepted (real ones are under 1 KiB).
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// The annotations' names.
pub mod annotation {
    /// The cache key the artifact holds the image of.
    pub const KEY: &str = "io.github.rootfs-cache.key";
    /// The source's portable identity (a manifest digest, a chain ID, an image ID).
    pub const SOURCE: &str = "io.github.rootfs-cache.source";
    /// The agent's SHA-256, hex.
    pub const AGENT: &str = "io.github.rootfs-cache.agent.sha256";
    /// The converter's identity.
    pub const CONVERTER: &str = "io.github.rootfs-cache.converter";
    /// The image's uncompressed length in bytes, decimal.
    pub const IMAGE_SIZE: &str = "io.github.rootfs-cache.image.size";
    /// `sha256:<hex>` of the uncompressed image.
    pub const IMAGE_SHA256: &str = "io.github.rootfs-cache.image.sha256";
}

/// The host's remote-cache calls (`host.remote-*`, and `host.digest-image`).
pub trait Remote {
    /// `host.remote-manifest`.
    fn remote_manifest(&self, tag: &str) -> Result<Option<FetchedManifest>, Error>;
    /// `host.remote-blob`.
    fn remote_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>, Error>;
    /// `host.remote-image`.
    fn remote_image(&self, digest: &str, size: u64, staged: &str) -> Result<FetchedImage, Error>;
    /// `host.remote-push-image`.
    fn remote_push_image(&self, image: &str) -> Result<PushedBlob, Error>;
    /// `host.remote-push-blob`.
    fn remote_push_blob(&self, bytes: &[u8]) -> Result<PushedBlob, Error>;
    /// `host.remote-push-manifest`.
    fn remote_push_manifest(&self, tag: &str, bytes: &[u8]) -> Result<String, Error>;
    /// `host.digest-image`.
    fn digest_image(&self, image: &str) -> Result<FileDigest, Error>;
}

/// An artifact's config: what the entry is, portable between hosts (no
/// path, no time), so that every host building the same key pushes the same
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteEntry {
    /// Always [`REMOTE_FORMAT`].
    pub format: u32,
    /// The cache key.
    pub key: String,
    /// The source's kind, as the entry's manifest names it.
    pub kind: String,
    /// The source's portable identity.
    pub source: String,
    /// The platform and manifest selected, for images.
    pub platform: Option<String>,
    /// The agent's SHA-256, hex.
    pub agent_sha256: String,
    /// The agent's length in bytes.
    pub agent_size: u64,
    /// The converter's identity.
    pub converter: String,
    /// The size that was asked for, if any.
    pub requested_size: Option<u64>,
    /// The image's length in bytes.
    pub image_bytes: u64,
    /// SHA-256 of the image's bytes, hex.
    pub image_sha256: String,
    /// What built it (`rootfs-cache-guest <version>`).
    pub builder: String,
}

impl RemoteEntry {
    /// The config's bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The content's media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// The content's length in bytes.
    pub size: u64,
}

/// An artifact's manifest, as pushed and as parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`MANIFEST_TYPE`].
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    /// [`ARTIFACT_TYPE`].
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    /// The [`RemoteEntry`].
    pub config: Descriptor,
    /// The compressed image, alone.
    pub layers: Vec<Descriptor>,
    /// The source image's manifest, when it is in the same registry: the
    /// registry's referrers API then lists this artifact beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// See [`annotation`].
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl ArtifactManifest {
    /// The manifest of `entry`, its config pushed as `config` and its image
    /// as `layer`.
    pub fn new(entry: &RemoteEntry, config: Descriptor, layer: Descriptor, subject: Option<Descriptor>) -> Self {
        let annotations = BTreeMap::from([
            (annotation::KEY.to_owned(), entry.key.clone()),
            (annotation::SOURCE.to_owned(), entry.source.clone()),
            (annotation::AGENT.to_owned(), entry.agent_sha256.clone()),
            (annotation::CONVERTER.to_owned(), entry.converter.clone()),
            (annotation::IMAGE_SIZE.to_owned(), entry.image_bytes.to_string()),
            (annotation::IMAGE_SHA256.to_owned(), format!("sha256:{}", entry.image_sha256)),
        ]);
        Self {
            schema_version: 2,
            media_type: Some(MANIFEST_TYPE.to_owned()),
            artifact_type: Some(ARTIFACT_TYPE.to_owned()),
            config,
            layers: vec![layer],
            subject,
            annotations,
        }
    }

    /// The manifest's bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a manifest the registry sent for `key`, checking that it is an
    /// artifact of this format holding the image of `key`. Returns the image
    /// layer's descriptor, the image's length and its SHA-256 (hex) as the
    /// annotations state them.
    pub fn parse_for(bytes: &[u8], key: &str) -> Result<(Self, Artifact), String> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not valid: {e}"))?;
        if manifest.schema_version != 2 {
            return Err(format!("schemaVersion is {}, not 2", manifest.schema_version));
        }
        if manifest.media_type.as_deref().is_some_and(|t| t != MANIFEST_TYPE) {
            return Err(format!("mediaType is {:?}, not {MANIFEST_TYPE}", manifest.media_type.unwrap_or_default()));
        }
        if manifest.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
            return Err(format!("artifactType is {:?}, not {ARTIFACT_TYPE}", manifest.artifact_type));
        }
        if manifest.config.media_type != CONFIG_TYPE {
            return Err(format!("the config is {}, not {CONFIG_TYPE}", manifest.config.media_type));
        }
        check_digest("the config", &manifest.config.digest)?;
        if manifest.config.size > MAX_CONFIG_BYTES {
            return Err(format!("the config declares {} bytes, more than {MAX_CONFIG_BYTES}", manifest.config.size));
        }
        let [layer] = manifest.layers.as_slice() else {
            return Err(format!("the artifact has {} layers, not one", manifest.layers.len()));
        };
        if layer.media_type != LAYER_TYPE {
            return Err(format!("the layer is {}, not {LAYER_TYPE}", layer.media_type));
        }
        check_digest("the layer", &layer.digest)?;
        let annotated =
            |name: &str| manifest.annotations.get(name).ok_or_else(|| format!("the annotation {name} is missing"));
        let tagged_key = annotated(annotation::KEY)?;
        if tagged_key != key {
            return Err(format!("it is tagged {key} but holds the image of key {tagged_key}"));
        }
        let image_bytes = annotated(annotation::IMAGE_SIZE)?
            .parse::<u64>()
            .map_err(|_| format!("the annotation {} is not a length", annotation::IMAGE_SIZE))?;
        let image_sha256 = annotated(annotation::IMAGE_SHA256)?;
        check_digest(annotation::IMAGE_SHA256, image_sha256)?;
        let artifact = Artifact {
            config: manifest.config.clone(),
            layer: layer.clone(),
            image_bytes,
            image_sha256: image_sha256.trim_start_matches("sha256:").to_owned(),
        };
        Ok((manifest, artifact))
    }
}

/// What a parsed artifact points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// The config's descriptor.
    pub config: Descriptor,
    /// The compressed image's descriptor.
    pub layer: Descriptor,
    /// The image's length, as annotated.
    pub image_bytes: u64,
    /// The image's SHA-256, hex, as annotated.
    pub image_sha256: String,
}

impl Artifact {
    /// Parses the config fetched for this artifact and checks it against
    /// the annotations and against `expected`, the entry this host would
    /// build.
    pub fn check_config(&self, bytes: &[u8], expected: &RemoteEntry) -> Result<RemoteEntry, String> {
        if format!("sha256:{}", sha256_hex(bytes)) != self.config.digest {
            return Err(format!("the config is not {}", self.config.digest));
        }
        let entry: RemoteEntry = serde_json::from_slice(bytes).map_err(|e| format!("the config is not valid: {e}"))?;
        if entry.image_bytes != self.image_bytes || entry.image_sha256 != self.image_sha256 {
            return Err("the config and the annotations disagree on the image".to_owned());
        }
        // Everything but the image's own fields and who built it must be what
        // this host would build.
        let comparable = RemoteEntry {
            image_bytes: expected.image_bytes,
            image_sha256: expected.image_sha256.clone(),
            builder: expected.builder.clone(),
            ..entry.clone()
        };
        if comparable != *expected {
            return Err(format!("its config describes another entry: {}", String::from_utf8_lossy(bytes)));
        }
        Ok(entry)
    }
}

/// Checks `sha256:<64 lowercase hex>`.
fn check_digest(what: &str, digest: &str) -> Result<(), String> {
    let ok = digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    if ok { Ok(()) } else { Err(format!("{what}'s digest {digest:?} is not sha256:<64 hex digits>")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> RemoteEntry {
        RemoteEntry {
            format: REMOTE_FORMAT,
            key: key.to_owned(),
            kind: "registry".into(),
            source: format!("sha256:{}", "1".repeat(64)),
            platform: Some("linux/amd64".into()),
            agent_sha256: "a".repeat(64),
            agent_size: 10,
            converter: "exact/1".into(),
            requested_size: None,
            image_bytes: 1 << 20,
            image_sha256: "b".repeat(64),
            builder: "rootfs-cache-guest 0.1.0".into(),
        }
    }

    fn artifact(entry: &RemoteEntry) -> (Vec<u8>, Vec<u8>) {
        let config = entry.to_json();
        let config_desc = Descriptor {
            media_type: CONFIG_TYPE.into(),
            digest: format!("sha256:{}", sha256_hex(&config)),
            size: config.len() as u64,
        };
        let layer = Descriptor { media_type: LAYER_TYPE.into(), digest: format!("sha256:{}", "c".repeat(64)), size: 5 };
        (ArtifactManifest::new(entry, config_desc, layer, None).to_json(), config)
    }

    #[test]
    fn an_artifact_round_trips_and_its_config_is_checked() {
        let key = "d".repeat(64);
        let e = entry(&key);
        let (manifest, config) = artifact(&e);
        let (parsed, art) = ArtifactManifest::parse_for(&manifest, &key).unwrap();
        assert_eq!(parsed.annotations[annotation::IMAGE_SHA256], format!("sha256:{}", e.image_sha256));
        assert_eq!((art.image_bytes, art.image_sha256.as_str()), (e.image_bytes, e.image_sha256.as_str()));
        let expected =
            RemoteEntry { image_bytes: 0, image_sha256: String::new(), builder: "other".into(), ..e.clone() };
        assert_eq!(art.check_config(&config, &expected).unwrap(), e);
        // Another agent, or bytes that are not the config's digest.
        let other = RemoteEntry { agent_sha256: "f".repeat(64), ..expected };
        assert!(art.check_config(&config, &other).unwrap_err().contains("another entry"));
        assert!(art.check_config(b"{}", &e).unwrap_err().contains("is not sha256:"));
    }

    #[test]
    fn an_artifact_of_another_key_or_shape_is_refused() {
        let key = "d".repeat(64);
        let (manifest, _) = artifact(&entry(&key));
        let err = ArtifactManifest::parse_for(&manifest, &"e".repeat(64)).unwrap_err();
        assert!(err.contains("holds the image of key"), "{err}");
        let text = String::from_utf8(manifest).unwrap();
        for (from, to, why) in [
            (ARTIFACT_TYPE, "application/x", "artifactType"),
            (LAYER_TYPE, "application/x", "the layer is"),
            (CONFIG_TYPE, "application/x", "the config is"),
            ("\"schemaVersion\":2", "\"schemaVersion\":1", "schemaVersion"),
            (annotation::IMAGE_SHA256, "x", "is missing"),
        ] {
            let changed = text.replacen(from, to, 1);
            let err = ArtifactManifest::parse_for(changed.as_bytes(), &key).unwrap_err();
            assert!(err.contains(why), "{from}: {err}");
        }
        assert!(ArtifactManifest::parse_for(b"[1]", &key).is_err());
        assert!(ArtifactManifest::parse_for(&[0xff; 10], &key).is_err());
    }
}

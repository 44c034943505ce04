//! OCI image layouts: `oci-layout`, `index.json` and content-addressed blobs.
//!
//! The guest picks the manifest for the requested platform, checks every blob
//! it reads against its descriptor (size and SHA-256), and hands the converter
//! a list of verified-by-name layer blobs. Layer blobs are large; the
//! converter checks their digests while it reads them.

use std::fs;
use std::path::Path;

use serde::Deserialize;

use crate::key::sha256_hex;
use crate::source::{SourceError, read_small};

/// Largest index or manifest read (the OCI spec suggests 4 MiB for manifests).
const MAX_DOCUMENT_BYTES: u64 = 4 * 1024 * 1024;
/// How deep image indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;
/// Most layers an image may have; matches the overlay2 limit.
const MAX_LAYERS: usize = 128;

const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: &[&str] =
    &["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
/// Layer media types a converter is asked to apply.
pub const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// A content descriptor.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<64 hex digits>`.
    pub digest: String,
    /// The blob's length.
    pub size: u64,
    /// For manifests in an index: the platform they are for.
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
}

/// A platform as OCI writes it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PlatformSpec {
    /// `os`, e.g. `linux`.
    pub os: String,
    /// `architecture`, e.g. `amd64`.
    pub architecture: String,
    /// `variant`, e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// A requested platform, parsed from `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Operating system.
    pub os: String,
    /// Architecture.
    pub arch: String,
    /// Variant, when one was asked for.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch` or `os/arch/variant`; each part is 1 to 32 of
    /// `a-z`, `0-9` and `_`.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 32
                && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        };
        let parts: Vec<&str> = text.split('/').collect();
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
            return None;
        }
        Some(Self { os: parts[0].into(), arch: parts[1].into(), variant: parts.get(2).map(|v| v.to_string()) })
    }

    fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        self.os == os && self.arch == arch && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One layer blob of the selected image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// Absolute path of the blob.
    pub path: String,
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// The image selected from an OCI layout for one platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciImage {
    /// The layout directory.
    pub layout: String,
    /// The platform it was selected for.
    pub platform: String,
    /// Digest of the selected manifest.
    pub manifest_digest: String,
    /// Layer blobs, bottom first.
    pub layers: Vec<LayerBlob>,
    /// Birth time of `index.json`, ns.
    pub index_created_ns: u64,
    /// Modification time of `index.json`, ns.
    pub index_modified_ns: u64,
}

/// Checks a digest and returns its hex part; only SHA-256 is supported.
pub fn sha256_of_digest(digest: &str) -> Result<&str, SourceError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| SourceError::Unsupported(format!("digest {digest:?} is not sha256:<hex>")))?;
    if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return Err(SourceError::Unsupported(format!(
            "digest {digest:?} is not sha256 followed by 64 lowercase hex digits"
        )));
    }
    Ok(hex)
}

fn blob_path(layout: &Path, digest: &str) -> Result<std::path::PathBuf, SourceError> {
    Ok(layout.join("blobs").join("sha256").join(sha256_of_digest(digest)?))
}

/// Reads a small blob and checks it against its descriptor.
fn read_blob(layout: &Path, desc: &Descriptor) -> Result<Vec<u8>, SourceError> {
    let path = blob_path(layout, &desc.digest)?;
    if desc.size > MAX_DOCUMENT_BYTES {
        return Err(SourceError::Unsupported(format!(
            "{} declares {} bytes; documents are limited to {MAX_DOCUMENT_BYTES}",
            desc.digest, desc.size
        )));
    }
    let bytes = read_small(&path, MAX_DOCUMENT_BYTES)?;
    if bytes.len() as u64 != desc.size {
        return Err(SourceError::Unsupported(format!(
            "blob {} has {} bytes, its descriptor says {}",
            desc.digest,
            bytes.len(),
            desc.size
        )));
    }
    let actual = sha256_hex(&bytes);
    if Some(actual.as_str()) != desc.digest.strip_prefix("sha256:") {
        return Err(SourceError::Unsupported(format!(
            "blob {} hashes to sha256:{actual}: the layout is corrupt",
            desc.digest
        )));
    }
    Ok(bytes)
}

fn parse_json<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|e| SourceError::Unsupported(format!("{what} is not valid: {e}")))
}

/// Parses `index.json` (or a nested index blob) and returns its manifests.
pub fn parse_index(bytes: &[u8]) -> Result<Vec<Descriptor>, SourceError> {
    let index: Index = parse_json("index.json", bytes)?;
    if index.schema_version != 2 {
        return Err(SourceError::Unsupported(format!("index schemaVersion is {}, expected 2", index.schema_version)));
    }
    if let Some(t) = &index.media_type
        && !INDEX_TYPES.contains(&t.as_str())
    {
        return Err(SourceError::Unsupported(format!("index mediaType {t:?} is not an image index")));
    }
    Ok(index.manifests)
}

/// Parses an image manifest and returns its config and layers, after checking
/// that every layer has a supported media type.
pub fn parse_manifest(bytes: &[u8]) -> Result<(Descriptor, Vec<Descriptor>), SourceError> {
    let manifest: Manifest = parse_json("the image manifest", bytes)?;
    if manifest.schema_version != 2 {
        return Err(SourceError::Unsupported(format!(
            "manifest schemaVersion is {}, expected 2",
            manifest.schema_version
        )));
    }
    if let Some(t) = &manifest.media_type
        && !MANIFEST_TYPES.contains(&t.as_str())
    {
        return Err(SourceError::Unsupported(format!("manifest mediaType {t:?} is not an image manifest")));
    }
    if manifest.layers.len() > MAX_LAYERS {
        return Err(SourceError::Unsupported(format!(
            "the manifest has {} layers; at most {MAX_LAYERS} are supported",
            manifest.layers.len()
        )));
    }
    for layer in &manifest.layers {
        if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(SourceError::Unsupported(format!(
                "layer {} has unsupported media type {:?}",
                layer.digest, layer.media_type
            )));
        }
        sha256_of_digest(&layer.digest)?;
    }
    Ok((manifest.config, manifest.layers))
}

impl OciImage {
    /// Resolves the image for `platform` in the layout at `layout`.
    pub fn resolve(layout: &Path, platform: &str) -> Result<Self, SourceError> {
        let wanted = Platform::parse(platform)
            .ok_or_else(|| SourceError::Unsupported(format!("platform {platform:?} is not os/arch[/variant]")))?;
        let marker = read_small(&layout.join("oci-layout"), 4096)?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Marker {
            image_layout_version: String,
        }
        let marker: Marker = parse_json("oci-layout", &marker)?;
        if !marker.image_layout_version.starts_with("1.") {
            return Err(SourceError::Unsupported(format!(
                "imageLayoutVersion {:?} is not 1.x",
                marker.image_layout_version
            )));
        }
        let index_path = layout.join("index.json");
        let index_meta = fs::metadata(&index_path).map_err(|e| SourceError::io(&index_path, &e))?;
        let manifests = parse_index(&read_small(&index_path, MAX_DOCUMENT_BYTES)?)?;
        let (manifest_digest, manifest) = select(layout, &manifests, &wanted, 0)?;
        let (_config, layers) = manifest;
        let layers = layers
            .into_iter()
            .map(|d| {
                let path = blob_path(layout, &d.digest)?;
                Ok(LayerBlob { path: path.to_string_lossy().into_owned(), media_type: d.media_type, digest: d.digest })
            })
            .collect::<Result<Vec<_>, SourceError>>()?;
        let nanos = |t: std::io::Result<std::time::SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos()))
        };
        Ok(Self {
            layout: layout.to_string_lossy().into_owned(),
            platform: wanted.to_string(),
            manifest_digest,
            layers,
            index_created_ns: nanos(index_meta.created()),
            index_modified_ns: nanos(index_meta.modified()),
        })
    }
}

type Selected = (String, (Descriptor, Vec<Descriptor>));

/// Picks the manifest for `wanted` among `candidates`, descending into nested
/// indexes. A descriptor without a platform is checked against its config.
fn select(layout: &Path, candidates: &[Descriptor], wanted: &Platform, depth: usize) -> Result<Selected, SourceError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(SourceError::Unsupported(format!("image indexes nest deeper than {MAX_INDEX_DEPTH}")));
    }
    let mut seen = Vec::new();
    for desc in candidates {
        if let Some(p) = &desc.platform
            && !wanted.matches(&p.os, &p.architecture, p.variant.as_deref())
        {
            seen.push(format!("{}/{}", p.os, p.architecture));
            continue;
        }
        if INDEX_TYPES.contains(&desc.media_type.as_str()) {
            let nested = parse_index(&read_blob(layout, desc)?)?;
            match select(layout, &nested, wanted, depth + 1) {
                Ok(found) => return Ok(found),
                Err(_) => continue,
            }
        }
        let bytes = read_blob(layout, desc)?;
        let (config, layers) = parse_manifest(&bytes)?;
        if desc.platform.is_none() {
            let cfg: ImageConfig = parse_json("the image config", &read_blob(layout, &config)?)?;
            if !wanted.matches(&cfg.os, &cfg.architecture, cfg.variant.as_deref()) {
                seen.push(format!("{}/{}", cfg.os, cfg.architecture));
                continue;
            }
        }
        return Ok((desc.digest.clone(), (config, layers)));
    }
    let found = if seen.is_empty() { "none".to_owned() } else { seen.join(", ") };
    Err(SourceError::Unsupported(format!("the layout has no image for {wanted} (found: {found})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_with_and_without_variant() {
        assert_eq!(Platform::parse("linux/amd64").unwrap().to_string(), "linux/amd64");
        assert_eq!(Platform::parse("linux/arm64/v8").unwrap().variant.as_deref(), Some("v8"));
        for bad in ["", "linux", "linux/", "/amd64", "linux/amd64/v8/x", "Linux/amd64", "linux/../x"] {
            assert!(Platform::parse(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn an_index_without_media_type_is_accepted() {
        let m = parse_index(br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":3}]}"#).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].size, 3);
    }

    #[test]
    fn an_index_with_wrong_types_is_refused() {
        for bad in [
            &br#"{"schemaVersion":"2","manifests":[]}"#[..],
            br#"{"schemaVersion":2,"manifests":{}}"#,
            br#"{"schemaVersion":1,"manifests":[]}"#,
            br#"{"schemaVersion":2,"mediaType":"text/plain","manifests":[]}"#,
            br#"not json"#,
        ] {
            assert!(parse_index(bad).is_err(), "{} was accepted", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn manifests_must_name_supported_layers_by_sha256() {
        let good = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":5}]}"#;
        assert_eq!(parse_manifest(good).unwrap().1.len(), 1);
        let foreign = String::from_utf8_lossy(good).replace("tar+zstd", "tar+lz4");
        assert!(parse_manifest(foreign.as_bytes()).is_err());
        let weak = String::from_utf8_lossy(good).replace("sha256:1111", "md5:1111");
        assert!(parse_manifest(weak.as_bytes()).is_err());
    }

    #[test]
    fn digests_are_sha256_hex_only() {
        assert!(sha256_of_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(sha256_of_digest(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(sha256_of_digest("sha256:../../../etc/passwd").is_err());
        assert!(sha256_of_digest(&format!("sha512:{}", "a".repeat(128))).is_err());
    }
}

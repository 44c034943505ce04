//! OCI image layouts: `oci-layout`, `index.json` and content-addressed blobs.
//!
//! The guest picks the manifest for the requested platform, checks every blob
//! it reads against its descriptor (size and SHA-256), and hands the converter
//! a list of verified-by-name layer blobs. Layer blobs are large; the
//! converter checks their digests while it reads them.

use std::path::Path;

use serde::Deserialize;

use crate::key::sha256_hex;
use crate::probe::{self, Probe};
use crate::source::SourceError;
use crate::wit::host::PathInfo;
use crate::wit::types::Error;

/// Largest index or manifest read (the OCI spec suggests 4 MiB for manifests).
pub const MAX_DOCUMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Largest `oci-layout` marker read.
pub const MAX_MARKER_BYTES: u64 = 4096;
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
fn read_blob(layout: &Path, desc: &Descriptor, fs: &impl Probe) -> Result<Vec<u8>, SourceError> {
    let path = blob_path(layout, &desc.digest)?;
    if desc.size > MAX_DOCUMENT_BYTES {
        return Err(SourceError::Unsupported(format!(
            "{} declares {} bytes; documents are limited to {MAX_DOCUMENT_BYTES}",
            desc.digest, desc.size
        )));
    }
    let bytes = probe::read(fs, &path, desc.size, MAX_DOCUMENT_BYTES)?;
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
    /// Resolves the image for `platform` in the layout at `layout`, given the
    /// first probe's answers for `oci-layout` and `index.json` (read up to
    /// [`MAX_MARKER_BYTES`] and [`probe::MAX_HEAD_BYTES`]).
    pub fn resolve(
        layout: &Path,
        platform: &str,
        marker: Result<PathInfo, Error>,
        index: Result<PathInfo, Error>,
        fs: &impl Probe,
    ) -> Result<Self, SourceError> {
        let wanted = Platform::parse(platform)
            .ok_or_else(|| SourceError::Unsupported(format!("platform {platform:?} is not os/arch[/variant]")))?;
        let marker = probe::contents(&layout.join("oci-layout"), marker, MAX_MARKER_BYTES)?;
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
        let (created_ns, modified_ns) = index_times(&index_path, &index)?;
        let manifests = parse_index(&probe::contents(&index_path, index, MAX_DOCUMENT_BYTES)?)?;
        let (manifest_digest, manifest) = select(layout, &manifests, &wanted, 0, fs)?;
        let (_config, layers) = manifest;
        let layers = layers
            .into_iter()
            .map(|d| {
                let path = blob_path(layout, &d.digest)?;
                Ok(LayerBlob { path: path.to_string_lossy().into_owned(), media_type: d.media_type, digest: d.digest })
            })
            .collect::<Result<Vec<_>, SourceError>>()?;
        Ok(Self {
            layout: layout.to_string_lossy().into_owned(),
            platform: wanted.to_string(),
            manifest_digest,
            layers,
            index_created_ns: created_ns,
            index_modified_ns: modified_ns,
        })
    }
}

/// The birth and modification times of `index.json`, in ns: the probe's for
/// a regular file, WASI's (which follows the link) for a symlink.
fn index_times(path: &Path, answer: &Result<PathInfo, Error>) -> Result<(u64, u64), SourceError> {
    match answer {
        Ok(info) if info.kind == crate::wit::host::PathKind::File => Ok((info.created_ns, info.modified_ns)),
        Err(e) => Err(probe::source_error(path, e)),
        Ok(_) => {
            let meta = crate::sys::metadata(path).map_err(|e| SourceError::io(path, &e))?;
            Ok((meta.created_ns.unwrap_or(0), meta.modified_ns.unwrap_or(0)))
        }
    }
}

type Selected = (String, (Descriptor, Vec<Descriptor>));

/// Picks the manifest for `wanted` among `candidates`, descending into nested
/// indexes. A descriptor without a platform is checked against its config.
fn select(
    layout: &Path,
    candidates: &[Descriptor],
    wanted: &Platform,
    depth: usize,
    fs: &impl Probe,
) -> Result<Selected, SourceError> {
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
            let nested = parse_index(&read_blob(layout, desc, fs)?)?;
            match select(layout, &nested, wanted, depth + 1, fs) {
                Ok(found) => return Ok(found),
                Err(_) => continue,
            }
        }
        let bytes = read_blob(layout, desc, fs)?;
        let (config, layers) = parse_manifest(&bytes)?;
        if desc.platform.is_none() {
            let cfg: ImageConfig = parse_json("the image config", &read_blob(layout, &config, fs)?)?;
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
    use crate::probe::StdProbe;
    use crate::source::Source;

    /// Writes `bytes` as a blob of `layout` and returns its descriptor JSON.
    fn blob(layout: &Path, media_type: &str, bytes: &[u8], extra: &str) -> String {
        let hex = sha256_hex(bytes);
        std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!(r#"{{"mediaType":"{media_type}","digest":"sha256:{hex}","size":{}{extra}}}"#, bytes.len())
    }

    /// A layout with one linux/amd64 image of two layers; `pad` spaces make
    /// its manifest longer than one probe reads.
    fn layout(root: &Path, pad: usize) -> (String, Vec<String>) {
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let layer_type = "application/vnd.oci.image.layer.v1.tar+gzip";
        let layers = [blob(root, layer_type, b"layer one", ""), blob(root, layer_type, b"layer two", "")];
        let config = blob(root, "application/vnd.oci.image.config.v1+json", br#"{"os":"linux"}"#, "");
        let manifest =
            format!(r#"{{"schemaVersion":2,"config":{config},"layers":[{}]}}{}"#, layers.join(","), " ".repeat(pad));
        let manifest = blob(
            root,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.as_bytes(),
            r#","platform":{"os":"linux","architecture":"amd64"}"#,
        );
        let digest = manifest.split('"').nth(7).unwrap().to_owned();
        std::fs::write(root.join("index.json"), format!(r#"{{"schemaVersion":2,"manifests":[{manifest}]}}"#)).unwrap();
        let layer_digests = layers.iter().map(|l| l.split('"').nth(7).unwrap().to_owned()).collect();
        (digest, layer_digests)
    }

    fn resolve(path: &Path) -> Result<OciImage, SourceError> {
        match Source::resolve(path, "linux/amd64", &StdProbe { cache_root: "/nonexistent".into() })? {
            Source::Oci(image) => Ok(image),
            other => panic!("not an OCI image: {other:?}"),
        }
    }

    #[test]
    fn a_layout_resolves_through_probes_to_its_manifest_and_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let (manifest, layers) = layout(tmp.path(), 0);
        let image = resolve(tmp.path()).unwrap();
        assert_eq!(image.manifest_digest, manifest);
        assert_eq!(image.layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(), layers);
        assert_eq!(image.platform, "linux/amd64");
        let meta = std::fs::metadata(tmp.path().join("index.json")).unwrap();
        let modified = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(image.index_modified_ns, modified.as_nanos() as u64);
    }

    #[test]
    fn what_one_probe_cannot_hold_is_read_whole_with_the_same_result() {
        // A manifest longer than a probe reads, and an index.json that is a
        // symlink (the probe does not follow it): both read through WASI.
        let tmp = tempfile::tempdir().unwrap();
        let (manifest, _) = layout(tmp.path(), probe::MAX_HEAD_BYTES as usize);
        std::fs::rename(tmp.path().join("index.json"), tmp.path().join("index.real")).unwrap();
        std::os::unix::fs::symlink("index.real", tmp.path().join("index.json")).unwrap();
        let image = resolve(tmp.path()).unwrap();
        assert_eq!(image.manifest_digest, manifest);
        let meta = std::fs::metadata(tmp.path().join("index.real")).unwrap();
        let modified = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(image.index_modified_ns, modified.as_nanos() as u64, "the times are the link target's");
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_or_is_missing_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (manifest, _) = layout(tmp.path(), 0);
        let path = tmp.path().join("blobs/sha256").join(manifest.strip_prefix("sha256:").unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(resolve(tmp.path()).unwrap_err().to_string().contains("the layout is corrupt"));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(resolve(tmp.path()), Err(SourceError::NotFound(_))));
        std::fs::remove_file(tmp.path().join("index.json")).unwrap();
        let err = resolve(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("index.json: no such file"), "{err}");
    }

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

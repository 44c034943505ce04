//! OCI image layouts: `oci-layout`, `index.json` and content-addressed blobs.
//!
//! The guest picks the manifest for the requested platform, checks every blob
//! it reads against its descriptor (size and SHA-256), and hands the converter
//! a list of verified-by-name layer blobs. Layer blobs are large; the
//! converter checks their digests while it reads them.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::SourceError;
use crate::key::sha256_hex;
use crate::probe::{self, Probe};
use crate::wit::host::{PathInfo, PathKind};
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
    /// Annotations; an index's `org.opencontainers.image.ref.name` names
    /// the image (`oci:PATH:REF` picks by it).
    #[serde(default)]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// The annotation that names an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Where the documents of an image (indexes, manifests, its config) come
/// from: an OCI layout's blobs, or a registry through the host. Either way
/// the bytes are checked against their descriptor ([`check_blob`]) before
/// they are parsed, and parsed by the one set of rules of this module.
pub trait Documents {
    /// The bytes of the index or manifest (`config` false) or image config
    /// (`config` true) that `desc` names, checked against it.
    fn document(&self, desc: &Descriptor, config: bool) -> Result<Vec<u8>, SourceError>;
    /// Where the image comes from, for messages: `the layout`, a reference.
    fn origin(&self) -> String;
}

/// An OCI layout's blobs, read through the probe.
pub struct LayoutBlobs<'a, P: Probe> {
    /// The layout directory.
    pub layout: &'a Path,
    /// How its files are read.
    pub fs: &'a P,
}

impl<P: Probe> Documents for LayoutBlobs<'_, P> {
    fn document(&self, desc: &Descriptor, _config: bool) -> Result<Vec<u8>, SourceError> {
        read_blob(self.layout, desc, self.fs)
    }

    fn origin(&self) -> String {
        "the layout".into()
    }
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
    #[serde(default)]
    rootfs: Option<RootFs>,
}

/// The config's `rootfs`: the digests of the uncompressed layers.
#[derive(Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
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

    /// Whether an image for `os/arch[/variant]` is what this asks for (a
    /// platform without a variant takes any variant).
    pub fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
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
    /// The length its descriptor declares.
    pub size: u64,
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
    /// The image config's descriptor (read only when building, for the
    /// layers' diff IDs).
    pub config: Descriptor,
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
    check_blob(desc, &bytes, "the layout")?;
    Ok(bytes)
}

/// Checks `bytes` against the descriptor that named them: its length, and
/// its SHA-256. `origin` names where they came from in the message.
pub fn check_blob(desc: &Descriptor, bytes: &[u8], origin: &str) -> Result<(), SourceError> {
    if bytes.len() as u64 != desc.size {
        return Err(SourceError::Unsupported(format!(
            "blob {} has {} bytes, its descriptor says {}",
            desc.digest,
            bytes.len(),
            desc.size
        )));
    }
    let actual = sha256_hex(bytes);
    if Some(actual.as_str()) != desc.digest.strip_prefix("sha256:") {
        return Err(SourceError::Unsupported(format!(
            "blob {} hashes to sha256:{actual}: {origin} is corrupt",
            desc.digest
        )));
    }
    Ok(())
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
        ref_name: Option<&str>,
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
        let (index_path, index) = index_file(layout, index, fs)?;
        let (created_ns, modified_ns) = index_times(&index);
        let manifests = parse_index(&probe::contents(&index_path, Ok(index), MAX_DOCUMENT_BYTES)?)?;
        let manifests = match ref_name {
            None => manifests,
            Some(name) => by_ref_name(manifests, name)?,
        };
        let (manifest_digest, manifest) = select_image(&LayoutBlobs { layout, fs }, &manifests, &wanted)?;
        let (config, layers) = manifest;
        let layers = layers
            .into_iter()
            .map(|d| {
                let path = blob_path(layout, &d.digest)?;
                Ok(LayerBlob {
                    path: path.to_string_lossy().into_owned(),
                    media_type: d.media_type,
                    digest: d.digest,
                    size: d.size,
                })
            })
            .collect::<Result<Vec<_>, SourceError>>()?;
        Ok(Self {
            layout: layout.to_string_lossy().into_owned(),
            platform: wanted.to_string(),
            manifest_digest,
            layers,
            config,
            index_created_ns: created_ns,
            index_modified_ns: modified_ns,
        })
    }
}

impl OciImage {
    /// The digests of the uncompressed layers (`rootfs.diff_ids` of the
    /// image config), one per layer, bottom first. The config is read and
    /// checked against its descriptor; it must list exactly one well-formed
    /// SHA-256 digest per layer.
    pub fn diff_ids(&self, fs: &impl Probe) -> Result<Vec<String>, SourceError> {
        let bytes = read_blob(Path::new(&self.layout), &self.config, fs)?;
        parse_diff_ids(&bytes, &self.config, self.layers.len())
    }
}

/// The images of `manifests` named `name` by their [`REF_NAME`] annotation;
/// none is an error listing the names there are.
fn by_ref_name(manifests: Vec<Descriptor>, name: &str) -> Result<Vec<Descriptor>, SourceError> {
    let named = |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
    let names: Vec<String> = manifests.iter().filter_map(named).collect();
    let chosen: Vec<Descriptor> = manifests.into_iter().filter(|d| named(d).as_deref() == Some(name)).collect();
    if chosen.is_empty() {
        let found = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
        return Err(SourceError::NotFound(format!(
            "the layout has no image named {name:?} ({REF_NAME}; found: {found})"
        )));
    }
    Ok(chosen)
}

/// The digests of the uncompressed layers an image config lists
/// (`rootfs.diff_ids`), checked: exactly one well-formed SHA-256 digest per
/// layer of the image (`layers` of them).
pub fn parse_diff_ids(bytes: &[u8], desc: &Descriptor, layers: usize) -> Result<Vec<String>, SourceError> {
    let config: ImageConfig = parse_json("the image config", bytes)?;
    let rootfs = config
        .rootfs
        .ok_or_else(|| SourceError::Unsupported(format!("the image config {} has no rootfs.diff_ids", desc.digest)))?;
    if rootfs.kind != "layers" {
        return Err(SourceError::Unsupported(format!(
            "the image config's rootfs.type is {:?}, expected \"layers\"",
            rootfs.kind
        )));
    }
    if rootfs.diff_ids.len() != layers {
        return Err(SourceError::Unsupported(format!(
            "the image config lists {} diff_ids for {} layers",
            rootfs.diff_ids.len(),
            layers
        )));
    }
    for id in &rootfs.diff_ids {
        sha256_of_digest(id)?;
    }
    Ok(rootfs.diff_ids)
}

/// The platform an image config is for, as `os/arch[/variant]`, and whether
/// it is `wanted`.
pub fn config_platform(bytes: &[u8], wanted: &Platform) -> Result<(String, bool), SourceError> {
    let config: ImageConfig = parse_json("the image config", bytes)?;
    let name = platform_name(&config.os, &config.architecture, config.variant.as_deref());
    Ok((name, wanted.matches(&config.os, &config.architecture, config.variant.as_deref())))
}

/// Most symlinks followed from `index.json` to the file it names.
const MAX_INDEX_LINKS: usize = 8;

/// The regular file `index.json` is, with the probe's answer for it: given
/// the first probe's `answer` for `<layout>/index.json`, that file itself,
/// or for a symlink the file it leads to. A symlink is resolved by the guest
/// (relative to its directory, `..` taken lexically) and its target probed,
/// at most [`MAX_INDEX_LINKS`] times; a target outside the layout is refused.
/// Nothing here asks WASI: the times that enter the key come from
/// `host.probe` alone (see [`index_times`]).
fn index_file(
    layout: &Path,
    answer: Result<PathInfo, Error>,
    fs: &impl Probe,
) -> Result<(PathBuf, PathInfo), SourceError> {
    let first = layout.join("index.json");
    let (mut path, mut answer, mut links) = (first.clone(), answer, 0);
    loop {
        let info = answer.map_err(|e| probe::source_error(&path, &e))?;
        let target = match (info.kind, &info.link_target) {
            (PathKind::File, _) => return Ok((path, info)),
            (PathKind::Symlink, Some(_)) if links == MAX_INDEX_LINKS => {
                return Err(SourceError::Unsupported(format!(
                    "{} leads through more than {MAX_INDEX_LINKS} symlinks",
                    first.display()
                )));
            }
            (PathKind::Symlink, Some(target)) => target,
            _ => return Err(SourceError::Unsupported(format!("{} is not a regular file", path.display()))),
        };
        let target = std::str::from_utf8(target).map_err(|_| {
            SourceError::Unsupported(format!("{} is a symlink whose target is not UTF-8", path.display()))
        })?;
        let mut next = PathBuf::new();
        for part in path.parent().unwrap_or(layout).join(target).components() {
            match part {
                Component::ParentDir => {
                    next.pop();
                }
                Component::CurDir => {}
                other => next.push(other),
            }
        }
        if !next.starts_with(layout) {
            // Out of the layout is out of the request's source root: the
            // probe would refuse it as it refuses any escape.
            return Err(SourceError::Host(Error::Denied(crate::wit::types::Denial {
                rule: "source_roots".into(),
                detail: format!(
                    "{} is a symlink to {target}, which is not a file of the layout {}",
                    first.display(),
                    layout.display()
                ),
            })));
        }
        if next == layout {
            return Err(SourceError::Unsupported(format!(
                "{} is a symlink to {target}, which is not a file of the layout {}",
                first.display(),
                layout.display()
            )));
        }
        answer = probe::ask(fs, &[(&next, probe::MAX_HEAD_BYTES as u32)])?
            .pop()
            .ok_or_else(|| SourceError::Io("the probe gave no answer".into()))?;
        path = next;
        links += 1;
    }
}

/// The birth and modification times, in ns, of the regular file
/// [`index_file`] found: both from `host.probe`, never from WASI, whose
/// timestamps mean different things under different runtimes (the
/// status-change time is the birth time under wasmtime, the ctime under
/// Node's preview2-shim), so the key is the same under every host.
fn index_times(index: &PathInfo) -> (u64, u64) {
    (index.created_ns, index.modified_ns)
}

/// The digest of the selected image manifest, with its config and layers.
pub type Selected = (String, (Descriptor, Vec<Descriptor>));

/// Picks the manifest for `wanted` among `candidates`, descending into nested
/// indexes. A descriptor without a platform is checked against its config.
/// The platforms passed over are added to `seen`; `None` means no candidate
/// matched.
fn select(
    docs: &impl Documents,
    candidates: &[Descriptor],
    wanted: &Platform,
    depth: usize,
    seen: &mut Vec<String>,
) -> Result<Option<Selected>, SourceError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(SourceError::Unsupported(format!(
            "image indexes nest more than {MAX_INDEX_DEPTH} levels deep below the top index"
        )));
    }
    for desc in candidates {
        if let Some(p) = &desc.platform
            && !wanted.matches(&p.os, &p.architecture, p.variant.as_deref())
        {
            seen.push(platform_name(&p.os, &p.architecture, p.variant.as_deref()));
            continue;
        }
        if INDEX_TYPES.contains(&desc.media_type.as_str()) {
            let nested = parse_index(&docs.document(desc, false)?)?;
            match select(docs, &nested, wanted, depth + 1, seen)? {
                Some(found) => return Ok(Some(found)),
                None => continue,
            }
        }
        let bytes = docs.document(desc, false)?;
        let (config, layers) = parse_manifest(&bytes)?;
        if desc.platform.is_none() {
            let cfg: ImageConfig = parse_json("the image config", &docs.document(&config, true)?)?;
            if !wanted.matches(&cfg.os, &cfg.architecture, cfg.variant.as_deref()) {
                seen.push(platform_name(&cfg.os, &cfg.architecture, cfg.variant.as_deref()));
                continue;
            }
        }
        return Ok(Some((desc.digest.clone(), (config, layers))));
    }
    Ok(None)
}

/// `os/arch[/variant]`, as a list of platforms shows it.
fn platform_name(os: &str, arch: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    }
}

/// The selection (`select`) from the top index (a layout's `index.json`, or the index or
/// manifest a registry answered, as a list of one): no match is an error
/// listing the platforms there are.
pub fn select_image(
    docs: &impl Documents,
    manifests: &[Descriptor],
    wanted: &Platform,
) -> Result<Selected, SourceError> {
    let mut seen = Vec::new();
    select(docs, manifests, wanted, 0, &mut seen)?.ok_or_else(|| {
        let found = if seen.is_empty() { "none".to_owned() } else { seen.join(", ") };
        SourceError::Unsupported(format!("{} has no image for {wanted} (found: {found})", docs.origin()))
    })
}

/// Whether a document is an image index rather than a manifest: by its
/// media type, else by its `mediaType` field, else by having `manifests`.
pub fn is_index(media_type: &str, bytes: &[u8]) -> bool {
    if INDEX_TYPES.contains(&media_type) {
        return true;
    }
    if MANIFEST_TYPES.contains(&media_type) {
        return false;
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Sniff {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Sniff>(bytes) {
        Ok(Sniff { media_type: Some(t), .. }) => INDEX_TYPES.contains(&t.as_str()),
        Ok(Sniff { manifests, .. }) => manifests.is_some(),
        Err(_) => false,
    }
}

/// The media type of an image manifest, for a descriptor the guest makes
/// of a manifest a registry answered directly.
pub const MANIFEST_TYPE: &str = MANIFEST_TYPES[0];

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

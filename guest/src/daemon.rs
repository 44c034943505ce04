//! Images of the local Docker engine: `docker-daemon:NAME[:TAG]` (or an image ID).
//!
//! The host does the engine's part (`host.inspect-daemon-image`, `host.export-daemon-image`):
//! it sends what the engine says unparsed, and stores an exported archive's files by digest.
//! Everything is parsed here:
//!
//! - the inspect document names the image's ID, platform and storage: with the overlay2
//!   driver, `GraphDriver.Data.UpperDir` is the top layer's `diff/`, and the image is that
//!   overlay2 chain, resolved like a path (the host has shown the guest the engine's overlay2
//!   directory and nothing else);
//! - with any other driver (the containerd image store, vfs, btrfs…), the engine exports the
//!   image (`docker save`'s archive): its `manifest.json` names the config and the layers,
//!   the config must be the inspected image (its digest is the image ID), and each layer
//!   (an uncompressed tar) must hash to the config's diff ID. The layers are then blobs of
//!   the cache's store, like a pulled image's.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::SourceError;
use crate::key::sha256_hex;
use crate::oci::{self, Descriptor, Platform};
use crate::wit::host::ExportedFile;
use crate::wit::types::Error;

/// The prefix of a source naming an image of the local Docker engine.
pub const PREFIX: &str = "docker-daemon:";
/// The longest name accepted.
const MAX_NAME_BYTES: usize = 512;
/// The media type of an exported image's config.
const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";
/// The media type of an exported layer: an uncompressed tar.
pub const EXPORTED_LAYER_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The host calls that reach the local Docker engine.
pub trait Engine {
    /// `host.inspect-daemon-image`.
    fn inspect_daemon_image(&self, name: &str) -> Result<Vec<u8>, Error>;
    /// `host.export-daemon-image`.
    fn export_daemon_image(&self, name: &str) -> Result<Vec<ExportedFile>, Error>;
}

/// Checks the name of `docker-daemon:NAME`: what the engine takes as an image name, tag,
/// digest or ID (`a-z A-Z 0-9 . _ - / : @`), nothing that could change the request's path.
/// The host applies the same rule again (`rootfs_cache_docker::check_image_name`) to what a
/// guest asks for: the guest depends on no host crate, and the host trusts no guest.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && !name.starts_with(['-', '/', '.', ':', '@'])
        && !name.contains("..")
        && !name.contains("//")
        && !name.ends_with(['/', ':', '@']);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "source \"{PREFIX}{name}\" does not name a Docker image: use docker-daemon:NAME[:TAG], NAME@sha256:HEX or an image ID"
        )))
    }
}

/// What the inspect document says that matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    /// The image ID, `sha256:<hex>` of its config.
    pub id: String,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The top layer's directory (`…/overlay2/<id>`), with the overlay2 driver.
    pub overlay2_top: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectDocument {
    id: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    graph_driver: Option<GraphDriver>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GraphDriver {
    name: String,
    #[serde(default)]
    data: Option<BTreeMap<String, String>>,
}

fn unsupported(why: String) -> SourceError {
    SourceError::Unsupported(why)
}

/// Parses the body of `GET /images/{name}/json`.
pub fn parse_inspect(name: &str, bytes: &[u8]) -> Result<Inspected, SourceError> {
    let doc: InspectDocument = serde_json::from_slice(bytes)
        .map_err(|e| unsupported(format!("the Docker engine's inspect document of {name}: {e}")))?;
    oci::sha256_of_digest(&doc.id)?;
    let platform = match &doc.variant {
        Some(v) if !v.is_empty() => format!("{}/{}/{v}", doc.os, doc.architecture),
        _ => format!("{}/{}", doc.os, doc.architecture),
    };
    let overlay2_top = match doc.graph_driver {
        Some(driver) if driver.name == "overlay2" => {
            let upper = driver.data.as_ref().and_then(|d| d.get("UpperDir")).ok_or_else(|| {
                unsupported(format!("the Docker engine names no UpperDir for the overlay2 image {name}"))
            })?;
            let top = upper.strip_suffix("/diff").filter(|t| !t.is_empty()).ok_or_else(|| {
                unsupported(format!("the overlay2 UpperDir {upper:?} of {name} is not a layer's diff/ directory"))
            })?;
            // Absolute and normalised (the request's own checks apply to it
            // again when it is resolved as a path).
            if !top.starts_with('/') || top[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                return Err(unsupported(format!(
                    "the overlay2 layer {top:?} of {name} is not a normalised absolute path"
                )));
            }
            Some(top.to_owned())
        }
        _ => None,
    };
    Ok(Inspected { id: doc.id, platform, overlay2_top })
}

/// An image the engine exported, checked: its layers are blobs of the cache's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedImage {
    /// The name the request gave.
    pub name: String,
    /// The image ID (the config's digest).
    pub id: String,
    /// `os/arch[/variant]` of its config.
    pub platform: String,
    /// The layers, bottom first: host path of the blob, digest (which is the diff ID: an
    /// exported layer is an uncompressed tar) and length.
    pub layers: Vec<(String, String, u64)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    layers: Vec<String>,
}

impl ExportedImage {
    /// Has the engine export the inspected image `image` (by its ID, so that a tag moved
    /// since the inspect changes nothing) and checks the archive: its `manifest.json`
    /// (read, like the config, from the cache's blob store under `cache_root`) must list
    /// one image, whose config is the inspected image and is for `wanted`, and whose
    /// layers hash to the config's diff IDs.
    pub fn export(
        name: &str,
        image: &Inspected,
        wanted: &Platform,
        cache_root: &Path,
        host: &impl Engine,
    ) -> Result<Self, SourceError> {
        let files = host.export_daemon_image(&image.id).map_err(SourceError::Host)?;
        let mut by_name: BTreeMap<&str, &ExportedFile> = BTreeMap::new();
        for file in &files {
            if by_name.insert(file.name.as_str(), file).is_some() {
                return Err(unsupported(format!("the archive of {name} holds {} twice", file.name)));
            }
        }
        let read = |file_name: &str| -> Result<Vec<u8>, SourceError> {
            let file = by_name
                .get(file_name)
                .ok_or_else(|| unsupported(format!("the archive of {name} has no {file_name}")))?;
            let hex = oci::sha256_of_digest(&file.digest)?;
            if file.size > oci::MAX_DOCUMENT_BYTES {
                return Err(unsupported(format!(
                    "{file_name} in the archive of {name} has {} bytes; documents are limited to {}",
                    file.size,
                    oci::MAX_DOCUMENT_BYTES
                )));
            }
            let bytes = crate::probe::read_small(&cache_root.join("blobs/sha256").join(hex), oci::MAX_DOCUMENT_BYTES)?;
            if sha256_hex(&bytes) != hex {
                return Err(SourceError::Host(Error::Corrupt(format!(
                    "the blob store's copy of {file_name} from {name} does not hash to {}",
                    file.digest
                ))));
            }
            Ok(bytes)
        };
        let manifests: Vec<ArchiveManifest> = serde_json::from_slice(&read("manifest.json")?)
            .map_err(|e| unsupported(format!("manifest.json in the archive of {name}: {e}")))?;
        let [manifest] = <[ArchiveManifest; 1]>::try_from(manifests).map_err(|m| {
            unsupported(format!("manifest.json in the archive of {name} lists {} images, not one", m.len()))
        })?;
        let config_file = by_name
            .get(manifest.config.as_str())
            .ok_or_else(|| unsupported(format!("the archive of {name} has no {}", manifest.config)))?;
        if config_file.digest != image.id {
            return Err(SourceError::Host(Error::Corrupt(format!(
                "the Docker engine exported {name} with the config {}, but its image ID is {}",
                config_file.digest, image.id
            ))));
        }
        let config = read(&manifest.config)?;
        let (platform, matches) = oci::config_platform(&config, wanted)?;
        if !matches {
            return Err(unsupported(format!(
                "the Docker engine's image {name} is for {platform}, not {wanted}; ask for --platform {platform}"
            )));
        }
        let desc = Descriptor {
            media_type: CONFIG_TYPE.to_owned(),
            digest: image.id.clone(),
            size: config.len() as u64,
            platform: None,
            annotations: None,
        };
        let diff_ids = oci::parse_diff_ids(&config, &desc, manifest.layers.len())?;
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            let file = by_name
                .get(layer.as_str())
                .ok_or_else(|| unsupported(format!("the archive of {name} has no layer {layer}")))?;
            if file.digest != diff_id {
                return Err(SourceError::Host(Error::Corrupt(format!(
                    "layer {layer} of {name} hashes to {}, but the config's diff ID is {diff_id}",
                    file.digest
                ))));
            }
            layers.push((file.path.clone(), file.digest.clone(), file.size));
        }
        Ok(Self { name: name.to_owned(), id: image.id.clone(), platform, layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_engine_is_asked() {
        for good in ["app", "app:dev", "127.0.0.1:5000/team/app:1.4", "sha256:0123", "a@sha256:00"] {
            check_name(good).unwrap();
        }
        for bad in ["", "-x", "/x", "a/../b", "a b", "a?b", "a//b", "x/", "%2e"] {
            assert!(matches!(check_name(bad), Err(Error::InvalidRequest(_))), "{bad:?}");
        }
    }

    fn id() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    #[test]
    fn an_overlay2_image_names_its_top_layer_and_others_do_not() {
        let doc = format!(
            r#"{{"Id":"{}","Os":"linux","Architecture":"arm64","Variant":"v8","GraphDriver":{{"Name":"overlay2","Data":{{"UpperDir":"/var/lib/docker/overlay2/abc/diff","LowerDir":"/x"}}}}}}"#,
            id()
        );
        let inspected = parse_inspect("app", doc.as_bytes()).unwrap();
        assert_eq!(inspected.overlay2_top.as_deref(), Some("/var/lib/docker/overlay2/abc"));
        assert_eq!(inspected.platform, "linux/arm64/v8");
        let doc = format!(r#"{{"Id":"{}","Os":"linux","Architecture":"amd64","GraphDriver":{{"Name":"vfs"}}}}"#, id());
        assert_eq!(parse_inspect("app", doc.as_bytes()).unwrap().overlay2_top, None);
    }

    #[test]
    fn a_bad_inspect_document_is_refused() {
        for doc in [
            "[]".to_owned(),
            r#"{"Id":"abc"}"#.to_owned(),
            format!(r#"{{"Id":"{}","GraphDriver":{{"Name":"overlay2","Data":{{}}}}}}"#, id()),
            format!(r#"{{"Id":"{}","GraphDriver":{{"Name":"overlay2","Data":{{"UpperDir":"/a/b"}}}}}}"#, id()),
            format!(r#"{{"Id":"{}","GraphDriver":{{"Name":"overlay2","Data":{{"UpperDir":"a/../b/diff"}}}}}}"#, id()),
        ] {
            assert!(parse_inspect("app", doc.as_bytes()).is_err(), "{doc}");
        }
    }
}

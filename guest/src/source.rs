//! Source detection and identity: what kind of source a path is, and what
//! about it must change the cache key.

use std::path::Path;

pub use crate::daemon::ExportedImage;
pub use crate::error::SourceError;
use crate::key::KeyBuilder;
use crate::oci::OciImage;
pub use crate::overlay2::LayerIdentity;
use crate::overlay2::{self, Overlay2Chain};
pub use crate::probe::read_small;
use crate::probe::{self, Probe};
use crate::registry::PulledImage;
use crate::wit::host::{PathInfo, PathKind};
use crate::wit::types::Error;

/// The longest `link` file accepted (Docker writes 26 bytes).
const MAX_LINK_BYTES: u64 = 256;

/// The six answers of the first probe, by position.
fn six(answers: Vec<Result<PathInfo, Error>>) -> Result<[Result<PathInfo, Error>; 6], SourceError> {
    <[_; 6]>::try_from(answers).map_err(|a| SourceError::Io(format!("probe answered {} of 6 paths", a.len())))
}

/// A detected, resolved source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Docker overlay2 chain.
    Overlay2(Overlay2Chain),
    /// One image selected from an OCI image layout.
    Oci(OciImage),
    /// One image selected from a registry, by name.
    Pulled(PulledImage),
    /// An image the local Docker engine exported (`docker-daemon:` without overlay2).
    Exported(ExportedImage),
}

impl Source {
    /// Detects and resolves the source at `path` (an absolute path), picking
    /// `platform` (`os/arch[/variant]`) from an OCI index.
    ///
    /// One probe tells the kinds apart and holds everything the top layer of
    /// an overlay2 chain needs (`link`, `lower`, `diff/`) and an OCI layout's
    /// `oci-layout` and `index.json`; the chain below the top layer takes two
    /// more, however many layers it has, and an OCI image one more per
    /// manifest, nested index or config it reads.
    pub fn resolve(path: &Path, platform: &str, fs: &impl Probe) -> Result<Self, SourceError> {
        Self::resolve_named(path, platform, None, fs)
    }

    /// [`Source::resolve`], picking from an OCI layout the image whose
    /// `org.opencontainers.image.ref.name` is `ref_name` when one is given
    /// (`oci:PATH:REF`).
    pub fn resolve_named(
        path: &Path,
        platform: &str,
        ref_name: Option<&str>,
        fs: &impl Probe,
    ) -> Result<Self, SourceError> {
        let (link, lower, diff, marker, index) = (
            path.join("link"),
            path.join("lower"),
            path.join("diff"),
            path.join("oci-layout"),
            path.join("index.json"),
        );
        let answers = probe::ask(
            fs,
            &[
                (path, 0),
                (&link, MAX_LINK_BYTES as u32),
                (&lower, overlay2::MAX_LOWER_BYTES as u32),
                (&diff, 0),
                (&marker, crate::oci::MAX_MARKER_BYTES as u32),
                (&index, probe::MAX_HEAD_BYTES as u32),
            ],
        )?;
        let [top, link_info, lower_info, diff_info, marker_info, index_info] = six(answers)?;
        match top {
            Err(e) => return Err(probe::source_error(path, &e)),
            Ok(info) if info.kind == PathKind::Directory => {}
            Ok(info) if info.kind == PathKind::Symlink => {
                return Err(SourceError::Unsupported(format!(
                    "{} is a symlink; name the directory it points to",
                    path.display()
                )));
            }
            Ok(_) => {
                return Err(SourceError::Unsupported(format!(
                    "{} is a file; a source is an overlay2 layer directory or an OCI image layout directory",
                    path.display()
                )));
            }
        }
        // The common case first: an overlay2 layer, recognised by its `link`.
        if let Ok(info) = &link_info
            && info.kind == PathKind::File
        {
            let link = probe::small_file(&link, info, MAX_LINK_BYTES)?;
            return Overlay2Chain::resolve(path, &link, lower_info, diff_info, fs).map(Self::Overlay2);
        }
        if marker_info.is_ok() {
            return OciImage::resolve(path, platform, ref_name, marker_info, index_info, fs).map(Self::Oci);
        }
        Err(SourceError::Unsupported(format!(
            "{} is neither an overlay2 layer directory (diff/ and link) nor an OCI image layout (oci-layout and index.json)",
            path.display()
        )))
    }

    /// The source's content, named the same on every host: an image's
    /// manifest digest, an exported image's ID. `None` when the key is
    /// local to this host: it is then never shared through a remote cache.
    pub fn identity(&self) -> Option<String> {
        match self {
            Self::Overlay2(_) | Self::Oci(_) => None,
            Self::Pulled(image) => Some(image.manifest_digest.clone()),
            Self::Exported(image) => Some(image.id.clone()),
        }
    }

    /// Feeds everything that identifies this source into a cache key.
    pub fn add_to_key(&self, key: &mut KeyBuilder) {
        match self {
            Self::Overlay2(chain) => {
                key.text("kind", "overlay2").number("layers", chain.layers.len() as u64);
                for layer in &chain.layers {
                    key.text("layer.dir", &layer.dir)
                        .text("layer.link", &layer.link)
                        .number("layer.created", layer.created_ns)
                        .number("layer.modified", layer.modified_ns);
                }
            }
            Self::Oci(image) => {
                key.text("kind", "oci-layout")
                    .text("layout", &image.layout)
                    .number("index.created", image.index_created_ns)
                    .number("index.modified", image.index_modified_ns)
                    .text("manifest", &image.manifest_digest)
                    .text("platform", &image.platform);
            }
            // Content only: the same image gives the same key on every
            // host, whatever its tag, registry or the time it was pulled.
            Self::Pulled(image) => {
                key.text("kind", "registry").text("manifest", &image.manifest_digest).text("platform", &image.platform);
            }
            // The image ID is the digest of its config, which names every
            // layer's content: the same image on another engine, exported,
            // gives the same key.
            Self::Exported(image) => {
                key.text("kind", "docker-archive").text("image", &image.id).text("platform", &image.platform);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Resolution through the first probe, of each kind of source.

    use std::path::PathBuf;

    use super::*;
    use crate::fake::FsProbe;
    use crate::key::sha256_hex;

    /// A Docker-shaped chain under `root`: layers `a` (base), `b`, `c` (top).
    fn chain(root: &Path) -> PathBuf {
        std::fs::create_dir_all(root.join("l")).unwrap();
        let mut lower = Vec::new();
        for (dir, id) in [("a", "AAA"), ("b", "BBB"), ("c", "CCC")] {
            std::fs::create_dir_all(root.join(dir).join("diff")).unwrap();
            std::fs::write(root.join(dir).join("link"), id).unwrap();
            if !lower.is_empty() {
                std::fs::write(root.join(dir).join("lower"), lower.join(":")).unwrap();
            }
            std::os::unix::fs::symlink(format!("../{dir}/diff"), root.join("l").join(id)).unwrap();
            lower.insert(0, format!("l/{id}"));
        }
        root.join("c")
    }

    fn resolve_chain(top: &Path) -> Result<Source, SourceError> {
        Source::resolve(top, "linux/amd64", &FsProbe::new("/nonexistent"))
    }

    #[test]
    fn a_chain_resolves_top_first_through_its_links() {
        let tmp = tempfile::tempdir().unwrap();
        let top = chain(tmp.path());
        let Source::Overlay2(chain) = resolve_chain(&top).unwrap() else { panic!("not overlay2") };
        let links: Vec<_> = chain.layers.iter().map(|l| l.link.as_str()).collect();
        assert_eq!(links, ["CCC", "BBB", "AAA"]);
        assert_eq!(chain.root, tmp.path());
        assert!(chain.layers.iter().all(|l| l.modified_ns > 0));
        assert_eq!(chain.diffs_bottom_up()[0], format!("{}/a/diff", tmp.path().display()));
    }

    #[test]
    fn a_broken_chain_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let top = chain(tmp.path());
        let l = tmp.path().join("l");
        std::fs::remove_file(l.join("AAA")).unwrap();
        std::os::unix::fs::symlink("../../etc/diff", l.join("AAA")).unwrap();
        assert!(resolve_chain(&top).unwrap_err().to_string().contains("escapes the overlay2 root"));
        std::fs::remove_file(l.join("AAA")).unwrap();
        assert!(resolve_chain(&top).unwrap_err().to_string().contains("does not exist"));
        std::fs::write(l.join("AAA"), "not a link").unwrap();
        assert!(resolve_chain(&top).unwrap_err().to_string().contains("is not a symlink"));
        std::fs::remove_file(l.join("AAA")).unwrap();
        std::os::unix::fs::symlink("../gone/diff", l.join("AAA")).unwrap();
        assert!(resolve_chain(&top).unwrap_err().to_string().contains("which does not exist"));
    }

    #[test]
    fn a_layer_below_itself_under_another_id_is_a_cycle() {
        let tmp = tempfile::tempdir().unwrap();
        let top = chain(tmp.path());
        let l = tmp.path().join("l");
        // An alias of the top layer's own diff/, named in its lower.
        std::os::unix::fs::symlink("../c/diff", l.join("SELF")).unwrap();
        std::fs::write(top.join("lower"), "l/SELF:l/BBB:l/AAA").unwrap();
        let err = resolve_chain(&top).unwrap_err();
        assert!(matches!(err, SourceError::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains("itself: the chain is a cycle"), "{err}");
        // Two ids for one layer.
        std::os::unix::fs::symlink("../a/diff", l.join("ALIAS")).unwrap();
        std::fs::write(top.join("lower"), "l/BBB:l/AAA:l/ALIAS").unwrap();
        let err = resolve_chain(&top).unwrap_err();
        assert!(err.to_string().contains("l/AAA and l/ALIAS, which both point at"), "{err}");
        // The layer's own id.
        std::fs::write(top.join("lower"), "l/CCC").unwrap();
        assert!(resolve_chain(&top).unwrap_err().to_string().contains("the chain is a cycle"));
    }

    #[test]
    fn neither_kind_and_missing_sources_are_told_apart() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(resolve_chain(&tmp.path().join("missing")), Err(SourceError::NotFound(_))));
        std::fs::write(tmp.path().join("file"), "x").unwrap();
        assert!(resolve_chain(&tmp.path().join("file")).unwrap_err().to_string().contains("is a file"));
        assert!(resolve_chain(tmp.path()).unwrap_err().to_string().contains("neither an overlay2 layer"));
    }

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

    fn resolve_oci(path: &Path) -> Result<OciImage, SourceError> {
        match Source::resolve(path, "linux/amd64", &FsProbe::new("/nonexistent"))? {
            Source::Oci(image) => Ok(image),
            other => panic!("not an OCI image: {other:?}"),
        }
    }

    #[test]
    fn a_layout_resolves_through_probes_to_its_manifest_and_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let (manifest, layers) = layout(tmp.path(), 0);
        let image = resolve_oci(tmp.path()).unwrap();
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
        let image = resolve_oci(tmp.path()).unwrap();
        assert_eq!(image.manifest_digest, manifest);
        let meta = std::fs::metadata(tmp.path().join("index.real")).unwrap();
        let modified = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(image.index_modified_ns, modified.as_nanos() as u64, "the times are the link target's");
    }

    #[test]
    fn a_symlinked_index_takes_both_times_from_the_probe_of_its_target() {
        // index.json -> sub/../link2 -> real/index.json: resolved lexically,
        // probed link by link, and the times are the probe's of the file.
        let tmp = tempfile::tempdir().unwrap();
        let (manifest, _) = layout(tmp.path(), 0);
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::fs::rename(tmp.path().join("index.json"), tmp.path().join("real/index.json")).unwrap();
        std::os::unix::fs::symlink("real/index.json", tmp.path().join("link2")).unwrap();
        std::os::unix::fs::symlink("sub/../link2", tmp.path().join("index.json")).unwrap();
        let image = resolve_oci(tmp.path()).unwrap();
        assert_eq!(image.manifest_digest, manifest);
        let probe = FsProbe::new("/nonexistent");
        let real = tmp.path().join("real/index.json");
        let answer = probe::ask(&probe, &[(&real, 0)]).unwrap().pop().unwrap().unwrap();
        assert_eq!((image.index_created_ns, image.index_modified_ns), (answer.created_ns, answer.modified_ns));

        // A link out of the layout, and a loop, are refused.
        std::fs::remove_file(tmp.path().join("index.json")).unwrap();
        std::os::unix::fs::symlink("../elsewhere/index.json", tmp.path().join("index.json")).unwrap();
        assert!(resolve_oci(tmp.path()).unwrap_err().to_string().contains("not a file of the layout"));
        std::fs::remove_file(tmp.path().join("index.json")).unwrap();
        std::os::unix::fs::symlink("index.json", tmp.path().join("index.json")).unwrap();
        assert!(resolve_oci(tmp.path()).unwrap_err().to_string().contains("more than 8 symlinks"));
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_or_is_missing_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (manifest, _) = layout(tmp.path(), 0);
        let path = tmp.path().join("blobs/sha256").join(manifest.strip_prefix("sha256:").unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(resolve_oci(tmp.path()).unwrap_err().to_string().contains("the layout is corrupt"));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(resolve_oci(tmp.path()), Err(SourceError::NotFound(_))));
        std::fs::remove_file(tmp.path().join("index.json")).unwrap();
        let err = resolve_oci(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("index.json: no such file"), "{err}");
    }
}

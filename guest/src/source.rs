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
            let mut chain = Overlay2Chain::resolve(path, &link, lower_info, diff_info, fs)?;
            chain.chain_id = crate::layerdb::chain_id(&chain, fs);
            return Ok(Self::Overlay2(chain));
        }
        if marker_info.is_ok() {
            return OciImage::resolve(path, platform, ref_name, marker_info, index_info, fs).map(Self::Oci);
        }
        Err(SourceError::Unsupported(format!(
            "{} is neither an overlay2 layer directory (diff/ and link) nor an OCI image layout (oci-layout and index.json)",
            path.display()
        )))
    }

    /// Feeds everything that identifies this source into a cache key.
    ///
    /// Every kind but an overlay2 chain without a chain ID is keyed by
    /// content alone, never by a path or a time, so that the same image
    /// gives the same key on every host ([`Source::identity`]).
    pub fn add_to_key(&self, key: &mut KeyBuilder) {
        match self {
            // Docker never changes a committed layer: the chain ID names the
            // chain's content on every engine that holds it.
            Self::Overlay2(Overlay2Chain { chain_id: Some(chain), .. }) => {
                key.text("kind", "overlay2-chain").text("chain", chain);
            }
            // No chain ID: the local key, by paths, links and times.
            Self::Overlay2(chain) => {
                key.text("kind", "overlay2").number("layers", chain.layers.len() as u64);
                for layer in &chain.layers {
                    key.text("layer.dir", &layer.dir)
                        .text("layer.link", &layer.link)
                        .number("layer.created", layer.created_ns)
                        .number("layer.modified", layer.modified_ns);
                }
            }
            // The manifest's digest names every byte of the image: neither
            // the layout's path nor index.json's times matter.
            Self::Oci(image) => {
                key.text("kind", "oci-layout")
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

    /// The portable identity of the source's content: the same on every
    /// host that holds the same image, and `None` when the source has none
    /// (an overlay2 directory without a chain ID), whose entries are
    /// therefore not shareable. An OCI layout's and a pulled image's
    /// manifest digest, an exported image's ID, an overlay2 chain's chain
    /// ID; each `sha256:<hex>`.
    pub fn identity(&self) -> Option<String> {
        match self {
            Self::Overlay2(chain) => chain.chain_id.clone(),
            Self::Oci(image) => Some(image.manifest_digest.clone()),
            Self::Pulled(image) => Some(image.manifest_digest.clone()),
            Self::Exported(image) => Some(image.id.clone()),
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

    /// Counts the probes it answers.
    struct Counting(FsProbe, std::cell::Cell<usize>);

    impl Probe for Counting {
        fn probe(&self, requests: &[crate::wit::host::ProbeRequest]) -> Result<Vec<Result<PathInfo, Error>>, Error> {
            self.1.set(self.1.get() + 1);
            self.0.probe(requests)
        }
    }

    /// The chain ID of the test layer `name` (`a`, `b`, `c`).
    fn chain_hex(name: &str) -> String {
        sha256_hex(format!("chain {name}").as_bytes())
    }

    /// A Docker root under `docker`: the chain of [`chain`] in `overlay2/`
    /// and a layer database naming its layers `c` → `b` → `a`; returns the
    /// top layer's directory.
    fn docker_root(docker: &Path) -> PathBuf {
        let top = chain(&docker.join("overlay2"));
        let db = docker.join("image/overlay2/layerdb/sha256");
        for (name, parent) in [("a", None), ("b", Some("a")), ("c", Some("b"))] {
            let dir = db.join(chain_hex(name));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cache-id"), name).unwrap();
            std::fs::write(dir.join("diff"), format!("sha256:{}", sha256_hex(name.as_bytes()))).unwrap();
            if let Some(parent) = parent {
                std::fs::write(dir.join("parent"), format!("sha256:{}", chain_hex(parent))).unwrap();
            }
        }
        // Docker's other directories, and an unrelated layer, change nothing.
        std::fs::create_dir_all(docker.join("image/overlay2/layerdb/mounts/x")).unwrap();
        std::fs::create_dir_all(db.join("not-a-chain-id")).unwrap();
        let other = db.join(chain_hex("other"));
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("cache-id"), "elsewhere").unwrap();
        top
    }

    fn key_of(source: &Source) -> crate::key::CacheKey {
        let mut key = KeyBuilder::new();
        source.add_to_key(&mut key);
        key.finish()
    }

    #[test]
    fn a_chain_in_the_layer_database_is_keyed_by_its_chain_id_wherever_the_docker_root_is() {
        let tmp = tempfile::tempdir().unwrap();
        let top = docker_root(&tmp.path().join("one/docker"));
        let probe = Counting(FsProbe::new("/nonexistent"), Default::default());
        let one = Source::resolve(&top, "linux/amd64", &probe).unwrap();
        let Source::Overlay2(resolved) = &one else { panic!("not overlay2") };
        assert_eq!(resolved.chain_id.as_deref(), Some(format!("sha256:{}", chain_hex("c")).as_str()));
        assert_eq!(one.identity(), resolved.chain_id);
        // One probe more than the chain alone takes (the listing is WASI's).
        let with_db = probe.1.get();
        let bare = tmp.path().join("bare");
        let bare_top = chain(&bare);
        let probe = Counting(FsProbe::new("/nonexistent"), Default::default());
        let local = Source::resolve(&bare_top, "linux/amd64", &probe).unwrap();
        assert_eq!(with_db, probe.1.get() + 1);
        assert_eq!(local.identity(), None, "a chain without a layer database is not shareable");
        assert_ne!(key_of(&local), key_of(&one));

        // Another docker root, made later (other times), at another path.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let top_two = docker_root(&tmp.path().join("two/elsewhere/docker"));
        let two = resolve_chain(&top_two).unwrap();
        assert_eq!(two.identity(), one.identity());
        assert_eq!(key_of(&two), key_of(&one));
        let Source::Overlay2(chain_two) = &two else { panic!("not overlay2") };
        assert_ne!(chain_two.layers[0].modified_ns, resolved.layers[0].modified_ns);
    }

    #[test]
    fn a_layer_database_that_does_not_match_the_chain_exactly_gives_the_local_key() {
        let db_of = |docker: &Path| docker.join("image/overlay2/layerdb/sha256");
        let hex = |name: &str| format!("sha256:{}", chain_hex(name));
        type Break = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Break)> = vec![
            (
                "a parent skipping a layer",
                Box::new(move |db| std::fs::write(db.join(chain_hex("c")).join("parent"), hex("a")).unwrap()),
            ),
            (
                "a cache-id naming another directory",
                Box::new(|db| std::fs::write(db.join(chain_hex("b")).join("cache-id"), "a").unwrap()),
            ),
            (
                "two chain IDs for the top",
                Box::new(|db| {
                    let dup = db.join(chain_hex("dup"));
                    std::fs::create_dir_all(&dup).unwrap();
                    std::fs::write(dup.join("cache-id"), "c").unwrap();
                }),
            ),
            (
                "an upper-case parent",
                Box::new(move |db| {
                    std::fs::write(
                        db.join(chain_hex("c")).join("parent"),
                        hex("b").to_uppercase().replace("SHA256", "sha256"),
                    )
                    .unwrap()
                }),
            ),
            (
                "a parent without sha256:",
                Box::new(|db| std::fs::write(db.join(chain_hex("c")).join("parent"), chain_hex("b")).unwrap()),
            ),
            (
                "a cache-id with a path trick",
                Box::new(|db| std::fs::write(db.join(chain_hex("b")).join("cache-id"), "../overlay2/b").unwrap()),
            ),
            (
                "a missing cache-id",
                Box::new(|db| std::fs::remove_file(db.join(chain_hex("a")).join("cache-id")).unwrap()),
            ),
            ("a missing layer", Box::new(|db| std::fs::remove_dir_all(db.join(chain_hex("b"))).unwrap())),
            (
                "a base layer with a parent",
                Box::new(move |db| std::fs::write(db.join(chain_hex("a")).join("parent"), hex("other")).unwrap()),
            ),
            (
                "a parent that is not there",
                Box::new(move |db| std::fs::write(db.join(chain_hex("a")).join("parent"), hex("gone")).unwrap()),
            ),
            (
                "a cache-id that is a symlink",
                Box::new(|db| {
                    let file = db.join(chain_hex("a")).join("cache-id");
                    std::fs::remove_file(&file).unwrap();
                    std::fs::write(db.join("real"), "a").unwrap();
                    std::os::unix::fs::symlink("../real", &file).unwrap();
                }),
            ),
            (
                "a parent that is a directory",
                Box::new(|db| std::fs::create_dir(db.join(chain_hex("a")).join("parent")).unwrap()),
            ),
            (
                "a long cache-id",
                Box::new(|db| std::fs::write(db.join(chain_hex("a")).join("cache-id"), "a".repeat(200)).unwrap()),
            ),
            ("no sha256 directory", Box::new(|db| std::fs::remove_dir_all(db).unwrap())),
            (
                "sha256 is a file",
                Box::new(|db| {
                    std::fs::remove_dir_all(db).unwrap();
                    std::fs::write(db, "x").unwrap();
                }),
            ),
        ];
        for (what, break_it) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let docker = tmp.path().join("docker");
            let top = docker_root(&docker);
            break_it(&db_of(&docker));
            let source = resolve_chain(&top).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(source.identity(), None, "{what}");
            let Source::Overlay2(chain) = &source else { panic!("not overlay2") };
            assert_eq!(chain.chain_id, None, "{what}");
        }
    }

    #[test]
    fn a_lower_layer_of_the_chain_is_keyed_by_its_own_chain_id() {
        let tmp = tempfile::tempdir().unwrap();
        docker_root(&tmp.path().join("docker"));
        let b = resolve_chain(&tmp.path().join("docker/overlay2/b")).unwrap();
        assert_eq!(b.identity(), Some(format!("sha256:{}", chain_hex("b"))));
    }

    #[test]
    fn too_many_layers_in_the_database_give_the_local_key() {
        let tmp = tempfile::tempdir().unwrap();
        let docker = tmp.path().join("docker");
        let top = docker_root(&docker);
        let db = docker.join("image/overlay2/layerdb/sha256");
        for i in 0..crate::layerdb::MAX_LAYERS {
            std::fs::create_dir(db.join(chain_hex(&format!("filler {i}")))).unwrap();
        }
        assert_eq!(resolve_chain(&top).unwrap().identity(), None);
    }

    #[test]
    fn a_database_of_several_probes_finds_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let docker = tmp.path().join("docker");
        let top = docker_root(&docker);
        let db = docker.join("image/overlay2/layerdb/sha256");
        for i in 0..3 * crate::layerdb::ENTRIES_PER_PROBE {
            let dir = db.join(chain_hex(&format!("filler {i}")));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("cache-id"), format!("filler{i}")).unwrap();
        }
        assert_eq!(resolve_chain(&top).unwrap().identity(), Some(format!("sha256:{}", chain_hex("c"))));
    }

    #[test]
    fn a_layout_copied_elsewhere_or_with_a_rewritten_index_has_the_same_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two) = (tmp.path().join("one"), tmp.path().join("somewhere/else/two"));
        std::fs::create_dir_all(&one).unwrap();
        let (manifest, _) = layout(&one, 0);
        let first = Source::Oci(resolve_oci(&one).unwrap());
        assert_eq!(first.identity(), Some(manifest));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(two.join("blobs/sha256")).unwrap();
        for name in ["oci-layout", "index.json"] {
            std::fs::copy(one.join(name), two.join(name)).unwrap();
        }
        for blob in std::fs::read_dir(one.join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            std::fs::copy(blob.path(), two.join("blobs/sha256").join(blob.file_name())).unwrap();
        }
        let second = Source::Oci(resolve_oci(&two).unwrap());
        let Source::Oci(image) = &second else { unreachable!() };
        let Source::Oci(first_image) = &first else { unreachable!() };
        assert_ne!(image.index_modified_ns, first_image.index_modified_ns);
        assert_eq!(key_of(&second), key_of(&first));
        assert_eq!(second.identity(), first.identity());
    }
}

//! `describe-converter` and `run-converter`: the guest's conversion, checked
//! against the policy and this request's source, handed to a converter.

use std::path::{Path, PathBuf};

use crate::bindings::rootfs::cache::host::{Conversion, ConverterInfo, Layer};
use crate::bindings::rootfs::cache::types::SourceKind;
use crate::cache_dir::{Area, CacheFile};
use crate::capabilities::converter::{AgentInstall, ConversionJob, LayerBlob, SourceLayers};
use crate::converter_spec::ConverterSpec;
use crate::error::Error;
use crate::observer::Phase;
use crate::store::StoreState;

impl StoreState {
    /// `describe-converter`: the converter's identity, if the policy allows it.
    pub(super) fn describe_converter_checked(&self, converter: &str) -> Result<ConverterInfo, Error> {
        self.shared.policy.check_converter(converter)?;
        let spec: ConverterSpec = converter.parse()?;
        let backend = self.shared.caps.converters.get(&spec)?;
        Ok(ConverterInfo { identity: backend.identity(), installs_agent: backend.installs_agent() })
    }

    /// `run-converter`: checks the job, runs it (at most the policy's number
    /// at once) and bounds the image it wrote. The output belongs to the
    /// store until the guest publishes or removes it.
    pub(super) async fn run_conversion(&mut self, job: &Conversion) -> Result<u64, Error> {
        let checked = self.job(job)?;
        let spec: ConverterSpec = job.converter.parse()?;
        let backend = self.shared.caps.converters.get(&spec)?;
        if let Ok(file) = CacheFile::parse(&job.output, &[Area::Tmp]) {
            self.staged.push(file);
        }
        let shared = self.shared.clone();
        let _permit = shared.conversions.acquire().await.map_err(|e| Error::Io(e.to_string()));
        self.phase(Phase::Converting);
        let output = checked.output.clone();
        let converted = backend.convert(checked).await?;
        // Whatever sized the image (a converter's default, its content), the
        // policy bounds it.
        shared.policy.check_image_length(converted.image_bytes).inspect_err(|_| {
            let _ = std::fs::remove_file(&output);
        })?;
        self.moved.cloned_bytes += converted.cloned_bytes;
        self.moved.copied_bytes += converted.copied_bytes;
        match converted.image_sha256 {
            Some(digest) => self.hashed.insert(job.output.clone(), digest),
            None => self.hashed.remove(&job.output),
        };
        Ok(converted.image_bytes)
    }

    /// Checks a path the guest names for reading (a layer, a blob) against the
    /// source roots of the policy and of this request.
    fn check_readable(&self, what: &str, path: &str) -> Result<PathBuf, Error> {
        let real = self.shared.policy.check_source_path(what, path)?;
        if !self.source_roots.iter().any(|(root, _)| real.starts_with(root)) {
            return Err(Error::denied("source_roots", format!("{what} {path} is outside the source of this request")));
        }
        Ok(real)
    }

    /// The conversion the guest asked for, checked: the converter and the
    /// size against the policy, the output a new file in `tmp/`, every layer
    /// and blob inside this request's source.
    fn job(&self, job: &Conversion) -> Result<ConversionJob, Error> {
        let policy = &self.shared.policy;
        policy.check_converter(&job.converter)?;
        policy.check_size(job.size)?;
        let output = CacheFile::parse(&job.output, &[Area::Tmp])?;
        if self.shared.cache.dir(Area::Tmp).symlink_metadata(&output.name).is_ok() {
            return Err(Error::denied(
                "cache_dir",
                format!("{} already exists; a converter only creates new files", job.output),
            ));
        }
        let source = match job.kind {
            SourceKind::Overlay2 => {
                let top = self.check_readable("source", &job.source)?;
                let mut diffs = Vec::with_capacity(job.layers.len());
                for layer in &job.layers {
                    if Path::new(&layer.path).file_name() != Some("diff".as_ref()) {
                        return Err(Error::denied(
                            "source_roots",
                            format!("layer {} is not a diff/ directory", layer.path),
                        ));
                    }
                    diffs.push(self.check_readable("layer", &layer.path)?);
                }
                SourceLayers::Overlay2 { top, diffs }
            }
            SourceKind::OciLayout => {
                let layout = self.check_readable("source", &job.source)?;
                let blobs_dir = layout.join("blobs");
                let mut blobs = Vec::with_capacity(job.layers.len());
                for layer in &job.layers {
                    let path = self.check_readable("layer blob", &layer.path)?;
                    if !path.starts_with(&blobs_dir) {
                        return Err(Error::denied(
                            "source_roots",
                            format!("layer blob {} is outside {}", layer.path, blobs_dir.display()),
                        ));
                    }
                    blobs.push(layer_blob(path, layer)?);
                }
                SourceLayers::Oci { layout, platform: job.platform.clone(), blobs }
            }
            SourceKind::Registry | SourceKind::DockerArchive => {
                // A pulled or exported image's layers are blobs of this
                // cache's store, each at the name of its digest.
                let store = self.shared.cache.path().join("blobs").join("sha256");
                let mut blobs = Vec::with_capacity(job.layers.len());
                for layer in &job.layers {
                    let hex = layer.digest.strip_prefix("sha256:").unwrap_or_default();
                    if Path::new(&layer.path) != store.join(hex) || hex.is_empty() {
                        return Err(Error::denied(
                            "cache_dir",
                            format!(
                                "layer {} of a pulled or exported image is not the blob {} of {}",
                                layer.path,
                                layer.digest,
                                store.display()
                            ),
                        ));
                    }
                    let path = PathBuf::from(&layer.path);
                    blobs.push(layer_blob(path, layer)?);
                }
                SourceLayers::Pulled { reference: job.source.clone(), platform: job.platform.clone(), blobs }
            }
        };
        let agent = match &job.agent {
            Some(file) => Some(AgentInstall {
                source: policy.check_agent(&file.source)?,
                sha256: file.sha256.clone(),
                target: file.target.clone(),
                mode: file.mode,
            }),
            None => None,
        };
        Ok(ConversionJob {
            source,
            output: self.shared.cache.absolute(&output),
            size: job.size,
            key: job.key.clone(),
            agent,
            timeout: policy.limits.convert_timeout,
            max_bytes: policy.limits.max_image_bytes,
        })
    }
}

/// The blob the converter reads for `layer`, at `path` (checked already to
/// be where the layer may be), once its length is checked.
fn layer_blob(path: PathBuf, layer: &Layer) -> Result<LayerBlob, Error> {
    check_blob_length(&path, layer.size)?;
    Ok(LayerBlob {
        path,
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size,
        diff_id: (!layer.diff_id.is_empty()).then(|| layer.diff_id.clone()),
    })
}

/// A layer blob must be a regular file exactly as long as its descriptor
/// says, whichever converter reads it: a FIFO would block the converter, and
/// a length that differs means the layout is corrupt (containerd checks the
/// same).
fn check_blob_length(path: &Path, declared: u64) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(format!("layer blob {}", path.display()), &e))?;
    if !meta.is_file() {
        return Err(Error::UnsupportedSource(format!("layer blob {} is not a regular file", path.display())));
    }
    if meta.len() != declared {
        return Err(Error::UnsupportedSource(format!(
            "layer blob {} has {} bytes, its descriptor says {declared}: the layout is corrupt",
            path.display(),
            meta.len()
        )));
    }
    Ok(())
}

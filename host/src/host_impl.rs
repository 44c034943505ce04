//! The `host` interface: every call is measured, checked against the policy,
//! audited, and only then handed to a capability backend.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use wasmtime::component::Resource;

use crate::audit::Verdict;
use crate::bindings::rootfs::cache::host::{
    self, Conversion, ConverterInfo, FileDigest, FileInstall, FsckResult, PathInfo, ProbeRequest,
};
use crate::bindings::rootfs::cache::types::{self, Error as WitError, SourceKind};
use crate::cache_dir::{Area, CacheFile};
use crate::capabilities::converter::{AgentInstall, ConversionJob, LayerBlob, SourceLayers};
use crate::capabilities::mounter::Install;
use crate::error::{Error, HostCallError};
use crate::observer::Phase;
use crate::regular_file::IntoError as _;
use crate::store::{BuildLockHandle, MountedImageHandle, StoreState};

type HostResult<T> = Result<T, HostCallError>;

/// One capability call in progress.
struct Call {
    capability: &'static str,
    arguments: serde_json::Value,
    started: Instant,
}

impl StoreState {
    fn begin(&self, capability: &'static str, arguments: serde_json::Value) -> Call {
        Call { capability, arguments, started: Instant::now() }
    }

    /// A guest passing more than the payload limit to one call is broken or
    /// hostile: stop it.
    fn check_payload(&mut self, call: &Call, sizes: &[usize]) -> HostResult<()> {
        let limit = self.shared.policy.limits.max_payload_bytes;
        if let Some(size) = sizes.iter().copied().find(|&s| s > limit) {
            let trap =
                wasmtime::Error::msg(format!("{} was passed {size} bytes; the limit is {limit}", call.capability));
            self.audit(call, Verdict::Trapped, None);
            return Err(HostCallError::Trap(trap));
        }
        Ok(())
    }

    /// A guest holding more mounts and locks than allowed is leaking them.
    fn check_resources(&mut self, call: &Call) -> HostResult<()> {
        let limit = self.shared.policy.limits.max_resources;
        if self.resources >= limit {
            let trap =
                wasmtime::Error::msg(format!("{}: the guest already holds {limit} mounts and locks", call.capability));
            self.audit(call, Verdict::Trapped, None);
            return Err(HostCallError::Trap(trap));
        }
        Ok(())
    }

    fn audit(&mut self, call: &Call, verdict: Verdict, error: Option<&Error>) {
        let duration = call.started.elapsed();
        match verdict {
            Verdict::Denied => {
                tracing::info!(request = self.request_id, capability = call.capability, arguments = %call.arguments, error = ?error.map(ToString::to_string), "denied")
            }
            Verdict::Trapped => {
                tracing::warn!(request = self.request_id, capability = call.capability, "guest stopped")
            }
            _ => {
                tracing::debug!(request = self.request_id, capability = call.capability, arguments = %call.arguments, ?verdict, ?duration, error = ?error.map(ToString::to_string))
            }
        }
        if let Some(audit) = &self.shared.audit {
            audit.record(self.request_id, call.capability, &call.arguments, verdict, error, duration);
            match (verdict, error) {
                (Verdict::Trapped, _) => self.audited.push(Error::GuestTrap(String::new())),
                (_, Some(error)) => self.audited.push(error.clone()),
                _ => {}
            }
        }
    }

    fn finish<T>(&mut self, call: Call, result: Result<T, Error>) -> HostResult<T> {
        self.host_time += call.started.elapsed();
        self.audit(&call, Verdict::of(&result), result.as_ref().err());
        result.map_err(HostCallError::Guest)
    }

    /// Ends a call that succeeded as a whole but refused part of what it was
    /// asked (a probed path outside the roots): it is logged as `denied`,
    /// with the first refusal.
    fn finish_refused<T>(&mut self, call: Call, result: Result<T, Error>, refusal: &Error) -> HostResult<T> {
        self.host_time += call.started.elapsed();
        self.audit(&call, Verdict::Denied, Some(refusal));
        result.map_err(HostCallError::Guest)
    }

    fn phase(&self, phase: Phase) {
        if let Some(observer) = &self.shared.observer {
            observer.phase_started(phase);
        }
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
                    check_blob_length(&path, layer.size)?;
                    blobs.push(LayerBlob {
                        path,
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        diff_id: (!layer.diff_id.is_empty()).then(|| layer.diff_id.clone()),
                    });
                }
                SourceLayers::Oci { layout, platform: job.platform.clone(), blobs }
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

impl types::Host for StoreState {
    fn convert_error(&mut self, err: HostCallError) -> wasmtime::Result<WitError> {
        match err {
            HostCallError::Guest(e) => Ok(e.to_wit()),
            HostCallError::Trap(t) => Err(t),
        }
    }
}

impl host::Host for StoreState {
    async fn probe(&mut self, requests: Vec<ProbeRequest>) -> HostResult<Vec<Result<PathInfo, WitError>>> {
        let call = self.begin("probe", json!({ "paths": requests.iter().map(|r| &r.path).collect::<Vec<_>>() }));
        self.check_payload(&call, &[requests.iter().map(|r| r.path.len()).sum()])?;
        let mut refused = None;
        let result = crate::probe::check(&requests).map(|()| {
            let cache = self.shared.cache.root();
            let mut prober = crate::probe::Prober::default();
            requests
                .iter()
                .map(|request| {
                    prober.answer(request, &self.source_roots, cache).map_err(|e| {
                        if refused.is_none() && matches!(e, Error::Denied { .. }) {
                            refused = Some(e.clone());
                        }
                        e.to_wit()
                    })
                })
                .collect()
        });
        match refused {
            Some(refusal) => self.finish_refused(call, result, &refusal),
            None => self.finish(call, result),
        }
    }

    async fn digest_file(&mut self, path: String) -> HostResult<FileDigest> {
        let call = self.begin("digest-file", json!({ "path": path }));
        self.check_payload(&call, &[path.len()])?;
        let policy = &self.shared.policy;
        let result = match &self.resolved_agent {
            Some((given, real)) if *given == path => policy.check_agent_real(&path, real).map(|()| real.clone()),
            _ => policy.check_agent(&path),
        };
        let result = result.and_then(|real| {
            self.shared.digests.digest(&real).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidInput {
                    Error::InvalidRequest(format!("agent {path} is not a regular file"))
                } else {
                    Error::io(format!("agent {path}"), &e)
                }
            })
        });
        let result = result.map(|d| FileDigest { sha256: d.sha256, size: d.size });
        self.finish(call, result)
    }

    async fn describe_converter(&mut self, converter: String) -> HostResult<ConverterInfo> {
        let call = self.begin("describe-converter", json!({ "converter": converter }));
        self.check_payload(&call, &[converter.len()])?;
        let result = self.shared.policy.check_converter(&converter).and_then(|()| {
            let backend = self.shared.caps.converters.get(&converter)?;
            Ok(ConverterInfo { identity: backend.identity(), installs_agent: backend.installs_agent() })
        });
        self.finish(call, result)
    }

    async fn run_converter(&mut self, job: Conversion) -> HostResult<u64> {
        let call = self.begin(
            "run-converter",
            json!({ "converter": job.converter, "source": job.source, "layers": job.layers.len(), "output": job.output, "size": job.size }),
        );
        let total: usize =
            job.layers.iter().map(|l| l.path.len() + l.media_type.len() + l.digest.len() + l.diff_id.len()).sum();
        self.check_payload(&call, &[job.source.len(), job.output.len(), total])?;
        let checked =
            self.job(&job).and_then(|checked| Ok((checked, self.shared.caps.converters.get(&job.converter)?)));
        if checked.is_ok()
            && let Ok(file) = CacheFile::parse(&job.output, &[Area::Tmp])
        {
            // Until the guest publishes or removes it, the store owns it.
            self.staged.push(file);
        }
        let result = match checked {
            Ok((checked, backend)) => {
                let shared = self.shared.clone();
                let _permit = shared.conversions.acquire().await.map_err(|e| Error::Io(e.to_string()));
                self.phase(Phase::Converting);
                let output = checked.output.clone();
                backend.convert(checked).await.and_then(|length| {
                    // Whatever sized the image (a converter's default, its
                    // content), the policy bounds it.
                    shared.policy.check_image_length(length).inspect_err(|_| {
                        let _ = std::fs::remove_file(&output);
                    })?;
                    Ok(length)
                })
            }
            Err(e) => Err(e),
        };
        self.finish(call, result)
    }

    async fn mount_image(&mut self, image: String) -> HostResult<Resource<MountedImageHandle>> {
        let call = self.begin("mount-image", json!({ "image": image }));
        self.check_payload(&call, &[image.len()])?;
        self.check_resources(&call)?;
        self.phase(Phase::Mounting);
        let opened = CacheFile::parse(&image, &[Area::Tmp]).and_then(|file| {
            let mut options = cap_std::fs::OpenOptions::new();
            options.read(true).write(true);
            Ok(self
                .shared
                .cache
                .dir(Area::Tmp)
                .open_with(&file.name, &options)
                .map_err(|e| Error::io(&image, &e))?
                .into_std())
        });
        let result = match opened {
            Ok(handle) => {
                let mounter = self.shared.caps.mounter.clone();
                tokio::task::spawn_blocking(move || mounter.mount(handle))
                    .await
                    .map_err(|e| Error::MountFailed(format!("the mount thread failed: {e}")))
                    .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        let mounted = self.finish(call, result)?;
        crate::test_hooks::pause("mounted");
        let resource = self.table.push(MountedImageHandle { mount: Some(mounted) }).map_err(wasmtime::Error::new)?;
        self.resources += 1;
        Ok(resource)
    }

    async fn publish(
        &mut self,
        staged: String,
        image: String,
        manifest: String,
        manifest_json: String,
    ) -> HostResult<()> {
        let call = self.begin("publish", json!({ "staged": staged, "image": image, "manifest": manifest }));
        self.check_payload(&call, &[staged.len(), image.len(), manifest.len(), manifest_json.len()])?;
        self.phase(Phase::Publishing);
        let published = staged.clone();
        let checked = (|| {
            let staged = CacheFile::parse(&staged, &[Area::Tmp])?;
            let image = CacheFile::parse(&image, &[Area::Images])?;
            let manifest = CacheFile::parse(&manifest, &[Area::Images])?;
            let key = image.name.strip_suffix(".ext4");
            if key.is_none()
                || key != manifest.name.strip_suffix(".json")
                || !staged.name.starts_with(key.unwrap_or_default())
            {
                return Err(Error::denied(
                    "cache_dir",
                    "publish names an image, a manifest and a staged file of different keys",
                ));
            }
            serde_json::from_str::<serde_json::Value>(&manifest_json)
                .map_err(|e| Error::InvalidRequest(format!("the manifest is not JSON: {e}")))?;
            Ok((staged, image, manifest))
        })();
        let result = match checked {
            Ok((staged, image, manifest)) => {
                let shared = self.shared.clone();
                tokio::task::spawn_blocking(move || {
                    shared.caps.publisher.publish(&shared.cache, &staged, &image, &manifest, &manifest_json)
                })
                .await
                .map_err(|e| Error::Io(format!("the publish thread failed: {e}")))
                .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        if result.is_ok() {
            self.staged.retain(|f| f.relative() != published);
        }
        self.finish(call, result)
    }

    async fn remove(&mut self, path: String) -> HostResult<()> {
        let call = self.begin("remove", json!({ "path": path }));
        self.check_payload(&call, &[path.len()])?;
        let result = CacheFile::parse(&path, &[Area::Tmp, Area::Images])
            .and_then(|file| self.shared.caps.publisher.remove(&self.shared.cache, &file));
        if result.is_ok() {
            self.staged.retain(|f| f.relative() != path);
        }
        self.finish(call, result)
    }

    async fn record_use(&mut self, manifest: String) -> HostResult<()> {
        let call = self.begin("record-use", json!({ "manifest": manifest }));
        self.check_payload(&call, &[manifest.len()])?;
        let result = CacheFile::parse(&manifest, &[Area::Images])
            .and_then(|file| self.shared.caps.publisher.record_use(&self.shared.cache, &file));
        self.finish(call, result)
    }

    async fn lock(&mut self, key: String) -> HostResult<Resource<BuildLockHandle>> {
        let call = self.begin("lock", json!({ "key": key }));
        self.check_payload(&call, &[key.len()])?;
        self.check_resources(&call)?;
        let result = if valid_key(&key) {
            let (locks, cache) = (self.shared.locks.clone(), self.shared.cache.clone());
            let observer = self.shared.observer.clone();
            let waiting = locks.lock(cache, &key);
            tokio::pin!(waiting);
            tokio::select! {
                held = &mut waiting => held,
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                    // Only tell the user about a wait they can notice.
                    if let Some(observer) = observer {
                        observer.phase_started(Phase::WaitingForLock);
                    }
                    waiting.await
                }
            }
        } else {
            Err(Error::InvalidRequest(format!("{key:?} is not a cache key")))
        };
        let held = self.finish(call, result)?;
        self.lock_resource(held)
    }

    async fn try_lock(&mut self, key: String) -> HostResult<Option<Resource<BuildLockHandle>>> {
        let call = self.begin("try-lock", json!({ "key": key }));
        self.check_payload(&call, &[key.len()])?;
        self.check_resources(&call)?;
        let result = if valid_key(&key) {
            let (locks, cache) = (self.shared.locks.clone(), self.shared.cache.clone());
            locks.try_lock(cache, &key).await
        } else {
            Err(Error::InvalidRequest(format!("{key:?} is not a cache key")))
        };
        match self.finish(call, result)? {
            Some(held) => Ok(Some(self.lock_resource(held)?)),
            None => Ok(None),
        }
    }

    async fn fsck(&mut self, image: String) -> HostResult<FsckResult> {
        let call = self.begin("fsck", json!({ "image": image }));
        self.check_payload(&call, &[image.len()])?;
        let timeout = self.shared.policy.limits.convert_timeout;
        let result = match CacheFile::parse(&image, &[Area::Images]) {
            Ok(file) => crate::fsck::run(&self.shared.cache.absolute(&file), timeout).await,
            Err(e) => Err(e),
        };
        let result =
            result.map(|r| FsckResult { clean: r.clean, exit_status: r.exit_status, output_tail: r.output_tail });
        self.finish(call, result)
    }
}

impl StoreState {
    /// Pushes a held lock into the table for the guest.
    fn lock_resource(
        &mut self,
        held: Box<dyn crate::capabilities::lock::HeldLock>,
    ) -> HostResult<Resource<BuildLockHandle>> {
        let resource = self.table.push(BuildLockHandle { held }).map_err(wasmtime::Error::new)?;
        self.resources += 1;
        Ok(resource)
    }
}

fn valid_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

impl host::HostMountedImage for StoreState {
    async fn install(&mut self, this: Resource<MountedImageHandle>, file: FileInstall) -> HostResult<()> {
        let call = self.begin(
            "install",
            json!({ "source": file.source, "target": file.target, "mode": format!("{:o}", file.mode) }),
        );
        self.check_payload(&call, &[file.source.len(), file.target.len(), file.sha256.len()])?;
        self.phase(Phase::InstallingAgent);
        let handle = self.table.get_mut(&this).map_err(wasmtime::Error::new)?;
        let mount = handle.mount.take();
        let checked = self.shared.policy.check_agent(&file.source);
        let (mount, result) = match (mount, checked) {
            (None, _) => (None, Err(Error::InjectFailed("the image was already unmounted".into()))),
            (Some(mount), Err(e)) => (Some(mount), Err(e)),
            (Some(mut mount), Ok(source)) => {
                let install = Install { target: file.target.clone(), mode: file.mode, sha256: file.sha256.clone() };
                let joined = tokio::task::spawn_blocking(move || {
                    let result = crate::regular_file::RegularFile::open(
                        &source,
                        crate::digest::MAX_PROGRAM_BYTES,
                        crate::regular_file::FinalSymlink::Follow,
                    )
                    .map_err(|e| e.into_error("agent", Error::InvalidRequest))
                    .and_then(|mut f| mount.install(&mut f, &install));
                    (mount, result)
                })
                .await;
                match joined {
                    Ok((mount, result)) => (Some(mount), result),
                    Err(e) => (None, Err(Error::InjectFailed(format!("the install thread failed: {e}")))),
                }
            }
        };
        if let Ok(handle) = self.table.get_mut(&this) {
            handle.mount = mount;
        }
        if result.is_ok() {
            crate::test_hooks::pause("installed");
        }
        self.finish(call, result)
    }

    async fn unmount(&mut self, this: Resource<MountedImageHandle>) -> HostResult<()> {
        let call = self.begin("unmount", json!({}));
        self.phase(Phase::Unmounting);
        let handle = self.table.get_mut(&this).map_err(wasmtime::Error::new)?;
        let result = match handle.mount.take() {
            Some(mount) => tokio::task::spawn_blocking(move || mount.unmount())
                .await
                .map_err(|e| Error::MountFailed(format!("the unmount thread failed: {e}")))
                .and_then(|r| r),
            None => Err(Error::MountFailed("the image was already unmounted".into())),
        };
        self.finish(call, result)
    }

    async fn drop(&mut self, this: Resource<MountedImageHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(this)?;
        self.resources = self.resources.saturating_sub(1);
        if let Some(mount) = handle.mount {
            // Dropping unmounts and detaches.
            tokio::task::spawn_blocking(move || drop(mount)).await?;
        }
        Ok(())
    }
}

impl host::HostBuildLock for StoreState {
    async fn token(&mut self, this: Resource<BuildLockHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.held.token().to_owned())
    }

    async fn fail(&mut self, this: Resource<BuildLockHandle>, reason: WitError) -> wasmtime::Result<()> {
        self.table.get_mut(&this)?.held.fail(Error::from(reason));
        Ok(())
    }

    async fn drop(&mut self, this: Resource<BuildLockHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        self.resources = self.resources.saturating_sub(1);
        Ok(())
    }
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

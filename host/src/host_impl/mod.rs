//! The `host` interface. Every call that acts goes through one guard
//! ([`call`]): measured, its payload bounded, and at the end audited with its
//! verdict. In between, the files grouped by what the calls act on check it
//! against the policy and hand it to a capability backend. (A resource's
//! `token`, `fail` and `drop` act on what the guest already holds: they are
//! not guarded.)

mod call;
mod conversion;
mod daemon;
mod files;
mod locks;
mod mounts;
mod pull;
mod remote;

use serde_json::json;
use wasmtime::component::Resource;

use crate::bindings::rootfs::cache::host::{
    self, BlobRequest, Conversion, ConverterInfo, ExportedFile, FetchedBlob, FetchedImage, FetchedManifest, FileDigest,
    FsckResult, PathInfo, ProbeRequest, PushedBlob,
};
use crate::bindings::rootfs::cache::types::{self, Error as WitError};
use crate::error::HostCallError;
use crate::observer::Phase;
use crate::store::{BuildLockHandle, MountedImageHandle, StoreState};
use call::HostResult;

impl types::Host for StoreState {
    fn convert_error(&mut self, err: HostCallError) -> wasmtime::Result<WitError> {
        match err {
            HostCallError::Guest(e) => Ok(WitError::from(&e)),
            HostCallError::Trap(t) => Err(t),
        }
    }
}

impl host::Host for StoreState {
    async fn probe(&mut self, requests: Vec<ProbeRequest>) -> HostResult<Vec<Result<PathInfo, WitError>>> {
        let paths = requests.iter().map(|r| &r.path).collect::<Vec<_>>();
        let call = self.begin("probe", json!({ "paths": paths }), &[requests.iter().map(|r| r.path.len()).sum()])?;
        match self.answer_probe(&requests) {
            (result, Some(refusal)) => self.finish_refused(call, result, &refusal),
            (result, None) => self.finish(call, result),
        }
    }

    async fn digest_file(&mut self, path: String) -> HostResult<FileDigest> {
        let call = self.begin("digest-file", json!({ "path": path }), &[path.len()])?;
        let result = self.digest_agent(&path);
        self.finish(call, result)
    }

    async fn describe_converter(&mut self, converter: String) -> HostResult<ConverterInfo> {
        let call = self.begin("describe-converter", json!({ "converter": converter }), &[converter.len()])?;
        let result = self.describe_converter_checked(&converter);
        self.finish(call, result)
    }

    async fn run_converter(&mut self, job: Conversion) -> HostResult<u64> {
        let layers: usize =
            job.layers.iter().map(|l| l.path.len() + l.media_type.len() + l.digest.len() + l.diff_id.len()).sum();
        let call = self.begin(
            "run-converter",
            json!({ "converter": job.converter, "source": job.source, "layers": job.layers.len(), "output": job.output, "size": job.size }),
            &[job.source.len(), job.output.len(), layers],
        )?;
        let result = self.run_conversion(&job).await;
        self.finish(call, result)
    }

    async fn mount_image(&mut self, image: String) -> HostResult<Resource<MountedImageHandle>> {
        let call = self.begin("mount-image", json!({ "image": image }), &[image.len()])?;
        self.check_resources(&call)?;
        self.phase(Phase::Mounting);
        let result = self.mount_staged(&image).await;
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
        let call = self.begin(
            "publish",
            json!({ "staged": staged, "image": image, "manifest": manifest }),
            &[staged.len(), image.len(), manifest.len(), manifest_json.len()],
        )?;
        self.phase(Phase::Publishing);
        let result = self.publish_checked(&staged, &image, &manifest, manifest_json).await;
        self.finish(call, result)
    }

    async fn remove(&mut self, path: String) -> HostResult<()> {
        let call = self.begin("remove", json!({ "path": path }), &[path.len()])?;
        let result = self.remove_file(&path);
        self.finish(call, result)
    }

    async fn record_use(&mut self, manifest: String) -> HostResult<()> {
        let call = self.begin("record-use", json!({ "manifest": manifest }), &[manifest.len()])?;
        let result = self.record_use_of(&manifest);
        self.finish(call, result)
    }

    async fn lock(&mut self, key: String) -> HostResult<Resource<BuildLockHandle>> {
        let call = self.begin("lock", json!({ "key": key }), &[key.len()])?;
        self.check_resources(&call)?;
        let result = self.wait_for_lock(&key).await;
        let held = self.finish(call, result)?;
        self.lock_resource(held)
    }

    async fn try_lock(&mut self, key: String) -> HostResult<Option<Resource<BuildLockHandle>>> {
        let call = self.begin("try-lock", json!({ "key": key }), &[key.len()])?;
        self.check_resources(&call)?;
        let result = self.lock_if_free(&key).await;
        match self.finish(call, result)? {
            Some(held) => Ok(Some(self.lock_resource(held)?)),
            None => Ok(None),
        }
    }

    async fn fetch_manifest(&mut self, reference: String, pull: types::PullPolicy) -> HostResult<FetchedManifest> {
        let call = self.begin(
            "fetch-manifest",
            json!({ "reference": reference, "pull": format!("{pull:?}").to_lowercase() }),
            &[reference.len()],
        )?;
        let result = self.fetch_manifest_checked(&reference, pull).await;
        self.finish(call, result)
    }

    async fn fetch_blobs(
        &mut self,
        reference: String,
        blobs: Vec<BlobRequest>,
        pull: types::PullPolicy,
    ) -> HostResult<Vec<FetchedBlob>> {
        let digests: Vec<&str> = blobs.iter().map(|b| b.digest.as_str()).collect();
        let call = self.begin(
            "fetch-blobs",
            json!({ "reference": reference, "blobs": digests, "pull": format!("{pull:?}").to_lowercase() }),
            &[reference.len(), blobs.iter().map(|b| b.digest.len() + 16).sum()],
        )?;
        let result = self.fetch_blobs_checked(&reference, &blobs, pull).await;
        self.finish(call, result)
    }

    async fn inspect_daemon_image(&mut self, name: String) -> HostResult<Vec<u8>> {
        let call = self.begin("inspect-daemon-image", json!({ "name": name }), &[name.len()])?;
        let result = self.inspect_daemon_image_checked(&name).await;
        self.finish(call, result)
    }

    async fn export_daemon_image(&mut self, name: String) -> HostResult<Vec<ExportedFile>> {
        let call = self.begin("export-daemon-image", json!({ "name": name }), &[name.len()])?;
        let result = self.export_daemon_image_checked(&name).await;
        self.finish(call, result)
    }

    async fn remote_manifest(&mut self, tag: String) -> HostResult<Option<FetchedManifest>> {
        let call = self.begin("remote-manifest", json!({ "tag": tag }), &[tag.len()])?;
        let result = self.remote_manifest_checked(&tag).await;
        self.finish(call, result)
    }

    async fn remote_blob(&mut self, digest: String, size: u64) -> HostResult<Vec<u8>> {
        let call = self.begin("remote-blob", json!({ "digest": digest, "size": size }), &[digest.len()])?;
        let result = self.remote_blob_checked(&digest, size).await;
        self.finish(call, result)
    }

    async fn remote_image(&mut self, digest: String, size: u64, staged: String) -> HostResult<FetchedImage> {
        let call = self.begin(
            "remote-image",
            json!({ "digest": digest, "size": size, "staged": staged }),
            &[digest.len(), staged.len()],
        )?;
        let result = self.remote_image_checked(&digest, size, &staged).await;
        self.finish(call, result)
    }

    async fn remote_push_image(&mut self, image: String) -> HostResult<PushedBlob> {
        let call = self.begin("remote-push-image", json!({ "image": image }), &[image.len()])?;
        let result = self.remote_push_image_checked(&image).await;
        self.finish(call, result)
    }

    async fn remote_push_blob(&mut self, bytes: Vec<u8>) -> HostResult<PushedBlob> {
        let call = self.begin("remote-push-blob", json!({ "bytes": bytes.len() }), &[bytes.len()])?;
        let result = self.remote_push_blob_checked(&bytes).await;
        self.finish(call, result)
    }

    async fn remote_push_manifest(&mut self, tag: String, bytes: Vec<u8>) -> HostResult<String> {
        let call =
            self.begin("remote-push-manifest", json!({ "tag": tag, "bytes": bytes.len() }), &[tag.len(), bytes.len()])?;
        let result = self.remote_push_manifest_checked(&tag, &bytes).await;
        self.finish(call, result)
    }

    async fn digest_image(&mut self, image: String) -> HostResult<FileDigest> {
        let call = self.begin("digest-image", json!({ "image": image }), &[image.len()])?;
        let result = self.digest_image_checked(&image).await;
        self.finish(call, result)
    }

    async fn fsck(&mut self, image: String) -> HostResult<FsckResult> {
        let call = self.begin("fsck", json!({ "image": image }), &[image.len()])?;
        let result = self.check_image(&image).await;
        self.finish(call, result)
    }
}

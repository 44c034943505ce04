//! A miss with a remote cache: fetch the entry another host built, check it
//! as a fresh build is checked, and publish it; or, after building here,
//! push it. The remote cache is never needed: whatever goes wrong with it
//! becomes a warning and the request goes on as if there were none, except
//! an image that `--verify-remote rebuild` proves false, which fails the
//! request.

use super::Cache;
use super::entry::{BUILDER, BuildInputs, entry_manifest, kind_name, recorded_platform};
use crate::capabilities::Capabilities;
use crate::error::describe;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::oci::Descriptor as OciDescriptor;
use crate::remote::{ArtifactManifest, CONFIG_TYPE, Descriptor, LAYER_TYPE, REMOTE_FORMAT, RemoteEntry};
use crate::source::Source;
use crate::sys::{self, Instant};
use crate::validate;
use crate::wit::types::{Error, Origin, RemoteOptions, RemoteVerify, Timings};

/// What a request did with the remote cache, for its outcome.
#[derive(Debug)]
pub(super) struct RemoteReport {
    /// Where the image came from.
    pub(super) origin: Origin,
    /// What went wrong without failing the request.
    pub(super) warnings: Vec<String>,
    /// The artifact's manifest digest, fetched or pushed.
    pub(super) remote_digest: Option<String>,
    /// Whether the entry was pushed.
    pub(super) pushed: bool,
}

impl Default for RemoteReport {
    fn default() -> Self {
        Self { origin: Origin::Built, warnings: Vec::new(), remote_digest: None, pushed: false }
    }
}

/// Why a fetch did not give an image.
enum Refusal {
    /// The remote cache failed or sent something unusable: build here.
    Warn(Error),
    /// The request must fail.
    Fail(Error),
}

impl<H: Capabilities> Cache<'_, H> {
    /// Serves a miss from the remote cache: `Ok(Some(length))` when its entry
    /// was fetched, checked and published; `Ok(None)` when it has none or it
    /// was refused (a warning in `report` says why), so the caller builds.
    pub(super) fn fetch_remote(
        &self,
        inputs: &BuildInputs<'_>,
        options: &RemoteOptions,
        identity: &str,
        token: &str,
        timings: &mut Timings,
        report: &mut RemoteReport,
    ) -> Result<Option<u64>, Error> {
        let staged = inputs.key.staging_path(&format!("{token}.remote"));
        match self.fetch_checked(inputs, options, identity, &staged, timings, report) {
            Ok(found) => Ok(found),
            Err(refusal) => {
                // A failed removal leaves a file the next sweep removes.
                let _ = self.host.remove(&staged);
                match refusal {
                    Refusal::Warn(err) => {
                        report.warnings.push(format!(
                            "remote cache {}: {}; building here instead",
                            options.repository,
                            describe(&err)
                        ));
                        Ok(None)
                    }
                    Refusal::Fail(err) => Err(err),
                }
            }
        }
    }

    fn fetch_checked(
        &self,
        inputs: &BuildInputs<'_>,
        options: &RemoteOptions,
        identity: &str,
        staged: &str,
        timings: &mut Timings,
        report: &mut RemoteReport,
    ) -> Result<Option<u64>, Refusal> {
        let key = inputs.key.as_str();
        let step = Instant::now();
        let Some(fetched) = self.host.remote_manifest(key).map_err(Refusal::Warn)? else {
            return Ok(None);
        };
        let refused = |why: String| {
            Refusal::Warn(Error::Corrupt(format!("its artifact {} for this key is refused: {why}", fetched.digest)))
        };
        let (_, artifact) = ArtifactManifest::parse_for(&fetched.bytes, key).map_err(refused)?;
        let config = self.host.remote_blob(&artifact.config.digest, artifact.config.size).map_err(Refusal::Warn)?;
        artifact.check_config(&config, &expected_entry(inputs, identity, 0, String::new())).map_err(refused)?;
        let image =
            self.host.remote_image(&artifact.layer.digest, artifact.layer.size, staged).map_err(Refusal::Warn)?;
        if image.bytes != artifact.image_bytes || image.sha256 != format!("sha256:{}", artifact.image_sha256) {
            return Err(refused(format!(
                "its image {} decompresses to {} bytes with {}, not the {} bytes with sha256:{} it announces",
                artifact.layer.digest, image.bytes, image.sha256, artifact.image_bytes, artifact.image_sha256
            )));
        }
        validate::check_image(&self.root.join(staged), None)
            .map_err(|why| refused(format!("its image {} is unusable: {why}", artifact.layer.digest)))?;
        timings.convert_us = step.micros();

        if options.verify == RemoteVerify::Rebuild {
            self.compare_with_rebuild(inputs, &image.sha256, &artifact.layer.digest, &fetched.digest, timings)?;
        }
        let manifest = entry_manifest(inputs, Vec::new(), image.bytes);
        let step = Instant::now();
        self.host
            .publish(staged, &inputs.key.image_path(), &inputs.key.manifest_path(), &manifest.to_json())
            .map_err(Refusal::Fail)?;
        timings.publish_us = step.micros();
        report.origin = Origin::Remote;
        report.remote_digest = Some(fetched.digest);
        Ok(Some(image.bytes))
    }

    /// `--verify-remote rebuild`: builds the entry here too and compares.
    fn compare_with_rebuild(
        &self,
        inputs: &BuildInputs<'_>,
        fetched_sha256: &str,
        layer: &str,
        artifact: &str,
        timings: &mut Timings,
    ) -> Result<(), Refusal> {
        let built = self.produce(inputs, inputs.staged, timings).and_then(|_| self.host.digest_image(inputs.staged));
        // The local build served only to compare.
        let _ = self.host.remove(inputs.staged);
        let built = built.map_err(Refusal::Fail)?;
        let built_sha256 = format!("sha256:{}", built.sha256);
        if built_sha256 != fetched_sha256 {
            return Err(Refusal::Fail(Error::Corrupt(format!(
                "the remote cache's image {layer} (artifact {artifact}) is {fetched_sha256}, but this host builds \
                 {built_sha256} for key {}: the remote cache lied; nothing was published",
                inputs.key
            ))));
        }
        Ok(())
    }

    /// Pushes the entry just built; a failure is a warning in `report`.
    pub(super) fn push_remote(
        &self,
        inputs: &BuildInputs<'_>,
        options: &RemoteOptions,
        identity: &str,
        image_bytes: u64,
        report: &mut RemoteReport,
    ) {
        match self.push_checked(inputs, identity, image_bytes) {
            Ok(digest) => {
                report.pushed = true;
                report.remote_digest = Some(digest);
            }
            Err(err) => report.warnings.push(format!(
                "remote cache {}: the entry was not pushed: {}",
                options.repository,
                describe(&err)
            )),
        }
    }

    fn push_checked(&self, inputs: &BuildInputs<'_>, identity: &str, image_bytes: u64) -> Result<String, Error> {
        let key = inputs.key;
        // The publisher recorded the image's SHA-256 in the manifest.
        let (published, _) = sys::read(&self.root.join(key.manifest_path()), 0, MAX_MANIFEST_BYTES)
            .map_err(|e| Error::Io(format!("{}: {e}", key.manifest_path())))?;
        let image_sha256 = Manifest::parse(&published)
            .map_err(Error::Corrupt)?
            .image_sha256
            .ok_or_else(|| Error::Corrupt(format!("{} records no image_sha256", key.manifest_path())))?;
        let entry = expected_entry(inputs, identity, image_bytes, image_sha256);
        let layer = self.host.remote_push_image(&key.image_path())?;
        let config = entry.to_json();
        let pushed_config = self.host.remote_push_blob(&config)?;
        let manifest = ArtifactManifest::new(
            &entry,
            Descriptor { media_type: CONFIG_TYPE.into(), digest: pushed_config.digest, size: pushed_config.size },
            Descriptor { media_type: LAYER_TYPE.into(), digest: layer.digest, size: layer.size },
            subject(inputs.source, inputs.request.remote.as_ref()),
        );
        self.host.remote_push_manifest(key.as_str(), &manifest.to_json())
    }
}

/// The remote entry this host would build for `inputs`.
fn expected_entry(inputs: &BuildInputs<'_>, identity: &str, image_bytes: u64, image_sha256: String) -> RemoteEntry {
    RemoteEntry {
        format: REMOTE_FORMAT,
        key: inputs.key.to_string(),
        kind: kind_name(inputs.source).into(),
        source: identity.to_owned(),
        platform: recorded_platform(inputs.source),
        agent_sha256: inputs.agent.sha256.clone(),
        agent_size: inputs.agent.size,
        converter: inputs.converter.identity.clone(),
        requested_size: inputs.request.size,
        image_bytes,
        image_sha256,
        builder: BUILDER.into(),
    }
}

/// The source image's manifest, when it is in the remote cache's registry:
/// the registry's referrers API then lists the artifact beside it.
fn subject(source: &Source, remote: Option<&RemoteOptions>) -> Option<Descriptor> {
    let (Source::Pulled(image), Some(remote)) = (source, remote) else { return None };
    let registry = remote.repository.split_once('/').map(|(host, _)| host)?;
    (registry == image.reference.registry).then(|| {
        let OciDescriptor { media_type, digest, size, .. } = (*image.manifest).clone();
        Descriptor { media_type, digest, size }
    })
}

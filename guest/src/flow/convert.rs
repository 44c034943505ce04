//! One conversion: look up, lock, look again, then serve the entry or build
//! it (convert, install the agent, check, publish); on any failure after the
//! build starts, remove the temporary image and report a typed error.

use std::path::Path;

use super::Cache;
use super::entry::{BuildInputs, entry_manifest, kind_of};
use super::remote::RemoteReport;
use super::request::{AGENT_MODE, AGENT_TARGET, RECORD_USE_EVERY, SourceName, check_request};
use crate::capabilities::{BuildLock, Capabilities, MountedImage};
use crate::daemon::{self, ExportedImage};
use crate::key::{CacheKey, KeyBuilder};
use crate::oci::Platform;
use crate::registry::PulledImage;
use crate::source::Source;
use crate::sys::{self, Instant};
use crate::validate::{self, Expected, Hit, Lookup};
use crate::wit::host::{Conversion, FileInstall, Layer};
use crate::wit::types::{ConvertRequest, Error, Origin, Outcome, PullPolicy, Timings};

/// A request's source, resolved.
struct Resolved {
    /// The source.
    source: Source,
    /// What the entry records as its source, and a hit must match.
    source_name: String,
    /// The image's name, for the outcome: `docker://…` with the defaults
    /// filled in, or `docker-daemon:NAME`.
    reference: Option<String>,
    /// What the conversion job names as its source.
    job_source: String,
}

impl<H: Capabilities> Cache<'_, H> {
    /// Serves `request` from the cache or builds it. See `cache.convert` in the WIT.
    pub fn convert(&self, request: &ConvertRequest) -> Result<Outcome, Error> {
        let started = Instant::now();
        let platform = check_request(request)?;
        let Resolved { source, source_name, reference, job_source } = self.resolve(request, &platform)?;
        let agent = self.host.digest_file(&request.agent)?;
        let converter = self.host.describe_converter(&request.converter)?;
        let mut key = KeyBuilder::new();
        source.add_to_key(&mut key);
        key.text("agent.sha256", &agent.sha256).text("converter", &converter.identity).optional("size", request.size);
        let key = key.finish();
        let mut timings = Timings {
            resolve_us: started.micros(),
            lookup_us: 0,
            lock_us: 0,
            convert_us: 0,
            inject_us: 0,
            publish_us: 0,
            total_us: 0,
        };

        // A shareable key names the source's content, wherever this host
        // keeps it: an entry made from a copy at another path is the same.
        let identity = source.identity();
        let expected = Expected {
            key: &key,
            agent_sha256: &agent.sha256,
            converter: &converter.identity,
            source: identity.is_none().then_some(source_name.as_str()),
        };
        let step = Instant::now();
        let first_look = validate::lookup(self.host, &expected)?;
        timings.lookup_us = step.micros();
        if let Lookup::Hit(hit) = first_look {
            return self.serve(&key, &source, reference, *hit, timings, started);
        }

        let step = Instant::now();
        let lock = self.host.lock(key.as_str())?;
        timings.lock_us = step.micros();
        // Someone may have built it while this caller waited.
        let rebuilt_because = match validate::lookup(self.host, &expected)? {
            Lookup::Hit(hit) => {
                return self.serve(&key, &source, reference, *hit, timings, started);
            }
            Lookup::Miss => None,
            Lookup::Corrupt(why) => {
                // Manifest first: should this stop halfway, no manifest means no entry.
                self.host.remove(&key.manifest_path())?;
                self.host.remove(&key.image_path())?;
                Some(why)
            }
        };

        let staged = key.staging_path(&lock.token());
        let inputs = BuildInputs {
            key: &key,
            source: &source,
            request,
            platform: &platform,
            agent: &agent,
            converter: &converter,
            staged: &staged,
            source_name: &source_name,
            job_source: &job_source,
        };
        let mut report = RemoteReport::default();
        let remote = request.remote.as_ref().zip(identity.as_deref());
        let built = match remote {
            Some((options, identity)) => {
                match self.fetch_remote(&inputs, options, identity, &lock.token(), &mut timings, &mut report) {
                    Ok(Some(image_bytes)) => Ok(image_bytes),
                    Ok(None) => self.build(&inputs, &mut timings),
                    Err(err) => Err(err),
                }
            }
            None => self.build(&inputs, &mut timings),
        };
        match built {
            Ok(image_bytes) => {
                if let Some((options, identity)) = remote
                    && report.origin == Origin::Built
                    && options.push
                {
                    self.push_remote(&inputs, options, identity, image_bytes, &mut report);
                }
                timings.total_us = started.micros();
                Ok(Outcome {
                    image: key.image_path(),
                    key: key.to_string(),
                    cached: false,
                    kind: kind_of(&source),
                    image_bytes,
                    rebuilt_because,
                    timings,
                    reference,
                    manifest_digest: manifest_digest_of(&source),
                    origin: report.origin,
                    shareable: identity.is_some(),
                    warnings: report.warnings,
                    remote_digest: report.remote_digest,
                    pushed: report.pushed,
                })
            }
            Err(err) => {
                // The build's error is what the caller needs; a failed removal
                // leaves a file the next sweep removes.
                let _ = self.host.remove(&staged);
                lock.fail(&err);
                Err(err)
            }
        }
    }

    /// Resolves the request's source (`platform` checked already).
    fn resolve(&self, request: &ConvertRequest, platform: &str) -> Result<Resolved, Error> {
        let on_path = |source: Source, path: String| Resolved {
            source,
            source_name: request.source.clone(),
            reference: None,
            job_source: path,
        };
        Ok(match SourceName::parse(&request.source)? {
            SourceName::Path(path) => on_path(Source::resolve(Path::new(&path), platform, self.host)?, path),
            SourceName::NamedInLayout(path, name) => {
                on_path(Source::resolve_named(Path::new(&path), platform, Some(&name), self.host)?, path)
            }
            SourceName::Registry(reference) => {
                let pull = request.pull.unwrap_or(PullPolicy::Missing);
                let image = PulledImage::resolve(&reference, platform, pull, self.host)?;
                // The entry records the image by digest, which every tag naming it shares.
                Resolved {
                    source_name: image.source_name(),
                    reference: Some(image.reference.to_string()),
                    job_source: image.reference.to_string(),
                    source: Source::Pulled(image),
                }
            }
            SourceName::Daemon(name) => self.resolve_daemon(&name, platform)?,
        })
    }

    /// Resolves `docker-daemon:NAME`: the engine's overlay2 chain of the image, resolved
    /// like its path (and recorded as that path, so that both name one entry), or else the
    /// image the engine exports (recorded by its image ID).
    fn resolve_daemon(&self, name: &str, platform: &str) -> Result<Resolved, Error> {
        let wanted = Platform::parse(platform)
            .ok_or_else(|| Error::InvalidRequest(format!("platform {platform:?} is not os/arch[/variant]")))?;
        let inspected = daemon::parse_inspect(name, &self.host.inspect_daemon_image(name)?)?;
        let reference = Some(format!("{}{name}", daemon::PREFIX));
        let Some(top) = inspected.overlay2_top.clone() else {
            let image = ExportedImage::export(name, &inspected, &wanted, &self.root, self.host)?;
            let recorded = format!("{}{}", daemon::PREFIX, image.id);
            return Ok(Resolved {
                source_name: recorded.clone(),
                reference,
                job_source: recorded,
                source: Source::Exported(image),
            });
        };
        let mut parts = inspected.platform.splitn(3, '/');
        let (os, arch, variant) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
        if !wanted.matches(os, arch, variant) {
            return Err(Error::UnsupportedSource(format!(
                "the Docker engine's image {name} is for {}, not {wanted}; ask for --platform {}",
                inspected.platform, inspected.platform
            )));
        }
        match Source::resolve(Path::new(&top), platform, self.host)? {
            source @ Source::Overlay2(_) => {
                Ok(Resolved { source, source_name: top.clone(), reference, job_source: top })
            }
            _ => Err(Error::UnsupportedSource(format!(
                "the Docker engine names {top} as the top layer of {name}, which is not an overlay2 layer"
            ))),
        }
    }

    fn serve(
        &self,
        key: &CacheKey,
        source: &Source,
        reference: Option<String>,
        hit: Hit,
        timings: Timings,
        started: Instant,
    ) -> Result<Outcome, Error> {
        // Use is recorded to the minute: a hit on an entry served less than a
        // minute ago costs no host call.
        let recent = hit
            .last_used
            .and_then(|t| sys::now_ns().checked_sub(t))
            .is_some_and(|age| u128::from(age) < RECORD_USE_EVERY.as_nanos());
        if !recent {
            self.host.record_use(&key.manifest_path())?;
        }
        let manifest = hit.manifest;
        let timings = Timings { total_us: started.micros(), ..timings };
        Ok(Outcome {
            image: key.image_path(),
            key: key.to_string(),
            cached: true,
            kind: kind_of(source),
            image_bytes: manifest.image_bytes,
            rebuilt_because: None,
            timings,
            reference,
            manifest_digest: manifest_digest_of(source),
            origin: Origin::Local,
            shareable: source.identity().is_some(),
            warnings: Vec::new(),
            remote_digest: None,
            pushed: false,
        })
    }

    /// Builds the entry into `inputs.staged` and publishes it; returns the
    /// image's length.
    fn build(&self, inputs: &BuildInputs<'_>, timings: &mut Timings) -> Result<u64, Error> {
        let (image_bytes, layers) = self.produce(inputs, inputs.staged, timings)?;
        let manifest = entry_manifest(inputs, layers, image_bytes);
        let step = Instant::now();
        self.host.publish(inputs.staged, &inputs.key.image_path(), &inputs.key.manifest_path(), &manifest.to_json())?;
        timings.publish_us = step.micros();
        Ok(image_bytes)
    }

    /// Converts the source into `staged`, installs the agent and checks the
    /// image; returns its length and the layers the converter applied.
    pub(super) fn produce(
        &self,
        inputs: &BuildInputs<'_>,
        staged: &str,
        timings: &mut Timings,
    ) -> Result<(u64, Vec<String>), Error> {
        let BuildInputs { key, source, request, platform, agent, converter, job_source, .. } = *inputs;
        let install = FileInstall {
            source: request.agent.clone(),
            sha256: agent.sha256.clone(),
            target: AGENT_TARGET.into(),
            mode: AGENT_MODE,
        };
        let layers = match source {
            Source::Overlay2(chain) => chain
                .diffs_bottom_up()
                .into_iter()
                .map(|path| Layer {
                    path,
                    media_type: String::new(),
                    digest: String::new(),
                    size: 0,
                    diff_id: String::new(),
                })
                .collect::<Vec<_>>(),
            Source::Oci(image) => image
                .layers
                .iter()
                .zip(image.diff_ids(self.host)?)
                .map(|(l, diff_id)| Layer {
                    path: l.path.clone(),
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    diff_id,
                })
                .collect(),
            Source::Pulled(image) => image
                .fetch_layers(self.host)?
                .into_iter()
                .zip(&image.layers)
                .map(|((path, diff_id), l)| Layer {
                    path,
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    diff_id,
                })
                .collect(),
            Source::Exported(image) => image
                .layers
                .iter()
                .map(|(path, digest, size)| Layer {
                    path: path.clone(),
                    media_type: daemon::EXPORTED_LAYER_TYPE.to_owned(),
                    digest: digest.clone(),
                    size: *size,
                    diff_id: digest.clone(),
                })
                .collect(),
        };
        let job = Conversion {
            converter: request.converter.clone(),
            kind: kind_of(source),
            source: job_source.to_owned(),
            layers: layers.clone(),
            platform: platform.to_owned(),
            output: staged.to_owned(),
            size: request.size,
            key: key.to_string(),
            agent: converter.installs_agent.then(|| install.clone()),
        };

        let step = Instant::now();
        self.host.run_converter(&job)?;
        timings.convert_us = step.micros();
        // Check before mounting: the kernel must never be handed a broken image.
        validate::check_image(&self.root.join(staged), None)
            .map_err(|why| Error::Corrupt(format!("the converter produced an unusable image: {why}")))?;

        if !converter.installs_agent {
            let step = Instant::now();
            let mounted = self.host.mount_image(staged)?;
            // On an install error the mount is dropped, which unmounts.
            mounted.install(&install)?;
            mounted.unmount()?;
            timings.inject_us = step.micros();
        }

        let image_bytes = validate::check_image(&self.root.join(staged), None)
            .map_err(|why| Error::Corrupt(format!("the image is unusable after installing the agent: {why}")))?;
        Ok((image_bytes, layers.into_iter().map(|l| l.path).collect()))
    }
}

/// The digest of the selected image manifest, for a layout or a registry.
fn manifest_digest_of(source: &Source) -> Option<String> {
    match source {
        Source::Pulled(image) => Some(image.manifest_digest.clone()),
        Source::Oci(image) => Some(image.manifest_digest.clone()),
        Source::Overlay2(_) | Source::Exported(_) => None,
    }
}

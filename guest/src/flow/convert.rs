//! One conversion: look up, lock, look again, then serve the entry or build
//! it (convert, install the agent, check, publish); on any failure after the
//! build starts, remove the temporary image and report a typed error.

use std::path::Path;

use super::Cache;
use super::request::{AGENT_MODE, AGENT_TARGET, RECORD_USE_EVERY, SourceName, check_request};
use crate::capabilities::{BuildLock, Capabilities, MountedImage};
use crate::key::{CacheKey, KeyBuilder};
use crate::manifest::{AgentRecord, FORMAT, Manifest};
use crate::registry::PulledImage;
use crate::source::Source;
use crate::sys::{self, Instant};
use crate::validate::{self, Expected, Hit, Lookup};
use crate::wit::host::{Conversion, ConverterInfo, FileDigest, FileInstall, Layer};
use crate::wit::types::{ConvertRequest, Error, Outcome, PullPolicy, SourceKind, Timings};

/// Everything one build starts from: what the request resolved to, and
/// where the converter writes.
struct BuildInputs<'a> {
    /// The entry's key.
    key: &'a CacheKey,
    /// The resolved source.
    source: &'a Source,
    /// The request as the caller made it.
    request: &'a ConvertRequest,
    /// The platform checked from the request (or the default).
    platform: &'a str,
    /// The agent's digest and size.
    agent: &'a FileDigest,
    /// What the host says of the converter.
    converter: &'a ConverterInfo,
    /// The cache-relative temporary image, under `tmp/`.
    staged: &'a str,
    /// What the entry records as its source.
    source_name: &'a str,
}

fn now_secs() -> u64 {
    sys::now_ns() / 1_000_000_000
}

impl<H: Capabilities> Cache<'_, H> {
    /// Serves `request` from the cache or builds it. See `cache.convert` in the WIT.
    pub fn convert(&self, request: &ConvertRequest) -> Result<Outcome, Error> {
        let started = Instant::now();
        let platform = check_request(request)?;
        let source = match SourceName::parse(&request.source)? {
            SourceName::Path(path) => Source::resolve(Path::new(&path), &platform, self.host)?,
            SourceName::NamedInLayout(path, name) => {
                Source::resolve_named(Path::new(&path), &platform, Some(&name), self.host)?
            }
            SourceName::Registry(reference) => Source::Pulled(PulledImage::resolve(
                &reference,
                &platform,
                request.pull.unwrap_or(PullPolicy::Missing),
                self.host,
            )?),
        };
        // What the entry records as its source, and a hit must match: for an
        // image by name, the image by digest, which every tag naming it shares.
        let source_name = match &source {
            Source::Pulled(image) => image.source_name(),
            _ => request.source.clone(),
        };
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

        let expected =
            Expected { key: &key, agent_sha256: &agent.sha256, converter: &converter.identity, source: &source_name };
        let step = Instant::now();
        let first_look = validate::lookup(self.host, &expected)?;
        timings.lookup_us = step.micros();
        if let Lookup::Hit(hit) = first_look {
            return self.serve(&key, &source, *hit, timings, started);
        }

        let step = Instant::now();
        let lock = self.host.lock(key.as_str())?;
        timings.lock_us = step.micros();
        // Someone may have built it while this caller waited.
        let rebuilt_because = match validate::lookup(self.host, &expected)? {
            Lookup::Hit(hit) => {
                return self.serve(&key, &source, *hit, timings, started);
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
        };
        let built = self.build(&inputs, &mut timings);
        match built {
            Ok(image_bytes) => {
                timings.total_us = started.micros();
                Ok(Outcome {
                    image: key.image_path(),
                    key: key.to_string(),
                    cached: false,
                    kind: kind_of(&source),
                    image_bytes,
                    rebuilt_because,
                    timings,
                    reference: reference_of(&source),
                    manifest_digest: manifest_digest_of(&source),
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

    fn serve(
        &self,
        key: &CacheKey,
        source: &Source,
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
            reference: reference_of(source),
            manifest_digest: manifest_digest_of(source),
        })
    }

    fn build(&self, inputs: &BuildInputs<'_>, timings: &mut Timings) -> Result<u64, Error> {
        let BuildInputs { key, source, request, platform, agent, converter, staged, source_name } = *inputs;
        let install = FileInstall {
            source: request.agent.clone(),
            sha256: agent.sha256.clone(),
            target: AGENT_TARGET.into(),
            mode: AGENT_MODE,
        };
        let (layers, recorded_platform) = match source {
            Source::Overlay2(chain) => (
                chain
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
                None,
            ),
            Source::Oci(image) => (
                image
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
                Some(format!("{} {}", image.platform, image.manifest_digest)),
            ),
            Source::Pulled(image) => (
                image
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
                Some(format!("{} {}", image.platform, image.manifest_digest)),
            ),
        };
        let job_source = match (source, SourceName::parse(&request.source)?) {
            (Source::Pulled(image), _) => image.reference.to_string(),
            (_, SourceName::NamedInLayout(path, _) | SourceName::Path(path)) => path,
            (_, SourceName::Registry(r)) => r.to_string(),
        };
        let job = Conversion {
            converter: request.converter.clone(),
            kind: kind_of(source),
            source: job_source,
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

        let manifest = Manifest {
            format: FORMAT,
            key: key.to_string(),
            kind: kind_name(source).into(),
            source: source_name.to_owned(),
            layers: layers.into_iter().map(|l| l.path).collect(),
            platform: recorded_platform,
            agent: AgentRecord { path: request.agent.clone(), sha256: agent.sha256.clone(), size: agent.size },
            converter: converter.identity.clone(),
            requested_size: request.size,
            image_bytes,
            created: now_secs(),
            builder: concat!("rootfs-cache-guest ", env!("CARGO_PKG_VERSION")).into(),
            image_sha256: None,
        };
        let step = Instant::now();
        self.host.publish(staged, &key.image_path(), &key.manifest_path(), &manifest.to_json())?;
        timings.publish_us = step.micros();
        Ok(image_bytes)
    }
}

fn kind_of(source: &Source) -> SourceKind {
    match source {
        Source::Overlay2(_) => SourceKind::Overlay2,
        Source::Oci(_) => SourceKind::OciLayout,
        Source::Pulled(_) => SourceKind::Registry,
    }
}

fn kind_name(source: &Source) -> &'static str {
    match source {
        Source::Overlay2(_) => "overlay2",
        Source::Oci(_) => "oci-layout",
        Source::Pulled(_) => "registry",
    }
}

/// The reference of an image by name, defaults filled in.
fn reference_of(source: &Source) -> Option<String> {
    match source {
        Source::Pulled(image) => Some(image.reference.to_string()),
        _ => None,
    }
}

/// The digest of the selected image manifest, for a layout or a registry.
fn manifest_digest_of(source: &Source) -> Option<String> {
    match source {
        Source::Pulled(image) => Some(image.manifest_digest.clone()),
        Source::Oci(image) => Some(image.manifest_digest.clone()),
        Source::Overlay2(_) => None,
    }
}

//! The order of one request: validate, resolve, key, look up, lock, look
//! again, convert, inject, check, publish; and on any failure after the build
//! starts, remove the temporary image and report a typed error.

use crate::sys::{self, Instant};
use std::path::{Component, Path, PathBuf};

use crate::capabilities::{BuildLock, Capabilities, MountedImage};
use crate::error::SourceError;
use crate::key::{CacheKey, KeyBuilder};
use crate::manifest::{AgentRecord, FORMAT, MAX_MANIFEST_BYTES, Manifest};
use crate::source::Source;
use crate::validate::{self, Expected, Hit, Lookup};
use crate::wit::host::{Conversion, FileInstall, Layer};
use crate::wit::types::{ConvertRequest, Entry, Error, ImageInfo, Outcome, SourceKind, Timings};

/// Where the agent goes inside every image.
pub const AGENT_TARGET: &str = "/sbin/vm-agent";
/// The agent's mode.
pub const AGENT_MODE: u32 = 0o755;
/// The platform picked from an OCI index when the request names none.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";
/// Smallest image size accepted: below this no ext4 root filesystem fits.
pub const MIN_IMAGE_BYTES: u64 = 1 << 20;
/// Largest image size accepted (16 TiB, ext4's limit with 4 KiB blocks).
pub const MAX_IMAGE_BYTES: u64 = 16 << 40;
/// How often a hit records its use, at most.
pub const RECORD_USE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest path accepted (Linux's `PATH_MAX`, including the NUL).
pub const MAX_PATH_BYTES: usize = 4095;
/// The errno WASI calls give for a path under no preopen (wasi-libc's
/// `ENOTCAPABLE`).
const NOT_PREOPENED: i32 = 76;

/// What `inspect` says of an absolute image path under no preopen: what
/// the host must do instead.
fn not_preopened(image: &str) -> String {
    format!(
        "image {image} is in no directory the host preopened for this call: a host must preopen the \
         image's directory read-only at its own path before calling inspect with an absolute path (the \
         Rust host and the CLI do), or pass a cache-relative path such as images/<key>.ext4"
    )
}

/// The cache, as one request sees it: the host's capabilities and the
/// read-only view of the cache directory.
pub struct Cache<'h, H> {
    host: &'h H,
    root: PathBuf,
}

fn now_secs() -> u64 {
    sys::now_ns() / 1_000_000_000
}

/// Checks that `path` is an absolute, normalised host path of sane length.
pub fn check_host_path(what: &str, path: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::InvalidRequest(format!("{what} {path:?} {why}")));
    if path.is_empty() {
        return Err(Error::InvalidRequest(format!("{what} is empty")));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::InvalidRequest(format!(
            "{what} is {} bytes long; paths are limited to {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    if !path.starts_with('/') {
        return bad("is not an absolute path");
    }
    if Path::new(path).components().any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || path.contains("//")
        || (path.len() > 1 && path.ends_with('/'))
    {
        return bad("is not normalised (no `.`, `..`, `//` or trailing `/`)");
    }
    Ok(())
}

/// Checks a converter name: `oci2rootfs`, `exact`, or `command:<absolute path>`.
pub fn check_converter(name: &str) -> Result<(), Error> {
    match name {
        "oci2rootfs" | "exact" => Ok(()),
        _ => match name.strip_prefix("command:") {
            Some(path) => check_host_path("converter command", path),
            None => Err(Error::InvalidRequest(format!(
                "converter {name:?} is unknown; use oci2rootfs, exact or command:<absolute path>"
            ))),
        },
    }
}

/// Checks the whole request before anything is read.
pub fn check_request(request: &ConvertRequest) -> Result<String, Error> {
    check_host_path("source", &request.source)?;
    check_host_path("agent", &request.agent)?;
    check_converter(&request.converter)?;
    if let Some(size) = request.size {
        if size < MIN_IMAGE_BYTES {
            return Err(Error::InvalidRequest(format!(
                "size {size} is below the minimum of {MIN_IMAGE_BYTES} bytes (1 MiB)"
            )));
        }
        if size > MAX_IMAGE_BYTES {
            return Err(Error::InvalidRequest(format!(
                "size {size} is above the maximum of {MAX_IMAGE_BYTES} bytes (16 TiB)"
            )));
        }
    }
    let platform = request.platform.clone().unwrap_or_else(|| DEFAULT_PLATFORM.to_owned());
    if crate::oci::Platform::parse(&platform).is_none() {
        return Err(Error::InvalidRequest(format!("platform {platform:?} is not os/arch or os/arch/variant")));
    }
    Ok(platform)
}

impl<'h, H: Capabilities> Cache<'h, H> {
    /// A cache whose directory the guest sees at `root`.
    pub fn new(host: &'h H, root: impl Into<PathBuf>) -> Self {
        Self { host, root: root.into() }
    }

    /// The host's capabilities.
    pub fn host(&self) -> &H {
        self.host
    }

    /// Where the guest sees the cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Serves `request` from the cache or builds it. See `cache.convert` in the WIT.
    pub fn convert(&self, request: &ConvertRequest) -> Result<Outcome, Error> {
        let started = Instant::now();
        let platform = check_request(request)?;
        let source = Source::resolve(Path::new(&request.source), &platform, self.host)?;
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

        let expected = Expected {
            key: &key,
            agent_sha256: &agent.sha256,
            converter: &converter.identity,
            source: &request.source,
        };
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
        let built = self.build(&key, &source, request, &platform, &agent, &converter, &staged, &mut timings);
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
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        key: &CacheKey,
        source: &Source,
        request: &ConvertRequest,
        platform: &str,
        agent: &crate::wit::host::FileDigest,
        converter: &crate::wit::host::ConverterInfo,
        staged: &str,
        timings: &mut Timings,
    ) -> Result<u64, Error> {
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
        };
        let job = Conversion {
            converter: request.converter.clone(),
            kind: kind_of(source),
            source: request.source.clone(),
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
            source: request.source.clone(),
            layers: layers.into_iter().map(|l| l.path).collect(),
            platform: recorded_platform,
            agent: AgentRecord { path: request.agent.clone(), sha256: agent.sha256.clone(), size: agent.size },
            converter: converter.identity.clone(),
            requested_size: request.size,
            image_bytes,
            created: now_secs(),
            builder: concat!("rootfs-cache-guest ", env!("CARGO_PKG_VERSION")).into(),
        };
        let step = Instant::now();
        self.host.publish(staged, &key.image_path(), &key.manifest_path(), &manifest.to_json())?;
        timings.publish_us = step.micros();
        Ok(image_bytes)
    }

    /// Reads an image's superblock. See `cache.inspect` in the WIT.
    pub fn inspect(&self, image: &str) -> Result<ImageInfo, Error> {
        let path = if image.starts_with('/') {
            check_host_path("image", image)?;
            PathBuf::from(image)
        } else {
            if image.is_empty() || Path::new(image).components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(Error::InvalidRequest(format!("image {image:?} is not a path inside the cache")));
            }
            self.root.join(image)
        };
        let (sb, len) = validate::read_superblock(&path).map_err(|e| match sys::not_regular(&e) {
            // Never opened: a FIFO would block.
            Some(refusal) => {
                Error::InvalidRequest(format!("{} {refusal}: inspect reads an image file", path.display()))
            }
            None if image.starts_with('/') && e.raw_os_error() == Some(NOT_PREOPENED) => {
                Error::InvalidRequest(not_preopened(image))
            }
            None => SourceError::io(&path, &e).into(),
        })?;
        Ok(match sb {
            None => ImageInfo {
                file_bytes: len,
                magic: false,
                block_size: 0,
                blocks_count: 0,
                free_blocks: 0,
                inodes_count: 0,
                free_inodes: 0,
                uuid: String::new(),
                label: String::new(),
                geometry_error: Some(format!("{len} bytes is too short for an ext4 superblock")),
            },
            Some(sb) => ImageInfo {
                file_bytes: len,
                magic: sb.has_magic(),
                block_size: sb.block_size().unwrap_or(0),
                blocks_count: sb.blocks_count,
                free_blocks: sb.free_blocks,
                inodes_count: sb.inodes_count,
                free_inodes: sb.free_inodes,
                uuid: sb.uuid_string(),
                label: sb.label.clone(),
                geometry_error: sb.check_geometry(len).err(),
            },
        })
    }

    /// Lists every entry. See `cache.list` in the WIT.
    pub fn list(&self) -> Result<Vec<Entry>, Error> {
        let images = self.root.join("images");
        let names = match sys::read_dir(&images) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SourceError::io(&images, &e).into()),
        };
        let mut keys = Vec::new();
        for name in &names {
            let stem = name.strip_suffix(".json").or_else(|| name.strip_suffix(".ext4"));
            if let Some(key) = stem.and_then(CacheKey::parse)
                && !keys.contains(&key)
            {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys.iter().map(|key| self.entry(key)).collect())
    }

    fn entry(&self, key: &CacheKey) -> Entry {
        let manifest_path = self.root.join(key.manifest_path());
        let image_path = self.root.join(key.image_path());
        let blank = || Entry {
            key: key.to_string(),
            image: key.image_path(),
            source: String::new(),
            kind: SourceKind::Overlay2,
            agent_sha256: String::new(),
            converter: String::new(),
            image_bytes: sys::metadata(&image_path).map_or(0, |m| m.len),
            created: 0,
            last_used: 0,
            problem: None,
        };
        let manifest = match crate::probe::read_small(&manifest_path, MAX_MANIFEST_BYTES) {
            Ok(bytes) => Manifest::parse(&bytes),
            Err(e) => Err(format!("no readable manifest: {e}")),
        };
        let manifest = match manifest {
            Ok(m) => m,
            Err(problem) => {
                return Entry { problem: Some(problem), ..blank() };
            }
        };
        let last_used = sys::metadata(&manifest_path)
            .ok()
            .and_then(|m| m.modified_ns)
            .map_or(manifest.created, |ns| ns / 1_000_000_000);
        let problem = if manifest.key != key.as_str() {
            Some(format!("the manifest records key {}", manifest.key))
        } else {
            validate::check_image(&image_path, Some(manifest.image_bytes)).err()
        };
        Entry {
            source: manifest.source,
            kind: if manifest.kind == "oci-layout" { SourceKind::OciLayout } else { SourceKind::Overlay2 },
            agent_sha256: manifest.agent.sha256,
            converter: manifest.converter,
            image_bytes: manifest.image_bytes,
            created: manifest.created,
            last_used,
            problem,
            ..blank()
        }
    }
}

fn kind_of(source: &Source) -> SourceKind {
    match source {
        Source::Overlay2(_) => SourceKind::Overlay2,
        Source::Oci(_) => SourceKind::OciLayout,
    }
}

fn kind_name(source: &Source) -> &'static str {
    match source {
        Source::Overlay2(_) => "overlay2",
        Source::Oci(_) => "oci-layout",
    }
}

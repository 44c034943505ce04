//! The library API: open a cache, ask it for images.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::audit::Verdict;
use crate::bindings::rootfs::cache::types as wit;
use crate::cache_dir::CacheDir;
use crate::capabilities::Capabilities;
use crate::capabilities::lock::LockService;
use crate::digest::DigestMemo;
use crate::engine::{ComponentSource, GuestEngine, LoadPath};
use crate::error::{Error, Result};
use crate::observer::Observer;
use crate::policy::Policy;
use crate::shared::Shared;

/// A converter, as requests and the CLI name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConverterSpec {
    /// The `oci2rootfs` crate, in-process.
    Oci2rootfs,
    /// The exact converter (the default).
    #[default]
    Exact,
    /// An external command with oci2rootfs's command-line contract.
    Command(PathBuf),
}

impl FromStr for ConverterSpec {
    type Err = Error;

    /// `oci2rootfs`, `exact` or `command:<absolute path>`.
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "oci2rootfs" => Ok(Self::Oci2rootfs),
            "exact" => Ok(Self::Exact),
            _ => match text.strip_prefix("command:") {
                Some(path) if Path::new(path).is_absolute() => Ok(Self::Command(PathBuf::from(path))),
                Some(path) => Err(Error::InvalidRequest(format!("converter command {path:?} is not an absolute path"))),
                None => Err(Error::InvalidRequest(format!(
                    "converter {text:?} is unknown; use oci2rootfs, exact or command:<absolute path>"
                ))),
            },
        }
    }
}

impl fmt::Display for ConverterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oci2rootfs => f.write_str("oci2rootfs"),
            Self::Exact => f.write_str("exact"),
            Self::Command(path) => write!(f, "command:{}", path.display()),
        }
    }
}

/// One request: a source and an agent, and how to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// An overlay2 layer directory or an OCI image layout.
    pub source: PathBuf,
    /// The agent binary to install at `/sbin/vm-agent`.
    pub agent: PathBuf,
    /// Image size in bytes; `None` lets the converter decide.
    pub size: Option<u64>,
    /// Which converter builds the image.
    pub converter: ConverterSpec,
    /// `os/arch[/variant]` for OCI indexes; `None` means `linux/amd64`.
    pub platform: Option<String>,
}

impl Request {
    /// A request with the default converter, size and platform.
    pub fn new(source: impl Into<PathBuf>, agent: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            agent: agent.into(),
            size: None,
            converter: ConverterSpec::default(),
            platform: None,
        }
    }

    /// Sets the image size.
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    /// Sets the converter.
    pub fn converter(mut self, converter: ConverterSpec) -> Self {
        self.converter = converter;
        self
    }

    /// Sets the platform for OCI indexes.
    pub fn platform(mut self, platform: impl Into<String>) -> Self {
        self.platform = Some(platform.into());
        self
    }
}

/// The kind of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A Docker overlay2 layer directory.
    Overlay2,
    /// An OCI image layout.
    OciLayout,
}

impl From<wit::SourceKind> for SourceKind {
    fn from(k: wit::SourceKind) -> Self {
        match k {
            wit::SourceKind::Overlay2 => Self::Overlay2,
            wit::SourceKind::OciLayout => Self::OciLayout,
        }
    }
}

/// Where a request's time went, in microseconds, as the guest measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// Source detection and key derivation.
    pub resolve_us: u64,
    /// Lookup and validation.
    pub lookup_us: u64,
    /// Waiting for the build lock.
    pub lock_us: u64,
    /// The converter.
    pub convert_us: u64,
    /// Mount, agent install, unmount.
    pub inject_us: u64,
    /// fsync and rename.
    pub publish_us: u64,
    /// The whole request inside the guest.
    pub total_us: u64,
}

/// A bootable image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Absolute path of the image. Treat it as read-only: it is shared by
    /// every request for the same key.
    pub image: PathBuf,
    /// The cache key.
    pub key: String,
    /// Whether it was served without a build.
    pub cached: bool,
    /// The source's kind.
    pub kind: SourceKind,
    /// The image's length.
    pub image_bytes: u64,
    /// Why a cached entry was rebuilt, if it was.
    pub rebuilt_because: Option<String>,
    /// Where the time went.
    pub timings: Timings,
}

/// What an image's superblock says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The file's length.
    pub file_bytes: u64,
    /// Whether the ext4 magic is there.
    pub magic: bool,
    /// Block size.
    pub block_size: u32,
    /// Blocks declared.
    pub blocks_count: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Inodes declared.
    pub inodes_count: u32,
    /// Free inodes.
    pub free_inodes: u32,
    /// Filesystem UUID.
    pub uuid: String,
    /// Volume label.
    pub label: String,
    /// Why the geometry is unsound, if it is.
    pub geometry_error: Option<String>,
}

/// One cache entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its key.
    pub key: String,
    /// Absolute image path.
    pub image: PathBuf,
    /// The source it was built from.
    pub source: String,
    /// The source's kind.
    pub kind: SourceKind,
    /// SHA-256 of its agent.
    pub agent_sha256: String,
    /// The converter's identity.
    pub converter: String,
    /// The image's length.
    pub image_bytes: u64,
    /// Build time, Unix seconds.
    pub created: u64,
    /// Last use, Unix seconds.
    pub last_used: u64,
    /// Why it does not validate, if it does not.
    pub problem: Option<String>,
}

/// What [`RootfsCache::sweep`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Temporary files removed (cache-relative): their builders are gone.
    pub removed: Vec<String>,
    /// Lock files removed: no process held them.
    pub stale_locks: u32,
    /// Temporary files kept: their builder is alive.
    pub busy: Vec<String>,
    /// Loop devices detached: they were attached to a temporary image whose
    /// builder is gone.
    pub detached_loop_devices: Vec<String>,
}

/// What [`RootfsCache::gc`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Entries removed, in the order they went.
    pub removed: Vec<Entry>,
    /// Bytes of all entries before.
    pub bytes_before: u64,
    /// Bytes of all entries after.
    pub bytes_after: u64,
    /// Entries kept although they were candidates: pinned or being rebuilt.
    pub kept_pinned: u32,
}

/// What [`RootfsCache::verify`] found and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub checked: u32,
    /// Broken entries, each with its problem; all were removed.
    pub broken: Vec<Entry>,
}

/// How to open a cache.
#[derive(Clone)]
pub struct Config {
    /// The cache directory; created when missing.
    pub cache_dir: PathBuf,
    /// What the guest may ask for.
    pub policy: Policy,
    /// The capability backends.
    pub capabilities: Capabilities,
    /// The component to run.
    pub component: ComponentSource,
    /// Keep the compiled component in `<cache>/engine/`.
    pub precompile: bool,
    /// Preallocate instance slots (wasmtime's pooling allocator): faster
    /// requests for a long-lived process serving many, a slower start for a
    /// process serving one. On by default; the CLI turns it off.
    pub pooling: bool,
    /// Receives progress.
    pub observer: Option<Arc<dyn Observer>>,
    /// When set, every build is followed by a garbage collection down to
    /// this many bytes (the new entry is pinned).
    pub max_cache_bytes: Option<u64>,
}

impl Config {
    /// A configuration with the native capabilities, the embedded component
    /// and a policy that allows any source, agent and converter.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            policy: Policy::default(),
            capabilities: Capabilities::native(),
            component: std::env::var_os("ROOTFS_CACHE_COMPONENT")
                .map_or(ComponentSource::Embedded, |p| ComponentSource::File(p.into())),
            precompile: true,
            pooling: true,
            observer: None,
            max_cache_bytes: None,
        }
    }

    /// Replaces the policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Replaces the capability backends (e.g. with [`Capabilities::fake`]).
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Runs another component.
    pub fn component(mut self, component: ComponentSource) -> Self {
        self.component = component;
        self
    }

    /// Sets the progress observer.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Turns the pooling allocator on or off.
    pub fn pooling(mut self, on: bool) -> Self {
        self.pooling = on;
        self
    }

    /// Keeps the cache at most this large, collecting after every build.
    pub fn max_cache_bytes(mut self, bytes: u64) -> Self {
        self.max_cache_bytes = Some(bytes);
        self
    }
}

/// A cache of bootable ext4 images. Cheap to clone; every clone shares the
/// engine, the locks and the digest memo. Requests may run concurrently.
#[derive(Clone)]
pub struct RootfsCache {
    engine: Arc<GuestEngine>,
    shared: Arc<Shared>,
    /// Set once this process has swept what crashed builders left.
    swept: Arc<tokio::sync::OnceCell<()>>,
    max_cache_bytes: Option<u64>,
}

/// The largest size the guest accepts in a request (16 TiB, ext4's limit
/// with 4 KiB blocks); a larger one is `invalid-request`.
const MAX_VALID_IMAGE_BYTES: u64 = 16 << 40;

fn utf8<'a>(what: &str, path: &'a Path) -> Result<&'a str> {
    path.to_str().ok_or_else(|| Error::InvalidRequest(format!("{what} {} is not valid UTF-8", path.display())))
}

/// Resolves a path given by the caller, which must exist.
fn existing(what: &str, path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        return Err(Error::InvalidRequest(format!("{what} is empty")));
    }
    if path.as_os_str().len() > 4095 {
        return Err(Error::InvalidRequest(format!(
            "{what} is {} bytes long; paths are limited to 4095",
            path.as_os_str().len()
        )));
    }
    crate::real_path::real_path(path).map_err(|e| Error::io(format!("{what} {}", path.display()), &e))
}

impl RootfsCache {
    /// Opens (creating when missing) the cache and loads the component.
    ///
    /// Errors: `Config` (the cache directory is not a writable directory, the
    /// policy names another cache), `Component`.
    pub fn open(config: Config) -> Result<Self> {
        let audit = config.policy.audit_log.as_deref().map(crate::audit::AuditLog::open).transpose()?;
        // A cache the policy does not serve is refused before anything is
        // created in it, and the refusal is logged (as request 0: no request
        // runs before the cache is open).
        let started = Instant::now();
        let refuse = |error: Error| {
            if let Some(audit) = &audit {
                let arguments = json!({ "cache_dir": config.cache_dir.to_string_lossy() });
                audit.record(
                    0,
                    "open",
                    &arguments,
                    Verdict::of::<()>(&Err(error.clone())),
                    Some(&error),
                    started.elapsed(),
                );
            }
            error
        };
        let named = config.cache_dir.canonicalize().or_else(|_| std::path::absolute(&config.cache_dir));
        config.policy.check_cache_dir(named.as_deref().unwrap_or(&config.cache_dir)).map_err(refuse)?;
        let cache = CacheDir::open(&config.cache_dir)?;
        config.policy.check_cache_dir(cache.path()).map_err(refuse)?;
        let engine = GuestEngine::load(
            &config.component,
            config.precompile.then(|| cache.root()),
            config.policy.limits.guest_memory_bytes,
            config.pooling,
        )?;
        let shared = Shared {
            locks: Arc::new(LockService::new(config.capabilities.cross_process_lock.clone())),
            conversions: tokio::sync::Semaphore::new(config.policy.limits.max_parallel_conversions),
            cache: Arc::new(cache),
            policy: config.policy,
            caps: config.capabilities,
            digests: DigestMemo::default(),
            observer: config.observer,
            audit,
            next_request: AtomicU64::new(1),
            peak_guest_memory: Default::default(),
        };
        Ok(Self {
            engine: Arc::new(engine),
            shared: Arc::new(shared),
            swept: Arc::new(tokio::sync::OnceCell::new()),
            max_cache_bytes: config.max_cache_bytes,
        })
    }

    /// The cache directory (canonical).
    pub fn cache_dir(&self) -> &Path {
        self.shared.cache.path()
    }

    /// Whether this process compiled the component or loaded it precompiled.
    pub fn load_path(&self) -> LoadPath {
        self.engine.load_path
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// Returns a bootable image for `request`: a valid cached one, or a new
    /// one built, injected and published. See the WIT's `cache.convert`.
    pub async fn convert(&self, request: &Request) -> Result<Outcome> {
        self.sweep_once().await;
        let started = Instant::now();
        let arguments = || {
            json!({
                "source": request.source.to_string_lossy(),
                "agent": request.agent.to_string_lossy(),
                "converter": request.converter.to_string(),
                "size": request.size,
                "platform": request.platform,
            })
        };
        let (wit_request, root, agent) =
            self.admit(request).map_err(|e| self.audit_request(None, "convert", &arguments(), started, e))?;
        let mut store = self
            .engine
            .store(&self.shared, std::slice::from_ref(&root))
            .map_err(|e| self.audit_request(None, "convert", &arguments(), started, e))?;
        store.data_mut().resolved_agent = Some((wit_request.agent.clone(), agent));
        let result = match self.engine.instantiate(&mut store).await {
            Ok(instance) => guest_result(instance.rootfs_cache_cache().call_convert(&mut store, &wit_request).await),
            Err(e) => Err(e),
        };
        let outcome = self.settle(store, "convert", arguments, started, result).await?;
        if let (false, Some(max)) = (outcome.cached, self.max_cache_bytes)
            && let Err(e) = self.gc(max, std::slice::from_ref(&outcome.key)).await
        {
            tracing::warn!(error = %e, "garbage collection after the build failed");
        }
        Ok(Outcome {
            image: self.cache_dir().join(&outcome.image),
            key: outcome.key,
            cached: outcome.cached,
            kind: outcome.kind.into(),
            image_bytes: outcome.image_bytes,
            rebuilt_because: outcome.rebuilt_because,
            timings: Timings {
                resolve_us: outcome.timings.resolve_us,
                lookup_us: outcome.timings.lookup_us,
                lock_us: outcome.timings.lock_us,
                convert_us: outcome.timings.convert_us,
                inject_us: outcome.timings.inject_us,
                publish_us: outcome.timings.publish_us,
                total_us: outcome.timings.total_us,
            },
        })
    }

    /// Reads an image's superblock and checks its geometry. `image` is any
    /// file (it is opened read-only) or a path relative to the cache.
    pub async fn inspect(&self, image: &Path) -> Result<ImageInfo> {
        let started = Instant::now();
        let arguments = || json!({ "image": image.to_string_lossy() });
        // An image outside the cache is preopened (its directory, read-only)
        // for this call: the guest sees nothing else of the host.
        let located = if image.is_absolute() || image.exists() {
            existing("image", image).and_then(|real| {
                let parent = real.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
                Ok((utf8("image", &real)?.to_owned(), vec![parent]))
            })
        } else {
            utf8("image", image).map(|path| (path.to_owned(), Vec::new()))
        };
        let (guest_path, preopen) =
            located.map_err(|e| self.audit_request(None, "inspect", &arguments(), started, e))?;
        let mut store = self
            .engine
            .store(&self.shared, &preopen)
            .map_err(|e| self.audit_request(None, "inspect", &arguments(), started, e))?;
        let result = match self.engine.instantiate(&mut store).await {
            Ok(instance) => guest_result(instance.rootfs_cache_cache().call_inspect(&mut store, &guest_path).await),
            Err(e) => Err(e),
        };
        let info = self.settle(store, "inspect", arguments, started, result).await?;
        Ok(ImageInfo {
            file_bytes: info.file_bytes,
            magic: info.magic,
            block_size: info.block_size,
            blocks_count: info.blocks_count,
            free_blocks: info.free_blocks,
            inodes_count: info.inodes_count,
            free_inodes: info.free_inodes,
            uuid: info.uuid,
            label: info.label,
            geometry_error: info.geometry_error,
        })
    }

    /// Lists every entry with its manifest and whether it validates.
    pub async fn list(&self) -> Result<Vec<Entry>> {
        let started = Instant::now();
        let mut store = self.cache_store("list", &json!({}), started)?;
        let result = match self.engine.instantiate(&mut store).await {
            Ok(instance) => guest_result(instance.rootfs_cache_cache().call_list_entries(&mut store).await),
            Err(e) => Err(e),
        };
        let entries = self.settle(store, "list", || json!({}), started, result).await?;
        Ok(entries.into_iter().map(|e| self.entry(e)).collect())
    }

    fn entry(&self, e: wit::Entry) -> Entry {
        Entry {
            image: self.cache_dir().join(&e.image),
            key: e.key,
            source: e.source,
            kind: e.kind.into(),
            agent_sha256: e.agent_sha256,
            converter: e.converter,
            image_bytes: e.image_bytes,
            created: e.created,
            last_used: e.last_used,
            problem: e.problem,
        }
    }

    /// Removes what crashed builders left: temporary images and lock files
    /// whose key nobody holds (never a live builder's), and loop devices
    /// still attached to such images. See the WIT's `cache.sweep`.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let started = Instant::now();
        let mut store = self.cache_store("sweep", &json!({}), started)?;
        let result = match self.engine.instantiate(&mut store).await {
            Ok(instance) => guest_result(instance.rootfs_cache_cache().call_sweep(&mut store).await),
            Err(e) => Err(e),
        };
        let report = self.settle(store, "sweep", || json!({}), started, result).await?;
        let mut detached = Vec::new();
        let tmp = self.cache_dir().join("tmp");
        for (number, backing) in crate::capabilities::mounter::loop_device::attached_under(&tmp) {
            let name = backing.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let Some(key) = name.get(..64) else { continue };
            // A live builder holds its key's lock for as long as its image is attached.
            if let Ok(Some(_lock)) = self.shared.locks.try_lock(self.shared.cache.clone(), key).await
                && crate::capabilities::mounter::loop_device::detach_number(number).is_ok()
            {
                detached.push(format!("/dev/loop{number}"));
            }
        }
        Ok(SweepReport {
            removed: report.removed,
            stale_locks: report.stale_locks,
            busy: report.busy,
            detached_loop_devices: detached,
        })
    }

    /// Sweeps once per process, and only when there is something to sweep.
    async fn sweep_once(&self) {
        self.swept
            .get_or_init(|| async {
                let untidy =
                    |dir: &str| self.shared.cache.root().read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
                if (untidy("tmp") || untidy("locks"))
                    && let Err(e) = self.sweep().await
                {
                    tracing::warn!(error = %e, "sweeping the cache failed");
                }
            })
            .await;
    }

    /// Evicts entries until they take at most `max_bytes`; `pins` are keys
    /// or image paths that stay. See the WIT's `cache.gc`.
    pub async fn gc(&self, max_bytes: u64, pins: &[String]) -> Result<GcReport> {
        let started = Instant::now();
        let arguments = || json!({ "max_bytes": max_bytes, "pins": pins });
        let mut store = self.cache_store("gc", &arguments(), started)?;
        let result = match self.engine.instantiate(&mut store).await {
            Ok(instance) => guest_result(instance.rootfs_cache_cache().call_gc(&mut store, max_bytes, pins).await),
            Err(e) => Err(e),
        };
        let r = self.settle(store, "gc", arguments, started, result).await?;
        Ok(GcReport {
            removed: r.removed.into_iter().map(|e| self.entry(e)).collect(),
            bytes_before: r.bytes_before,
            bytes_after: r.bytes_after,
            kept_pinned: r.kept_pinned,
        })
    }

    /// Checks every entry (with `fsck`, also `e2fsck -fn`) and removes the
    /// broken ones. See the WIT's `cache.verify`.
    pub async fn verify(&self, fsck: bool) -> Result<VerifyReport> {
        let started = Instant::now();
        let mut store = self.cache_store("verify", &json!({ "fsck": fsck }), started)?;
        let result = match self.engine.instantiate(&mut store).await {
            Ok(instance) => guest_result(instance.rootfs_cache_cache().call_verify(&mut store, fsck).await),
            Err(e) => Err(e),
        };
        let r = self.settle(store, "verify", || json!({ "fsck": fsck }), started, result).await?;
        Ok(VerifyReport { checked: r.checked, broken: r.broken.into_iter().map(|e| self.entry(e)).collect() })
    }

    /// The largest linear memory, in bytes, any request's guest has used.
    pub fn peak_guest_memory(&self) -> usize {
        self.shared.peak_guest_memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The convert timeout in force.
    pub fn convert_timeout(&self) -> Duration {
        self.shared.policy.limits.convert_timeout
    }

    /// Appends to the audit log a request its caller refused before asking
    /// the cache (the CLI's arguments that do not parse, say), as one line
    /// of `operation` with `arguments` like the cache's own refusals, so that
    /// no refusal goes unlogged. Does nothing without an audit log.
    pub fn audit_refusal(&self, operation: &str, arguments: &serde_json::Value, error: &Error) {
        if let Some(audit) = &self.shared.audit {
            let request = self.shared.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            audit.record(
                request,
                operation,
                arguments,
                Verdict::of::<()>(&Err(error.clone())),
                Some(error),
                Duration::ZERO,
            );
        }
    }

    /// What the host checks of a request before its guest runs: the source
    /// and the agent exist and are UTF-8, the source lies under the policy's
    /// roots, and the size is within its limit. Returns the request as the
    /// guest gets it, the source root to preopen and the canonical agent.
    fn admit(&self, request: &Request) -> Result<(wit::ConvertRequest, PathBuf, PathBuf)> {
        let source = existing("source", &request.source)?;
        let agent = existing("agent", &request.agent)?;
        let source_str = utf8("source", &source)?;
        self.shared.policy.check_source_real("source", source_str, &source)?;
        // A size beyond what any image may have is invalid, not denied: the
        // guest says so.
        self.shared.policy.check_size(request.size.filter(|&size| size <= MAX_VALID_IMAGE_BYTES))?;
        let wit_request = wit::ConvertRequest {
            source: source_str.to_owned(),
            agent: utf8("agent", &agent)?.to_owned(),
            size: request.size,
            converter: request.converter.to_string(),
            platform: request.platform.clone(),
        };
        Ok((wit_request, source_root(&source), agent))
    }

    /// Logs a whole request that failed with `error` as one line of
    /// `operation` (a new request number when `request` is `None`: the
    /// request was refused before it had a store), and returns the error.
    fn audit_request(
        &self,
        request: Option<u64>,
        operation: &str,
        arguments: &serde_json::Value,
        started: Instant,
        error: Error,
    ) -> Error {
        if let Some(audit) = &self.shared.audit {
            let request =
                request.unwrap_or_else(|| self.shared.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let verdict = Verdict::of::<()>(&Err(error.clone()));
            audit.record(request, operation, arguments, verdict, Some(&error), started.elapsed());
        }
        error
    }

    /// A store for an operation that preopens only the cache, its failure
    /// logged.
    fn cache_store(
        &self,
        operation: &str,
        arguments: &serde_json::Value,
        started: Instant,
    ) -> Result<wasmtime::Store<crate::store::StoreState>> {
        self.engine.store(&self.shared, &[]).map_err(|e| self.audit_request(None, operation, arguments, started, e))
    }

    /// Ends a request: releases its store (and whatever the guest left in
    /// it), and logs its failure unless one of its host calls already logged
    /// that error, so every failed request has a line and none has two.
    async fn settle<T>(
        &self,
        store: wasmtime::Store<crate::store::StoreState>,
        operation: &str,
        arguments: impl FnOnce() -> serde_json::Value,
        started: Instant,
        result: Result<T>,
    ) -> Result<T> {
        let unlogged = match &result {
            Err(e) if self.shared.audit.is_some() && !store.data().logged(e) => Some(store.data().request_id),
            _ => None,
        };
        crate::store::release(store).await;
        match (result, unlogged) {
            (Err(e), Some(request)) => Err(self.audit_request(Some(request), operation, &arguments(), started, e)),
            (result, _) => result,
        }
    }
}

/// The directory the guest must see for `source`: an OCI layout is
/// self-contained; an overlay2 layer resolves its lower layers among its
/// siblings; and for anything else the parent shows the guest what it is.
pub fn source_root(source: &Path) -> PathBuf {
    if source.join("oci-layout").exists() {
        source.to_path_buf()
    } else {
        source.parent().map_or_else(|| source.to_path_buf(), Path::to_path_buf)
    }
}

/// Maps a guest call's two layers of failure to one error.
fn guest_result<T>(result: wasmtime::Result<std::result::Result<T, wit::Error>>) -> Result<T> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.into()),
        Err(trap) => Err(Error::GuestTrap(format!("{trap:#}"))),
    }
}

//! The library's façade: open a cache, ask it for images. Each call runs
//! the guest in a fresh store, audits its failure once, and converts its
//! answer ([`crate::conversions`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::admission::{existing, utf8};
use crate::audit::Verdict;
use crate::cache_dir::CacheDir;
use crate::capabilities::lock::LockService;
use crate::config::Config;
use crate::conversions::{self, guest_result};
use crate::digest::DigestMemo;
use crate::engine::{GuestEngine, LoadPath};
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::reports::{Entry, GcReport, ImageInfo, Outcome, SweepReport, VerifyReport};
use crate::request::Request;
use crate::shared::Shared;
use crate::store::RequestScope;

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
        let remote = config.policy.remote_cache(config.remote.as_ref()).map_err(refuse)?;
        let shared = Shared {
            remote,
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
        let daemon_overlay2 = match crate::admission::SourceRef::parse(&request.source) {
            crate::admission::SourceRef::Daemon(name) => {
                // A name the engine would never be asked for is refused before it is contacted.
                let overlay2 = match rootfs_cache_docker::check_image_name(&name) {
                    Ok(()) => self.daemon_overlay2().await,
                    Err(e) => Err(crate::capabilities::docker_engine::engine_error(e)),
                };
                overlay2.map_err(|e| self.audit_request(None, "convert", &arguments(), started, e))?
            }
            _ => None,
        };
        let (wit_request, scope) = crate::admission::admit(
            &self.shared.policy,
            self.shared.remote.as_ref(),
            request,
            daemon_overlay2.as_deref(),
        )
        .map_err(|e| self.audit_request(None, "convert", &arguments(), started, e))?;
        let mut store = self
            .engine
            .store(&self.shared, scope)
            .map_err(|e| self.audit_request(None, "convert", &arguments(), started, e))?;
        let result = match self.engine.instantiate(&mut store).await {
            Ok(instance) => guest_result(instance.rootfs_cache_cache().call_convert(&mut store, &wit_request).await),
            Err(e) => Err(e),
        };
        let moved = store.data().moved;
        let outcome = self.settle(store, "convert", arguments, started, result).await?;
        if let (false, Some(max)) = (outcome.cached, self.max_cache_bytes)
            && let Err(e) = self.gc(max, std::slice::from_ref(&outcome.key)).await
        {
            tracing::warn!(error = %e, "garbage collection after the build failed");
        }
        let mut outcome = conversions::outcome(outcome, self.cache_dir());
        outcome.cloned_bytes = moved.cloned_bytes;
        outcome.copied_bytes = moved.copied_bytes;
        Ok(outcome)
    }

    /// The Docker engine's overlay2 directory, when overlay2 is its storage
    /// driver: what the guest of a `docker-daemon:` request is shown. The
    /// engine's socket is checked against the policy first.
    async fn daemon_overlay2(&self) -> Result<Option<PathBuf>> {
        let engine = &self.shared.caps.docker_engine;
        self.shared.policy.check_docker_engine(engine.socket()?)?;
        Ok(engine.info().await?.overlay2_dir())
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
                Ok((utf8("image", &real)?.to_owned(), RequestScope::roots(vec![parent])))
            })
        } else {
            utf8("image", image).map(|path| (path.to_owned(), RequestScope::default()))
        };
        let (guest_path, preopen) =
            located.map_err(|e| self.audit_request(None, "inspect", &arguments(), started, e))?;
        let mut store = self
            .engine
            .store(&self.shared, preopen)
            .map_err(|e| self.audit_request(None, "inspect", &arguments(), started, e))?;
        let result = match self.engine.instantiate(&mut store).await {
            Ok(instance) => guest_result(instance.rootfs_cache_cache().call_inspect(&mut store, &guest_path).await),
            Err(e) => Err(e),
        };
        self.settle(store, "inspect", arguments, started, result).await.map(ImageInfo::from)
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
        Ok(entries.into_iter().map(|e| conversions::entry(e, self.cache_dir())).collect())
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
        let request = store.data().request_id;
        let report = self.settle(store, "sweep", || json!({}), started, result).await?;
        let detached = self.detach_left_behind(request).await;
        let mut removed = report.removed;
        removed.extend(self.sweep_pulls()?);
        Ok(SweepReport { removed, stale_locks: report.stale_locks, busy: report.busy, detached_loop_devices: detached })
    }

    /// Removes what killed pulls left: partial blobs in `blobs/tmp/` whose digest's lock
    /// nobody holds (a running download holds it), and temporary files of `refs/` records
    /// older than a minute (a record is written in microseconds). Returns them
    /// cache-relative.
    fn sweep_pulls(&self) -> Result<Vec<String>> {
        let root = self.cache_dir();
        let mut removed = Vec::new();
        if root.join("blobs").is_dir() {
            let store =
                rootfs_cache_registry::BlobStore::open(root).map_err(crate::capabilities::puller::registry_error)?;
            for stale in store.sweep(true).map_err(crate::capabilities::puller::registry_error)? {
                let relative = stale.path.strip_prefix(root).unwrap_or(&stale.path);
                removed.push(relative.to_string_lossy().into_owned());
            }
        }
        if let Ok(entries) = std::fs::read_dir(root.join("refs")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(60)));
                if name.starts_with(".tmp") && old && std::fs::remove_file(entry.path()).is_ok() {
                    removed.push(format!("refs/{name}"));
                }
            }
        }
        Ok(removed)
    }

    /// Detaches, through the mounter, every device still attached to a
    /// temporary image whose builder is gone (a live builder holds its key's
    /// lock for as long as its image is attached), each detach audited as
    /// part of `request`.
    async fn detach_left_behind(&self, request: u64) -> Vec<String> {
        let mounter = &self.shared.caps.mounter;
        let mut detached = Vec::new();
        for attached in mounter.attached_under(&self.cache_dir().join("tmp")) {
            let name = attached.backing.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let Some(key) = name.get(..64) else { continue };
            let Ok(Some(_lock)) = self.shared.locks.try_lock(self.shared.cache.clone(), key).await else { continue };
            let started = Instant::now();
            let result = mounter.detach(&attached);
            if let Some(audit) = &self.shared.audit {
                let arguments = json!({ "device": attached.device, "image": attached.backing.to_string_lossy() });
                let error = result.as_ref().err();
                audit.record(request, "detach", &arguments, Verdict::of(&result), error, started.elapsed());
            }
            match result {
                Ok(()) => detached.push(attached.device),
                Err(e) => tracing::warn!(device = attached.device, error = %e, "detaching a device left behind failed"),
            }
        }
        detached
    }

    /// Sweeps once per process, and only when there is something to sweep.
    async fn sweep_once(&self) {
        self.swept
            .get_or_init(|| async {
                let untidy =
                    |dir: &str| self.shared.cache.root().read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
                if (untidy("tmp") || untidy("locks") || untidy("blobs/tmp"))
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
        Ok(conversions::gc_report(r, self.cache_dir()))
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
        Ok(conversions::verify_report(r, self.cache_dir()))
    }

    /// [`verify`](Self::verify), then every entry left hashed again: one
    /// whose bytes differ from the SHA-256 recorded when it was published
    /// is removed (under its key's lock, manifest first) and reported
    /// broken. Reads every byte of every entry.
    pub async fn verify_deep(&self, fsck: bool) -> Result<VerifyReport> {
        let mut report = self.verify(fsck).await?;
        let request = self.shared.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for mut entry in self.list().await?.into_iter().filter(|e| e.problem.is_none()) {
            let started = Instant::now();
            let (cache, key) = (self.shared.cache.clone(), entry.key.clone());
            let rehash = tokio::task::spawn_blocking(move || crate::deep_verify::rehash(&cache, &key))
                .await
                .map_err(|e| Error::Io(format!("hashing an entry: {e}")))??;
            let problem = match rehash {
                crate::deep_verify::Rehash::Unchanged => {
                    report.hashed += 1;
                    continue;
                }
                crate::deep_verify::Rehash::Unrecorded => continue,
                crate::deep_verify::Rehash::Changed(problem) => problem,
            };
            // Someone rebuilding the key right now replaces the entry anyway.
            let Some(_lock) = self.shared.locks.try_lock(self.shared.cache.clone(), &entry.key).await? else {
                continue;
            };
            // Under the lock, the entry is what was hashed unless it was
            // replaced in between: hash it again before removing it.
            let (cache, key) = (self.shared.cache.clone(), entry.key.clone());
            let again = tokio::task::spawn_blocking(move || crate::deep_verify::rehash(&cache, &key))
                .await
                .map_err(|e| Error::Io(format!("hashing an entry: {e}")))?;
            if !matches!(again, Ok(crate::deep_verify::Rehash::Changed(_))) {
                continue;
            }
            let publisher = &self.shared.caps.publisher;
            for name in [format!("{}.json", entry.key), format!("{}.ext4", entry.key)] {
                let file = crate::cache_dir::CacheFile { area: crate::cache_dir::Area::Images, name };
                let removed = publisher.remove(&self.shared.cache, &file);
                if let Some(audit) = &self.shared.audit {
                    let arguments = json!({ "path": file.relative(), "because": problem });
                    audit.record(
                        request,
                        "remove",
                        &arguments,
                        Verdict::of(&removed),
                        removed.as_ref().err(),
                        started.elapsed(),
                    );
                }
                removed?;
            }
            entry.problem = Some(problem);
            report.broken.push(entry);
        }
        Ok(report)
    }

    /// Makes `dest`, a new file, a private writable copy of the entry
    /// `image_or_key` (a key, or the path of an image of this cache) for one
    /// VM: `FICLONE` where the filesystem shares blocks (milliseconds, no
    /// space used until the VM writes), a sparse copy elsewhere. The entry
    /// itself is never changed; boot the clone, never the entry.
    ///
    /// Errors: `InvalidRequest` (not a key or image of this cache, `dest`
    /// exists), `NotFound` (no such entry), `Corrupt` (an image its manifest
    /// does not describe), `NoSpace`, `Io`.
    pub async fn clone_entry(&self, image_or_key: &str, dest: &Path) -> Result<crate::clones::CloneReport> {
        let started = Instant::now();
        let arguments = || json!({ "image_or_key": image_or_key, "dest": dest.to_string_lossy() });
        let (cache, name, to) = (self.shared.cache.clone(), image_or_key.to_owned(), dest.to_path_buf());
        let result = tokio::task::spawn_blocking(move || {
            let key = crate::clones::entry_key(&cache, &name)?;
            crate::clones::clone_entry(&cache, &key, &to)
        })
        .await
        .map_err(|e| Error::Io(format!("cloning: {e}")))
        .and_then(|r| r);
        if let Some(audit) = &self.shared.audit {
            let request = self.shared.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            audit.record(
                request,
                "clone",
                &arguments(),
                Verdict::of(&result),
                result.as_ref().err(),
                started.elapsed(),
            );
        }
        result
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
        self.engine
            .store(&self.shared, RequestScope::default())
            .map_err(|e| self.audit_request(None, operation, arguments, started, e))
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

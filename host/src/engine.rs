//! The wasm engine: one `Engine`, `Linker` and `InstancePre` per cache, and a
//! fresh, limited `Store` per request.
//!
//! Compiling the component takes hundreds of milliseconds; loading a
//! precompiled one takes about one. The compiled artifact is kept in
//! `<cache>/engine/`, named after the engine's compatibility hash and the
//! component's checksum, with the artifact's own checksum beside it. A file
//! that does not match is ignored and replaced, never loaded.

use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cap_std::fs::Dir;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};

use crate::bindings::RootfsCachePre;
use crate::digest::hex;
use crate::error::{Error, Result};
use crate::preopens::Preopens;
use crate::regular_file::{FileError, FinalSymlink, RegularFile};
use crate::shared::Shared;
use crate::store::{RequestScope, StoreState};

/// The component built from `guest/`, committed at `host/component/`.
pub const EMBEDDED_COMPONENT: &[u8] = include_bytes!("../component/rootfs-cache.wasm");

/// How often the epoch advances.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Interfaces a component may import; anything else (sockets, HTTP) means it
/// is not the component this host runs.
const ALLOWED_IMPORTS: &[&str] =
    &["rootfs:cache/", "wasi:io/", "wasi:clocks/", "wasi:filesystem/", "wasi:cli/", "wasi:random/"];

/// Where a component comes from.
#[derive(Clone, Debug)]
pub enum ComponentSource {
    /// The component embedded in this binary.
    Embedded,
    /// A component file (e.g. a rebuilt guest, or a test's hostile guest).
    File(PathBuf),
    /// Component bytes (or WAT text).
    Bytes(Arc<Vec<u8>>),
}

/// How the component was obtained this time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadPath {
    /// Compiled now (and saved for next time, when possible).
    Compiled,
    /// Loaded from `<cache>/engine/`.
    Precompiled,
}

/// The compiled component, ready to instantiate.
pub(crate) struct GuestEngine {
    engine: Engine,
    pre: RootfsCachePre<StoreState>,
    ticker_stop: Arc<AtomicBool>,
    preopens: Preopens,
    pub(crate) load_path: LoadPath,
}

impl Drop for GuestEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Feeds `Hash` output into SHA-256, for a stable file name.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Bytes of each pooled linear memory kept mapped between requests.
const KEEP_RESIDENT: usize = 2 << 20;

/// Requests that may run at once with the pooling allocator; more wait for
/// a slot (instantiation fails over to a clear error past that).
const POOL_SLOTS: u32 = 128;

fn config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config
}

/// An engine with the pooling allocator (instances are taken from
/// preallocated slots instead of mapped per request), or, where the machine
/// cannot reserve the address space for it, the on-demand allocator.
fn engine(memory_limit: u64, pooling: bool) -> Result<Engine> {
    if !pooling {
        return Engine::new(&config()).map_err(|e| Error::Component(format!("creating the engine: {e}")));
    }
    let slot = memory_limit.next_multiple_of(64 << 10).max(16 << 20);
    let mut pooling = wasmtime::PoolingAllocationConfig::default();
    pooling
        .total_component_instances(POOL_SLOTS)
        .total_core_instances(POOL_SLOTS * 8)
        .total_memories(POOL_SLOTS * 2)
        .total_tables(POOL_SLOTS * 8)
        .max_memory_size(usize::try_from(slot).unwrap_or(usize::MAX))
        // A hit touches about a megabyte of guest memory: resetting it with
        // memset on reuse costs less than the page faults after a madvise.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        // Where the kernel can say which pages a request dirtied (Linux 6.7+),
        // reset only those.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10);
    let mut pooled = config();
    pooled
        .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling))
        .memory_reservation(slot)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0);
    match Engine::new(&pooled) {
        Ok(engine) => Ok(engine),
        Err(e) => {
            tracing::info!(error = %e, "the pooling allocator is not available here; allocating per request");
            Engine::new(&config()).map_err(|e| Error::Component(format!("creating the engine: {e}")))
        }
    }
}

fn check_imports(engine: &Engine, component: &Component) -> Result<()> {
    for (name, _) in component.component_type().imports(engine) {
        if !ALLOWED_IMPORTS.iter().any(|prefix| name.starts_with(prefix)) {
            return Err(Error::Component(format!("the component imports {name}, which this host does not provide")));
        }
    }
    Ok(())
}

/// A fast 128-bit checksum (XXH3): it guards the precompiled artifact
/// against truncation and corruption, on every start.
fn checksum(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// The largest component file, or precompiled artifact, the host reads
/// (256 MiB; the committed component is well under 1 MiB).
const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// The checksum of the regular file `name` in `dir`, read through a private
/// read-only mapping: no copy.
fn mapped_checksum(dir: &Dir, name: &str) -> std::io::Result<String> {
    let shown = std::path::PathBuf::from(format!("engine/{name}"));
    let opened = RegularFile::open_in(dir, std::path::Path::new(name), &shown, MAX_COMPONENT_BYTES)
        .map_err(FileError::into_io)?;
    if opened.len() > MAX_COMPONENT_BYTES {
        return Err(FileError::TooLong { path: shown, limit: MAX_COMPONENT_BYTES }.into_io());
    }
    let file = opened.file();
    let len = usize::try_from(opened.len()).map_err(std::io::Error::other)?;
    if len == 0 {
        return Ok(checksum(&[]));
    }
    // SAFETY: a fresh read-only private mapping of a file this host wrote
    // and replaces only by rename; it is unmapped before returning.
    unsafe {
        let ptr = rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::PRIVATE,
            file,
            0,
        )?;
        let sum = checksum(std::slice::from_raw_parts(ptr.cast::<u8>(), len));
        rustix::mm::munmap(ptr, len)?;
        Ok(sum)
    }
}

fn load_or_compile(engine: &Engine, bytes: &[u8], cache_root: Option<&Dir>) -> Result<(Component, LoadPath)> {
    let compile =
        || Component::new(engine, bytes).map_err(|e| Error::Component(format!("compiling the component: {e}")));
    let Some(root) = cache_root else {
        return Ok((compile()?, LoadPath::Compiled));
    };
    let mut compat = Sha256Hasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut compat);
    let name = format!("{}-{}.cwasm", &hex(&compat.0.finalize())[..16], checksum(bytes));
    let sum_name = format!("{name}.xxh3");
    let dir = match root.create_dir_all("engine").and_then(|()| root.open_dir("engine")) {
        Ok(dir) => dir,
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep the precompiled component; compiling every time");
            return Ok((compile()?, LoadPath::Compiled));
        }
    };
    // Through /proc/self/fd, so the path stays inside the cache handle.
    let artifact_path =
        std::path::PathBuf::from(format!("/proc/self/fd/{}/{name}", std::os::fd::AsRawFd::as_raw_fd(&dir)));
    let recorded = || {
        let shown = std::path::PathBuf::from(format!("engine/{sum_name}"));
        RegularFile::open_in(&dir, std::path::Path::new(&sum_name), &shown, 1024).and_then(RegularFile::read_all)
    };
    if let (Ok(actual), Ok(recorded)) = (mapped_checksum(&dir, &name), recorded()) {
        let recorded = String::from_utf8_lossy(&recorded);
        if actual == recorded.trim() {
            // SAFETY: the artifact is the output of `Component::serialize` by an
            // engine with this compatibility hash (its name says so and
            // `deserialize_file` checks it again), and its checksum matches, so
            // it is the file this host wrote into its own cache directory.
            match unsafe { Component::deserialize_file(engine, &artifact_path) } {
                Ok(component) => return Ok((component, LoadPath::Precompiled)),
                Err(e) => {
                    tracing::warn!(error = %e, file = name, "ignoring an unusable precompiled component")
                }
            }
        } else {
            tracing::warn!(file = name, "ignoring a precompiled component whose checksum does not match");
        }
    }
    let component = compile()?;
    let saved = component.serialize().map_err(|e| e.to_string()).and_then(|artifact| {
        let tmp = format!("{name}.{}.tmp", std::process::id());
        let write = || -> std::io::Result<()> {
            dir.write(&tmp, &artifact)?;
            dir.write(&sum_name, checksum(&artifact))?;
            dir.rename(&tmp, &dir, &name)
        };
        write().map_err(|e| {
            let _ = dir.remove_file(&tmp);
            e.to_string()
        })
    });
    match saved {
        Ok(()) => remove_superseded(&dir, &name),
        Err(e) => tracing::warn!(error = %e, "cannot save the precompiled component"),
    }
    Ok((component, LoadPath::Compiled))
}

/// Removes the artifacts this engine compiled from other components (an
/// upgraded host's old guest), keeping `current`. Artifacts of other engines
/// (another wasmtime version sharing the cache) stay: they are theirs.
fn remove_superseded(dir: &Dir, current: &str) {
    let Some((engine_prefix, _)) = current.split_once('-') else { return };
    let Ok(entries) = dir.entries() else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name.strip_prefix(engine_prefix).is_some_and(|rest| rest.starts_with('-'));
        if ours && name != current && name.strip_suffix(".xxh3") != Some(current) {
            tracing::debug!(file = name, "removing a superseded precompiled component");
            let _ = dir.remove_file(name);
        }
    }
}

impl GuestEngine {
    /// Loads the component, checks its imports and links it.
    pub(crate) fn load(
        source: &ComponentSource,
        cache_root: Option<&Dir>,
        memory_limit: u64,
        pooling: bool,
    ) -> Result<Self> {
        let engine = engine(memory_limit, pooling)?;
        let owned;
        let bytes: &[u8] = match source {
            ComponentSource::Embedded => EMBEDDED_COMPONENT,
            ComponentSource::File(path) => {
                owned = crate::regular_file::read(path, MAX_COMPONENT_BYTES, FinalSymlink::Follow)
                    .map_err(|e| Error::Component(e.to_string()))?;
                &owned
            }
            ComponentSource::Bytes(bytes) => bytes,
        };
        let (component, load_path) = load_or_compile(&engine, bytes, cache_root)?;
        check_imports(&engine, &component)?;
        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::Component(format!("linking WASI: {e}")))?;
        crate::bindings::RootfsCache::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| Error::Component(format!("linking the host interface: {e}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| Error::Component(format!("the component does not match the rootfs-cache world: {e}")))?;
        let pre = RootfsCachePre::new(pre)
            .map_err(|e| Error::Component(format!("the component does not export rootfs:cache/cache: {e}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("rootfs-cache-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| Error::Component(format!("starting the epoch thread: {e}")))?;
        Ok(Self { engine, pre, ticker_stop, preopens: Preopens::default(), load_path })
    }

    /// A store for one request: the cache and the scope's roots preopened
    /// read-only (handles shared between requests, see [`Preopens`]), the
    /// scope's resolved agent, and the policy's memory and time limits.
    pub(crate) fn store(&self, shared: &Arc<Shared>, scope: RequestScope) -> Result<Store<StoreState>> {
        let limits = &shared.policy.limits;
        let (wasi, source_roots) = self.preopens.context(shared.cache.path(), &scope.roots)?;
        let state = StoreState {
            wasi,
            table: wasmtime::component::ResourceTable::new(),
            limits: crate::store::GuestLimiter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(usize::try_from(limits.guest_memory_bytes).unwrap_or(usize::MAX))
                    .instances(8)
                    .tables(16)
                    .memories(4)
                    .table_elements(100_000)
                    .trap_on_grow_failure(true)
                    .build(),
                peak_memory: shared.peak_guest_memory.clone(),
            },
            shared: shared.clone(),
            started: Instant::now(),
            host_time: Duration::ZERO,
            resources: 0,
            request_id: shared.next_request.fetch_add(1, Ordering::Relaxed),
            source_roots,
            staged: Vec::new(),
            hashed: Default::default(),
            moved: Default::default(),
            resolved_agent: scope.agent,
            audited: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let budget = limits.guest_time;
        let ticks = |d: Duration| (d.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1;
        store.set_epoch_deadline(ticks(budget));
        store.epoch_deadline_callback(move |ctx| {
            let used = ctx.data().guest_time();
            if used >= budget {
                return Err(wasmtime::Error::msg(format!(
                    "the guest used more than its {}ms of time",
                    budget.as_millis()
                )));
            }
            // Time spent in host calls does not count: extend by what is left.
            Ok(UpdateDeadline::Continue(ticks(budget - used)))
        });
        Ok(store)
    }

    /// Instantiates the component in `store`.
    pub(crate) async fn instantiate(&self, store: &mut Store<StoreState>) -> Result<crate::bindings::RootfsCache> {
        self.pre
            .instantiate_async(store)
            .await
            .map_err(|e| Error::GuestTrap(format!("instantiating the component: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The component is tested as committed; CI's `ROOTFS_CACHE_COMPONENT`
    /// names a rebuilt one when its toolchain differs.
    fn component_under_test() -> Vec<u8> {
        std::env::var_os("ROOTFS_CACHE_COMPONENT")
            .map_or_else(|| EMBEDDED_COMPONENT.to_vec(), |p| std::fs::read(p).expect("ROOTFS_CACHE_COMPONENT"))
    }

    #[test]
    fn the_offline_built_component_carries_no_preview1_adapter() {
        let record = include_str!("../component/rootfs-cache.wasm.toolchain");
        if !record.starts_with("route: offline") {
            println!(
                "SKIPPED: the committed component was built by another route ({record:?}), which keeps the adapter"
            );
            return;
        }
        let bytes = component_under_test();
        // The adapter's module exports, and the guest's module imports, the
        // `wasi_snapshot_preview1` functions; neither may be there.
        let adapter = bytes.windows(b"wasi_snapshot_preview1".len()).any(|w| w == b"wasi_snapshot_preview1");
        assert!(
            !adapter,
            "the component links Preview 1 functions: some guest code calls libc I/O (see guest/src/sys.rs)"
        );
        let engine = Engine::new(&config()).unwrap();
        let component = Component::new(&engine, &bytes).unwrap();
        let imports: Vec<String> =
            component.component_type().imports(&engine).map(|(name, _)| name.to_owned()).collect();
        assert!(
            imports
                .iter()
                .all(|name| ["rootfs:cache/", "wasi:clocks/", "wasi:filesystem/"].iter().any(|p| name.starts_with(p))),
            "{imports:?}"
        );
    }
}

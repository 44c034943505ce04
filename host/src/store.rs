//! What one request's `Store` holds: its WASI context (read-only preopens),
//! its resource table (mounts and locks the guest holds), its limits, and the
//! time it has spent in the guest.
//!
//! Dropping the store drops the table, and with it every mount (unmounted and
//! detached) and lock (released) the guest still held: a trapped or
//! misbehaving guest leaves nothing behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::lock::HeldLock;
use crate::capabilities::mounter::MountedImage;
use crate::error::Error;
use crate::shared::Shared;

/// What one request may see beyond the cache: the directories preopened
/// for it, and the agent the host resolved before its guest ran. Given to
/// the store when it is made.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestScope {
    /// Host directories the guest sees read-only (and probes) at their own
    /// paths.
    pub(crate) roots: Vec<PathBuf>,
    /// The request's agent as the guest is given it, and the canonical path
    /// it resolved to: `digest-file` naming it does not resolve it again.
    pub(crate) agent: Option<(String, PathBuf)>,
}

impl RequestScope {
    /// A scope of these directories and no agent.
    pub(crate) fn roots(roots: Vec<PathBuf>) -> Self {
        Self { roots, agent: None }
    }
}

/// A mounted image the guest holds.
pub struct MountedImageHandle {
    /// `None` once unmounted.
    pub(crate) mount: Option<Box<dyn MountedImage>>,
}

/// A build lock the guest holds.
pub struct BuildLockHandle {
    pub(crate) held: Box<dyn HeldLock>,
}

/// The store's resource limiter: the policy's limits, and the largest
/// linear memory any guest of this cache has asked for.
pub(crate) struct GuestLimiter {
    pub(crate) limits: StoreLimits,
    pub(crate) peak_memory: Arc<std::sync::atomic::AtomicUsize>,
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak_memory.fetch_max(desired, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The data of one request's store.
pub struct StoreState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: GuestLimiter,
    pub(crate) shared: Arc<Shared>,
    /// When the guest call started.
    pub(crate) started: Instant,
    /// Time spent inside host calls, which the guest's time limit excludes.
    pub(crate) host_time: Duration,
    /// Mounts and locks held right now.
    pub(crate) resources: usize,
    /// A number for this request in logs and the audit log.
    pub(crate) request_id: u64,
    /// The source roots preopened for this request, each with the host's
    /// own handle of it (for `host.probe`).
    pub(crate) source_roots: crate::preopens::RootDirs,
    /// Temporary images converters created for this guest and it has not
    /// yet published or removed: removed when the store is dropped, so a
    /// trapped guest leaves none behind.
    pub(crate) staged: Vec<crate::cache_dir::CacheFile>,
    /// The SHA-256 (hex) of each temporary image the host hashed while
    /// writing it (`remote-image`, a converter that hashes): publishing it
    /// need not read it again. Mounting the image forgets it. Keyed by the
    /// image's path as the guest names it.
    pub(crate) hashed: HashMap<String, String>,
    /// The request's agent as the guest was given it, and the canonical
    /// path the host resolved it to before the guest ran: `digest-file`
    /// naming it again does not resolve it a second time.
    pub(crate) resolved_agent: Option<(String, PathBuf)>,
    /// The errors this request's host calls put in the audit log (a trap as
    /// [`Error::GuestTrap`]): the request's own line is written only for an
    /// error none of them logged. Empty without an audit log.
    pub(crate) audited: Vec<Error>,
    /// How the file data of this request's conversions got into their
    /// images (the exact converter counts it): reported in the outcome.
    pub(crate) moved: DataMoved,
}

/// File data a request's conversions cloned and copied into their images,
/// summed over them.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DataMoved {
    /// Bytes shared with their sources by cloning.
    pub(crate) cloned_bytes: u64,
    /// Bytes written by copying.
    pub(crate) copied_bytes: u64,
}

/// Drops a request's store, off the async runtime's threads when the guest
/// left mounts, locks or temporary images behind (a failed or trapped
/// request): unmounting waits for the kernel to release the loop device,
/// which can take as long as the mounter's release timeout.
pub(crate) async fn release(store: wasmtime::Store<StoreState>) {
    let state = store.data();
    if state.resources == 0 && state.staged.is_empty() {
        return drop(store);
    }
    if let Err(e) = tokio::task::spawn_blocking(move || drop(store)).await {
        tracing::warn!(error = %e, "releasing what a request held failed");
    }
}

impl Drop for StoreState {
    fn drop(&mut self) {
        // Unmount and release first, then remove what is left.
        drop(std::mem::take(&mut self.table));
        for file in std::mem::take(&mut self.staged) {
            tracing::debug!(request = self.request_id, file = %file.relative(), "removing what the guest left");
            let _ = self.shared.caps.publisher.remove(&self.shared.cache, &file);
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl StoreState {
    /// Whether a host call of this request already logged `error` (for a
    /// trap: any trap, since a trap's message is the runtime's).
    pub(crate) fn logged(&self, error: &Error) -> bool {
        match error {
            Error::GuestTrap(_) => self.audited.iter().any(|e| matches!(e, Error::GuestTrap(_))),
            other => self.audited.contains(other),
        }
    }

    /// Guest time used so far: wall time minus time in host calls.
    pub(crate) fn guest_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.host_time)
    }
}

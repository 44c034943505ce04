//! What every request of one `RootfsCache` shares.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::audit::AuditLog;
use crate::cache_dir::CacheDir;
use crate::capabilities::Capabilities;
use crate::capabilities::lock::LockService;
use crate::digest::DigestMemo;
use crate::observer::Observer;
use crate::policy::Policy;

/// Shared state behind every request's store.
pub(crate) struct Shared {
    pub cache: Arc<CacheDir>,
    pub policy: Policy,
    pub caps: Capabilities,
    pub locks: Arc<LockService>,
    pub digests: DigestMemo,
    /// Bounds the conversions running at once.
    pub conversions: tokio::sync::Semaphore,
    pub observer: Option<Arc<dyn Observer>>,
    pub audit: Option<AuditLog>,
    pub next_request: AtomicU64,
    /// The remote cache in force, checked against the policy.
    pub remote: Option<crate::RemoteCache>,
    /// The largest linear memory any guest asked for.
    pub peak_guest_memory: Arc<std::sync::atomic::AtomicUsize>,
}

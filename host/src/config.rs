//! How to open a cache.

use std::path::PathBuf;
use std::sync::Arc;

use crate::capabilities::Capabilities;
use crate::engine::ComponentSource;
use crate::observer::Observer;
use crate::policy::Policy;

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
    /// The remote cache to fetch entries from on a miss and to push built
    /// ones to; `None` uses the policy's (`remote`), if any.
    pub remote: Option<crate::RemoteCache>,
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
            remote: None,
        }
    }

    /// Shares entries through the remote cache `remote`.
    pub fn remote(mut self, remote: crate::RemoteCache) -> Self {
        self.remote = Some(remote);
        self
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

//! `lock`, `try-lock` and the `build-lock` resource.

use wasmtime::component::Resource;

use super::call::HostResult;
use crate::bindings::rootfs::cache::host;
use crate::bindings::rootfs::cache::types::Error as WitError;
use crate::capabilities::lock::HeldLock;
use crate::error::Error;
use crate::observer::Phase;
use crate::store::{BuildLockHandle, StoreState};

impl StoreState {
    /// `lock`: waits for `key`'s build lock, telling the observer about a
    /// wait long enough to notice.
    pub(super) async fn wait_for_lock(&mut self, key: &str) -> Result<Box<dyn HeldLock>, Error> {
        check_key(key)?;
        let (locks, cache) = (self.shared.locks.clone(), self.shared.cache.clone());
        let observer = self.shared.observer.clone();
        let waiting = locks.lock(cache, key);
        tokio::pin!(waiting);
        tokio::select! {
            held = &mut waiting => held,
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                if let Some(observer) = observer {
                    observer.phase_started(Phase::WaitingForLock);
                }
                waiting.await
            }
        }
    }

    /// `try-lock`: `key`'s build lock if nobody holds it.
    pub(super) async fn lock_if_free(&mut self, key: &str) -> Result<Option<Box<dyn HeldLock>>, Error> {
        check_key(key)?;
        self.shared.locks.try_lock(self.shared.cache.clone(), key).await
    }

    /// Pushes a held lock into the table for the guest.
    pub(super) fn lock_resource(&mut self, held: Box<dyn HeldLock>) -> HostResult<Resource<BuildLockHandle>> {
        let resource = self.table.push(BuildLockHandle { held }).map_err(wasmtime::Error::new)?;
        self.resources += 1;
        Ok(resource)
    }
}

/// A cache key is 64 lowercase hex digits.
fn check_key(key: &str) -> Result<(), Error> {
    if key.len() == 64 && key.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!("{key:?} is not a cache key")))
    }
}

impl host::HostBuildLock for StoreState {
    async fn token(&mut self, this: Resource<BuildLockHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.held.token().to_owned())
    }

    async fn fail(&mut self, this: Resource<BuildLockHandle>, reason: WitError) -> wasmtime::Result<()> {
        self.table.get_mut(&this)?.held.fail(Error::from(reason));
        Ok(())
    }

    async fn drop(&mut self, this: Resource<BuildLockHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        self.resources = self.resources.saturating_sub(1);
        Ok(())
    }
}

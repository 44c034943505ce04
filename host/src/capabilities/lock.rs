//! The lock capability: one build per key, in this process and across
//! processes.
//!
//! [`LockService::lock`] first joins the key's in-process flight (an async
//! mutex, so waiting costs no thread), then takes the cross-process lock: an
//! exclusive `flock` on `locks/<key>.lock`. The kernel drops an `flock` when
//! its holder dies, so a crashed builder never wedges the cache.
//!
//! Lock files are removed by their holder before release. A waiter that wins a
//! file which has since been unlinked notices (its inode no longer matches the
//! path) and tries again, so two holders can never hold different files for
//! the same key.
//!
//! Callers who waited in this process while the holder's build failed get the
//! holder's error (see [`HeldLock::fail`]) instead of repeating the build.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cap_std::fs::{MetadataExt as _, OpenOptions};
use rustix::fs::FlockOperation;

use crate::cache_dir::CacheDir;
use crate::error::{Error, Result};

/// A held build lock.
pub trait HeldLock: Send {
    /// Unique to this holding: `<pid>-<counter>`.
    fn token(&self) -> &str;
    /// Records that the build failed, for the callers waiting on it.
    fn fail(&mut self, error: Error);
}

/// A held cross-process lock; dropping it releases it.
pub type CrossGuard = Box<dyn std::any::Any + Send>;

/// The cross-process half of a lock.
pub trait CrossProcessLock: Send + Sync {
    /// Takes the lock for `key`, waiting as long as it takes. Errors: `Io`.
    fn acquire(&self, cache: &CacheDir, key: &str) -> Result<CrossGuard>;

    /// Takes the lock for `key` if nobody holds it. Errors: `Io`.
    fn try_acquire(&self, cache: &CacheDir, key: &str) -> Result<Option<CrossGuard>>;
}

/// `flock` on `locks/<key>.lock`.
#[derive(Debug, Default)]
pub struct Flock;

struct FlockGuard {
    file: std::fs::File,
    locks: cap_std::fs::Dir,
    name: String,
}

impl Drop for FlockGuard {
    fn drop(&mut self) {
        // Unlink while still holding the lock, then unlock. Closing alone
        // would not do: the lock belongs to the open file description, which
        // a child forked by any thread shares until it execs or exits.
        let _ = self.locks.remove_file(&self.name);
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
    }
}

impl Flock {
    fn take(cache: &CacheDir, key: &str, wait: bool) -> Result<Option<CrossGuard>> {
        let name = format!("{key}.lock");
        let locks = cache.locks().try_clone().map_err(|e| Error::io("locks/", &e))?;
        let operation = if wait { FlockOperation::LockExclusive } else { FlockOperation::NonBlockingLockExclusive };
        loop {
            let mut options = OpenOptions::new();
            options.read(true).write(true).create(true);
            let file = locks.open_with(&name, &options).map_err(|e| Error::io(format!("locks/{name}"), &e))?.into_std();
            match rustix::fs::flock(&file, operation) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(Error::Io(format!("flock locks/{name}: {e}"))),
            }
            // The previous holder may have unlinked the file we locked.
            let held = file.metadata().map_err(|e| Error::io(format!("locks/{name}"), &e))?;
            match locks.symlink_metadata(&name) {
                Ok(current)
                    if current.ino() == std::os::unix::fs::MetadataExt::ino(&held)
                        && current.dev() == std::os::unix::fs::MetadataExt::dev(&held) =>
                {
                    return Ok(Some(Box::new(FlockGuard { file, locks, name })));
                }
                _ => continue,
            }
        }
    }
}

impl CrossProcessLock for Flock {
    fn acquire(&self, cache: &CacheDir, key: &str) -> Result<CrossGuard> {
        Ok(Self::take(cache, key, true)?.expect("a blocking flock returns only once held"))
    }

    fn try_acquire(&self, cache: &CacheDir, key: &str) -> Result<Option<CrossGuard>> {
        Self::take(cache, key, false)
    }
}

/// No cross-process lock: for the fake adapter and single-process embedders.
/// It keeps the contract on lock files all the same (see the WIT's
/// `build-lock`): taking a lock creates `locks/<key>.lock`, dropping it
/// removes the file, so `sweep` clears a stale one.
#[derive(Debug, Default)]
pub struct InProcessOnly;

/// The lock file of an in-process lock, removed on drop.
struct LockFile {
    locks: cap_std::fs::Dir,
    name: String,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = self.locks.remove_file(&self.name);
    }
}

impl InProcessOnly {
    fn take(cache: &CacheDir, key: &str) -> Result<CrossGuard> {
        let name = format!("{key}.lock");
        let locks = cache.locks().try_clone().map_err(|e| Error::io("locks/", &e))?;
        let mut options = OpenOptions::new();
        options.write(true).create(true);
        locks.open_with(&name, &options).map_err(|e| Error::io(format!("locks/{name}"), &e))?;
        Ok(Box::new(LockFile { locks, name }))
    }
}

impl CrossProcessLock for InProcessOnly {
    fn acquire(&self, cache: &CacheDir, key: &str) -> Result<CrossGuard> {
        Self::take(cache, key)
    }

    fn try_acquire(&self, cache: &CacheDir, key: &str) -> Result<Option<CrossGuard>> {
        Self::take(cache, key).map(Some)
    }
}

#[derive(Default)]
struct FlightState {
    /// Bumped each time a holder that built releases the lock.
    generation: u64,
    /// The failure of the build that ended `generation`, if it failed.
    failure: Option<(u64, Error)>,
}

#[derive(Default)]
struct Flight {
    turn: Arc<tokio::sync::Mutex<()>>,
    state: Mutex<FlightState>,
}

/// Hands out build locks.
pub struct LockService {
    cross: Arc<dyn CrossProcessLock>,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    counter: AtomicU64,
}

impl LockService {
    /// A lock service over a cross-process lock.
    pub fn new(cross: Arc<dyn CrossProcessLock>) -> Self {
        Self { cross, flights: Mutex::new(HashMap::new()), counter: AtomicU64::new(0) }
    }

    /// Waits for the lock for `key` (a validated cache key). Returns the
    /// error of the build this caller waited on, if that build failed.
    pub async fn lock(self: &Arc<Self>, cache: Arc<CacheDir>, key: &str) -> Result<Box<dyn HeldLock>> {
        let flight = self.flight(key);
        let arrived = flight.state.lock().unwrap_or_else(|p| p.into_inner()).generation;
        let turn = flight.turn.clone().lock_owned();
        let turn = turn.await;
        if let Some((generation, error)) = &flight.state.lock().unwrap_or_else(|p| p.into_inner()).failure
            && *generation > arrived
        {
            return Err(error.clone());
        }
        let cross = self.cross.clone();
        let key_owned = key.to_owned();
        let guard = tokio::task::spawn_blocking(move || cross.acquire(&cache, &key_owned))
            .await
            .map_err(|e| Error::Io(format!("waiting for the lock: {e}")))??;
        Ok(self.held(key, flight, guard, turn))
    }

    /// Takes the lock for `key` only if nobody, in this process or another,
    /// holds it; `None` means a builder is alive.
    pub async fn try_lock(self: &Arc<Self>, cache: Arc<CacheDir>, key: &str) -> Result<Option<Box<dyn HeldLock>>> {
        let flight = self.flight(key);
        let Ok(turn) = flight.turn.clone().try_lock_owned() else {
            return Ok(None);
        };
        let cross = self.cross.clone();
        let key_owned = key.to_owned();
        let guard = tokio::task::spawn_blocking(move || cross.try_acquire(&cache, &key_owned))
            .await
            .map_err(|e| Error::Io(format!("trying the lock: {e}")))??;
        let Some(guard) = guard else {
            drop(turn);
            drop(flight);
            self.forget_if_idle(key);
            return Ok(None);
        };
        Ok(Some(self.held(key, flight, guard, turn)))
    }

    /// The in-process flight for `key`, created on first use.
    fn flight(&self, key: &str) -> Arc<Flight> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_owned()).or_default().clone()
    }

    /// A held lock with a token unique in this process: `<pid>-<n>`.
    fn held(
        self: &Arc<Self>,
        key: &str,
        flight: Arc<Flight>,
        guard: CrossGuard,
        turn: tokio::sync::OwnedMutexGuard<()>,
    ) -> Box<dyn HeldLock> {
        let token = format!("{}-{}", std::process::id(), self.counter.fetch_add(1, Ordering::Relaxed));
        Box::new(Held {
            service: self.clone(),
            key: key.to_owned(),
            flight: Some(flight),
            token,
            failure: None,
            guard: Some(guard),
            turn: Some(turn),
        })
    }

    fn forget_if_idle(&self, key: &str) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(key).is_some_and(|f| Arc::strong_count(f) == 1) {
            flights.remove(key);
        }
    }
}

struct Held {
    service: Arc<LockService>,
    key: String,
    flight: Option<Arc<Flight>>,
    token: String,
    failure: Option<Error>,
    guard: Option<CrossGuard>,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl HeldLock for Held {
    fn token(&self) -> &str {
        &self.token
    }

    fn fail(&mut self, error: Error) {
        self.failure = Some(error);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(flight) = &self.flight {
            let mut state = flight.state.lock().unwrap_or_else(|p| p.into_inner());
            state.generation += 1;
            state.failure = self.failure.take().map(|e| (state.generation, e));
        }
        // Cross-process lock first, then let the next caller in this process in.
        drop(self.guard.take());
        drop(self.turn.take());
        drop(self.flight.take());
        self.service.forget_if_idle(&self.key);
    }
}

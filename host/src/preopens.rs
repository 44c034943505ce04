//! The directories a request's guest sees, opened once and shared.
//!
//! Every request gets a fresh WASI context, but opening its directories again
//! for each one costs four system calls per directory. Instead, the
//! directories of each distinct set (the cache and the request's source
//! roots) are opened once; each request clones the handles, which is a
//! reference count, after one `stat` per directory shows that the path
//! still names the directory that was opened. A directory deleted and
//! re-created at the same path is a different inode (the held handle keeps
//! the old inode number in use), so it is opened again.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::{FsPerms, WasiCtx};

use crate::error::{Error, Result};

/// Where the cache directory appears inside the guest.
pub(crate) const GUEST_CACHE_PATH: &str = "/cache";

/// Distinct sets kept open at once; more are opened per request.
const MAX_SETS: usize = 64;

/// The source roots of one request, with a cap-std handle of each.
pub(crate) type RootDirs = Arc<[(PathBuf, cap_std::fs::Dir)]>;

/// A set of opened directories and the identity (device, inode) each had.
struct Opened {
    filesystem: WasiFilesystemCtx,
    roots: RootDirs,
    identities: Vec<(u64, u64)>,
}

/// The opened directory sets, keyed by their host paths (the cache first).
#[derive(Default)]
pub(crate) struct Preopens {
    sets: Mutex<HashMap<Vec<PathBuf>, Opened>>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn identities(paths: &[PathBuf]) -> Option<Vec<(u64, u64)>> {
    paths.iter().map(|p| identity(p)).collect()
}

impl Preopens {
    /// A WASI context for one request: `cache` read-only at `/cache`, and
    /// each of `roots` read-only at its own path; and the host's own handles
    /// of the roots, for `host.probe`.
    pub(crate) fn context(&self, cache: &Path, roots: &[PathBuf]) -> Result<(WasiCtx, RootDirs)> {
        let mut builder = WasiCtx::builder();
        builder.allow_blocking_current_thread(true);
        let mut ctx = builder.build();
        let paths: Vec<PathBuf> = std::iter::once(cache.to_path_buf()).chain(roots.iter().cloned()).collect();
        let now = identities(&paths);
        let mut sets = self.sets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(opened), Some(now)) = (sets.get(&paths), &now)
            && &opened.identities == now
        {
            *ctx.filesystem() = opened.filesystem.clone();
            return Ok((ctx, opened.roots.clone()));
        }
        let (filesystem, dirs) = open(cache, roots)?;
        // Keep the set only when nothing was replaced while it was opened.
        if let Some(before) = now
            && identities(&paths).as_ref() == Some(&before)
        {
            if sets.len() >= MAX_SETS {
                sets.clear();
            }
            sets.insert(paths, Opened { filesystem: filesystem.clone(), roots: dirs.clone(), identities: before });
        } else {
            sets.remove(&paths);
        }
        *ctx.filesystem() = filesystem;
        Ok((ctx, dirs))
    }
}

/// Opens the directories of one set.
fn open(cache: &Path, roots: &[PathBuf]) -> Result<(WasiFilesystemCtx, RootDirs)> {
    let mut wasi = WasiCtx::builder();
    wasi.allow_blocking_current_thread(true);
    wasi.preopened_dir(cache, GUEST_CACHE_PATH, FsPerms::ReadOnly)
        .map_err(|e| Error::Io(format!("preopening the cache: {e}")))?;
    let mut dirs = Vec::with_capacity(roots.len());
    for root in roots {
        let guest =
            root.to_str().ok_or_else(|| Error::InvalidRequest(format!("{} is not valid UTF-8", root.display())))?;
        wasi.preopened_dir(root, guest, FsPerms::ReadOnly)
            .map_err(|e| Error::io(format!("preopening {}", root.display()), &std::io::Error::other(e.to_string())))?;
        let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
            .map_err(|e| Error::io(format!("opening {}", root.display()), &e))?;
        dirs.push((root.clone(), dir));
    }
    Ok((wasi.build().filesystem().clone(), dirs.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recreated_directory_is_opened_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (cache, root) = (tmp.path().join("cache"), tmp.path().join("root"));
        std::fs::create_dir(&cache).unwrap();
        std::fs::create_dir(&root).unwrap();
        let preopens = Preopens::default();
        let roots = [root.clone()];
        preopens.context(&cache, &roots).unwrap();
        let kept =
            |p: &Preopens| p.sets.lock().unwrap().get(&vec![cache.clone(), root.clone()]).map(|o| o.identities.clone());
        let before = kept(&preopens).expect("the set is kept");
        preopens.context(&cache, &roots).unwrap();
        assert_eq!(kept(&preopens).unwrap(), before, "an unchanged set is reused");

        std::fs::remove_dir(&root).unwrap();
        std::fs::create_dir(&root).unwrap();
        preopens.context(&cache, &roots).unwrap();
        let after = kept(&preopens).unwrap();
        assert_ne!(after, before, "the re-created directory was opened again");
        assert_eq!(after[1], identity(&root).unwrap());
    }

    #[test]
    fn a_missing_directory_is_an_error_and_nothing_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let preopens = Preopens::default();
        assert!(preopens.context(tmp.path(), &[tmp.path().join("gone")]).is_err());
        assert!(preopens.sets.lock().unwrap().is_empty());
    }
}

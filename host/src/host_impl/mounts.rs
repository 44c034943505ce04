//! `mount-image` and the `mounted-image` resource: the agent's install
//! through the image mounter, on blocking threads.

use serde_json::json;
use wasmtime::component::Resource;

use super::call::HostResult;
use crate::bindings::rootfs::cache::host::{self, FileInstall};
use crate::cache_dir::{Area, CacheFile};
use crate::capabilities::mounter::{Install, MountedImage};
use crate::error::Error;
use crate::observer::Phase;
use crate::regular_file::IntoError as _;
use crate::store::{MountedImageHandle, StoreState};

impl StoreState {
    /// `mount-image`: opens the temporary image read-write and mounts it.
    /// Its bytes change, so a digest taken while writing it is forgotten.
    pub(super) async fn mount_staged(&mut self, image: &str) -> Result<Box<dyn MountedImage>, Error> {
        let file = CacheFile::parse(image, &[Area::Tmp])?;
        self.hashed.remove(image);
        let mut options = cap_std::fs::OpenOptions::new();
        options.read(true).write(true);
        let handle = self
            .shared
            .cache
            .dir(Area::Tmp)
            .open_with(&file.name, &options)
            .map_err(|e| Error::io(image, &e))?
            .into_std();
        let mounter = self.shared.caps.mounter.clone();
        tokio::task::spawn_blocking(move || mounter.mount(handle))
            .await
            .map_err(|e| Error::MountFailed(format!("the mount thread failed: {e}")))
            .and_then(|r| r)
    }
}

impl host::HostMountedImage for StoreState {
    async fn install(&mut self, this: Resource<MountedImageHandle>, file: FileInstall) -> HostResult<()> {
        let call = self.begin(
            "install",
            json!({ "source": file.source, "target": file.target, "mode": format!("{:o}", file.mode) }),
            &[file.source.len(), file.target.len(), file.sha256.len()],
        )?;
        self.phase(Phase::InstallingAgent);
        let handle = self.table.get_mut(&this).map_err(wasmtime::Error::new)?;
        let mount = handle.mount.take();
        let checked = self.shared.policy.check_agent(&file.source);
        let (mount, result) = match (mount, checked) {
            (None, _) => (None, Err(Error::InjectFailed("the image was already unmounted".into()))),
            (Some(mount), Err(e)) => (Some(mount), Err(e)),
            (Some(mut mount), Ok(source)) => {
                let install = Install { target: file.target.clone(), mode: file.mode, sha256: file.sha256.clone() };
                let joined = tokio::task::spawn_blocking(move || {
                    let result = crate::regular_file::RegularFile::open(
                        &source,
                        crate::digest::MAX_PROGRAM_BYTES,
                        crate::regular_file::FinalSymlink::Follow,
                    )
                    .map_err(|e| e.into_error("agent", Error::InvalidRequest))
                    .and_then(|mut f| mount.install(&mut f, &install));
                    (mount, result)
                })
                .await;
                match joined {
                    Ok((mount, result)) => (Some(mount), result),
                    Err(e) => (None, Err(Error::InjectFailed(format!("the install thread failed: {e}")))),
                }
            }
        };
        if let Ok(handle) = self.table.get_mut(&this) {
            handle.mount = mount;
        }
        if result.is_ok() {
            crate::test_hooks::pause("installed");
        }
        self.finish(call, result)
    }

    async fn unmount(&mut self, this: Resource<MountedImageHandle>) -> HostResult<()> {
        let call = self.begin("unmount", json!({}), &[])?;
        self.phase(Phase::Unmounting);
        let handle = self.table.get_mut(&this).map_err(wasmtime::Error::new)?;
        let result = match handle.mount.take() {
            Some(mount) => tokio::task::spawn_blocking(move || mount.unmount())
                .await
                .map_err(|e| Error::MountFailed(format!("the unmount thread failed: {e}")))
                .and_then(|r| r),
            None => Err(Error::MountFailed("the image was already unmounted".into())),
        };
        self.finish(call, result)
    }

    async fn drop(&mut self, this: Resource<MountedImageHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(this)?;
        self.resources = self.resources.saturating_sub(1);
        if let Some(mount) = handle.mount {
            // Dropping unmounts and detaches.
            tokio::task::spawn_blocking(move || drop(mount)).await?;
        }
        Ok(())
    }
}

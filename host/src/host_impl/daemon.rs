//! `inspect-daemon-image` and `export-daemon-image`: images of the local Docker engine. The
//! engine's socket is checked against the policy (`docker_engines`) before the backend runs,
//! so nothing is sent to an engine the policy does not allow.

use crate::bindings::rootfs::cache::host::ExportedFile;
use crate::error::Error;
use crate::observer::Phase;
use crate::store::StoreState;

impl StoreState {
    /// Checks the engine's socket against the policy.
    fn check_engine(&self) -> Result<(), Error> {
        self.shared.policy.check_docker_engine(self.shared.caps.docker_engine.socket()?)
    }

    /// `inspect-daemon-image`.
    pub(super) async fn inspect_daemon_image_checked(&mut self, name: &str) -> Result<Vec<u8>, Error> {
        self.check_engine()?;
        let shared = self.shared.clone();
        shared.caps.docker_engine.inspect(name).await
    }

    /// `export-daemon-image`.
    pub(super) async fn export_daemon_image_checked(&mut self, name: &str) -> Result<Vec<ExportedFile>, Error> {
        self.check_engine()?;
        self.phase(Phase::Exporting);
        let shared = self.shared.clone();
        let limit = shared.policy.limits.max_image_bytes;
        let files = shared.caps.docker_engine.export(name, shared.cache.path(), limit).await?;
        files
            .into_iter()
            .map(|f| {
                let path = f
                    .path
                    .to_str()
                    .ok_or_else(|| Error::Io(format!("blob path {} is not UTF-8", f.path.display())))?
                    .to_owned();
                Ok(ExportedFile { name: f.name, digest: f.digest.to_string(), size: f.size, path })
            })
            .collect()
    }
}

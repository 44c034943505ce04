//! The calls on files: `probe`, `digest-file`, `publish`, `remove`,
//! `record-use` and `fsck`.

use crate::bindings::rootfs::cache::host::{FileDigest, FsckResult, PathInfo, ProbeRequest};
use crate::bindings::rootfs::cache::types::Error as WitError;
use crate::cache_dir::{Area, CacheFile};
use crate::error::Error;
use crate::store::StoreState;

/// What `probe` answers, and the first path it refused (for the audit log).
pub(super) type ProbeAnswers = (Result<Vec<Result<PathInfo, WitError>>, Error>, Option<Error>);

impl StoreState {
    /// `probe`: one answer per path, each resolved beneath a directory this
    /// request sees.
    pub(super) fn answer_probe(&self, requests: &[ProbeRequest]) -> ProbeAnswers {
        let mut refused = None;
        let result = crate::probe::check(requests).map(|()| {
            let cache = self.shared.cache.root();
            let mut prober = crate::probe::Prober::default();
            requests
                .iter()
                .map(|request| {
                    prober.answer(request, &self.source_roots, cache).map_err(|e| {
                        if refused.is_none() && matches!(e, Error::Denied { .. }) {
                            refused = Some(e.clone());
                        }
                        WitError::from(&e)
                    })
                })
                .collect()
        });
        (result, refused)
    }

    /// `digest-file`: the SHA-256 of an allowed agent (the request's own,
    /// resolved before the guest ran, is not resolved again).
    pub(super) fn digest_agent(&self, path: &str) -> Result<FileDigest, Error> {
        let policy = &self.shared.policy;
        let real = match &self.resolved_agent {
            Some((given, real)) if given == path => policy.check_agent_real(path, real).map(|()| real.clone()),
            _ => policy.check_agent(path),
        }?;
        let digest = self.shared.digests.digest(&real).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidInput {
                Error::InvalidRequest(format!("agent {path} is not a regular file"))
            } else {
                Error::io(format!("agent {path}"), &e)
            }
        })?;
        Ok(FileDigest { sha256: digest.sha256, size: digest.size })
    }

    /// `publish`: checks that the three names are of one key and the
    /// manifest is JSON, then publishes durably on a blocking thread.
    pub(super) async fn publish_checked(
        &mut self,
        staged: &str,
        image: &str,
        manifest: &str,
        manifest_json: String,
    ) -> Result<(), Error> {
        let staged_file = CacheFile::parse(staged, &[Area::Tmp])?;
        let image = CacheFile::parse(image, &[Area::Images])?;
        let manifest = CacheFile::parse(manifest, &[Area::Images])?;
        let key = image.name.strip_suffix(".ext4");
        if key.is_none()
            || key != manifest.name.strip_suffix(".json")
            || !staged_file.name.starts_with(key.unwrap_or_default())
        {
            return Err(Error::denied(
                "cache_dir",
                "publish names an image, a manifest and a staged file of different keys",
            ));
        }
        serde_json::from_str::<serde_json::Value>(&manifest_json)
            .map_err(|e| Error::InvalidRequest(format!("the manifest is not JSON: {e}")))?;
        let shared = self.shared.clone();
        let known = self.hashed.get(staged).cloned();
        tokio::task::spawn_blocking(move || {
            let known = known.as_deref();
            shared.caps.publisher.publish(&shared.cache, &staged_file, &image, &manifest, &manifest_json, known)
        })
        .await
        .map_err(|e| Error::Io(format!("the publish thread failed: {e}")))??;
        self.staged.retain(|f| f.relative() != staged);
        self.hashed.remove(staged);
        Ok(())
    }

    /// `remove`: a temporary image, an entry's file, or a blob (which stays while a pull
    /// holds its lock).
    pub(super) fn remove_file(&mut self, path: &str) -> Result<(), Error> {
        if let Some(blob) = crate::cache_dir::BlobFile::parse(path) {
            return self.shared.caps.publisher.remove_blob(&self.shared.cache, &blob?);
        }
        let file = CacheFile::parse(path, &[Area::Tmp, Area::Images])?;
        self.shared.caps.publisher.remove(&self.shared.cache, &file)?;
        self.staged.retain(|f| f.relative() != path);
        self.hashed.remove(path);
        Ok(())
    }

    /// `record-use`: marks an entry as just served.
    pub(super) fn record_use_of(&self, manifest: &str) -> Result<(), Error> {
        let file = CacheFile::parse(manifest, &[Area::Images])?;
        self.shared.caps.publisher.record_use(&self.shared.cache, &file)
    }

    /// `fsck`: `e2fsck -fn` of an entry's image.
    pub(super) async fn check_image(&mut self, image: &str) -> Result<FsckResult, Error> {
        let file = CacheFile::parse(image, &[Area::Images])?;
        let timeout = self.shared.policy.limits.convert_timeout;
        let r = crate::fsck::run(&self.shared.cache.absolute(&file), timeout).await?;
        Ok(FsckResult { clean: r.clean, exit_status: r.exit_status, output_tail: r.output_tail })
    }
}

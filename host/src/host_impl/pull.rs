//! `fetch-manifest` and `fetch-blobs`: images by name. The registry is checked against the
//! policy (`registries`, and plain HTTP only to `insecure_registries`) before the puller runs,
//! so nothing is sent to a registry the policy does not allow.

use rootfs_cache_registry::Reference;

use crate::bindings::rootfs::cache::host::{BlobRequest, FetchedBlob, FetchedManifest};
use crate::bindings::rootfs::cache::types::PullPolicy as WitPull;
use crate::capabilities::puller::{BlobAsk, PullContext};
use crate::error::Error;
use crate::observer::{BlobProgress, Phase};
use crate::request::PullPolicy;
use crate::store::StoreState;

/// The guest's pull policy in the library's terms.
fn pull_policy(pull: WitPull) -> PullPolicy {
    match pull {
        WitPull::Missing => PullPolicy::Missing,
        WitPull::Always => PullPolicy::Always,
        WitPull::Never => PullPolicy::Never,
    }
}

impl StoreState {
    /// Parses a reference the guest names and checks its registry against the policy.
    fn checked_reference(&self, reference: &str) -> Result<Reference, Error> {
        let parsed: Reference =
            reference.parse().map_err(|e| Error::InvalidRequest(format!("reference {reference:?}: {e}")))?;
        self.shared.policy.check_registry(parsed.registry())?;
        Ok(parsed)
    }

    /// `fetch-manifest`.
    pub(super) async fn fetch_manifest_checked(
        &mut self,
        reference: &str,
        pull: WitPull,
    ) -> Result<FetchedManifest, Error> {
        let parsed = self.checked_reference(reference)?;
        self.phase(Phase::Pulling);
        let shared = self.shared.clone();
        let progress = std::sync::Arc::new(BlobProgress(shared.observer.clone()));
        let cx = PullContext { cache: shared.cache.path(), policy: &shared.policy, progress };
        let fetched = shared.caps.puller.fetch_manifest(&cx, &parsed, pull_policy(pull)).await?;
        Ok(FetchedManifest { bytes: fetched.bytes, media_type: fetched.media_type, digest: fetched.digest })
    }

    /// `fetch-blobs`.
    pub(super) async fn fetch_blobs_checked(
        &mut self,
        reference: &str,
        blobs: &[BlobRequest],
        pull: WitPull,
    ) -> Result<Vec<FetchedBlob>, Error> {
        let parsed = self.checked_reference(reference)?;
        self.phase(Phase::Pulling);
        let asks: Vec<BlobAsk> =
            blobs.iter().map(|b| BlobAsk { digest: b.digest.clone(), size: b.size, read: b.read }).collect();
        let shared = self.shared.clone();
        let progress = std::sync::Arc::new(BlobProgress(shared.observer.clone()));
        let cx = PullContext { cache: shared.cache.path(), policy: &shared.policy, progress };
        let stored = shared.caps.puller.fetch_blobs(&cx, &parsed, &asks, pull_policy(pull)).await?;
        stored
            .into_iter()
            .map(|s| {
                let path = s
                    .path
                    .to_str()
                    .ok_or_else(|| Error::Io(format!("blob path {} is not UTF-8", s.path.display())))?
                    .to_owned();
                Ok(FetchedBlob { path, contents: s.contents })
            })
            .collect()
    }
}

//! The component's exports, and the WIT imports behind [`Capabilities`].

use crate::bindings::exports::rootfs::cache::cache::Guest;
use crate::bindings::rootfs::cache::host;
use crate::capabilities::{BuildLock, Capabilities, MountedImage};
use crate::flow::Cache;
use crate::wit::types::{ConvertRequest, Entry, Error, GcReport, ImageInfo, Outcome, SweepReport, VerifyReport};

/// The host preopens the cache directory here.
const CACHE_ROOT: &str = "/cache";

struct Component;

crate::bindings::export!(Component with_types_in crate::bindings);

impl Guest for Component {
    fn convert(request: ConvertRequest) -> Result<Outcome, Error> {
        Cache::new(&WitHost, CACHE_ROOT).convert(&request)
    }

    fn inspect(image: String) -> Result<ImageInfo, Error> {
        Cache::new(&WitHost, CACHE_ROOT).inspect(&image)
    }

    fn list_entries() -> Result<Vec<Entry>, Error> {
        Cache::new(&WitHost, CACHE_ROOT).list()
    }

    fn sweep() -> Result<SweepReport, Error> {
        Cache::new(&WitHost, CACHE_ROOT).sweep()
    }

    fn gc(max_bytes: u64, pins: Vec<String>) -> Result<GcReport, Error> {
        Cache::new(&WitHost, CACHE_ROOT).gc(max_bytes, &pins)
    }

    fn verify(fsck: bool) -> Result<VerifyReport, Error> {
        Cache::new(&WitHost, CACHE_ROOT).verify(fsck)
    }
}

/// The `host` imports.
struct WitHost;

impl BuildLock for host::BuildLock {
    fn token(&self) -> String {
        host::BuildLock::token(self)
    }

    fn fail(&self, reason: &Error) {
        host::BuildLock::fail(self, reason)
    }
}

impl MountedImage for host::MountedImage {
    fn install(&self, file: &host::FileInstall) -> Result<(), Error> {
        host::MountedImage::install(self, file)
    }

    fn unmount(self) -> Result<(), Error> {
        host::MountedImage::unmount(&self)
    }
}

impl crate::probe::Probe for WitHost {
    fn probe(&self, requests: &[host::ProbeRequest]) -> Result<Vec<Result<host::PathInfo, Error>>, Error> {
        host::probe(requests)
    }
}

impl crate::registry::Puller for WitHost {
    fn fetch_manifest(
        &self,
        reference: &str,
        pull: crate::wit::types::PullPolicy,
    ) -> Result<host::FetchedManifest, Error> {
        host::fetch_manifest(reference, pull)
    }

    fn fetch_blobs(
        &self,
        reference: &str,
        blobs: &[host::BlobRequest],
        pull: crate::wit::types::PullPolicy,
    ) -> Result<Vec<host::FetchedBlob>, Error> {
        host::fetch_blobs(reference, blobs, pull)
    }
}

impl crate::daemon::Engine for WitHost {
    fn inspect_daemon_image(&self, name: &str) -> Result<Vec<u8>, Error> {
        host::inspect_daemon_image(name)
    }

    fn export_daemon_image(&self, name: &str) -> Result<Vec<host::ExportedFile>, Error> {
        host::export_daemon_image(name)
    }
}

impl crate::remote::Remote for WitHost {
    fn remote_manifest(&self, tag: &str) -> Result<Option<host::FetchedManifest>, Error> {
        host::remote_manifest(tag)
    }

    fn remote_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>, Error> {
        host::remote_blob(digest, size)
    }

    fn remote_image(&self, digest: &str, size: u64, staged: &str) -> Result<host::FetchedImage, Error> {
        host::remote_image(digest, size, staged)
    }

    fn remote_push_image(&self, image: &str) -> Result<host::PushedBlob, Error> {
        host::remote_push_image(image)
    }

    fn remote_push_blob(&self, bytes: &[u8]) -> Result<host::PushedBlob, Error> {
        host::remote_push_blob(bytes)
    }

    fn remote_push_manifest(&self, tag: &str, bytes: &[u8]) -> Result<String, Error> {
        host::remote_push_manifest(tag, bytes)
    }

    fn digest_image(&self, image: &str) -> Result<host::FileDigest, Error> {
        host::digest_image(image)
    }
}

impl Capabilities for WitHost {
    type Lock = host::BuildLock;
    type Mounted = host::MountedImage;

    fn digest_file(&self, path: &str) -> Result<host::FileDigest, Error> {
        host::digest_file(path)
    }

    fn describe_converter(&self, converter: &str) -> Result<host::ConverterInfo, Error> {
        host::describe_converter(converter)
    }

    fn run_converter(&self, job: &host::Conversion) -> Result<u64, Error> {
        host::run_converter(job)
    }

    fn mount_image(&self, image: &str) -> Result<Self::Mounted, Error> {
        host::mount_image(image)
    }

    fn publish(&self, staged: &str, image: &str, manifest: &str, manifest_json: &str) -> Result<(), Error> {
        host::publish(staged, image, manifest, manifest_json)
    }

    fn remove(&self, path: &str) -> Result<(), Error> {
        host::remove(path)
    }

    fn record_use(&self, manifest: &str) -> Result<(), Error> {
        host::record_use(manifest)
    }

    fn lock(&self, key: &str) -> Result<Self::Lock, Error> {
        host::lock(key)
    }

    fn try_lock(&self, key: &str) -> Result<Option<Self::Lock>, Error> {
        host::try_lock(key)
    }

    fn fsck(&self, image: &str) -> Result<host::FsckResult, Error> {
        host::fsck(image)
    }
}

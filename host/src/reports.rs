//! What the cache answers: outcomes, image facts, entries and the reports
//! of its maintenance. The library builds them; callers read them, so they
//! are `#[non_exhaustive]`.

use std::path::PathBuf;

use serde::Serialize;

/// The kind of a source.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A Docker overlay2 layer directory.
    Overlay2,
    /// An OCI image layout.
    OciLayout,
    /// An image pulled from a registry by name (`docker://…`).
    Registry,
    /// An image the local Docker engine exported (`docker-daemon:…` without an
    /// overlay2 directory).
    DockerArchive,
}

/// Where a request's image came from.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// This host's cache already held it.
    Local,
    /// The remote cache held it: fetched, checked and published here.
    Remote,
    /// Converted here.
    Built,
}

/// Where a request's time went, in microseconds, as the guest measured it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// Source detection and key derivation.
    pub resolve_us: u64,
    /// Lookup and validation.
    pub lookup_us: u64,
    /// Waiting for the build lock.
    pub lock_us: u64,
    /// The converter.
    pub convert_us: u64,
    /// Mount, agent install, unmount.
    pub inject_us: u64,
    /// fsync and rename.
    pub publish_us: u64,
    /// The whole request inside the guest.
    pub total_us: u64,
}

/// A bootable image.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Absolute path of the image. Treat it as read-only: it is shared by
    /// every request for the same key.
    pub image: PathBuf,
    /// The cache key.
    pub key: String,
    /// Whether it was served without a build.
    pub cached: bool,
    /// The source's kind.
    pub kind: SourceKind,
    /// The image's length.
    pub image_bytes: u64,
    /// Why a cached entry was rebuilt, if it was.
    pub rebuilt_because: Option<String>,
    /// Where the time went.
    pub timings: Timings,
    /// For an image by name: the reference, defaults filled in
    /// (`docker://HOST/REPO:TAG`). Absent from JSON for other sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// For an image by name or from a layout: the digest of the image
    /// manifest selected for the platform. Absent from JSON for overlay2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// File data the build shared with its sources by cloning
    /// (`FICLONERANGE`, on xfs with reflink or btrfs), in bytes; 0 on a hit.
    pub cloned_bytes: u64,
    /// File data the build copied into the image, in bytes; 0 on a hit and
    /// from converters that do not count it (only `exact` does).
    pub copied_bytes: u64,
    /// Where the image came from.
    pub origin: Origin,
    /// Whether the key names the source's content on every host (an image's
    /// manifest digest, a Docker layer's chain ID, an image ID), so that the
    /// entry may be shared through a remote cache.
    pub shareable: bool,
    /// What went wrong with the remote cache without failing the request.
    pub warnings: Vec<String>,
    /// The remote artifact's manifest digest, when it was fetched or pushed.
    pub remote_digest: Option<String>,
    /// Whether this request pushed the entry to the remote cache.
    pub pushed: bool,
}

/// What an image's superblock says.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// The file's length.
    pub file_bytes: u64,
    /// Whether the ext4 magic is there.
    pub magic: bool,
    /// Block size.
    pub block_size: u32,
    /// Blocks declared.
    pub blocks_count: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Inodes declared.
    pub inodes_count: u32,
    /// Free inodes.
    pub free_inodes: u32,
    /// Filesystem UUID.
    pub uuid: String,
    /// Volume label.
    pub label: String,
    /// Why the geometry is unsound, if it is.
    pub geometry_error: Option<String>,
}

/// One cache entry.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its key.
    pub key: String,
    /// Absolute image path.
    pub image: PathBuf,
    /// The source it was built from.
    pub source: String,
    /// The source's kind.
    pub kind: SourceKind,
    /// SHA-256 of its agent.
    pub agent_sha256: String,
    /// The converter's identity.
    pub converter: String,
    /// The image's length.
    pub image_bytes: u64,
    /// Build time, Unix seconds.
    pub created: u64,
    /// Last use, Unix seconds.
    pub last_used: u64,
    /// Why it does not validate, if it does not.
    pub problem: Option<String>,
}

/// What [`RootfsCache::sweep`](crate::RootfsCache::sweep) found and did.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Temporary files removed (cache-relative): their builders are gone.
    pub removed: Vec<String>,
    /// Lock files removed: no process held them.
    pub stale_locks: u32,
    /// Temporary files kept: their builder is alive.
    pub busy: Vec<String>,
    /// Loop devices detached: they were attached to a temporary image whose
    /// builder is gone.
    pub detached_loop_devices: Vec<String>,
}

/// What [`RootfsCache::gc`](crate::RootfsCache::gc) did.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Entries removed, in the order they went.
    pub removed: Vec<Entry>,
    /// The cache's size before: every entry's image and every blob of the blob store.
    pub bytes_before: u64,
    /// The cache's size after.
    pub bytes_after: u64,
    /// Bytes of blobs removed (those no remaining entry needs): `bytes_before - bytes_after`
    /// less the removed entries' images.
    pub blob_bytes_freed: u64,
    /// Entries kept although they were candidates: pinned or being rebuilt.
    pub kept_pinned: u32,
}

/// What [`RootfsCache::verify`](crate::RootfsCache::verify) found and did.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub checked: u32,
    /// Broken entries, each with its problem; all were removed.
    pub broken: Vec<Entry>,
    /// With `--deep`: entries whose bytes were hashed again and matched the
    /// SHA-256 recorded when they were published (entries published before
    /// digests were recorded are not counted).
    pub hashed: u32,
}

//! The `exact` converter: the image holds exactly what the container sees.
//!
//! 1. **Merge.** An overlay2 chain is merged by the kernel's overlayfs (a
//!    read-only, detached mount of the chain's `diff/` directories), which is
//!    by definition what Docker shows the container, and read into memory
//!    (see [`scan`]). An OCI layout's layers are applied in order to an
//!    in-memory tree under the image spec's whiteout rules, their file
//!    contents spooled to an unnamed temporary file (see [`oci_apply`]).
//!    Both live in the `rootfs-cache-layers` crate (`host/layers/`).
//! 2. **Attributes.** The tree keeps every attribute:
//!    owners of every entry, modes with setuid/setgid/sticky, nanosecond
//!    mtimes, hardlink groups, symlink targets and names as raw bytes,
//!    device numbers, FIFOs, sockets, extended attributes (overlayfs's own
//!    `trusted.overlay.*` excluded) and file holes.
//! 3. **Agent.** `/sbin/vm-agent` is added to the tree (through `/sbin` if it
//!    is a symlink), so no mount is needed afterwards.
//! 4. **Write.** [`crate::ext4::write_image`] writes a fresh image sized
//!    from the content (or to `--size`), with its UUID and hash seed derived
//!    from the cache key: the same inputs give the same bytes. Nothing a
//!    later layer deleted is ever written, so it cannot be read back from
//!    the image file.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rootfs_cache_layers::{layer_files, oci_apply, overlay, scan};
use sha2::{Digest, Sha256};

use super::{AgentInstall, ConversionJob, Converted, Converter, SourceLayers};
use crate::error::{Error, Result};
use crate::ext4::{
    self, Features, FileData, Headroom, ImageOptions, Kind, Meta, Node, Reflink, Tree, tree::ResolveError,
};
use crate::output_tail::tail;
use crate::regular_file::IntoError as _;

/// The writer's format version: part of the identity, so a change to what
/// the converter writes gives new keys. (2: the default profile has a
/// journal; 3: it has every feature of `mke2fs -t ext4`.)
const FORMAT_VERSION: u32 = 3;

/// Which ext4 features the exact converter's images have. Part of its
/// identity, and so of every key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Ext4Profile {
    /// A root disk for a VM that writes to it: the features of
    /// `mke2fs -t ext4` ([`Features::EXT4`](crate::ext4::Features::EXT4)): a
    /// clean jbd2 journal sized as `mke2fs` sizes it, so a VM killed while
    /// writing leaves an image the kernel repairs by replaying the journal;
    /// hashed directories; crc32c checksums on all metadata; flexible block
    /// groups; 64-bit block numbers.
    #[default]
    Default,
    /// None of those ([`Features::MINIMAL`](crate::ext4::Features::MINIMAL)):
    /// the smallest image, for read-only uses.
    Minimal,
}

impl std::fmt::Display for Ext4Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Default => "default",
            Self::Minimal => "minimal",
        })
    }
}

/// The exact converter.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExactConverter {
    /// Room left when the image is sized from its content.
    pub headroom: Headroom,
    /// The ext4 features of its images.
    pub profile: Ext4Profile,
    /// Whether file data is cloned from the layers (or the spool) where the
    /// filesystem allows it. Not part of the identity: the image's bytes
    /// are the same either way.
    pub reflink: Reflink,
}

fn failed(message: String) -> Error {
    Error::ConverterFailed { converter: "exact".into(), exit_status: None, stderr_tail: tail(&message, 4096) }
}

/// Removes a staging directory (or file) when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// 16 bytes derived from the key for one purpose.
fn derived(key: &str, purpose: &str) -> [u8; 16] {
    let digest = Sha256::digest(format!("rootfs-cache {purpose} {key}"));
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// A version-4-shaped UUID derived from the key.
fn uuid_from_key(key: &str) -> [u8; 16] {
    let mut uuid = derived(key, "uuid");
    uuid[6] = (uuid[6] & 0x0F) | 0x40;
    uuid[8] = (uuid[8] & 0x3F) | 0x80;
    uuid
}

/// Adds the agent at `install.target`, resolving symlinked parents inside
/// the tree and creating a missing parent directory.
fn add_agent(tree: &mut Tree, install: &AgentInstall) -> Result<()> {
    let bytes = crate::regular_file::read(
        &install.source,
        crate::digest::MAX_PROGRAM_BYTES,
        crate::regular_file::FinalSymlink::Follow,
    )
    .map_err(|e| e.into_error("agent", Error::InvalidRequest))?;
    let actual = crate::digest::hex(&Sha256::digest(&bytes));
    if actual != install.sha256 {
        return Err(Error::InjectFailed(format!(
            "the agent changed during the build (sha256 {actual}, expected {}); retry",
            install.sha256
        )));
    }
    let target = install.target.as_bytes();
    let (parent_path, name) = match target.iter().rposition(|&c| c == b'/') {
        Some(i) if i + 1 < target.len() => (&target[..i], &target[i + 1..]),
        _ => {
            return Err(Error::InvalidRequest(format!(
                "install target {} is not an absolute file path",
                install.target
            )));
        }
    };
    let time = tree.newest_mtime();
    let parent = match tree.resolve_dir(parent_path) {
        Ok(dir) => dir,
        Err(ResolveError::Missing(_)) => {
            // Create the missing directories, as root, 0755.
            let mut dir = Tree::ROOT;
            let mut so_far = Vec::new();
            for part in parent_path.split(|&c| c == b'/').filter(|p| !p.is_empty()) {
                so_far.extend_from_slice(b"/");
                so_far.extend_from_slice(part);
                dir = match tree.resolve_dir(&so_far) {
                    Ok(existing) => existing,
                    Err(ResolveError::Missing(_)) => {
                        let meta = Meta { perm: 0o755, uid: 0, gid: 0, mtime: time, xattrs: Vec::new() };
                        tree.add(dir, part.to_vec(), Node { meta, kind: Kind::Dir(Default::default()) })
                    }
                    Err(e) => {
                        return Err(Error::InjectFailed(format!(
                            "{} in the image: {e}",
                            String::from_utf8_lossy(&so_far)
                        )));
                    }
                };
            }
            dir
        }
        Err(e) => {
            return Err(Error::InjectFailed(format!("{} in the image: {e}", String::from_utf8_lossy(parent_path))));
        }
    };
    if tree.lookup(parent, name).is_some_and(|id| tree.node(id).is_dir()) {
        return Err(Error::InjectFailed(format!("{} is a directory in the image", install.target)));
    }
    let size = bytes.len() as u64;
    tree.add(
        parent,
        name.to_vec(),
        Node {
            meta: Meta { perm: install.mode & 0o7777, uid: 0, gid: 0, mtime: time, xattrs: Vec::new() },
            kind: Kind::File { size, data: FileData::Bytes(Arc::new(bytes)) },
        },
    );
    Ok(())
}

impl ExactConverter {
    fn run(&self, job: &ConversionJob, cancel: &AtomicBool) -> Result<Converted> {
        let scratch_dir = |suffix: &str| -> Result<Scratch> {
            let path = PathBuf::from(format!("{}.{suffix}", job.output.display()));
            std::fs::create_dir(&path).map_err(|e| Error::io(path.display(), &e))?;
            Ok(Scratch(path))
        };
        let mut keep_alive: Vec<Scratch> = Vec::new();
        let mut tree = match &job.source {
            SourceLayers::Overlay2 { diffs, .. } => {
                let top_first: Vec<PathBuf> = diffs.iter().rev().cloned().collect();
                let padding = if top_first.len() == 1 {
                    let empty = scratch_dir("empty")?;
                    let path = empty.0.clone();
                    keep_alive.push(empty);
                    Some(path)
                } else {
                    None
                };
                let root: Arc<OwnedFd> = Arc::new(
                    overlay::mount(&top_first, padding)
                        .map_err(|e| failed(format!("merging the overlay2 chain: {e}")))?,
                );
                let mut tree = scan::scan_overlay(root.clone(), &top_first, cancel).map_err(|e| match e {
                    scan::ScanError::Cancelled => Error::Timeout("the conversion was cancelled".into()),
                    other => failed(format!("reading the merged tree: {other}")),
                })?;
                if self.reflink == Reflink::Auto && same_filesystem(&top_first[0], &job.output) {
                    let layers = layer_files::open_layers(&top_first)
                        .map_err(|e| failed(format!("opening the chain's layers: {e}")))?;
                    let pointed = layer_files::point_at_layers(&mut tree, &root, &layers);
                    tracing::debug!(files = pointed.files, bytes = pointed.bytes, "files read from their layers");
                }
                tree
            }
            SourceLayers::Oci { blobs, .. } | SourceLayers::Pulled { blobs, .. } => {
                let spool_dir = job.output.parent().unwrap_or(std::path::Path::new("/"));
                let applier = oci_apply::Applier::new(spool_dir)
                    .map_err(|e| Error::io(format!("a spool in {}", spool_dir.display()), &e))?
                    .limited_to(job.max_bytes);
                applier.apply_all(blobs, cancel).map_err(|e| match e {
                    oci_apply::ApplyError::Io { source, layer } => {
                        Error::io(format!("spooling layer {layer}"), &source)
                    }
                    too_large @ oci_apply::ApplyError::TooLarge { .. } => {
                        Error::denied("max_image_bytes", format!("{too_large}; nothing was published"))
                    }
                    oci_apply::ApplyError::Cancelled => Error::Timeout("the conversion was cancelled".into()),
                    other => Error::UnsupportedSource(other.to_string()),
                })?
            }
        };
        if let Some(agent) = &job.agent {
            add_agent(&mut tree, agent)?;
        }
        // ext4 holds at most 65,000 names per inode: more become copies.
        tree.split_link_groups(ext4::format::MAX_LINKS);
        let options = ImageOptions {
            size: job.size,
            headroom: self.headroom,
            uuid: uuid_from_key(&job.key),
            hash_seed: derived(&job.key, "hash-seed"),
            label: "rootfs".into(),
            max_bytes: Some(job.max_bytes),
            features: match self.profile {
                Ext4Profile::Default => Features::EXT4,
                Ext4Profile::Minimal => Features::MINIMAL,
            },
            reflink: self.reflink,
        };
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&job.output)
            .map_err(|e| Error::io(job.output.display(), &e))?;
        // The image is hashed as it settles, on the second core, while the
        // data are written.
        let settled = crate::image_digest::Settled::default();
        let (written, digest) = std::thread::scope(|s| {
            let hashing = s.spawn(|| crate::image_digest::sha256_following(&out, &settled));
            let mut writer = settled.writer(&out);
            let written = ext4::write_image_streamed(&tree, &out, &options, &mut |below| writer.advance(below));
            drop(writer);
            (written, hashing.join())
        });
        // A failed hash is not a failed conversion: publishing hashes again.
        let image_sha256 = match digest {
            Ok(Ok(digest)) => digest,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "hashing the image as it was written failed");
                None
            }
            Err(_) => None,
        };
        if written.is_err() {
            let _ = std::fs::remove_file(&job.output);
        }
        let report = written.map_err(|e| match e {
            ext4::WriteError::DoesNotFit { needed, size } => failed(format!(
                "the content needs at least {needed} bytes, more than the {size} bytes asked for; raise --size or omit it"
            )),
            ext4::WriteError::TooLarge { needed, max } => Error::denied(
                "max_image_bytes",
                format!("the content needs an image of {needed} bytes, larger than the allowed {max}"),
            ),
            ext4::WriteError::Write(io) => Error::io("writing the image", &io),
            // What the source holds that ext4 cannot (each message names
            // the path or the count).
            e @ (ext4::WriteError::TooManyInodes { .. }
            | ext4::WriteError::Xattrs { .. }
            | ext4::WriteError::Unsupported(_)) => Error::UnsupportedSource(e.to_string()),
            other => failed(other.to_string()),
        })?;
        drop(keep_alive);
        // A tree of a million files takes most of a second to free: not on
        // the request's path.
        let _ = std::thread::Builder::new().name("tree-drop".into()).spawn(move || drop(tree));
        Ok(Converted {
            image_bytes: report.bytes,
            cloned_bytes: report.cloned_bytes,
            copied_bytes: report.copied_bytes,
            image_sha256,
        })
    }
}

/// Whether `a` and the directory `b` will be created in are on one
/// filesystem: the only case in which a layer's blocks can be cloned into
/// the image, and so worth finding the layer files for.
fn same_filesystem(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let dir = b.parent().unwrap_or(std::path::Path::new("/"));
    matches!((std::fs::metadata(a), std::fs::metadata(dir)), (Ok(a), Ok(b)) if a.dev() == b.dev())
}

#[async_trait::async_trait]
impl Converter for ExactConverter {
    fn identity(&self) -> String {
        let h = &self.headroom;
        format!(
            "exact {FORMAT_VERSION} (ext4 profile {}, free space {}% min {} B, free inodes {}% min {})",
            self.profile, h.free_space_percent, h.min_free_bytes, h.free_inodes_percent, h.min_free_inodes
        )
    }

    fn installs_agent(&self) -> bool {
        true
    }

    async fn convert(&self, job: ConversionJob) -> Result<Converted> {
        let cancel = Arc::new(AtomicBool::new(false));
        let timeout = job.timeout;
        let output = job.output.clone();
        let this = *self;
        let flag = cancel.clone();
        let work = tokio::task::spawn_blocking(move || this.run(&job, &flag));
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(failed(format!("the conversion thread panicked: {join}"))),
            Err(_) => {
                // The thread stops at its next check and removes what it wrote.
                cancel.store(true, Ordering::Relaxed);
                let _ = std::fs::remove_file(&output);
                Err(Error::Timeout(format!("the exact converter did not finish within {}s", timeout.as_secs())))
            }
        }
    }
}

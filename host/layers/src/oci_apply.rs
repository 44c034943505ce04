//! OCI layers applied in order to an in-memory tree, under the image spec's
//! rules: `.wh.<name>` deletes, `.wh..wh..opq` hides what lower layers put in
//! a directory, an entry replaces what was at its path (a file by a directory
//! and the reverse), and a directory over a directory keeps its contents and
//! takes the new metadata.
//!
//! File contents go to a spool: an unnamed temporary file (`O_TMPFILE`) in
//! the cache's `tmp/`, appended at block-aligned offsets with runs of zero
//! blocks left as holes. Nothing else touches the host filesystem, so the
//! applier needs no privileges, cannot write outside the cache, and leaves
//! nothing behind even if the process dies. What a later layer deletes is
//! only dropped from the tree: the image writer never copies it.
//!
//! An entry with `..` or an absolute path, a parent path that leaves the
//! root through a symlink, and a hardlink to anything outside the layers are
//! errors. Blobs are checked against their digests as they are read.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use rootfs_cache_ext4::tree::{Containment, ResolveError};
use rootfs_cache_ext4::{FileData, Kind, Meta, Node, NodeId, Timestamp, Tree};

use crate::regular_file::{FinalSymlink, RegularFile};
use crate::{LayerBlob, hex};

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An entry the spec does not allow, or one that would escape.
    #[error("layer {layer}: entry {path}: {why}")]
    BadEntry {
        /// The layer's digest.
        layer: String,
        /// The entry's path.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The blob is not a readable layer, or not the one its digest names.
    #[error("layer {layer}: {why}")]
    Corrupt {
        /// The layer's digest.
        layer: String,
        /// What is wrong.
        why: String,
    },
    /// Writing the spool failed.
    #[error("spooling layer {layer}: {source}")]
    Io {
        /// The layer's digest.
        layer: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The layers unpack to more file data than the limit (a decompression bomb, or an image
    /// larger than the policy allows); nothing more is written.
    #[error("layer {layer} unpacks past the limit of {limit} bytes of file data")]
    TooLarge {
        /// The layer's digest.
        layer: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The conversion was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), len: 0 }
    }

    /// `sha256:<hex>` of what was read.
    fn digest(self) -> String {
        format!("sha256:{}", hex(&self.hasher.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Extended attributes that belong to overlayfs itself (an opaque marker,
/// a redirect, an origin): never part of an image, whatever a layer says.
fn is_overlay_private(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
}

/// Splits an entry path into components, refusing `..` and absolute paths.
pub fn components(path: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if path.starts_with(b"/") {
        return Err("is an absolute path".into());
    }
    let mut out = Vec::new();
    for part in path.split(|&c| c == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("contains `..`".into()),
            p if p.contains(&0) => return Err("contains a NUL byte".into()),
            p => out.push(p.to_vec()),
        }
    }
    Ok(out)
}

fn parse_time(text: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(text).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += c.to_digit(10)? * 10u32.pow(8 - i as u32);
    }
    // "-1.5" means 1.5 s before the epoch.
    if secs < 0 && nanos > 0 {
        return Some(Timestamp { secs: secs - 1, nanos: 1_000_000_000 - nanos });
    }
    Some(Timestamp { secs, nanos })
}

/// Builds the tree of an OCI image from its layers.
pub struct Applier {
    tree: Tree,
    spool: Arc<File>,
    spool_len: u64,
    /// The most the spool may hold, holes included.
    limit: u64,
}

/// What one layer has created or updated (opaque markers spare these).
struct LayerState<'a> {
    layer: &'a str,
    created: HashSet<NodeId>,
}

fn dir_meta() -> Meta {
    Meta { perm: 0o755, uid: 0, gid: 0, mtime: Timestamp::default(), xattrs: Vec::new() }
}

impl Applier {
    /// Starts with an empty root (mode 0755, owned by root, at the epoch, so
    /// that layers without a `./` entry still give a reproducible root), and
    /// a spool: an unnamed file in `spool_dir`.
    pub fn new(spool_dir: &Path) -> std::io::Result<Self> {
        let spool = rustix::fs::open(
            spool_dir,
            rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o600),
        )?;
        Ok(Self { tree: Tree::new(dir_meta()), spool: Arc::new(File::from(spool)), spool_len: 0, limit: u64::MAX })
    }

    /// Refuses layers whose files add up to more than `limit` bytes (each file's size, as its
    /// header declares it, is checked before it is written): a layer that decompresses past
    /// it is [`ApplyError::TooLarge`] before the disk fills.
    pub fn limited_to(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Applies every layer, bottom first, and returns the tree.
    pub fn apply_all(mut self, layers: &[LayerBlob], cancel: &AtomicBool) -> Result<Tree, ApplyError> {
        for layer in layers {
            self.apply(layer, cancel)?;
        }
        Ok(self.tree)
    }

    fn apply(&mut self, blob: &LayerBlob, cancel: &AtomicBool) -> Result<(), ApplyError> {
        let layer = blob.digest.as_str();
        let corrupt = |why: String| ApplyError::Corrupt { layer: layer.into(), why };
        // A regular file (a FIFO would block the open), read no further than
        // its length when opened.
        let file = RegularFile::open(&blob.path, u64::MAX, FinalSymlink::Refuse)
            .map_err(|e| corrupt(e.to_string()))?
            .limited_to_len();
        let mut hashing = Hashing::new(std::io::BufReader::with_capacity(1 << 20, file));
        let mut st = LayerState { layer, created: HashSet::new() };
        let uncompressed_digest = {
            let reader: Box<dyn Read + '_> = match blob.media_type.as_str() {
                t if t.ends_with("+gzip") || t.ends_with(".tar.gzip") => {
                    Box::new(flate2::read::MultiGzDecoder::new(&mut hashing))
                }
                t if t.ends_with("+zstd") => {
                    Box::new(zstd::stream::read::Decoder::new(&mut hashing).map_err(|e| corrupt(format!("zstd: {e}")))?)
                }
                t if t.ends_with(".tar") => Box::new(&mut hashing),
                other => return Err(corrupt(format!("unsupported media type {other}"))),
            };
            let mut uncompressed = Hashing::new(reader);
            let mut archive = tar::Archive::new(&mut uncompressed);
            let entries = archive.entries().map_err(|e| corrupt(format!("not a tar stream: {e}")))?;
            for entry in entries {
                if cancel.load(Ordering::Relaxed) {
                    return Err(ApplyError::Cancelled);
                }
                let mut entry = entry.map_err(|e| corrupt(format!("the stream is truncated or corrupt: {e}")))?;
                self.entry(&mut st, &mut entry)?;
            }
            // Read what follows the end-of-archive marker, so the digest covers
            // the whole blob.
            let rest = archive.into_inner();
            std::io::copy(rest, &mut std::io::sink())
                .map_err(|e| corrupt(format!("the stream is truncated or corrupt: {e}")))?;
            uncompressed.digest()
        };
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| corrupt(e.to_string()))?;
        if hashing.len != blob.size {
            return Err(corrupt(format!(
                "the blob has {} bytes, its descriptor says {}: the layout is corrupt",
                hashing.len, blob.size
            )));
        }
        let actual = hashing.digest();
        if actual != blob.digest {
            return Err(corrupt(format!("the blob hashes to {actual}: the layout is corrupt")));
        }
        if let Some(diff_id) = &blob.diff_id
            && uncompressed_digest != *diff_id
        {
            return Err(corrupt(format!(
                "the uncompressed layer hashes to {uncompressed_digest}, but the image config's diff_ids say \
                 {diff_id}: the layout is corrupt"
            )));
        }
        Ok(())
    }

    /// The directory `parts` names, following symlinks beneath the root;
    /// missing directories are created (as tar does) when `create` holds.
    fn dir(&mut self, parts: &[Vec<u8>], create: bool) -> Result<Option<NodeId>, String> {
        let mut dir = Tree::ROOT;
        for part in parts {
            dir = match self.tree.resolve_dir_with(dir, part, Containment::Beneath) {
                Ok(next) => next,
                Err(ResolveError::Missing(_)) if !create => return Ok(None),
                Err(ResolveError::Missing(_)) if self.tree.lookup(dir, part).is_some() => {
                    return Err("its parent path goes through a dangling symlink".into());
                }
                Err(ResolveError::Missing(_)) => {
                    self.tree.add(dir, part.clone(), Node { meta: dir_meta(), kind: Kind::Dir(Default::default()) })
                }
                Err(ResolveError::Escapes(_)) => {
                    return Err("its parent path leaves the image root through a symlink".into());
                }
                Err(ResolveError::NotDirectory(name)) => {
                    return Err(format!("its parent {} is not a directory", String::from_utf8_lossy(&name)));
                }
                Err(ResolveError::Loop) => return Err("its parent path has a symlink loop".into()),
            };
        }
        Ok(Some(dir))
    }

    fn entry<R: Read>(&mut self, st: &mut LayerState<'_>, entry: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let raw_path = entry.path_bytes().into_owned();
        let layer = st.layer.to_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let bad = |why: String| ApplyError::BadEntry { layer: layer.clone(), path: shown.clone(), why };
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let parts = components(&raw_path).map_err(bad)?;
        let meta = meta_of(entry).map_err(bad)?;

        // The root directory itself ("./").
        let Some((name, parent_parts)) = parts.split_last() else {
            if kind == tar::EntryType::Directory {
                self.tree.node_mut(Tree::ROOT).meta = meta;
            }
            return Ok(());
        };

        if let Some(target) = name.strip_prefix(b".wh.") {
            let Some(dir) = self.dir(parent_parts, false).map_err(bad)? else { return Ok(()) };
            // Whiteouts apply to lower layers only: what this layer itself
            // put there stays, whichever comes first in the stream.
            let created = &st.created;
            if target == b".wh..opq" {
                self.tree.retain(dir, |_, id| created.contains(&id));
            } else if !target.is_empty()
                && target != b"."
                && target != b".."
                && !self.tree.lookup(dir, target).is_some_and(|id| created.contains(&id))
            {
                self.tree.remove(dir, target);
            }
            return Ok(());
        }

        let parent = self.dir(parent_parts, true).map_err(bad)?.expect("created");
        let existing = self.tree.lookup(parent, name);
        let node = match kind {
            tar::EntryType::Directory => {
                if let Some(id) = existing.filter(|&id| self.tree.node(id).is_dir()) {
                    // A directory over a directory: contents stay, metadata changes.
                    self.tree.node_mut(id).meta = meta;
                    st.created.insert(id);
                    return Ok(());
                }
                Kind::Dir(Default::default())
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.size();
                let offset = self.spool_len.next_multiple_of(4096);
                if offset.checked_add(size).is_none_or(|end| end > self.limit) {
                    return Err(ApplyError::TooLarge { layer: layer.clone(), limit: self.limit });
                }
                let written = write_sparse(entry, &self.spool, offset).map_err(|e| {
                    // Errors without an OS error come from decompressing the stream.
                    if e.raw_os_error().is_none() {
                        ApplyError::Corrupt {
                            layer: layer.clone(),
                            why: format!("the stream is truncated or corrupt: {e}"),
                        }
                    } else {
                        ApplyError::Io { layer: layer.clone(), source: e }
                    }
                })?;
                if written != size {
                    return Err(ApplyError::Corrupt {
                        layer: layer.clone(),
                        why: format!("{shown}: {written} of {size} bytes"),
                    });
                }
                self.spool_len = offset + size;
                Kind::File { size, data: FileData::Range { file: self.spool.clone(), offset } }
            }
            tar::EntryType::Symlink => {
                let target =
                    entry.link_name_bytes().ok_or_else(|| bad("a symlink without a target".into()))?.into_owned();
                if target.contains(&0) {
                    return Err(bad("a symlink target with a NUL byte".into()));
                }
                Kind::Symlink(target)
            }
            tar::EntryType::Link => {
                let target =
                    entry.link_name_bytes().ok_or_else(|| bad("a hardlink without a target".into()))?.into_owned();
                let target_parts = components(&target).map_err(|why| bad(format!("its hardlink target {why}")))?;
                let missing =
                    || bad(format!("its hardlink target {} does not exist", String::from_utf8_lossy(&target)));
                let (target_name, target_dir) =
                    target_parts.split_last().ok_or_else(|| bad("a hardlink to the root".into()))?;
                let dir = self
                    .dir(target_dir, false)
                    .map_err(|why| bad(format!("its hardlink target: {why}")))?
                    .ok_or_else(missing)?;
                let id = self.tree.lookup(dir, target_name).ok_or_else(missing)?;
                if self.tree.node(id).is_dir() {
                    return Err(bad("a hardlink to a directory".into()));
                }
                self.tree.link(parent, name.clone(), id);
                st.created.insert(id);
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let rdev = rustix::fs::makedev(major, minor);
                if kind == tar::EntryType::Char { Kind::CharDevice(rdev) } else { Kind::BlockDevice(rdev) }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            other => return Err(bad(format!("unsupported entry type {other:?}"))),
        };
        let id = self.tree.add(parent, name.clone(), Node { meta, kind: node });
        st.created.insert(id);
        Ok(())
    }
}

/// An entry's owner, mode, time and extended attributes, PAX records
/// included.
fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, String> {
    let header = entry.header();
    let mut meta = Meta {
        perm: header.mode().map_err(|e| format!("mode: {e}"))? & 0o7777,
        uid: header.uid().map_err(|e| format!("uid: {e}"))? as u32,
        gid: header.gid().map_err(|e| format!("gid: {e}"))? as u32,
        mtime: Timestamp { secs: header.mtime().map_err(|e| format!("mtime: {e}"))? as i64, nanos: 0 },
        xattrs: Vec::new(),
    };
    if let Ok(Some(pax)) = entry.pax_extensions() {
        for ext in pax {
            let ext = ext.map_err(|e| format!("PAX header: {e}"))?;
            let (Ok(key), value) = (ext.key(), ext.value_bytes()) else { continue };
            let number = || std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            match key {
                "mtime" => meta.mtime = parse_time(value).ok_or("a PAX mtime that is not a number")?,
                "uid" => meta.uid = number().ok_or("a PAX uid that is not a number")?,
                "gid" => meta.gid = number().ok_or("a PAX gid that is not a number")?,
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                        && !is_overlay_private(name.as_bytes())
                    {
                        meta.xattrs.push((name.as_bytes().to_vec(), value.to_vec()));
                    }
                }
            }
        }
    }
    meta.xattrs.sort();
    Ok(meta)
}

/// Copies an entry's data into the spool at `offset`, leaving holes where
/// whole blocks are zero. Returns the bytes read.
fn write_sparse(reader: &mut impl Read, out: &File, offset: u64) -> std::io::Result<u64> {
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0u64;
    loop {
        // Fill the buffer as far as the stream allows, so blocks stay aligned.
        let mut filled = 0;
        while filled < buf.len() {
            let n = reader.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let mut pending: Option<(u64, usize, usize)> = None;
        for (i, chunk) in buf[..filled].chunks(BLOCK).enumerate() {
            let zero = chunk.iter().all(|&b| b == 0);
            match (&mut pending, zero) {
                (Some((_, _, end)), false) => *end = i * BLOCK + chunk.len(),
                (None, false) => pending = Some((offset + at + (i * BLOCK) as u64, i * BLOCK, i * BLOCK + chunk.len())),
                (Some((pos, start, end)), true) => {
                    out.write_all_at(&buf[*start..*end], *pos)?;
                    pending = None;
                }
                (None, true) => {}
            }
        }
        if let Some((pos, start, end)) = pending {
            out.write_all_at(&buf[start..end], pos)?;
        }
        at += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    // The spool grows to cover trailing holes too.
    if out.metadata()?.len() < offset + at {
        out.set_len(offset + at)?;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regular file (`Some(contents)`) or a directory (`None`) in a layer.
    type Entry<'a> = (&'a str, Option<&'a [u8]>);

    /// Writes an uncompressed layer of `entries` into `dir` and describes it.
    fn layer(dir: &Path, name: &str, entries: &[Entry<'_>]) -> LayerBlob {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            match contents {
                Some(bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_size(bytes.len() as u64);
                    builder.append_data(&mut header, path, *bytes).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    builder.append_data(&mut header, path, std::io::empty()).unwrap();
                }
            }
        }
        let bytes = builder.into_inner().unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        LayerBlob {
            path,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: format!("sha256:{}", hex(&Sha256::digest(&bytes))),
            size: bytes.len() as u64,
            diff_id: None,
        }
    }

    fn names(tree: &Tree, dir: NodeId) -> Vec<Vec<u8>> {
        let Kind::Dir(entries) = &tree.node(dir).kind else { panic!("not a directory") };
        entries.keys().cloned().collect()
    }

    #[test]
    fn a_whiteout_and_an_opaque_directory_in_the_top_layer_hide_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = layer(
            dir.path(),
            "base.tar",
            &[("hidden", Some(b"base")), ("kept", Some(b"kept")), ("etc", None), ("etc/old", Some(b"old"))],
        );
        let top = layer(
            dir.path(),
            "top.tar",
            &[(".wh.hidden", Some(b"")), ("etc/.wh..wh..opq", Some(b"")), ("etc/new", Some(b"new"))],
        );
        let tree = Applier::new(dir.path()).unwrap().apply_all(&[base, top], &AtomicBool::new(false)).unwrap();
        assert_eq!(names(&tree, Tree::ROOT), [b"etc".to_vec(), b"kept".to_vec()]);
        let etc = tree.resolve_dir(b"/etc").unwrap();
        assert_eq!(names(&tree, etc), [b"new".to_vec()]);
        let new = tree.lookup(etc, b"new").unwrap();
        let Kind::File { size: 3, data: FileData::Range { file, offset } } = &tree.node(new).kind else {
            panic!("etc/new is not a 3-byte spooled file")
        };
        let mut back = [0u8; 3];
        file.read_exact_at(&mut back, *offset).unwrap();
        assert_eq!(&back, b"new");
    }

    #[test]
    fn entry_paths_may_not_escape() {
        assert_eq!(components(b"./etc/passwd").unwrap(), vec![b"etc".to_vec(), b"passwd".to_vec()]);
        assert!(components(b"").unwrap().is_empty());
        assert!(components(b"../etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
        assert!(components(b"/etc/passwd").is_err());
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        assert_eq!(parse_time(b"1700000000.123456789"), Some(Timestamp { secs: 1_700_000_000, nanos: 123_456_789 }));
        assert_eq!(parse_time(b"5"), Some(Timestamp { secs: 5, nanos: 0 }));
        assert_eq!(parse_time(b"-1.5"), Some(Timestamp { secs: -2, nanos: 500_000_000 }));
        assert_eq!(parse_time(b"x"), None);
    }

    #[test]
    fn layers_that_unpack_past_the_limit_are_refused_before_the_file_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let small = layer(dir.path(), "small.tar", &[("a", Some(&[1u8; 5000][..]))]);
        let big = layer(dir.path(), "big.tar", &[("b", Some(&[2u8; 5000][..]))]);
        // The first file takes two blocks (8 KiB); the second would end past 12 KiB.
        let applier = Applier::new(dir.path()).unwrap().limited_to(12 << 10);
        let err = applier.apply_all(&[small.clone(), big.clone()], &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(&err, ApplyError::TooLarge { layer, limit: 12288 } if *layer == big.digest), "{err}");
        let fits = Applier::new(dir.path()).unwrap().limited_to(16 << 10);
        fits.apply_all(&[small, big], &AtomicBool::new(false)).unwrap();
    }

    #[test]
    fn zero_blocks_become_holes_in_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool =
            File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("s")).unwrap();
        let mut data = vec![0u8; 1 << 20];
        data[500_000] = 1;
        let n = write_sparse(&mut &data[..], &spool, 4096).unwrap();
        assert_eq!(n, 1 << 20);
        let mut back = vec![0u8; 1 << 20];
        spool.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, data);
        use std::os::unix::fs::MetadataExt;
        assert!(spool.metadata().unwrap().blocks() * 512 <= 64 << 10, "the spool is not sparse");
    }
}

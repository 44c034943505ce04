//! OCI layers applied in order into a staging directory, under the image
//! spec's rules: `.wh.<name>` deletes, `.wh..wh..opq` hides what lower layers
//! put in a directory, an entry replaces what was at its path (a file by a
//! directory and the reverse), and a directory over a directory merges.
//!
//! Every path is resolved beneath the staging directory (`openat2` with
//! `RESOLVE_BENEATH`): an entry with `..` or an absolute path, a parent path
//! that leaves the staging directory through a symlink, or a hardlink to
//! something outside the layers is an error, and nothing is written outside.
//! Blobs are checked against their digests as they are read; runs of zero
//! blocks in files become holes.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags, Timespec, Timestamps};
use sha2::{Digest, Sha256};

use super::super::LayerBlob;
use crate::digest::hex;

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
    /// Writing the staging directory failed.
    #[error("staging layer {layer}: {source}")]
    Io {
        /// The layer's digest.
        layer: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The conversion was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
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

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.join(&b'/')
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Metadata an entry carries.
struct EntryMeta {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn parse_time(text: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(text).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += i64::from(c.to_digit(10)?) * 10i64.pow(8 - i as u32);
    }
    // "-1.5" means 1.5 s before the epoch.
    if secs < 0 && nanos > 0 {
        return Some(Timespec { tv_sec: secs - 1, tv_nsec: 1_000_000_000 - nanos });
    }
    Some(Timespec { tv_sec: secs, tv_nsec: nanos })
}

/// The staging directory layers are applied into.
pub struct Staging {
    root: OwnedFd,
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

struct LayerState<'a> {
    layer: &'a str,
    /// Paths created or updated by this layer (opaque markers spare them).
    created: HashSet<Vec<u8>>,
    /// Directories this layer changed, with the time to restore.
    touched: HashMap<Vec<u8>, Timespec>,
    /// Directory entries of this layer, with their times, set last.
    dir_times: HashMap<Vec<u8>, Timespec>,
}

impl Staging {
    /// Opens an empty staging directory. Its time starts at the epoch, so a
    /// layer without a `./` entry still gives a reproducible root.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let root = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let epoch = Timespec { tv_sec: 0, tv_nsec: 0 };
        rustix::fs::utimensat(
            &root,
            ".",
            &Timestamps { last_access: epoch, last_modification: epoch },
            AtFlags::empty(),
        )?;
        Ok(Self { root })
    }

    /// The staging root's handle.
    pub fn root(&self) -> &OwnedFd {
        &self.root
    }

    /// Applies every layer, bottom first.
    pub fn apply_all(&self, layers: &[LayerBlob], cancel: &AtomicBool) -> Result<(), ApplyError> {
        layers.iter().try_for_each(|layer| self.apply(layer, cancel))
    }

    fn open_dir(&self, st: &mut LayerState<'_>, parts: &[Vec<u8>], entry: &str) -> Result<OwnedFd, ApplyError> {
        let bad = |why: String| ApplyError::BadEntry { layer: st.layer.into(), path: entry.into(), why };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let path = if parts.is_empty() { b".".to_vec() } else { join(parts) };
        match rustix::fs::openat2(&self.root, os(&path), flags, Mode::empty(), BENEATH) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::XDEV) => {
                return Err(bad("its parent path leaves the image root through a symlink".into()));
            }
            Err(rustix::io::Errno::NOTDIR) => return Err(bad("a parent is not a directory".into())),
            Err(e) => return Err(bad(format!("opening its parent: {e}"))),
        }
        // Create missing parents, as tar does, owned by root.
        let mut dir =
            rustix::fs::openat2(&self.root, ".", flags, Mode::empty(), BENEATH).map_err(|e| bad(e.to_string()))?;
        for i in 0..parts.len() {
            let sub = join(&parts[..=i]);
            dir = match rustix::fs::openat2(&self.root, os(&sub), flags, Mode::empty(), BENEATH) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    self.touch(st, &parts[..i], &dir);
                    rustix::fs::mkdirat(&dir, os(&parts[i]), Mode::from_raw_mode(0o755))
                        .map_err(|e| bad(format!("creating a parent: {e}")))?;
                    st.touched.insert(sub.clone(), Timespec { tv_sec: 0, tv_nsec: 0 });
                    rustix::fs::openat2(&self.root, os(&sub), flags, Mode::empty(), BENEATH)
                        .map_err(|e| bad(e.to_string()))?
                }
                Err(rustix::io::Errno::XDEV) => {
                    return Err(bad("its parent path leaves the image root through a symlink".into()));
                }
                Err(e) => return Err(bad(format!("a parent: {e}"))),
            };
        }
        Ok(dir)
    }

    /// Remembers a directory's time before this layer first changes it.
    fn touch(&self, st: &mut LayerState<'_>, parts: &[Vec<u8>], dir: &OwnedFd) {
        let key = join(parts);
        if !st.touched.contains_key(&key)
            && let Ok(stat) = rustix::fs::statx(dir, "", AtFlags::EMPTY_PATH, StatxFlags::MTIME)
        {
            st.touched
                .insert(key, Timespec { tv_sec: stat.stx_mtime.tv_sec, tv_nsec: i64::from(stat.stx_mtime.tv_nsec) });
        }
    }

    fn apply(&self, blob: &LayerBlob, cancel: &AtomicBool) -> Result<(), ApplyError> {
        let layer = blob.digest.as_str();
        let corrupt = |why: String| ApplyError::Corrupt { layer: layer.into(), why };
        let file = File::open(&blob.path).map_err(|e| corrupt(format!("{}: {e}", blob.path.display())))?;
        let mut hashing = Hashing { inner: std::io::BufReader::with_capacity(1 << 20, file), hasher: Sha256::new() };
        let mut st = LayerState { layer, created: HashSet::new(), touched: HashMap::new(), dir_times: HashMap::new() };
        {
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
            let mut archive = tar::Archive::new(reader);
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
            let mut rest = archive.into_inner();
            std::io::copy(&mut rest, &mut std::io::sink())
                .map_err(|e| corrupt(format!("the stream is truncated or corrupt: {e}")))?;
        }
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| corrupt(e.to_string()))?;
        let actual = format!("sha256:{}", hex(&hashing.hasher.finalize()));
        if actual != blob.digest {
            return Err(corrupt(format!("the blob hashes to {actual}: the layout is corrupt")));
        }
        // Directory times last: creating entries changed them.
        let mut dirs: Vec<&Vec<u8>> = st.touched.keys().chain(st.dir_times.keys()).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            let time = st.dir_times.get(dir).or_else(|| st.touched.get(dir)).copied().expect("listed above");
            let path = if dir.is_empty() { b".".to_vec() } else { dir.clone() };
            let times = Timestamps { last_access: time, last_modification: time };
            if let Err(e) = rustix::fs::utimensat(&self.root, os(&path), &times, AtFlags::SYMLINK_NOFOLLOW) {
                // A directory this layer later removed has no time to set.
                if e != rustix::io::Errno::NOENT {
                    return Err(ApplyError::Io { layer: layer.into(), source: e.into() });
                }
            }
        }
        Ok(())
    }

    fn entry<R: Read>(&self, st: &mut LayerState<'_>, entry: &mut tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let layer = st.layer.to_owned();
        let bad = |why: String| ApplyError::BadEntry { layer: layer.clone(), path: shown.clone(), why };
        let io = |e: std::io::Error| ApplyError::Io { layer: layer.clone(), source: e };
        let parts = components(&raw_path).map_err(bad)?;
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
        let meta = self.meta(entry).map_err(bad)?;

        // The root directory itself ("./").
        let Some((name, parent)) = parts.split_last() else {
            if kind == tar::EntryType::Directory {
                self.set_meta(&self.root, b".", &meta, true).map_err(io)?;
                st.dir_times.insert(Vec::new(), meta.mtime);
            }
            return Ok(());
        };

        if let Some(target) = name.strip_prefix(b".wh.") {
            let dir = self.open_dir(st, parent, &shown)?;
            self.touch(st, parent, &dir);
            if target == b".wh..opq" {
                self.make_opaque(st, &dir, parent).map_err(io)?;
            } else if !target.is_empty() && target != b"." && target != b".." && !target.starts_with(b".wh.") {
                remove_all(&dir, target).map_err(io)?;
            }
            return Ok(());
        }

        let dir = self.open_dir(st, parent, &shown)?;
        self.touch(st, parent, &dir);
        let full = join(&parts);
        st.created.insert(full.clone());
        let existing = rustix::fs::statx(&dir, os(name), AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE)
            .ok()
            .map(|s| FileType::from_raw_mode(u32::from(s.stx_mode)));
        let is_dir = kind == tar::EntryType::Directory;
        match existing {
            Some(FileType::Directory) if is_dir => {}
            Some(_) => remove_all(&dir, name).map_err(io)?,
            None => {}
        }
        let errno = |what: &str| {
            let what = what.to_owned();
            let layer = layer.clone();
            move |e: rustix::io::Errno| {
                if e == rustix::io::Errno::NOSPC {
                    ApplyError::Io { layer: layer.clone(), source: e.into() }
                } else {
                    bad(format!("{what}: {e}"))
                }
            }
        };
        match kind {
            tar::EntryType::Directory => {
                if existing != Some(FileType::Directory) {
                    rustix::fs::mkdirat(&dir, os(name), Mode::from_raw_mode(0o700)).map_err(errno("mkdir"))?;
                }
                self.set_meta(&dir, name, &meta, true).map_err(io)?;
                st.dir_times.insert(full, meta.mtime);
                return Ok(());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    &dir,
                    os(name),
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(errno("create"))?;
                let out = File::from(fd);
                write_sparse(entry, &out).map_err(|e| {
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
            }
            tar::EntryType::Symlink => {
                let target =
                    entry.link_name_bytes().ok_or_else(|| bad("a symlink without a target".into()))?.into_owned();
                if target.contains(&0) {
                    return Err(bad("a symlink target with a NUL byte".into()));
                }
                rustix::fs::symlinkat(os(&target), &dir, os(name)).map_err(errno("symlink"))?;
            }
            tar::EntryType::Link => {
                let target =
                    entry.link_name_bytes().ok_or_else(|| bad("a hardlink without a target".into()))?.into_owned();
                let target_parts = components(&target).map_err(|why| bad(format!("its hardlink target {why}")))?;
                if target_parts.is_empty() {
                    return Err(bad("a hardlink to the root".into()));
                }
                let source = rustix::fs::openat2(
                    &self.root,
                    os(&join(&target_parts)),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                    BENEATH,
                )
                .map_err(|e| match e {
                    rustix::io::Errno::XDEV => bad("its hardlink target leaves the image root".into()),
                    rustix::io::Errno::NOENT => {
                        bad(format!("its hardlink target {} does not exist", String::from_utf8_lossy(&target)))
                    }
                    e => bad(format!("its hardlink target: {e}")),
                })?;
                rustix::fs::linkat(&source, "", &dir, os(name), AtFlags::EMPTY_PATH).map_err(errno("hardlink"))?;
                // A hardlink shares its target's metadata.
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let header = entry.header();
                let (major, minor) = (
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                let file_type = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                rustix::fs::mknodat(
                    &dir,
                    os(name),
                    file_type,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(errno("mknod (device nodes need root)"))?;
            }
            other => return Err(bad(format!("unsupported entry type {other:?}"))),
        }
        self.set_meta(&dir, name, &meta, false).map_err(io)
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<EntryMeta, String> {
        let header = entry.header();
        let mut meta = EntryMeta {
            perm: header.mode().map_err(|e| format!("mode: {e}"))? & 0o7777,
            uid: header.uid().map_err(|e| format!("uid: {e}"))? as u32,
            gid: header.gid().map_err(|e| format!("gid: {e}"))? as u32,
            mtime: Timespec { tv_sec: header.mtime().map_err(|e| format!("mtime: {e}"))? as i64, tv_nsec: 0 },
            xattrs: Vec::new(),
        };
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax {
                let ext = ext.map_err(|e| format!("PAX header: {e}"))?;
                let (Ok(key), value) = (ext.key(), ext.value_bytes()) else { continue };
                match key {
                    "mtime" => meta.mtime = parse_time(value).ok_or("a PAX mtime that is not a number")?,
                    "uid" => {
                        meta.uid = std::str::from_utf8(value)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .ok_or("a PAX uid that is not a number")?
                    }
                    "gid" => {
                        meta.gid = std::str::from_utf8(value)
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .ok_or("a PAX gid that is not a number")?
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            meta.xattrs.push((name.as_bytes().to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        Ok(meta)
    }

    /// Owner, mode, extended attributes (replacing any there) and time, in
    /// that order: `chown` clears setuid bits and `security.capability`.
    fn set_meta(&self, dir: &OwnedFd, name: &[u8], meta: &EntryMeta, is_dir: bool) -> std::io::Result<()> {
        let name = os(name);
        let stat = rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE)?;
        let is_link = FileType::from_raw_mode(u32::from(stat.stx_mode)) == FileType::Symlink;
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if !is_link {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.perm), AtFlags::empty())?;
        }
        let path = proc_path(dir.as_fd(), name);
        for (old, _) in super::scan::read_xattrs(&path).unwrap_or_default() {
            let _ = rustix::fs::lremovexattr(&path, CString::new(old).map_err(std::io::Error::other)?.as_c_str());
        }
        for (key, value) in &meta.xattrs {
            let key = CString::new(key.clone()).map_err(std::io::Error::other)?;
            rustix::fs::lsetxattr(&path, key.as_c_str(), value, rustix::fs::XattrFlags::empty())?;
        }
        if !is_dir {
            let times = Timestamps { last_access: meta.mtime, last_modification: meta.mtime };
            rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Ok(())
    }

    /// Removes what lower layers put in `dir`, sparing this layer's entries.
    fn make_opaque(&self, st: &mut LayerState<'_>, dir: &OwnedFd, parts: &[Vec<u8>]) -> std::io::Result<()> {
        let prefix = join(parts);
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        for name in names {
            let full = if prefix.is_empty() { name.clone() } else { [prefix.as_slice(), b"/", &name].concat() };
            if !st.created.contains(&full) {
                remove_all(dir, &name)?;
            }
        }
        Ok(())
    }
}

fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if name != "." {
        p.push(name);
    }
    p
}

/// Removes `name` in `dir`, recursively, without following symlinks.
pub fn remove_all(dir: &OwnedFd, name: &[u8]) -> std::io::Result<()> {
    let name = os(name);
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::ISDIR | rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let child = entry?.file_name().to_bytes().to_vec();
        if child != b"." && child != b".." {
            children.push(child);
        }
    }
    for child in children {
        remove_all(&sub, &child)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Copies an entry's data, leaving holes where whole blocks are zero.
fn write_sparse(reader: &mut impl Read, out: &File) -> std::io::Result<()> {
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
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
        if filled == 0 {
            break;
        }
        for chunk in buf[..filled].chunks(BLOCK) {
            if chunk.iter().any(|&b| b != 0) {
                out.write_all_at(chunk, offset)?;
            }
            offset += chunk.len() as u64;
        }
        if filled < buf.len() {
            break;
        }
    }
    out.set_len(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_time(b"1700000000.123456789"), Some(Timespec { tv_sec: 1_700_000_000, tv_nsec: 123_456_789 }));
        assert_eq!(parse_time(b"5"), Some(Timespec { tv_sec: 5, tv_nsec: 0 }));
        assert_eq!(parse_time(b"-1.5"), Some(Timespec { tv_sec: -2, tv_nsec: 500_000_000 }));
        assert_eq!(parse_time(b"x"), None);
    }
}

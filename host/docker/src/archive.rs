//! Storing the archive an engine exports (`docker save`'s format) in a content-addressed
//! store, without interpreting it.
//!
//! The archive is untrusted (its files come from whatever image the engine holds), so this
//! reads only the tar structure, with limits, and stores each regular file under the
//! SHA-256 of its bytes: the guest then reads `manifest.json` and the image config from the
//! store, and checks every layer against the config's diff IDs. Directories, links and
//! other entries are skipped (Docker 25's archives hold legacy `<id>/layer.tar` symlinks
//! to the blobs beside the OCI layout; `manifest.json` names the blobs themselves). The
//! fuzz target `docker_archive` runs this on arbitrary bytes.

use std::io::Read;
use std::path::PathBuf;

use rootfs_cache_registry::{BlobStore, Digest, RegistryError};

use crate::error::EngineError;

/// The most files an archive may hold (an image of 10,000 layers has about 20,000).
pub const MAX_FILES: usize = 100_000;
/// The longest file name accepted in an archive.
pub const MAX_NAME_BYTES: usize = 4096;

/// One regular file of an exported archive, stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveFile {
    /// Its name in the archive, `./` removed: `manifest.json`, `<id>/layer.tar`,
    /// `blobs/sha256/<hex>`.
    pub name: String,
    /// The SHA-256 of its bytes.
    pub digest: Digest,
    /// Its length.
    pub size: u64,
    /// Where the store keeps it.
    pub path: PathBuf,
}

fn bad(why: impl Into<String>) -> EngineError {
    EngineError::Archive(why.into())
}

/// A file name of the archive: UTF-8, relative, no `..`, `./` removed.
fn file_name(raw: &[u8]) -> Result<String, EngineError> {
    let name = std::str::from_utf8(raw).map_err(|_| bad("a file name is not UTF-8"))?;
    let name = name.trim_start_matches("./");
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(bad(format!("a file name is empty or longer than {MAX_NAME_BYTES} bytes")));
    }
    if name.starts_with('/') || name.split('/').any(|c| c == ".." || c.is_empty()) || name.contains('\0') {
        return Err(bad(format!("file name {name:?} is not a plain relative path")));
    }
    Ok(name.to_owned())
}

/// Reads the tar archive `reader` yields and stores each regular file in `store` under its
/// SHA-256, at most `limit` bytes in all. Returns the files in archive order. A file that
/// cannot be stored, a malformed archive, more than [`MAX_FILES`] files or none at all is an
/// error; blobs stored before it stay in the store (they are complete and verified, and
/// `gc` removes what no entry needs).
pub fn store_archive(reader: impl Read, store: &BlobStore, limit: u64) -> Result<Vec<ArchiveFile>, EngineError> {
    let mut archive = tar::Archive::new(reader);
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = file_name(&entry.path_bytes())?;
        if files.len() == MAX_FILES {
            return Err(bad(format!("it holds more than {MAX_FILES} files")));
        }
        let remaining = limit.saturating_sub(total);
        let (digest, size, path) = store.put_reader(&mut entry, &name, remaining).map_err(|e| match e {
            RegistryError::TooLarge { .. } => {
                EngineError::TooLarge { what: format!("the exported archive (at {name})"), limit }
            }
            other => EngineError::Store(other),
        })?;
        total += size;
        files.push(ArchiveFile { name, digest, size, path });
    }
    if files.is_empty() {
        return Err(bad("it holds no files"));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn each_file_is_stored_under_its_digest_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path()).unwrap();
        let archive = tar_of(&[("manifest.json", b"[]"), ("./abc/layer.tar", b"layer"), ("again.json", b"[]")]);
        let files = store_archive(&archive[..], &store, 1 << 20).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["manifest.json", "abc/layer.tar", "again.json"]);
        assert_eq!(files[1].digest, Digest::of(b"layer"));
        assert_eq!(std::fs::read(&files[1].path).unwrap(), b"layer");
        assert_eq!(files[0].path, files[2].path, "one blob for equal bytes");
        assert!(store.sweep(false).unwrap().is_empty(), "no temporary file is left");
    }

    #[test]
    fn mutated_archives_never_panic_and_store_only_whole_blobs() {
        // A thousand corruptions of a valid archive (the fuzz target `docker_archive`
        // explores further): every answer is an error or files whose blobs hash right.
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path()).unwrap();
        let valid = tar_of(&[("manifest.json", b"[{}]"), ("a/layer.tar", &[7u8; 3000]), ("b.json", b"{}")]);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..1000 {
            let mut bytes = valid.clone();
            for _ in 0..=(next() % 4) {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            if next() % 8 == 0 {
                bytes.truncate((next() % bytes.len() as u64) as usize);
            }
            if let Ok(files) = store_archive(&bytes[..], &store, 1 << 20) {
                for file in files {
                    let stored = std::fs::read(&file.path).unwrap();
                    assert_eq!((Digest::of(&stored), stored.len() as u64), (file.digest, file.size));
                }
            }
        }
        assert!(store.sweep(false).unwrap().is_empty(), "a temporary file was left");
    }

    #[test]
    fn limits_and_bad_archives_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path()).unwrap();
        let archive = tar_of(&[("a", b"0123456789"), ("b", b"0123456789")]);
        let err = store_archive(&archive[..], &store, 15).unwrap_err();
        assert!(matches!(err, EngineError::TooLarge { limit: 15, .. }), "{err}");
        assert!(store.sweep(false).unwrap().is_empty(), "the file over the limit left no temporary file");
        assert!(matches!(store_archive(&b"not a tar archive at all"[..], &store, 100), Err(EngineError::Archive(_))));
        assert!(matches!(store_archive(&[0u8; 1024][..], &store, 100), Err(EngineError::Archive(_))), "empty");
        let mut evil = tar_of(&[("x", b"1")]);
        // `../x` written over the name field (tar::Builder refuses to write it).
        evil[..4].copy_from_slice(b"../x");
        let sum: u32 =
            evil[..512].iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum();
        evil[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let err = store_archive(&evil[..], &store, 100).unwrap_err();
        assert!(err.to_string().contains("not a plain relative path"), "{err}");
    }
}

//! The cache directory, held as `cap_std` directory handles.
//!
//! The directory is opened once, by path, when the cache opens; every later
//! operation works relative to these handles and takes only a validated file
//! name, so nothing the guest says can name a file outside the cache.
//!
//! ```text
//! <cache>/images/<key>.ext4   published, immutable
//! <cache>/images/<key>.json   manifest, written last
//! <cache>/tmp/                builds in progress: <key>.<token>.ext4
//! <cache>/locks/<key>.lock    flock files, removed by their holder
//! <cache>/engine/             the precompiled component
//! <cache>/blobs/sha256/<hex>  pulled blobs (the `rootfs-cache-registry` store)
//! ```

use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::error::{Error, Result};

/// A subdirectory of the cache the guest may name files in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// `images/`: published entries.
    Images,
    /// `tmp/`: builds in progress.
    Tmp,
}

impl Area {
    /// The subdirectory's name.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Images => "images",
            Self::Tmp => "tmp",
        }
    }
}

/// A file in one of the cache's areas, named by a validated file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheFile {
    /// Which subdirectory.
    pub area: Area,
    /// The file name: `[A-Za-z0-9._-]`, not starting with a dot.
    pub name: String,
}

impl CacheFile {
    /// Parses a cache-relative path such as `images/<key>.ext4`, accepting it
    /// only when it names a file directly inside one of `allowed`.
    pub fn parse(path: &str, allowed: &[Area]) -> Result<Self> {
        let refuse = |why: &str| Err(Error::denied("cache_dir", format!("{path:?} {why}")));
        let Some((dir, name)) = path.split_once('/') else {
            return refuse("is not <area>/<file> inside the cache");
        };
        let Some(area) = allowed.iter().copied().find(|a| a.dir_name() == dir) else {
            let names: Vec<_> = allowed.iter().map(|a| a.dir_name()).collect();
            return refuse(&format!("is outside {}", names.join(" and ")));
        };
        let name_ok = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('.')
            && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !name_ok {
            return refuse("is not a plain file name inside the cache");
        }
        Ok(Self { area, name: name.to_owned() })
    }

    /// The path relative to the cache directory.
    pub fn relative(&self) -> String {
        format!("{}/{}", self.area.dir_name(), self.name)
    }
}

/// A blob of the cache's store, `blobs/sha256/<hex>`, the only path under `blobs/` the guest
/// may name (for `remove`, which garbage collection calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobFile {
    /// The digest's 64 lowercase hex digits.
    pub hex: String,
}

impl BlobFile {
    /// The directory of blobs, relative to the cache.
    pub const DIR: &'static str = "blobs/sha256";

    /// `Some` when `path` is under `blobs/`: the blob it names, or `denied` (`cache_dir`) for
    /// anything but `blobs/sha256/<64 lowercase hex digits>`. `None` for paths elsewhere.
    pub fn parse(path: &str) -> Option<Result<Self>> {
        let rest = path.strip_prefix("blobs/")?;
        let hex = rest
            .strip_prefix("sha256/")
            .filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        Some(match hex {
            Some(hex) => Ok(Self { hex: hex.to_owned() }),
            None => Err(Error::denied("cache_dir", format!("{path:?} is not blobs/sha256/<64 lowercase hex digits>"))),
        })
    }

    /// The path relative to the cache directory.
    pub fn relative(&self) -> String {
        format!("{}/{}", Self::DIR, self.hex)
    }
}

/// The open cache directory.
#[derive(Debug)]
pub struct CacheDir {
    path: PathBuf,
    root: Dir,
    images: Dir,
    tmp: Dir,
    locks: Dir,
}

impl CacheDir {
    /// Opens the cache at `path`, creating it and its subdirectories when
    /// missing. The path is canonicalised first, so later absolute paths
    /// (handed to external converters) name the same directory.
    pub fn open(path: &Path) -> Result<Self> {
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(Error::Config(format!("cache directory {} is not a directory", path.display())));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path)
                    .map_err(|e| Error::Config(format!("cannot create cache directory {}: {e}", path.display())))?;
            }
            Err(e) => {
                return Err(Error::Config(format!("cache directory {}: {e}", path.display())));
            }
        }
        let path =
            path.canonicalize().map_err(|e| Error::Config(format!("cache directory {}: {e}", path.display())))?;
        let root = Dir::open_ambient_dir(&path, ambient_authority())
            .map_err(|e| Error::Config(format!("cannot open cache directory {}: {e}", path.display())))?;
        let sub = |name: &str| -> Result<Dir> {
            match root.symlink_metadata(name) {
                Ok(meta) if !meta.is_dir() => {
                    return Err(Error::Config(format!("{}/{name} is not a directory", path.display())));
                }
                Ok(_) => {}
                Err(_) => root.create_dir_all(name).map_err(|e| {
                    Error::Config(format!(
                        "cannot create {}/{name}: {e} (is the cache directory writable?)",
                        path.display()
                    ))
                })?,
            }
            root.open_dir(name).map_err(|e| Error::Config(format!("cannot open {}/{name}: {e}", path.display())))
        };
        Ok(Self { images: sub("images")?, tmp: sub("tmp")?, locks: sub("locks")?, root, path })
    }

    /// The canonical path of the cache directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle of the whole cache directory.
    pub fn root(&self) -> &Dir {
        &self.root
    }

    /// The handle of one area.
    pub fn dir(&self, area: Area) -> &Dir {
        match area {
            Area::Images => &self.images,
            Area::Tmp => &self.tmp,
        }
    }

    /// The handle of `locks/`.
    pub fn locks(&self) -> &Dir {
        &self.locks
    }

    /// The absolute path of a cache file, for tools that take paths.
    pub fn absolute(&self, file: &CacheFile) -> PathBuf {
        self.path.join(file.area.dir_name()).join(&file.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_blob_names_parse_under_blobs() {
        let hex = "0a".repeat(32);
        assert_eq!(BlobFile::parse(&format!("blobs/sha256/{hex}")).unwrap().unwrap().hex, hex);
        assert!(BlobFile::parse("tmp/x").is_none());
        for bad in [
            format!("blobs/sha256/{}", hex.to_uppercase()),
            format!("blobs/sha256/{hex}/x"),
            format!("blobs/sha256/../sha256/{hex}"),
            format!("blobs/locks/{hex}.lock"),
            format!("blobs/tmp/partial-{hex}.1-0"),
            "blobs/sha256/".into(),
        ] {
            assert_eq!(BlobFile::parse(&bad).unwrap().unwrap_err().class(), "denied", "{bad:?}");
        }
    }

    #[test]
    fn only_plain_names_inside_allowed_areas_parse() {
        let ok = CacheFile::parse("tmp/abc.1-2.ext4", &[Area::Tmp]).unwrap();
        assert_eq!(ok, CacheFile { area: Area::Tmp, name: "abc.1-2.ext4".into() });
        for bad in [
            "images/x.ext4",
            "tmp/../images/x",
            "tmp/a/b",
            "tmp/",
            "tmp/.hidden",
            "/etc/passwd",
            "tmp",
            "locks/x.lock",
            "tmp/x\0y",
            "tmp/x y",
        ] {
            let err = CacheFile::parse(bad, &[Area::Tmp]).unwrap_err();
            assert_eq!(err.class(), "denied", "{bad:?}");
        }
    }
}

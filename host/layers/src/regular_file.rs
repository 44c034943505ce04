//! The one way a file is opened to be read, by this crate and the host.
//!
//! A path the host reads may name anything: a FIFO (whose `open` blocks
//! until a writer comes, forever if none does), a device (`/dev/zero` never
//! ends), a directory, a symlink swapped in since it was checked, a file
//! that grows while it is read. [`RegularFile`] refuses all of them by
//! construction:
//!
//! 1. it opens with `O_NONBLOCK` (opening a FIFO returns at once instead of
//!    waiting for a writer), `O_NOCTTY` (a terminal never becomes ours) and
//!    `O_CLOEXEC`, plus `O_NOFOLLOW` when the caller refuses a final
//!    symlink;
//! 2. it asks the kernel what it opened (`fstat` on the descriptor, so no
//!    swap between a check and the open can fool it) and refuses anything
//!    but a regular file, naming the path and what it is;
//! 3. it clears `O_NONBLOCK`, so the descriptor behaves as a plain one;
//! 4. it reads at most the caller's limit: a read past it is an error that
//!    names the limit, never a silent truncation.
//!
//! Every file the host reads (the policy, the agent, a converter program,
//! layer blobs, the precompiled component, what `host.probe` reads for the
//! guest) is opened here. The files the ext4 writer copies into an image
//! are opened by the `rootfs-cache-ext4` crate itself, by the same rule
//! (`host/ext4/src/source.rs`), and so are those the scan of an overlay
//! mount reads (`scan/listing.rs`: one name in an open directory,
//! `O_NOFOLLOW | O_NONBLOCK`, then `statx` of the descriptor).
//!
//! It lives in this crate because the layer applier opens every blob with
//! it, and the host uses it from here (`host/src/regular_file.rs` adds the
//! conversion into the host's error).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Whether the last component of a path may be a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalSymlink {
    /// Follow it, as `open(2)` does by default.
    Follow,
    /// Refuse it (`O_NOFOLLOW`): the path must name the file itself.
    Refuse,
}

/// Why a file could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The system refused to open, inspect or read it.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path, as the caller named it.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// It is there, but it is not a regular file.
    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegular {
        /// The path, as the caller named it.
        path: PathBuf,
        /// What it is instead, with its article ("a FIFO").
        kind: &'static str,
    },
    /// It holds more bytes than the caller reads.
    #[error("{} is longer than the limit of {limit} bytes", path.display())]
    TooLong {
        /// The path, as the caller named it.
        path: PathBuf,
        /// The most bytes the caller reads.
        limit: u64,
    },
}

impl FileError {
    /// As an [`io::Error`], for callers that speak only that: a failed
    /// system call is the system's error; a refusal carries this error.
    pub fn into_io(self) -> io::Error {
        match self {
            Self::Io { source, .. } => source,
            refused @ Self::NotRegular { .. } => io::Error::new(io::ErrorKind::InvalidInput, refused),
            too_long @ Self::TooLong { .. } => io::Error::new(io::ErrorKind::FileTooLarge, too_long),
        }
    }

    /// The `FileError` an [`io::Error`] from [`RegularFile`]'s reader
    /// carries, or the I/O error itself on `path`.
    fn from_read(path: &Path, err: io::Error) -> Self {
        if !err.get_ref().is_some_and(|inner| inner.is::<FileError>()) {
            return Self::Io { path: path.to_path_buf(), source: err };
        }
        let kind = err.kind();
        match err.into_inner().map(|inner| inner.downcast::<FileError>()) {
            Some(Ok(own)) => *own,
            // Not reached: the check above saw a `FileError` inside.
            _ => Self::Io { path: path.to_path_buf(), source: kind.into() },
        }
    }
}

/// What a file type is called in messages, with its article.
fn describe(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// An open regular file, read at most up to a limit.
///
/// It implements [`Read`]; a read past the limit fails with an
/// [`io::Error`] of kind [`io::ErrorKind::FileTooLarge`] that carries
/// [`FileError::TooLong`].
#[derive(Debug)]
pub struct RegularFile {
    file: File,
    path: PathBuf,
    len: u64,
    limit: u64,
    consumed: u64,
}

impl RegularFile {
    /// Opens the regular file at `path`, to read at most `limit` bytes of it.
    pub fn open(path: &Path, limit: u64, final_symlink: FinalSymlink) -> Result<Self, FileError> {
        Self::open_at(rustix::fs::CWD, path, path, limit, final_symlink)
    }

    /// Opens the regular file `name` in the directory `dir`, to read at most
    /// `limit` bytes of it. `name` is one file name (no `/`, `.` or `..`)
    /// and a final symlink is refused, so the file is inside `dir` whatever
    /// the path of `dir` has become. `shown` names it in errors.
    pub fn open_in(dir: impl AsFd, name: &Path, shown: &Path, limit: u64) -> Result<Self, FileError> {
        let mut parts = name.components();
        if !matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) {
            return Err(FileError::Io {
                path: shown.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a single file name"),
            });
        }
        Self::open_at(dir, name, shown, limit, FinalSymlink::Refuse)
    }

    fn open_at(
        dir: impl AsFd,
        path: &Path,
        shown: &Path,
        limit: u64,
        final_symlink: FinalSymlink,
    ) -> Result<Self, FileError> {
        let io = |source: rustix::io::Errno| FileError::Io { path: shown.to_path_buf(), source: source.into() };
        let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        if final_symlink == FinalSymlink::Refuse {
            flags |= OFlags::NOFOLLOW;
        }
        let fd = match rustix::fs::openat(&dir, path, flags, Mode::empty()) {
            Ok(fd) => fd,
            // O_NOFOLLOW on a final symlink: say so, not "too many levels".
            Err(rustix::io::Errno::LOOP)
                if final_symlink == FinalSymlink::Refuse
                    && rustix::fs::statat(&dir, path, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink) =>
            {
                return Err(FileError::NotRegular { path: shown.to_path_buf(), kind: describe(FileType::Symlink) });
            }
            Err(e) => return Err(io(e)),
        };
        Self::checked(fd, shown, limit)
    }

    /// Checks what `fd` is, and makes it blocking.
    fn checked(fd: OwnedFd, shown: &Path, limit: u64) -> Result<Self, FileError> {
        let io = |source: rustix::io::Errno| FileError::Io { path: shown.to_path_buf(), source: source.into() };
        let stat = rustix::fs::fstat(&fd).map_err(io)?;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type != FileType::RegularFile {
            return Err(FileError::NotRegular { path: shown.to_path_buf(), kind: describe(file_type) });
        }
        let status = rustix::fs::fcntl_getfl(&fd).map_err(io)?;
        rustix::fs::fcntl_setfl(&fd, status - OFlags::NONBLOCK).map_err(io)?;
        Ok(Self {
            file: File::from(fd),
            path: shown.to_path_buf(),
            len: u64::try_from(stat.st_size).unwrap_or(0),
            limit,
            consumed: 0,
        })
    }

    /// Its length when it was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it was empty when it was opened.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same file, with its limit lowered to its length when it was
    /// opened: for a file read whole whose size has no other bound (a layer
    /// blob), so that it cannot grow while it is read.
    pub fn limited_to_len(mut self) -> Self {
        self.limit = self.limit.min(self.len);
        self
    }

    /// The open file, for what is not reading (metadata, `fsync`, times, a
    /// mapping): reads through it are not bounded.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The whole file, refused when it is (or grows) longer than the limit.
    pub fn read_all(mut self) -> Result<Vec<u8>, FileError> {
        if self.len > self.limit {
            return Err(FileError::TooLong { path: self.path, limit: self.limit });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        match self.read_to_end(&mut bytes) {
            Ok(_) => Ok(bytes),
            Err(e) => Err(FileError::from_read(&self.path, e)),
        }
    }

    /// Up to `want` bytes from the start (fewer at the end of the file),
    /// never more than the limit.
    pub fn read_head(&mut self, want: u64) -> Result<Vec<u8>, FileError> {
        let want = want.min(self.limit).min(self.len);
        let mut head = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
        match self.by_ref().take(want).read_to_end(&mut head) {
            Ok(_) => Ok(head),
            Err(e) => Err(FileError::from_read(&self.path, e)),
        }
    }
}

impl Read for RegularFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.limit - self.consumed;
        if left == 0 {
            // At the limit: the file must end here.
            let mut one = [0u8; 1];
            return match self.file.read(&mut one)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    FileError::TooLong { path: self.path.clone(), limit: self.limit },
                )),
            };
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max])?;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// The whole regular file at `path`, refused beyond `limit` bytes.
pub fn read(path: &Path, limit: u64, final_symlink: FinalSymlink) -> Result<Vec<u8>, FileError> {
    RegularFile::open(path, limit, final_symlink)?.read_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_as(result: Result<RegularFile, FileError>, kind: &str) -> String {
        match result {
            Err(e @ FileError::NotRegular { .. }) => {
                let message = e.to_string();
                assert!(message.contains(&format!("is {kind}, not a regular file")), "{message}");
                message
            }
            other => panic!("expected {kind} to be refused, got {other:?}"),
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        // Nobody writes: a blocking open would never return.
        let message = refused_as(RegularFile::open(&fifo, 10, FinalSymlink::Follow), "a FIFO");
        assert!(message.starts_with(&fifo.display().to_string()), "{message}");
        let err = read(&fifo, 10, FinalSymlink::Follow).unwrap_err();
        assert!(matches!(err, FileError::NotRegular { kind: "a FIFO", .. }), "{err}");
    }

    #[test]
    fn a_device_and_a_directory_are_refused() {
        refused_as(RegularFile::open(Path::new("/dev/null"), 10, FinalSymlink::Follow), "a character device");
        refused_as(RegularFile::open(Path::new("/dev/zero"), 10, FinalSymlink::Follow), "a character device");
        let dir = tempfile::tempdir().unwrap();
        refused_as(RegularFile::open(dir.path(), 10, FinalSymlink::Follow), "a directory");
    }

    #[test]
    fn a_final_symlink_is_followed_or_refused_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), b"data").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("target", &link).unwrap();
        assert_eq!(read(&link, 10, FinalSymlink::Follow).unwrap(), b"data");
        refused_as(RegularFile::open(&link, 10, FinalSymlink::Refuse), "a symlink");
        let handle = File::open(dir.path()).unwrap();
        refused_as(RegularFile::open_in(&handle, Path::new("link"), &link, 10), "a symlink");
        assert_eq!(RegularFile::open_in(&handle, Path::new("target"), &link, 10).unwrap().read_all().unwrap(), b"data");
        // One name only: nothing can lead out of the directory.
        for bad in ["../target", "a/target", ".", ""] {
            assert!(
                matches!(RegularFile::open_in(&handle, Path::new(bad), &link, 10), Err(FileError::Io { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_read_past_the_limit_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read(&path, 10, FinalSymlink::Refuse).unwrap(), b"0123456789");
        let err = read(&path, 9, FinalSymlink::Refuse).unwrap_err();
        assert!(matches!(err, FileError::TooLong { limit: 9, .. }), "{err}");
        assert!(err.to_string().contains("longer than the limit of 9 bytes"), "{err}");

        // A file that grows after it was opened is caught by the reader.
        let mut file = RegularFile::open(&path, 12, FinalSymlink::Refuse).unwrap();
        std::fs::write(&path, b"0123456789abcdef").unwrap();
        let mut bytes = Vec::new();
        let err = file.read_to_end(&mut bytes).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(bytes.len(), 12);
        assert!(matches!(FileError::from_read(&path, err), FileError::TooLong { limit: 12, .. }));

        // A head never reads past the limit, and is not an error.
        let mut file = RegularFile::open(&path, 4, FinalSymlink::Refuse).unwrap();
        assert_eq!(file.read_head(100).unwrap(), b"0123");
    }

    #[test]
    fn a_missing_file_keeps_its_class() {
        let err = read(Path::new("/nonexistent/rootfs-cache"), 1, FinalSymlink::Follow).unwrap_err();
        assert!(matches!(&err, FileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound), "{err}");
    }

    #[test]
    fn the_descriptor_is_blocking_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"x").unwrap();
        let file = RegularFile::open(&path, 1, FinalSymlink::Follow).unwrap();
        let flags = rustix::fs::fcntl_getfl(file.file()).unwrap();
        assert!(!flags.contains(OFlags::NONBLOCK));
        assert_eq!(file.len(), 1);
    }
}

//! The few filesystem and clock calls the guest makes itself (everything on
//! the hot path goes through `host.probe` instead).
//!
//! In the component they are WASI Preview 2 calls made directly, never
//! through wasi-libc: a guest that calls no libc I/O function imports no
//! Preview 1 function, so the component carries no Preview 1 adapter, and a
//! request pays neither the adapter's instantiation nor wasi-libc's start-up
//! (which walks every preopen). Measured here, that was about 55 µs of every
//! request's ~80 µs fixed cost. In native builds (the unit tests) they are
//! `std` calls.
//!
//! Errors are [`std::io::Error`]s; in the component they carry the errno
//! wasi-libc would have given, so messages read as before. Two refusals are
//! typed, for callers to tell apart: [`NotRegular`] (a path [`read`] would
//! have to open is no regular file) and [`Escape`] (WASI refused a path that
//! leads out of the directories this request sees).
//!
//! [`read`] opens a path only after a `stat` (following symlinks, as the
//! open does) says it is a regular file. WASI has no non-blocking open:
//! opening a FIFO for reading waits for a writer, in the host's blocking
//! thread pool, beyond the guest's time limit. A FIFO swapped in between the
//! stat and the open would still block; only the source's owner can do that.

use std::io;
use std::path::Path;

pub use types::{Escape, Metadata, NotRegular};

/// The types both implementations return, apart so that neither needs its
/// parent.
mod types {
    use std::io;

    /// What `sys::metadata` tells about a path (symlinks followed).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Metadata {
        /// Its length in bytes.
        pub len: u64,
        /// Birth time in ns since the Unix epoch, where the platform gives one
        /// (WASI does not).
        pub created_ns: Option<u64>,
        /// Modification time in ns since the Unix epoch.
        pub modified_ns: Option<u64>,
    }

    /// The refusal of a path that is not a regular file, before it is opened.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct NotRegular {
        /// What it is instead, with its article ("a FIFO").
        pub kind: &'static str,
    }

    impl std::fmt::Display for NotRegular {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "is {}, not a regular file", self.kind)
        }
    }

    impl std::error::Error for NotRegular {}

    /// WASI's refusal of a path (or a symlink on it) that leads out of the
    /// directories this request sees.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Escape;

    impl std::fmt::Display for Escape {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("leads outside the directories of this request")
        }
    }

    impl std::error::Error for Escape {}

    /// The refusal of `kind` (with its article), before it is opened.
    pub(super) fn refuse(kind: &'static str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, NotRegular { kind })
    }
}

/// The [`NotRegular`] refusal `err` carries, if it is one.
pub fn not_regular(err: &io::Error) -> Option<NotRegular> {
    err.get_ref().and_then(|e| e.downcast_ref::<NotRegular>()).copied()
}

/// Whether `err` is an [`Escape`].
pub fn is_escape(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<Escape>())
}

/// A monotonic point in time, for the outcome's timings.
#[derive(Clone, Copy, Debug)]
pub struct Instant(imp::Instant);

impl Instant {
    /// Now.
    pub fn now() -> Self {
        Self(imp::Instant::now())
    }

    /// Microseconds since `self`.
    pub fn micros(self) -> u64 {
        self.0.micros()
    }
}

/// Nanoseconds since the Unix epoch, by the wall clock (0 before it).
pub fn now_ns() -> u64 {
    imp::now_ns()
}

/// Metadata of `path`, following symlinks.
pub fn metadata(path: &Path) -> io::Result<Metadata> {
    imp::metadata(path)
}

/// The UTF-8 names in the directory `path`, in no particular order (other
/// names are skipped: no entry the cache writes has one).
pub fn read_dir(path: &Path) -> io::Result<Vec<String>> {
    imp::read_dir(path, usize::MAX).map(Option::unwrap_or_default)
}

/// [`read_dir`], stopping at more than `max` names: `None` then, without
/// reading the rest of a directory that may be huge.
pub fn read_dir_at_most(path: &Path, max: usize) -> io::Result<Option<Vec<String>>> {
    imp::read_dir(path, max)
}

/// Up to `len` bytes of the regular file at `path` from `offset` (fewer at
/// its end), with the file's length. Anything else is refused with a
/// [`NotRegular`] error before it is opened.
pub fn read(path: &Path, offset: u64, len: u64) -> io::Result<(Vec<u8>, u64)> {
    imp::read(path, offset, len)
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::io::{self, Read, Seek, SeekFrom};
    use std::path::Path;
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::types::Metadata;

    #[derive(Clone, Copy, Debug)]
    pub struct Instant(std::time::Instant);

    impl Instant {
        pub fn now() -> Self {
            Self(std::time::Instant::now())
        }

        pub fn micros(self) -> u64 {
            u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
        }
    }

    fn nanos(t: io::Result<SystemTime>) -> Option<u64> {
        let d = t.ok()?.duration_since(UNIX_EPOCH).ok()?;
        u64::try_from(d.as_nanos()).ok()
    }

    pub fn now_ns() -> u64 {
        nanos(Ok(SystemTime::now())).unwrap_or(0)
    }

    pub fn metadata(path: &Path) -> io::Result<Metadata> {
        let m = std::fs::metadata(path)?;
        Ok(Metadata { len: m.len(), created_ns: nanos(m.created()), modified_ns: nanos(m.modified()) })
    }

    pub fn read_dir(path: &Path, max: usize) -> io::Result<Option<Vec<String>>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                if names.len() == max {
                    return Ok(None);
                }
                names.push(name);
            }
        }
        Ok(Some(names))
    }

    fn kind(t: std::fs::FileType) -> &'static str {
        use std::os::unix::fs::FileTypeExt as _;
        match t {
            t if t.is_dir() => "a directory",
            t if t.is_fifo() => "a FIFO",
            t if t.is_char_device() => "a character device",
            t if t.is_block_device() => "a block device",
            t if t.is_socket() => "a socket",
            _ => "of an unknown type",
        }
    }

    pub fn read(path: &Path, offset: u64, len: u64) -> io::Result<(Vec<u8>, u64)> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(super::types::refuse(kind(meta.file_type())));
        }
        let mut file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(super::types::refuse(kind(meta.file_type())));
        }
        let size = meta.len();
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.take(len).read_to_end(&mut bytes)?;
        Ok((bytes, size))
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use std::io;
    use std::path::Path;

    use wasip2::clocks::{monotonic_clock, wall_clock};
    use wasip2::filesystem::preopens::get_directories;
    use wasip2::filesystem::types::{Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags};

    use super::types::Metadata;

    #[derive(Clone, Copy, Debug)]
    pub struct Instant(u64);

    impl Instant {
        pub fn now() -> Self {
            Self(monotonic_clock::now())
        }

        pub fn micros(self) -> u64 {
            monotonic_clock::now().saturating_sub(self.0) / 1_000
        }
    }

    pub fn now_ns() -> u64 {
        ns(wall_clock::now())
    }

    fn ns(t: wall_clock::Datetime) -> u64 {
        t.seconds.saturating_mul(1_000_000_000).saturating_add(u64::from(t.nanoseconds))
    }

    /// The errno wasi-libc gives for `code` (its `__errno_values.h`), so
    /// that messages read as they did through libc.
    fn error(code: ErrorCode) -> io::Error {
        let errno = match code {
            ErrorCode::Access => 2,
            ErrorCode::WouldBlock => 6,
            ErrorCode::Already => 7,
            ErrorCode::BadDescriptor => 8,
            ErrorCode::Busy => 10,
            ErrorCode::Deadlock => 16,
            ErrorCode::Quota => 19,
            ErrorCode::Exist => 20,
            ErrorCode::FileTooLarge => 22,
            ErrorCode::IllegalByteSequence => 25,
            ErrorCode::InProgress => 26,
            ErrorCode::Interrupted => 27,
            ErrorCode::Invalid => 28,
            ErrorCode::Io => 29,
            ErrorCode::IsDirectory => 31,
            ErrorCode::Loop => 32,
            ErrorCode::TooManyLinks => 34,
            ErrorCode::MessageSize => 35,
            ErrorCode::NameTooLong => 37,
            ErrorCode::NoDevice => 43,
            ErrorCode::NoEntry => 44,
            ErrorCode::NoLock => 46,
            ErrorCode::InsufficientMemory => 48,
            ErrorCode::InsufficientSpace => 51,
            ErrorCode::NotDirectory => 54,
            ErrorCode::NotEmpty => 55,
            ErrorCode::NotRecoverable => 56,
            ErrorCode::Unsupported => 58,
            ErrorCode::NoTty => 59,
            ErrorCode::NoSuchDevice => 60,
            ErrorCode::Overflow => 61,
            ErrorCode::NotPermitted => 63,
            ErrorCode::Pipe => 64,
            ErrorCode::ReadOnly => 69,
            ErrorCode::InvalidSeek => 70,
            ErrorCode::TextFileBusy => 74,
            ErrorCode::CrossDevice => 75,
        };
        io::Error::from_raw_os_error(errno)
    }

    /// The error for `code` on a path: a refusal to leave the preopen
    /// (wasmtime-wasi says `not-permitted` for a symlink that leads out,
    /// `cross-device` where the kernel's `RESOLVE_BENEATH` refused it) is an
    /// [`Escape`](super::types::Escape); anything else as [`error`].
    fn path_error(code: ErrorCode) -> io::Error {
        match code {
            ErrorCode::NotPermitted | ErrorCode::CrossDevice => {
                io::Error::new(io::ErrorKind::PermissionDenied, super::types::Escape)
            }
            other => error(other),
        }
    }

    fn kind(t: DescriptorType) -> &'static str {
        match t {
            DescriptorType::RegularFile => "a regular file",
            DescriptorType::Directory => "a directory",
            DescriptorType::Fifo => "a FIFO",
            DescriptorType::CharacterDevice => "a character device",
            DescriptorType::BlockDevice => "a block device",
            DescriptorType::Socket => "a socket",
            DescriptorType::SymbolicLink => "a symlink",
            // wasmtime-wasi names no FIFO or socket type.
            DescriptorType::Unknown => "a FIFO, socket or other special file",
        }
    }

    /// wasi-libc's ENOTCAPABLE: the path is under no preopen.
    fn not_capable() -> io::Error {
        io::Error::from_raw_os_error(76)
    }

    /// The preopen whose path is the longest prefix of `path`, and the rest
    /// of `path` relative to it, as wasi-libc resolves an absolute path.
    fn locate(path: &Path) -> io::Result<(Descriptor, String)> {
        let path = path.to_str().ok_or_else(|| io::Error::from_raw_os_error(25))?;
        let mut best: Option<(Descriptor, String)> = None;
        let mut best_len = 0;
        for (dir, root) in get_directories() {
            let root_trimmed = root.trim_end_matches('/');
            let rest = match path.strip_prefix(root_trimmed) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') || root_trimmed.is_empty() => rest,
                _ => continue,
            };
            if best.is_none() || root_trimmed.len() >= best_len {
                best_len = root_trimmed.len();
                let rest = rest.trim_start_matches('/');
                best = Some((dir, if rest.is_empty() { ".".to_owned() } else { rest.to_owned() }));
            }
        }
        best.ok_or_else(not_capable)
    }

    pub fn metadata(path: &Path) -> io::Result<Metadata> {
        let (dir, rest) = locate(path)?;
        let stat = dir.stat_at(PathFlags::SYMLINK_FOLLOW, &rest).map_err(path_error)?;
        Ok(Metadata { len: stat.size, created_ns: None, modified_ns: stat.data_modification_timestamp.map(ns) })
    }

    pub fn read_dir(path: &Path, max: usize) -> io::Result<Option<Vec<String>>> {
        let (root, rest) = locate(path)?;
        let dir = root
            .open_at(PathFlags::SYMLINK_FOLLOW, &rest, OpenFlags::DIRECTORY, DescriptorFlags::READ)
            .map_err(path_error)?;
        let stream = dir.read_directory().map_err(error)?;
        let mut names = Vec::new();
        while let Some(entry) = stream.read_directory_entry().map_err(error)? {
            if names.len() == max {
                return Ok(None);
            }
            names.push(entry.name);
        }
        Ok(Some(names))
    }

    pub fn read(path: &Path, offset: u64, len: u64) -> io::Result<(Vec<u8>, u64)> {
        let (root, rest) = locate(path)?;
        // Stat first: opening a FIFO would block (see the module's doc).
        let found = root.stat_at(PathFlags::SYMLINK_FOLLOW, &rest).map_err(path_error)?;
        if found.type_ != DescriptorType::RegularFile {
            return Err(super::types::refuse(kind(found.type_)));
        }
        let file = root
            .open_at(PathFlags::SYMLINK_FOLLOW, &rest, OpenFlags::empty(), DescriptorFlags::READ)
            .map_err(path_error)?;
        let stat = file.stat().map_err(error)?;
        if stat.type_ != DescriptorType::RegularFile {
            return Err(super::types::refuse(kind(stat.type_)));
        }
        let size = stat.size;
        let mut bytes = Vec::new();
        while (bytes.len() as u64) < len {
            let want = len - bytes.len() as u64;
            let (chunk, end) = file.read(want, offset + bytes.len() as u64).map_err(error)?;
            bytes.extend_from_slice(&chunk);
            if end || chunk.is_empty() {
                break;
            }
        }
        Ok((bytes, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_is_opened_to_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Nobody writes: opening it would block.
        let err = read(&fifo, 0, 10).unwrap_err();
        assert_eq!(not_regular(&err), Some(NotRegular { kind: "a FIFO" }));
        let err = read(dir.path(), 0, 10).unwrap_err();
        assert_eq!(not_regular(&err).map(|r| r.to_string()).as_deref(), Some("is a directory, not a regular file"));
        let err = read(Path::new("/dev/zero"), 0, 10).unwrap_err();
        assert_eq!(not_regular(&err), Some(NotRegular { kind: "a character device" }));
        std::fs::write(dir.path().join("file"), b"0123").unwrap();
        assert_eq!(read(&dir.path().join("file"), 1, 2).unwrap(), (b"12".to_vec(), 4));
        assert!(!is_escape(&err));
    }
}

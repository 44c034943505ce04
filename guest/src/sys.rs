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
//! wasi-libc would have given, so messages read as before.

use std::io;
use std::path::Path;

/// What [`metadata`] tells about a path (symlinks followed).
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
    imp::read_dir(path)
}

/// Up to `len` bytes of the file at `path` from `offset` (fewer at its
/// end), with the file's length.
pub fn read(path: &Path, offset: u64, len: u64) -> io::Result<(Vec<u8>, u64)> {
    imp::read(path, offset, len)
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::io::{self, Read, Seek, SeekFrom};
    use std::path::Path;
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::Metadata;

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

    pub fn read_dir(path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    pub fn read(path: &Path, offset: u64, len: u64) -> io::Result<(Vec<u8>, u64)> {
        let mut file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
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
    use wasip2::filesystem::types::{Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags};

    use super::Metadata;

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
        let stat = dir.stat_at(PathFlags::SYMLINK_FOLLOW, &rest).map_err(error)?;
        Ok(Metadata { len: stat.size, created_ns: None, modified_ns: stat.data_modification_timestamp.map(ns) })
    }

    pub fn read_dir(path: &Path) -> io::Result<Vec<String>> {
        let (root, rest) = locate(path)?;
        let dir = root
            .open_at(PathFlags::SYMLINK_FOLLOW, &rest, OpenFlags::DIRECTORY, DescriptorFlags::READ)
            .map_err(error)?;
        let stream = dir.read_directory().map_err(error)?;
        let mut names = Vec::new();
        while let Some(entry) = stream.read_directory_entry().map_err(error)? {
            names.push(entry.name);
        }
        Ok(names)
    }

    pub fn read(path: &Path, offset: u64, len: u64) -> io::Result<(Vec<u8>, u64)> {
        let (root, rest) = locate(path)?;
        let file =
            root.open_at(PathFlags::SYMLINK_FOLLOW, &rest, OpenFlags::empty(), DescriptorFlags::READ).map_err(error)?;
        let size = file.stat().map_err(error)?.size;
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

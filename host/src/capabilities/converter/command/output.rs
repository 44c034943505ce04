//! A converter's output, taken over by the host.
//!
//! The converter writes a private name in the cache's `tmp/`,
//! `<key>.<pid>-<n>.converter.ext4` (the prefix `sweep` removes with the
//! build's other temporary files). Once it has exited 0, its file is never
//! used in place: it may be a hardlink to a file outside the cache, a
//! symlink, a FIFO, a file still mounted somewhere or still open for writing
//! by a process that escaped. The host opens it without following a
//! symlink and without blocking, checks on the descriptor that it is a
//! regular file, and copies its bytes (holes stay holes; `copy_file_range`
//! lets the filesystem share or copy the extents) into a file it creates
//! itself, with `O_EXCL`, at the job's output name. Then it removes the
//! converter's name. The image that is mounted, installed into and published
//! is an inode nobody else has ever held.
//!
//! Both names are resolved in the `tmp/` directory opened before the
//! converter started, so a converter that renames or replaces `tmp/` cannot
//! redirect the copy.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom};
use rustix::io::Errno;

/// The most one `copy_file_range` call moves, so the deadline is checked
/// between calls.
const COPY_CHUNK: usize = 64 << 20;

/// Why the converter's output was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TakeError {
    /// It wrote nothing at its output path.
    #[error("it wrote no image")]
    Missing,
    /// Its output is not a regular file.
    #[error("its output is {0}, not a regular file")]
    NotRegular(&'static str),
    /// Copying took past the deadline.
    #[error("copying its output took longer than the time limit")]
    Timeout,
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// The two names of one conversion in the cache's `tmp/`: the converter's
/// and the host's.
pub(crate) struct Staging {
    dir: OwnedFd,
    dir_path: PathBuf,
    converter_name: OsString,
    output_name: OsString,
}

impl Staging {
    /// Opens the directory of `output` (the job's output path, which must not
    /// exist) and names the converter's file beside it. Removes a leftover
    /// converter file of the same name.
    pub(crate) fn new(output: &Path) -> io::Result<Self> {
        let (Some(dir_path), Some(output_name)) = (output.parent(), output.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no directory", output.display())));
        };
        let dir = rustix::fs::open(dir_path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let staging = Self {
            dir,
            dir_path: dir_path.to_path_buf(),
            converter_name: converter_name(output_name),
            output_name: output_name.to_owned(),
        };
        staging.remove(&staging.converter_name)?;
        Ok(staging)
    }

    /// Where the converter is told to write.
    pub(crate) fn converter_path(&self) -> PathBuf {
        self.dir_path.join(&self.converter_name)
    }

    /// Removes both files, whatever they are.
    pub(crate) fn discard(&self) {
        let _ = self.remove(&self.converter_name);
        let _ = self.remove(&self.output_name);
    }

    /// Copies the converter's regular file into a new file at the output
    /// name, removes the converter's name, and returns the image's length.
    /// Gives up at `deadline`. On failure the output name does not exist.
    pub(crate) fn take(&self, deadline: Instant) -> Result<u64, TakeError> {
        let source = self.open_converter_file()?;
        let len = source.metadata().map_err(|e| self.io("inspecting", &self.converter_name, e))?.len();
        // Whatever is at our name now was not made by us (a converter may
        // have planted a link there): unlink it, then create ours exclusively.
        self.remove(&self.output_name).map_err(|e| self.io("removing", &self.output_name, e))?;
        let target = rustix::fs::openat(
            &self.dir,
            self.output_name.as_os_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(File::from)
        .map_err(|e| self.io("creating", &self.output_name, e.into()))?;
        if let Err(e) = copy_sparse(&source, &target, len, deadline) {
            drop(target);
            let _ = self.remove(&self.output_name);
            return Err(match e.kind() {
                io::ErrorKind::TimedOut => TakeError::Timeout,
                _ => self.io("copying the image to", &self.output_name, e),
            });
        }
        if let Err(e) = self.remove(&self.converter_name) {
            // Still mounted on, say: the copy is ours regardless, and the
            // name goes with the next sweep.
            tracing::warn!(file = %self.converter_path().display(), error = %e, "cannot remove the converter's output");
        }
        Ok(len)
    }

    /// Opens the converter's file for reading: never through a symlink,
    /// never waiting (a FIFO opens at once), and only a regular file.
    fn open_converter_file(&self) -> Result<File, TakeError> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.dir, self.converter_name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(TakeError::Missing),
            // A symlink (ELOOP), a socket (ENXIO), a device without a driver:
            // say what it is when it is not a regular file.
            Err(e) => {
                let kind = rustix::fs::statat(&self.dir, self.converter_name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|stat| FileType::from_raw_mode(stat.st_mode));
                return Err(match kind {
                    Ok(kind) if kind != FileType::RegularFile => TakeError::NotRegular(describe(kind)),
                    _ => self.io("opening", &self.converter_name, e.into()),
                });
            }
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| self.io("inspecting", &self.converter_name, e.into()))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Ok(File::from(fd)),
            other => Err(TakeError::NotRegular(describe(other))),
        }
    }

    fn remove(&self, name: &OsStr) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn io(&self, what: &str, name: &OsStr, source: io::Error) -> TakeError {
        TakeError::Io { what: format!("{what} {}", self.dir_path.join(name).display()), source }
    }
}

impl Drop for Staging {
    /// The converter's name never outlives the conversion, however it ends
    /// (a cancelled request included).
    fn drop(&mut self) {
        let _ = self.remove(&self.converter_name);
    }
}

/// `<key>.<pid>-<n>.ext4` → `<key>.<pid>-<n>.converter.ext4`: the same
/// prefix, so `sweep` removes it with the build's other files.
fn converter_name(output_name: &OsStr) -> OsString {
    let bytes = output_name.as_bytes();
    let stem = bytes.strip_suffix(b".ext4").unwrap_or(bytes);
    let mut name = stem.to_vec();
    name.extend_from_slice(b".converter.ext4");
    OsString::from(OsStr::from_bytes(&name))
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// Copies the first `len` bytes of `source` into the empty `target`, data
/// ranges only (found with `SEEK_DATA`/`SEEK_HOLE`), then sets the length:
/// holes stay holes. Fails with `TimedOut` past `deadline`, and with
/// `UnexpectedEof` if the source shrinks meanwhile.
pub(crate) fn copy_sparse(source: &File, target: &File, len: u64, deadline: Instant) -> io::Result<()> {
    let mut offset = 0;
    while offset < len {
        let data = match rustix::fs::seek(source, SeekFrom::Data(offset)) {
            Ok(data) => data,
            // Only a hole is left.
            Err(Errno::NXIO) => break,
            // No hole support: all of it is data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => offset,
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = match rustix::fs::seek(source, SeekFrom::Hole(data)) {
            Ok(hole) => hole.min(len),
            Err(Errno::NXIO | Errno::INVAL | Errno::OPNOTSUPP) => len,
            Err(e) => return Err(e.into()),
        };
        copy_range(source, target, data, hole, deadline)?;
        offset = hole;
    }
    target.set_len(len)
}

/// Copies bytes `start..end` at the same offsets, in the kernel when it can.
fn copy_range(source: &File, target: &File, start: u64, end: u64, deadline: Instant) -> io::Result<()> {
    let mut offset = start;
    while offset < end {
        if Instant::now() > deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let want = usize::try_from(end - offset).unwrap_or(usize::MAX).min(COPY_CHUNK);
        let (mut from, mut to) = (offset, offset);
        match rustix::fs::copy_file_range(source, Some(&mut from), target, Some(&mut to), want) {
            Ok(0) => return Err(shrank()),
            Ok(n) => offset += n as u64,
            // Across filesystems or without support: through a buffer.
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM) => {
                return copy_through_buffer(source, target, offset, end, deadline);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_through_buffer(source: &File, target: &File, start: u64, end: u64, deadline: Instant) -> io::Result<()> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = start;
    while offset < end {
        if Instant::now() > deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let want = usize::try_from(end - offset).unwrap_or(usize::MAX).min(buffer.len());
        let n = source.read_at(&mut buffer[..want], offset)?;
        if n == 0 {
            return Err(shrank());
        }
        target.write_all_at(&buffer[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

fn shrank() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the converter's output shrank while it was copied")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;
    use std::time::Duration;

    use super::*;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// A tmp/ directory and a staging for `<key>.1-1.ext4` in it.
    fn staging() -> (tempfile::TempDir, Staging) {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join(format!("{}.1-1.ext4", "ab".repeat(32)));
        let staging = Staging::new(&output).unwrap();
        (dir, staging)
    }

    #[test]
    fn the_converter_name_keeps_the_build_prefix() {
        let key = "cd".repeat(32);
        let name = converter_name(OsStr::new(&format!("{key}.42-7.ext4")));
        assert_eq!(name, OsString::from(format!("{key}.42-7.converter.ext4")));
    }

    #[test]
    fn a_sparse_output_is_copied_into_a_new_inode_with_its_holes() {
        let (_dir, staging) = staging();
        let written = staging.converter_path();
        let file = File::create(&written).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(b"superblock", 1024).unwrap();
        file.write_all_at(b"middle", 32 << 20).unwrap();
        let before = std::fs::metadata(&written).unwrap();
        drop(file);

        assert_eq!(staging.take(later()).unwrap(), 64 << 20);
        let output = staging.dir_path.join(&staging.output_name);
        let meta = std::fs::metadata(&output).unwrap();
        assert_ne!(meta.ino(), before.ino(), "the output is the converter's inode");
        assert_eq!(meta.nlink(), 1);
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 < 4 << 20, "holes were filled: {} blocks", meta.blocks());
        let bytes = std::fs::read(&output).unwrap();
        assert_eq!(&bytes[1024..1034], b"superblock");
        assert_eq!(&bytes[32 << 20..(32 << 20) + 6], b"middle");
        assert!(bytes[..1024].iter().all(|&b| b == 0));
        assert!(!written.exists(), "the converter's name was left");
    }

    #[test]
    fn a_hardlinked_output_leaves_the_other_file_untouched() {
        let (dir, staging) = staging();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"somebody else's file").unwrap();
        std::fs::hard_link(&outside, staging.converter_path()).unwrap();
        // A link planted at the host's own name too.
        std::fs::hard_link(&outside, staging.dir_path.join(&staging.output_name)).unwrap();
        let ino = std::fs::metadata(&outside).unwrap().ino();

        assert_eq!(staging.take(later()).unwrap(), 20);
        let output = staging.dir_path.join(&staging.output_name);
        std::fs::write(&output, b"the host writes its own copy").unwrap();
        let after = std::fs::metadata(&outside).unwrap();
        assert_eq!((after.ino(), after.nlink()), (ino, 1));
        assert_eq!(std::fs::read(&outside).unwrap(), b"somebody else's file");
    }

    #[test]
    fn anything_but_a_regular_file_is_refused_without_blocking() {
        /// What the converter left at its output, given the path and a file
        /// outside the cache.
        type Make = fn(&Path, &Path);
        let cases: [(&str, Make); 4] = [
            ("a FIFO", |p, _| {
                rustix::fs::mknodat(rustix::fs::CWD, p, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap()
            }),
            ("a symbolic link", |p, outside| std::os::unix::fs::symlink(outside, p).unwrap()),
            ("a directory", |p, _| std::fs::create_dir(p).unwrap()),
            ("a socket", |p, _| drop(std::os::unix::net::UnixListener::bind(p).unwrap())),
        ];
        for (kind, make) in cases {
            let (dir, staging) = staging();
            let outside = dir.path().join("outside");
            std::fs::write(&outside, b"outside").unwrap();
            make(&staging.converter_path(), &outside);
            match staging.take(later()) {
                Err(TakeError::NotRegular(found)) => assert_eq!(found, kind),
                other => panic!("{kind}: {other:?}"),
            }
            assert!(!staging.dir_path.join(&staging.output_name).exists(), "{kind}: an output was created");
            assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
            staging.discard();
        }
    }

    #[test]
    fn no_output_and_a_passed_deadline_are_told_apart() {
        let (_dir, staging) = staging();
        assert!(matches!(staging.take(later()), Err(TakeError::Missing)));
        std::fs::write(staging.converter_path(), b"data").unwrap();
        assert!(matches!(staging.take(Instant::now() - Duration::from_secs(1)), Err(TakeError::Timeout)));
        assert!(!staging.dir_path.join(&staging.output_name).exists());
    }

    #[test]
    fn dropping_the_staging_removes_the_converter_file() {
        let (_dir, staging) = staging();
        let written = staging.converter_path();
        std::fs::write(&written, b"partial").unwrap();
        drop(staging);
        assert!(!written.exists());
    }
}

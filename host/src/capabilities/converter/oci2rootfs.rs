//! The `oci2rootfs` crate, run in-process on a blocking thread.
//!
//! The crate is used as a library. It does not install the agent itself, so
//! the guest mounts the image afterwards. Its defects (lost xattrs, devices and mtimes, leaked
//! inodes, a fixed 512 MiB default size) are why the `exact` converter exists.

use std::path::Path;

use super::{ConversionJob, Converted, Converter, SourceLayers};
use crate::error::{Error, Result};
use crate::output_tail::tail;

/// The version of the `oci2rootfs` crate linked in; part of the identity.
pub const VERSION: &str = "0.3.0";
/// Its default image size, used when the request names none.
pub const DEFAULT_SIZE: u64 = 512 << 20;

/// The in-process `oci2rootfs` converter.
#[derive(Debug, Default)]
pub struct Oci2rootfs;

fn failed(message: String) -> Error {
    Error::ConverterFailed { converter: "oci2rootfs".into(), exit_status: None, stderr_tail: tail(&message, 4096) }
}

fn map_error(err: oci2rootfs::Error, size: u64) -> Error {
    use oci2rootfs::Error as E;
    // A full disk, wherever in the chain it surfaced (the ext4 writer wraps
    // the write's io::Error in its own, and its message mentions "space"),
    // is the cache's filesystem being full, not the image being too small.
    if is_no_space(&err) {
        return Error::NoSpace(format!("writing the image: {}", tail(&err.to_string(), 512)));
    }
    match err {
        E::Ext4Format(f) => {
            let text = f.to_string();
            if text.contains("space") || text.contains("resize") || text.contains("too big") {
                failed(format!(
                    "an image of {size} bytes is too small for the content ({text}); raise --size or omit it"
                ))
            } else {
                failed(format!("ext4 format error: {text}"))
            }
        }
        other => failed(other.to_string()),
    }
}

/// Whether `err`, or any error under it, is ENOSPC or EDQUOT.
fn is_no_space(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && (matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
                || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
        {
            return true;
        }
        // Wrappers that print the error instead of exposing it as a source.
        let text = err.to_string();
        if text.contains("No space left on device") || text.contains("Disk quota exceeded") {
            return true;
        }
        next = err.source();
    }
    false
}

fn run(job: &ConversionJob) -> Result<u64> {
    let size = job.size.unwrap_or(DEFAULT_SIZE);
    let converter = oci2rootfs::Converter::new(&job.output).size(size);
    let result = match &job.source {
        SourceLayers::Overlay2 { top, .. } => {
            oci2rootfs::Overlay2Source::open(top).and_then(|source| converter.convert(source))
        }
        SourceLayers::Oci { layout, platform, .. } => {
            let mut parts = platform.splitn(3, '/');
            let (os, arch) = (parts.next().unwrap_or("linux"), parts.next().unwrap_or("amd64"));
            oci2rootfs::OciLayoutSource::open(layout)
                .map(|s| s.platform(oci2rootfs::Platform::new(os, arch)))
                .and_then(|source| converter.convert(source))
        }
        SourceLayers::Pulled { reference, .. } => return Err(SourceLayers::pulled_refused("oci2rootfs", reference)),
    };
    result.map_err(|e| map_error(e, size))?;
    let declared = pad_to_declared_size(&job.output)?;
    // oci2rootfs grows an image whose content does not fit instead of failing.
    if let Some(asked) = job.size
        && declared > asked.next_multiple_of(GROUP_BYTES)
    {
        let _ = std::fs::remove_file(&job.output);
        return Err(failed(format!(
            "the content does not fit in an image of {asked} bytes (it needs {declared}); raise --size or omit it"
        )));
    }
    Ok(declared)
}

/// oci2rootfs lays out whole block groups of 32768 blocks of 4 KiB.
const GROUP_BYTES: u64 = 128 << 20;

/// oci2rootfs 0.3.0 declares whole 128 MiB block groups but writes a file of
/// the requested size (so sizes are rounded up to 128 MiB), so an image of, say, 64 MiB declares twice the blocks
/// its file has and the kernel refuses to mount it. Grow the (sparse) file to
/// what the superblock declares. Returns the final length.
fn pad_to_declared_size(path: &Path) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| Error::io(path.display(), &e);
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut sb = [0u8; 1024];
    file.seek(SeekFrom::Start(1024)).map_err(io)?;
    file.read_exact(&mut sb).map_err(io)?;
    let word = |at: usize| u64::from(u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]));
    let log_block_size = word(0x18);
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 || log_block_size > 6 {
        return Err(failed("oci2rootfs wrote an image without an ext4 superblock".into()));
    }
    let declared = word(0x04) * (1024 << log_block_size);
    if declared > len {
        tracing::debug!(file = %path.display(), len, declared, "growing the image to its declared size");
        file.set_len(declared).map_err(io)?;
        return Ok(declared);
    }
    Ok(len)
}

#[async_trait::async_trait]
impl Converter for Oci2rootfs {
    fn identity(&self) -> String {
        format!("oci2rootfs {VERSION} (in-process)")
    }

    async fn convert(&self, job: ConversionJob) -> Result<Converted> {
        let output = job.output.clone();
        let timeout = job.timeout;
        // The crate does blocking I/O for minutes: keep it off the runtime's threads.
        let work = tokio::task::spawn_blocking(move || run(&job));
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(result)) => result.map(Converted::image),
            Ok(Err(join)) => {
                remove_quietly(&output);
                Err(failed(format!("the conversion thread panicked: {join}")))
            }
            Err(_) => {
                // A thread cannot be killed: the conversion finishes into an
                // unlinked file, or leaves a temporary file for the next sweep.
                remove_quietly(&output);
                Err(Error::Timeout(format!("oci2rootfs did not finish within {}s", timeout.as_secs())))
            }
        }
    }
}

fn remove_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_full_disk_is_no_space_wherever_it_surfaces() {
        let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let cases = [
            ("a bare io error", oci2rootfs::Error::Io(enospc())),
            ("inside the ext4 writer's error", oci2rootfs::Error::Ext4Format(enospc().into())),
            ("as another error's message", oci2rootfs::Error::Io(std::io::Error::other(enospc().to_string()))),
        ];
        for (what, err) in cases {
            let mapped = super::map_error(err, 1 << 27);
            assert_eq!(mapped.class(), "no-space", "{what}: {mapped}");
        }
        let too_small = super::map_error(
            oci2rootfs::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad layer")),
            1 << 27,
        );
        assert_eq!(too_small.class(), "converter-failed");
    }

    #[test]
    fn the_identity_names_the_linked_version() {
        let lock = include_str!("../../../../Cargo.lock");
        let expected = format!("name = \"oci2rootfs\"\nversion = \"{}\"", super::VERSION);
        assert!(lock.contains(&expected), "Cargo.lock links another oci2rootfs than {}", super::VERSION);
    }
}

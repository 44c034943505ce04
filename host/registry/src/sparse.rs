//! The local side of a zstd-compressed image: decoding a stream into a sparse file (every
//! 4 KiB block of zeroes stays a hole), and compressing a sparse file while reading only its
//! data (its holes are fed to the encoder as zeroes, never read).
//!
//! Both run on a blocking thread; the network side is in [`crate::artifact`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt as _;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// The block that becomes a hole when it is all zeroes (the page and ext4 block size).
pub(crate) const BLOCK: usize = 4096;

/// Decoded bytes gathered before they are written: a multiple of [`BLOCK`].
const PENDING: usize = 256 * BLOCK;

/// The zstd level images are compressed with.
pub(crate) const LEVEL: i32 = 3;

/// The largest zstd window a download may ask for, as a power of two: 32 MiB of decoder
/// memory at most (level 3 uses 2 MiB windows; zstd's own default limit is 128 MiB).
pub(crate) const WINDOW_LOG_MAX: u32 = 25;

/// Zeroes fed to the encoder for a hole.
static ZEROES: [u8; 1 << 16] = [0; 1 << 16];

/// Why decoding into a file stopped.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// The decoded stream would pass the limit.
    TooLarge,
    /// The input is not a complete, valid zstd stream (or could not be read).
    Zstd(io::Error),
    /// The output file could not be written.
    Write(io::Error),
}

/// Writes a stream of bytes into a file from offset 0, skipping every [`BLOCK`]-aligned block
/// of zeroes (so it stays a hole), refusing more than a limit, hashing what it is given.
///
/// The hash runs on a thread of its own, fed each pending run as it is written, so that
/// hashing and decoding use two cores; and every [`WRITEBACK_KICK`] bytes the kernel is asked
/// to start writing back, so that the fsync at publishing has little left to do.
pub(crate) struct SparseWriter<'f> {
    file: &'f File,
    /// Bytes accepted so far.
    accepted: u64,
    /// The file offset of `pending[0]`.
    flushed: u64,
    /// Bytes written since the last write-back kick.
    unkicked: u64,
    pending: Vec<u8>,
    limit: u64,
    hashing: Hashing,
}

/// Bytes written between two nudges to the kernel to start writing back.
const WRITEBACK_KICK: u64 = 32 << 20;

/// The hashing thread: runs to hash, and buffers coming back to be refilled.
struct Hashing {
    runs: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<Sha256>>,
}

impl Hashing {
    fn start() -> Self {
        let (runs, todo) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (done, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let thread = std::thread::spawn(move || {
            let mut hasher = Sha256::new();
            for run in todo {
                hasher.update(&run);
                // The writer may have finished: then the buffer is dropped.
                let _ = done.send(run);
            }
            hasher
        });
        Self { runs: Some(runs), spare, thread: Some(thread) }
    }

    /// Hands `run` to the thread; returns an empty buffer to fill next.
    fn hash(&mut self, run: Vec<u8>) -> io::Result<Vec<u8>> {
        let sender = self.runs.as_ref().ok_or_else(|| io::Error::other("the hashing thread has stopped"))?;
        sender.send(run).map_err(|_| io::Error::other("the hashing thread has stopped"))?;
        let mut next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(PENDING));
        next.clear();
        Ok(next)
    }

    /// Waits for every run to be hashed.
    fn finish(&mut self) -> io::Result<Sha256> {
        drop(self.runs.take());
        let thread = self.thread.take().ok_or_else(|| io::Error::other("the hashing thread has stopped"))?;
        thread.join().map_err(|_| io::Error::other("the hashing thread panicked"))
    }
}

impl Drop for Hashing {
    fn drop(&mut self) {
        drop(self.runs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<'f> SparseWriter<'f> {
    /// A writer into `file` (which should be empty: skipped blocks are not written) of at most
    /// `limit` bytes.
    pub(crate) fn new(file: &'f File, limit: u64) -> Self {
        Self {
            file,
            accepted: 0,
            flushed: 0,
            unkicked: 0,
            pending: Vec::with_capacity(PENDING),
            limit,
            hashing: Hashing::start(),
        }
    }

    /// Appends `data`; refused whole (nothing of it written) if it would pass the limit.
    pub(crate) fn write(&mut self, mut data: &[u8]) -> Result<(), DecodeError> {
        if data.len() as u64 > self.limit - self.accepted {
            return Err(DecodeError::TooLarge);
        }
        self.accepted += data.len() as u64;
        while !data.is_empty() {
            let take = (PENDING - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == PENDING {
                self.flush().map_err(DecodeError::Write)?;
            }
        }
        Ok(())
    }

    /// Writes the pending bytes' non-zero blocks, each run of them with one `pwrite`.
    fn flush(&mut self) -> io::Result<()> {
        let mut run: Option<usize> = None;
        for (i, block) in self.pending.chunks(BLOCK).enumerate() {
            let at = i * BLOCK;
            match (is_zero(block), run) {
                (false, None) => run = Some(at),
                (true, Some(start)) => {
                    self.file.write_all_at(&self.pending[start..at], self.flushed + start as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            self.file.write_all_at(&self.pending[start..], self.flushed + start as u64)?;
        }
        self.flushed += self.pending.len() as u64;
        self.unkicked += self.pending.len() as u64;
        if self.unkicked >= WRITEBACK_KICK {
            start_writeback(self.file);
            self.unkicked = 0;
        }
        let next = self.hashing.hash(std::mem::take(&mut self.pending))?;
        self.pending = next;
        Ok(())
    }

    /// Writes what is pending, sets the file's length to the bytes accepted (trailing holes
    /// included) and returns that length and the bytes' SHA-256.
    pub(crate) fn finish(mut self) -> io::Result<(u64, Digest)> {
        self.flush()?;
        self.file.set_len(self.accepted)?;
        let hasher = self.hashing.finish()?;
        Ok((self.accepted, Digest::from_sha256(hasher.finalize().into())))
    }
}

/// Starts writing what is dirty in `file` back to disk, without waiting.
fn start_writeback(file: &File) {
    // SAFETY: a valid descriptor; offset 0 and length 0 mean the whole file.
    unsafe {
        libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(file), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Whether every byte is zero (written so that it vectorizes).
fn is_zero(block: &[u8]) -> bool {
    block.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Decodes the zstd stream `input` into `file` (empty) sparsely, stopping as soon as the
/// decoded length would pass `limit`; returns the decoded length and its SHA-256.
pub(crate) fn decode_sparse(input: impl Read, file: &File, limit: u64) -> Result<(u64, Digest), DecodeError> {
    let mut decoder = zstd::stream::read::Decoder::new(input).map_err(DecodeError::Zstd)?;
    decoder.window_log_max(WINDOW_LOG_MAX).map_err(DecodeError::Zstd)?;
    let mut writer = SparseWriter::new(file, limit);
    let mut buffer = vec![0u8; 128 << 10];
    loop {
        let n = match decoder.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DecodeError::Zstd(e)),
        };
        writer.write(&buffer[..n])?;
    }
    writer.finish().map_err(DecodeError::Write)
}

/// Compresses `image` with zstd (level [`LEVEL`], one thread, a checksum in the frame: the
/// same bytes for the same input every time) into `out`, reading only its data: holes
/// (found with `SEEK_DATA`/`SEEK_HOLE`) are fed to the encoder as zeroes without reading them.
/// Returns the image's length.
pub(crate) fn compress_sparse(image: &File, out: impl Write) -> io::Result<u64> {
    let len = image.metadata()?.len();
    let mut encoder = zstd::stream::write::Encoder::new(out, LEVEL)?;
    encoder.include_checksum(true)?;
    // The length goes into the frame header, and a file that changes length while it is read
    // makes the encoder fail instead of producing something else.
    encoder.set_pledged_src_size(Some(len))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let data = next_data(image, pos, len)?;
        feed_zeroes(&mut encoder, data - pos)?;
        pos = data;
        if pos >= len {
            break;
        }
        let mut hole = next_hole(image, pos, len)?;
        if hole <= pos {
            // The file changed under us; read a buffer's worth as data and look again.
            hole = (pos + buffer.len() as u64).min(len);
        }
        while pos < hole {
            let n = (hole - pos).min(buffer.len() as u64) as usize;
            image.read_exact_at(&mut buffer[..n], pos)?;
            encoder.write_all(&buffer[..n])?;
            pos += n as u64;
        }
    }
    encoder.finish()?.flush()?;
    Ok(len)
}

/// The first offset at or after `pos` holding data (`len` if none); `pos` itself when the
/// file system cannot tell.
fn next_data(file: &File, pos: u64, len: u64) -> io::Result<u64> {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(pos)) {
        Ok(at) => Ok(at.min(len)),
        Err(rustix::io::Errno::NXIO) => Ok(len),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(pos),
        Err(e) => Err(e.into()),
    }
}

/// The first hole at or after `pos` (`len` when the data runs to the end or the file system
/// cannot tell).
fn next_hole(file: &File, pos: u64, len: u64) -> io::Result<u64> {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(pos)) {
        Ok(at) => Ok(at.min(len)),
        Err(rustix::io::Errno::NXIO | rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(len),
        Err(e) => Err(e.into()),
    }
}

fn feed_zeroes(out: &mut impl Write, mut count: u64) -> io::Result<()> {
    while count > 0 {
        let n = count.min(ZEROES.len() as u64) as usize;
        out.write_all(&ZEROES[..n])?;
        count -= n as u64;
    }
    Ok(())
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    /// The inner writer, the bytes' digest and their count.
    pub(crate) fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_sha256(self.hasher.finalize().into()), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    /// A file of `len` bytes with `data` written at each offset (the rest holes).
    fn sparse_file(dir: &std::path::Path, len: u64, data: &[(u64, &[u8])]) -> File {
        let file = File::options().read(true).write(true).create_new(true).open(dir.join("image")).unwrap();
        file.set_len(len).unwrap();
        for (at, bytes) in data {
            file.write_all_at(bytes, *at).unwrap();
        }
        file
    }

    fn compress(file: &File) -> Vec<u8> {
        let mut out = Vec::new();
        compress_sparse(file, &mut out).unwrap();
        out
    }

    fn contents(file: &File) -> Vec<u8> {
        let mut bytes = vec![0; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        bytes
    }

    /// Offsets of the data extents, as SEEK_DATA/SEEK_HOLE see them.
    fn data_extents(file: &File) -> Vec<(u64, u64)> {
        let len = file.metadata().unwrap().len();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < len {
            let data = next_data(file, pos, len).unwrap();
            if data >= len {
                break;
            }
            let hole = next_hole(file, data, len).unwrap();
            out.push((data, hole));
            pos = hole;
        }
        out
    }

    fn noise(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
    }

    #[test]
    fn zero_blocks_become_holes_and_bytes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let a = noise(10_000, 1);
        let b = noise(100, 7);
        let len = (8 << 20) + 123; // a partial last block
        let source = sparse_file(dir.path(), len, &[(4096, &a), (5 << 20, &b), (len - 50, &[9; 50])]);
        let compressed = compress(&source);
        assert!(compressed.len() < 64 << 10, "{} bytes", compressed.len());
        assert_eq!(compress(&source), compressed, "the same input compresses to the same bytes");

        let out = File::options().read(true).write(true).create_new(true).open(dir.path().join("out")).unwrap();
        let (n, digest) = decode_sparse(&compressed[..], &out, u64::MAX).unwrap();
        assert_eq!(n, len);
        let bytes = contents(&out);
        assert_eq!(bytes, contents(&source));
        assert_eq!(digest, Digest::of(&bytes));
        // Only the blocks with data were written: 4096..16384, the block at 5 MiB, the last.
        assert_eq!(data_extents(&out), vec![(4096, 16384), (5 << 20, (5 << 20) + 4096), (8 << 20, len)]);
        assert!(out.metadata().unwrap().blocks() * 512 <= 6 * 4096, "{} blocks", out.metadata().unwrap().blocks());
    }

    #[test]
    fn zeroes_written_as_data_become_holes_too() {
        let dir = tempfile::tempdir().unwrap();
        // Written zeroes (not holes) in the source: read as data, skipped on the way out.
        let mut data = vec![0u8; 3 << 20];
        data[(2 << 20) + 5] = 1;
        let source = sparse_file(dir.path(), 3 << 20, &[(0, &data)]);
        let compressed = compress(&source);
        let out = tempfile::tempfile_in(dir.path()).unwrap();
        let (n, _) = decode_sparse(&compressed[..], &out, 3 << 20).unwrap();
        assert_eq!(n, 3 << 20);
        assert_eq!(data_extents(&out), vec![(2 << 20, (2 << 20) + 4096)]);
        assert_eq!(contents(&out), data);
    }

    #[test]
    fn an_all_hole_or_empty_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0u64, 1, 4096, 64 << 20] {
            let path = dir.path().join(format!("f{len}"));
            let source = File::options().read(true).write(true).create_new(true).open(path).unwrap();
            source.set_len(len).unwrap();
            let compressed = compress(&source);
            let out = tempfile::tempfile_in(dir.path()).unwrap();
            let (n, digest) = decode_sparse(&compressed[..], &out, len).unwrap();
            assert_eq!(n, len);
            assert_eq!(out.metadata().unwrap().len(), len);
            assert_eq!(out.metadata().unwrap().blocks(), 0);
            assert_eq!(digest, Digest::of(&vec![0; len as usize]));
        }
    }

    #[test]
    fn past_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = sparse_file(dir.path(), 1 << 20, &[(0, &noise(5000, 3))]);
        let compressed = compress(&source);
        let out = tempfile::tempfile_in(dir.path()).unwrap();
        assert!(matches!(decode_sparse(&compressed[..], &out, (1 << 20) - 1), Err(DecodeError::TooLarge)));
        // A bomb: 256 MiB of zeroes in a few KiB, refused at the limit without writing.
        let mut bomb = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        for _ in 0..(256u64 << 20) / ZEROES.len() as u64 {
            bomb.write_all(&ZEROES).unwrap();
        }
        let bomb = bomb.finish().unwrap();
        let out = tempfile::tempfile_in(dir.path()).unwrap();
        assert!(matches!(decode_sparse(&bomb[..], &out, 16 << 20), Err(DecodeError::TooLarge)));
        assert!(out.metadata().unwrap().len() <= 16 << 20);
        assert_eq!(out.metadata().unwrap().blocks(), 0);
    }

    #[test]
    fn truncated_or_corrupt_streams_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let source = sparse_file(dir.path(), 2 << 20, &[(0, &noise(300_000, 5))]);
        let compressed = compress(&source);
        let out = || tempfile::tempfile_in(dir.path()).unwrap();
        for cut in [0, 1, compressed.len() / 2, compressed.len() - 1] {
            let result = decode_sparse(&compressed[..cut], &out(), u64::MAX);
            assert!(matches!(result, Err(DecodeError::Zstd(_))), "cut at {cut}: {result:?}");
        }
        let mut corrupt = compressed.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0x55;
        let result = decode_sparse(&corrupt[..], &out(), u64::MAX);
        assert!(matches!(result, Err(DecodeError::Zstd(_))), "{result:?}");
        let mut trailing = compressed.clone();
        trailing.extend_from_slice(b"garbage");
        let result = decode_sparse(&trailing[..], &out(), u64::MAX);
        assert!(matches!(result, Err(DecodeError::Zstd(_))), "{result:?}");
        let result = decode_sparse(&b"not zstd at all"[..], &out(), u64::MAX);
        assert!(matches!(result, Err(DecodeError::Zstd(_))), "{result:?}");
    }

    #[test]
    fn a_huge_window_is_refused() {
        // A frame asking for a 1 GiB window: refused before the decoder allocates it.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(30).unwrap();
        encoder.long_distance_matching(true).unwrap();
        encoder.write_all(&noise(1 << 16, 9)).unwrap();
        let frame = encoder.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempfile_in(dir.path()).unwrap();
        let result = decode_sparse(&frame[..], &out, u64::MAX);
        assert!(matches!(&result, Err(DecodeError::Zstd(e)) if e.to_string().contains("memory")), "{result:?}");
    }

    #[test]
    fn the_writer_aligns_holes_to_blocks_across_writes() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempfile_in(dir.path()).unwrap();
        let mut writer = SparseWriter::new(&out, u64::MAX);
        let mut expected = Vec::new();
        // Odd-sized writes straddling blocks and the pending buffer's end.
        for i in 0..2000u32 {
            let piece: Vec<u8> = if i % 7 == 3 { noise(1001, i as u8) } else { vec![0; 4099] };
            writer.write(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        let (n, digest) = writer.finish().unwrap();
        assert_eq!(n, expected.len() as u64);
        assert_eq!(digest, Digest::of(&expected));
        assert_eq!(contents(&out), expected);
        for (start, end) in data_extents(&out) {
            assert_eq!(start % BLOCK as u64, 0);
            assert!(end % BLOCK as u64 == 0 || end == n);
            // Every written block holds a non-zero byte.
            for block in expected[start as usize..end as usize].chunks(BLOCK) {
                assert!(!is_zero(block), "a zero block at {start}..{end} was written");
            }
        }
    }

    /// Random runs of zeroes and data, written in random pieces, under random limits: the
    /// bytes, the holes (every all-zero block and only those) and the refusals are right.
    #[test]
    fn random_streams_keep_their_bytes_and_only_zero_blocks_become_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound.max(1)
        };
        for round in 0..30 {
            let mut expected = Vec::new();
            let target = next(3 << 20) as usize;
            while expected.len() < target {
                let long = next(4) == 0;
                let run = next(if long { 40_000 } else { 9000 }) as usize + 1;
                if next(2) == 0 {
                    expected.resize(expected.len() + run, 0);
                } else {
                    // Mostly non-zero, with the odd zero byte inside.
                    for _ in 0..run {
                        let byte = if next(50) == 0 { 0 } else { next(255) as u8 + 1 };
                        expected.push(byte);
                    }
                }
            }
            let limit = if next(3) == 0 { next(expected.len() as u64 + 1) } else { u64::MAX };
            let out = tempfile::tempfile_in(dir.path()).unwrap();
            let mut writer = SparseWriter::new(&out, limit);
            let mut at = 0;
            let mut refused = false;
            while at < expected.len() {
                let piece = (next(300_000) as usize + 1).min(expected.len() - at);
                match writer.write(&expected[at..at + piece]) {
                    Ok(()) => at += piece,
                    Err(DecodeError::TooLarge) => {
                        assert!((at + piece) as u64 > limit, "round {round}: refused under the limit");
                        refused = true;
                        break;
                    }
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
            assert_eq!(refused, expected.len() as u64 > limit, "round {round}");
            let (n, digest) = writer.finish().unwrap();
            assert_eq!(n, at as u64);
            let expected = &expected[..at];
            assert_eq!(digest, Digest::of(expected), "round {round}");
            assert_eq!(contents(&out), expected, "round {round}");
            for (i, block) in expected.chunks(BLOCK).enumerate() {
                let start = (i * BLOCK) as u64;
                let is_hole = next_data(&out, start, n).unwrap() > start;
                assert_eq!(is_hole, is_zero(block), "round {round}: block {i}");
            }
        }
    }

    /// Timings for a large sparse image (`cargo test --release -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check: run it in release mode by hand"]
    fn large_sparse_image_timings() {
        let dir = tempfile::tempdir().unwrap();
        let len = 4u64 << 30;
        let data: Vec<u8> = (0..32u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
        let text: Vec<u8> = (0..32u32 << 20).map(|i| b"abcdefgh\n"[(i % 9) as usize]).collect();
        let source = sparse_file(dir.path(), len, &[(0, &data), (1 << 30, &text), ((3 << 30) + 4096, &data)]);
        let started = std::time::Instant::now();
        let mut compressed = HashingWriter::new(tempfile::tempfile_in(dir.path()).unwrap());
        compress_sparse(&source, &mut compressed).unwrap();
        let (compressed, _, size) = compressed.finish();
        println!("compress 4 GiB (96 MiB data): {:?}, {size} bytes", started.elapsed());
        let started = std::time::Instant::now();
        let out = tempfile::tempfile_in(dir.path()).unwrap();
        let input = std::io::BufReader::new(&compressed);
        let mut input = input;
        std::io::Seek::rewind(&mut input).unwrap();
        let (n, _) = decode_sparse(input, &out, len).unwrap();
        println!("decode: {:?}, {} bytes allocated", started.elapsed(), out.metadata().unwrap().blocks() * 512);
        assert_eq!(n, len);
    }
}

//! The SHA-256 of an image file, recorded in its entry's manifest when it is
//! published (`image_sha256`) and compared by `verify --deep`.
//!
//! Images are sparse: most of a fresh image is holes. A hole reads as zeros,
//! so its bytes are hashed from a zero buffer without reading the file
//! (`SEEK_DATA`/`SEEK_HOLE`); the digest is the same as `sha256sum`'s.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

/// Bytes hashed per read.
const CHUNK: usize = 1 << 20;

/// The SHA-256 of `file`'s bytes, hex.
pub(crate) fn sha256(file: &File) -> io::Result<String> {
    let len = file.metadata()?.len();
    let mut hasher = Sha256::new();
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(data) => data.min(len),
            // No data after `offset`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => len,
            // A filesystem without SEEK_DATA: read everything.
            Err(_) => offset,
        };
        feed_zeros(&mut hasher, &zeros, data - offset);
        offset = data;
        if offset >= len {
            break;
        }
        let hole = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(offset)).map_or(len, |h| h.min(len));
        while offset < hole {
            let n = (hole - offset).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], offset)?;
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
    }
    Ok(crate::digest::hex(&hasher.finalize()))
}

fn feed_zeros(hasher: &mut Sha256, zeros: &[u8], mut n: u64) {
    while n > 0 {
        let step = n.min(zeros.len() as u64) as usize;
        hasher.update(&zeros[..step]);
        n -= step as u64;
    }
}

/// `manifest_json` with `image_sha256` set to `digest`.
pub(crate) fn with_image_sha256(manifest_json: &str, digest: &str) -> Result<String, serde_json::Error> {
    let mut manifest: serde_json::Map<String, serde_json::Value> = serde_json::from_str(manifest_json)?;
    manifest.insert("image_sha256".into(), digest.into());
    serde_json::to_string(&manifest)
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    #[test]
    fn a_sparse_file_hashes_as_its_bytes_do() {
        let mut file = tempfile::tempfile().unwrap();
        file.set_len(5 << 20).unwrap();
        file.seek(SeekFrom::Start(3 << 20)).unwrap();
        file.write_all(b"data between holes").unwrap();
        let mut bytes = vec![0u8; 5 << 20];
        bytes[3 << 20..(3 << 20) + 18].copy_from_slice(b"data between holes");
        assert_eq!(sha256(&file).unwrap(), crate::digest::hex(&Sha256::digest(&bytes)));
    }

    #[test]
    fn the_digest_is_added_to_the_manifest() {
        let json = with_image_sha256(r#"{"format":1,"key":"k"}"#, "ab").unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["image_sha256"], "ab");
        assert_eq!(value["key"], "k");
    }
}

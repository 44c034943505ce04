//! Container image layers merged into one [`Tree`](rootfs_cache_ext4::Tree),
//! the content an ext4 image is written from.
//!
//! Two ways in, one tree out:
//!
//! - [`oci_apply`]: an OCI image's layer blobs (gzip, zstd or plain tar)
//!   applied in order under the image spec's rules (`.wh.<name>` deletes,
//!   `.wh..wh..opq` hides what lower layers put in a directory, an entry
//!   replaces what was at its path), each blob checked against its digest,
//!   length and diff ID while it streams, file contents spooled to an
//!   unnamed temporary file. Needs no privileges.
//! - [`overlay`] and [`scan`]: an overlay2 chain merged by the kernel's
//!   overlayfs (a detached, read-only mount; needs root), then read into a
//!   tree through its directory handle, never following a symlink; a
//!   regular file the mount lists is read in the layer that holds it when
//!   it is provably the same inode ([`scan::scan_overlay`]), and
//!   [`layer_files`] then points each larger file at the layer file that
//!   holds its data, so that the writer can clone its blocks.
//!
//! [`regular_file`] is the one way a file is opened to be read, here and in
//! the host: FIFOs, devices and directories are refused without blocking.
//!
//! ```
//! use std::sync::atomic::AtomicBool;
//!
//! use rootfs_cache_ext4::{Kind, Tree};
//! use rootfs_cache_layers::{LayerBlob, hex, oci_apply::Applier};
//! use sha2::{Digest, Sha256};
//!
//! // One layer holding /etc/hostname, built in memory.
//! let mut layer = tar::Builder::new(Vec::new());
//! let mut header = tar::Header::new_gnu();
//! header.set_size(7);
//! header.set_mode(0o644);
//! header.set_uid(0);
//! header.set_gid(0);
//! header.set_mtime(1_700_000_000);
//! layer.append_data(&mut header, "etc/hostname", &b"rootfs\n"[..])?;
//! let bytes = layer.into_inner()?;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("layer.tar");
//! std::fs::write(&path, &bytes)?;
//! let blob = LayerBlob {
//!     path,
//!     media_type: "application/vnd.oci.image.layer.v1.tar".into(),
//!     digest: format!("sha256:{}", hex(&Sha256::digest(&bytes))),
//!     size: bytes.len() as u64,
//!     diff_id: None,
//! };
//!
//! // File contents go to an unnamed spool in the directory given here.
//! let tree = Applier::new(dir.path())?.apply_all(&[blob], &AtomicBool::new(false))?;
//! let etc = tree.resolve_dir(b"/etc").expect("etc is a directory");
//! let hostname = tree.lookup(etc, b"hostname").expect("hostname is there");
//! assert!(matches!(tree.node(hostname).kind, Kind::File { size: 7, .. }));
//! assert!(tree.lookup(Tree::ROOT, b"etc").is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod layer_files;
pub mod oci_apply;
pub mod overlay;
pub mod regular_file;
pub mod scan;

use std::path::PathBuf;

/// One OCI layer blob, as the image's manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    /// The blob file.
    pub path: PathBuf,
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>` it must hash to.
    pub digest: String,
    /// The length it must have.
    pub size: u64,
    /// `sha256:<hex>` its uncompressed tar stream must hash to (the image
    /// config's `rootfs.diff_ids` entry), when the guest gave one.
    pub diff_id: Option<String>,
}

/// Lowercase hexadecimal, as digests are written (`sha256:<hex>`).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

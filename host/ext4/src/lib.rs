//! A deterministic ext4 image writer.
//!
//! [`Tree`] is the content, as a container sees it; [`write_image`] lays it
//! out and writes it in one pass: the same tree and options always give the
//! same bytes, file holes stay holes, and names, targets, owners, modes,
//! device numbers, extended attributes and nanosecond modification times are
//! kept exactly. e2fsck checks every image the tests write.
//!
//! ```
//! use std::sync::Arc;
//!
//! use rootfs_cache_ext4::{Features, FileData, Headroom, ImageOptions, Kind, Meta, Node, Reflink, Tree, write_image};
//!
//! let dir_meta = Meta { perm: 0o755, ..Meta::default() };
//! let mut tree = Tree::new(dir_meta.clone());
//! let etc = tree.add(Tree::ROOT, b"etc".to_vec(), Node { meta: dir_meta, kind: Kind::Dir(Default::default()) });
//! let hostname = b"rootfs\n".to_vec();
//! let file = Kind::File { size: hostname.len() as u64, data: FileData::Bytes(Arc::new(hostname)) };
//! tree.add(etc, b"hostname".to_vec(), Node { meta: Meta { perm: 0o644, ..Meta::default() }, kind: file });
//! tree.add(Tree::ROOT, b"sh".to_vec(), Node { meta: Meta::default(), kind: Kind::Symlink(b"bin/busybox".to_vec()) });
//!
//! let options = ImageOptions {
//!     size: None, // sized from the content, with room to spare
//!     headroom: Headroom::default(),
//!     uuid: [7; 16],
//!     hash_seed: [9; 16],
//!     label: "rootfs".into(),
//!     max_bytes: Some(1 << 30),
//!     features: Features::EXT4, // as `mke2fs -t ext4`: a journal, checksums, hashed directories…
//!     reflink: Reflink::Auto, // share blocks with the sources where the filesystem can
//! };
//! let out = tempfile::tempfile()?;
//! let report = write_image(&tree, &out, &options)?;
//! assert_eq!(out.metadata()?.len(), report.bytes);
//! // The root, lost+found, etc, hostname and sh, after the ten reserved inodes.
//! assert_eq!(report.used_inodes, 14);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The writer runs in phases (plan, geometry, allocation, directories, data,
//! inodes, metadata), each its own module under `writer/`; [`format`](mod@format) holds
//! the on-disk encodings, [`layout`] the geometry and the block allocator,
//! [`xattr`] the attribute encoding and [`tree`] the content.

#![deny(missing_docs)]

pub mod checksum;
pub mod dirhash;
mod features;
pub mod format;
pub mod layout;
mod source;
pub mod tree;
mod writer;
pub mod xattr;

pub use features::Features;
pub use layout::Headroom;
pub use tree::{FileData, Kind, Meta, Node, NodeId, Timestamp, Tree};
pub use writer::{ImageOptions, Reflink, WriteError, WriteReport, write_image, write_image_streamed};

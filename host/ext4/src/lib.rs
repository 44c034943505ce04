//! A deterministic ext4 image writer.
//!
//! [`Tree`] is the content, as a container sees it; [`write_image`] lays it
//! out and writes it in one pass: the same tree and options always give the
//! same bytes, file holes stay holes, and names, targets, owners, modes,
//! device numbers, extended attributes and nanosecond modification times are
//! kept exactly. e2fsck checks every image the tests write.

#![deny(missing_docs)]

pub mod format;
pub mod layout;
mod source;
pub mod tree;
mod writer;
pub mod xattr;

pub use layout::Headroom;
pub use tree::{FileData, Kind, Meta, Node, NodeId, Timestamp, Tree};
pub use writer::{ImageOptions, WriteError, WriteReport, write_image};

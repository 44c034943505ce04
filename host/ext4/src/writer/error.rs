//! Why an image could not be written.

use crate::layout::LayoutError;
use crate::xattr::XattrError;

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The content needs more room than asked for.
    #[error("the content needs at least {needed} bytes, more than the {size} bytes asked for")]
    DoesNotFit {
        /// Bytes needed.
        needed: u64,
        /// Bytes asked for.
        size: u64,
    },
    /// The content needs a longer image than [`ImageOptions::max_bytes`](super::ImageOptions::max_bytes).
    #[error("the content needs an image of {needed} bytes, more than the {max} bytes allowed")]
    TooLarge {
        /// Bytes the image would have.
        needed: u64,
        /// Bytes allowed.
        max: u64,
    },
    /// More inodes than an ext4 image holds, whatever its size.
    #[error("the content needs {inodes} inodes, more than the {max} an ext4 image holds")]
    TooManyInodes {
        /// Inodes the content needs (at least).
        inodes: u64,
        /// The most an image holds: [`MAX_INODES`](crate::layout::MAX_INODES).
        max: u64,
    },
    /// Something the source holds that ext4 cannot: a name longer than 255
    /// bytes, a symlink target of a block or more, more links to one file
    /// than ext4 counts, a directory (with `dir_index`) too large for a
    /// two-level hashed index. The message names the path.
    #[error("{0}")]
    Unsupported(String),
    /// The image's layout could not be made: a size beyond ext4's limits,
    /// or too small for any filesystem.
    #[error("{0}")]
    Layout(String),
    /// A node's extended attributes cannot be stored.
    #[error("cannot store the extended attributes of {path}: {source}")]
    Xattrs {
        /// The first path that names the node.
        path: String,
        /// Why not.
        #[source]
        source: XattrError,
    },
    /// Reading a source file failed or it changed while being copied.
    #[error("{path}: {message}")]
    Source {
        /// The file.
        path: String,
        /// What happened.
        message: String,
    },
    /// Writing the image failed.
    #[error("writing the image: {0}")]
    Write(#[source] std::io::Error),
}

impl From<LayoutError> for WriteError {
    fn from(e: LayoutError) -> Self {
        match e {
            LayoutError::DoesNotFit { needed, size } => Self::DoesNotFit { needed, size },
            LayoutError::TooLarge(m) => Self::Layout(m),
            LayoutError::TooManyInodes { inodes, max } => Self::TooManyInodes { inodes, max },
            LayoutError::InodesDoNotFit { inodes, groups } => {
                Self::Layout(format!("{inodes} inodes do not fit in {groups} groups"))
            }
            LayoutError::TooSmall { blocks } => Self::Layout(format!("{blocks} blocks is too small for a filesystem")),
        }
    }
}

//! Phase 4, the directories: each directory's entries, in linear blocks or
//! hashed (see [`htree`]), written where its extents say.

use crate::format::{FIRST_INODE, ROOT_INODE, ftype};
use crate::tree::Tree;

use super::allocate::Allocation;
use super::error::WriteError;
use super::htree::{self, Shape};
use super::image::Image;
use super::plan::{LOST_FOUND_BLOCKS, Plan, dir_shape, entries};

/// Writes every directory's blocks where its extents say.
pub(super) fn write(tree: &Tree, plan: &Plan, allocation: &Allocation, image: &Image<'_>) -> Result<(), WriteError> {
    let fmt = &plan.dir_format;
    for (ino, inode) in plan.written() {
        let (entries, shape) = match inode.node {
            Some(id) if tree.node(id).is_dir() => {
                (entries(tree, &plan.numbering, id), dir_shape(tree, &plan.numbering, fmt, id)?)
            }
            Some(_) => continue,
            // The synthetic lost+found.
            None if ino == FIRST_INODE => (
                vec![(ino, ftype::DIR, b".".to_vec()), (ROOT_INODE, ftype::DIR, b"..".to_vec())],
                Shape::Linear(LOST_FOUND_BLOCKS),
            ),
            // The journal.
            None => continue,
        };
        let blocks = htree::encode(&entries, &shape, fmt, ino);
        if blocks.len() as u64 != inode.data_blocks {
            return Err(WriteError::Layout(format!(
                "directory inode {ino}: {} blocks encoded, {} planned",
                blocks.len(),
                inode.data_blocks
            )));
        }
        image.write_blocks(&allocation.inodes[ino as usize].extents, &blocks)?;
    }
    Ok(())
}

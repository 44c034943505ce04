//! Phase 4, the directories: each directory's entries, packed into its blocks.

use crate::format::{self, BLOCK_SIZE, FIRST_INODE, ROOT_INODE, ftype};
use crate::tree::Tree;

use super::allocate::Allocation;
use super::error::WriteError;
use super::image::Image;
use super::plan::{DirEntry, Plan, entries};

/// Writes every directory's blocks where its extents say.
pub(super) fn write(tree: &Tree, plan: &Plan, allocation: &Allocation, image: &Image<'_>) -> Result<(), WriteError> {
    for (ino, inode) in plan.written() {
        let entries = match inode.node {
            Some(id) if tree.node(id).is_dir() => entries(tree, &plan.numbering, id),
            Some(_) => continue,
            // The synthetic lost+found.
            None if ino == FIRST_INODE => {
                vec![(ino, ftype::DIR, b".".to_vec()), (ROOT_INODE, ftype::DIR, b"..".to_vec())]
            }
            // The journal.
            None => continue,
        };
        image.write_blocks(&allocation.inodes[ino as usize].extents, &blocks(&entries, inode.data_blocks))?;
    }
    Ok(())
}

/// Packs directory entries into at least `min_blocks` blocks; the last entry
/// of each block stretches to its end.
fn blocks(entries: &[DirEntry], min_blocks: u64) -> Vec<Vec<u8>> {
    let bs = BLOCK_SIZE as usize;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut block = vec![0u8; bs];
    let mut at = 0usize;
    let mut last_at: Option<usize> = None;
    for (ino, ft, name) in entries {
        let len = format::dirent_len(name.len());
        if at + len > bs {
            let last = last_at.expect("a block holds at least one entry");
            let rec = bs - last;
            block[last + 4..last + 6].copy_from_slice(&(rec as u16).to_le_bytes());
            blocks.push(std::mem::replace(&mut block, vec![0u8; bs]));
            at = 0;
        }
        format::put_dirent(&mut block, at, *ino, len, name, *ft);
        last_at = Some(at);
        at += len;
    }
    if let Some(last) = last_at {
        block[last + 4..last + 6].copy_from_slice(&((bs - last) as u16).to_le_bytes());
    }
    blocks.push(block);
    while (blocks.len() as u64) < min_blocks {
        // An empty block: one unused entry spanning it.
        let mut empty = vec![0u8; bs];
        empty[4..6].copy_from_slice(&(bs as u16).to_le_bytes());
        blocks.push(empty);
    }
    blocks
}

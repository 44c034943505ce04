//! Phase 4, the directories: each directory's entries, packed into its blocks.

use crate::format::{self, BLOCK_SIZE, FIRST_INODE, ROOT_INODE, ftype};
use crate::tree::{NodeId, Tree};

use super::allocate::Allocation;
use super::plan::{Numbering, Plan, file_type};
use super::{Image, WriteError};

/// `lost+found`'s name.
pub(super) const LOST_FOUND: &[u8] = b"lost+found";

/// Blocks of `lost+found`: room for e2fsck to reconnect files without
/// allocating.
pub(super) const LOST_FOUND_BLOCKS: u64 = 4;

/// One directory entry: inode, file type, name.
pub(super) type DirEntry = (u32, u8, Vec<u8>);

/// The entries of directory node `dir`: `.`, `..`, a synthetic
/// `lost+found` in the root, then its names in order.
pub(super) fn entries(tree: &Tree, numbering: &Numbering, dir: NodeId) -> Vec<DirEntry> {
    let ino = numbering.ino_of[dir];
    let mut entries = vec![(ino, ftype::DIR, b".".to_vec()), (numbering.parent_of[dir], ftype::DIR, b"..".to_vec())];
    if dir == Tree::ROOT && numbering.synthetic_lost_found {
        entries.push((FIRST_INODE, ftype::DIR, LOST_FOUND.to_vec()));
    }
    entries.extend(
        tree.entries(dir).map(|(name, id)| (numbering.ino_of[id], file_type(&tree.node(id).kind), name.clone())),
    );
    entries
}

/// Blocks the packed `entries` take.
pub(super) fn block_count(entries: &[DirEntry]) -> u64 {
    let bs = BLOCK_SIZE as usize;
    let (mut blocks, mut at) = (1u64, 0usize);
    for (_, _, name) in entries {
        let len = format::dirent_len(name.len());
        if at + len > bs {
            blocks += 1;
            at = 0;
        }
        at += len;
    }
    blocks
}

/// Writes every directory's blocks where its extents say.
pub(super) fn write(tree: &Tree, plan: &Plan, allocation: &Allocation, image: &Image<'_>) -> Result<(), WriteError> {
    for (ino, inode) in plan.written() {
        let entries = match inode.node {
            Some(id) if tree.node(id).is_dir() => entries(tree, &plan.numbering, id),
            Some(_) => continue,
            // The synthetic lost+found.
            None => vec![(ino, ftype::DIR, b".".to_vec()), (ROOT_INODE, ftype::DIR, b"..".to_vec())],
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

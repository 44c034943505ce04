//! Phase 6, the inodes: each inode's fields, its extent tree and its
//! attribute block, encoded into the inode table.

use crate::checksum::{fs_seed, inode_seed};
use crate::features::Features;
use crate::format::{
    self, BLOCK_SIZE, EXTENTS_FL, EXTENTS_PER_BLOCK, Extent, ExtentNode, INODE_SIZE, InodeFields, JOURNAL_INODE, mode,
};
use crate::tree::{Kind, Tree};
use crate::xattr::Placement;

use super::allocate::Allocation;
use super::error::WriteError;
use super::image::Image;
use super::plan::Plan;

/// The inode table of every inode in use (inodes 1 to the highest), written
/// to the image by the metadata phase; extent-tree and attribute blocks are
/// written here. With `metadata_csum`, every inode, extent-tree block and
/// attribute block carries its checksum (from the UUID's seed).
pub(super) fn encode(
    tree: &Tree,
    plan: &Plan,
    allocation: &Allocation,
    image: &Image<'_>,
    features: Features,
    uuid: &[u8; 16],
) -> Result<Vec<u8>, WriteError> {
    let mut itable = vec![0u8; plan.numbering.max_ino as usize * INODE_SIZE];
    let fs_seed = features.metadata_csum.then(|| fs_seed(uuid));
    for (ino, inode) in plan.written() {
        // The seed of this inode's checksums (its generation is always 0).
        let seed = fs_seed.map(|s| inode_seed(s, ino, 0));
        let blocks = &allocation.inodes[ino as usize];
        let (perm, uid, gid, time, kind) = match inode.node {
            Some(id) => {
                let n = tree.node(id);
                (n.meta.perm & 0o7777, n.meta.uid, n.meta.gid, n.meta.mtime, Some(&n.kind))
            }
            // The journal: a regular file only the kernel reads.
            None if ino == JOURNAL_INODE => (0o600, 0, 0, tree.node(Tree::ROOT).meta.mtime, None),
            // The synthetic lost+found.
            None => (0o700, 0, 0, tree.node(Tree::ROOT).meta.mtime, None),
        };
        let mut block = [0u8; 60];
        let mut flags = if inode.indexed { super::htree::INDEX_FL } else { 0 };
        let (type_bits, size) = match kind {
            None if ino == JOURNAL_INODE => (mode::REG, inode.data_blocks * BLOCK_SIZE),
            None | Some(Kind::Dir(_)) => (mode::DIR, inode.data_blocks * BLOCK_SIZE),
            Some(Kind::File { size, .. }) => (mode::REG, *size),
            Some(Kind::Symlink(target)) => {
                if target.len() < 60 {
                    block[..target.len()].copy_from_slice(target);
                }
                (mode::LNK, target.len() as u64)
            }
            Some(Kind::CharDevice(rdev)) => {
                block = format::encode_device(*rdev);
                (mode::CHR, 0)
            }
            Some(Kind::BlockDevice(rdev)) => {
                block = format::encode_device(*rdev);
                (mode::BLK, 0)
            }
            Some(Kind::Fifo) => (mode::FIFO, 0),
            Some(Kind::Socket) => (mode::SOCK, 0),
        };
        let uses_extents = matches!(kind, None | Some(Kind::Dir(_)) | Some(Kind::File { .. }))
            || matches!(kind, Some(Kind::Symlink(t)) if t.len() >= 60);
        if uses_extents {
            flags |= EXTENTS_FL;
            write_extent_tree(&mut block, &blocks.extents, &blocks.tree_blocks, seed, image)?;
        }
        let (inline_xattrs, xattr_block) = match &inode.xattrs {
            Placement::None => (None, 0),
            Placement::Inline(area) => (Some(area.clone()), 0),
            Placement::Block(data) => {
                let mut data = data.clone();
                if let Some(seed) = fs_seed {
                    format::set_xattr_block_checksum(&mut data, blocks.xattr_block, seed);
                }
                image.write_at(&data, blocks.xattr_block * BLOCK_SIZE)?;
                (None, blocks.xattr_block)
            }
        };
        let allocated = blocks.extents.iter().map(|e| u64::from(e.len)).sum::<u64>()
            + blocks.tree_blocks.len() as u64
            + u64::from(xattr_block != 0);
        // `i_blocks` counts 512-byte sectors: 32 bits of them (2 TiB), or
        // 48 with `huge_file` (no `EXT4_HUGE_FILE_FL`: that flag counts
        // blocks, needed only past 2^48 sectors, beyond any image here).
        let sectors = allocated * (BLOCK_SIZE / 512);
        if !features.huge_file && sectors > u64::from(u32::MAX) {
            return Err(WriteError::Unsupported(format!(
                "inode {ino}: {allocated} blocks ({sectors} sectors) is more than ext4 counts without huge_file"
            )));
        }
        let fields = InodeFields {
            mode: type_bits | perm as u16,
            uid,
            gid,
            size,
            time,
            links: inode.links,
            sectors,
            flags,
            block,
            xattr_block,
            inline_xattrs,
        };
        let at = (ino as usize - 1) * INODE_SIZE;
        fields.encode(&mut itable[at..at + INODE_SIZE]);
        if let Some(seed) = seed {
            format::set_inode_checksum(&mut itable[at..at + INODE_SIZE], seed);
        }
    }
    Ok(itable)
}

/// Writes the extent tree: the root into `iblock`, deeper levels into
/// `tree_blocks`, each block with its checksum tail when `seed` (the
/// inode's checksum seed) is given.
fn write_extent_tree(
    iblock: &mut [u8; 60],
    extents: &[Extent],
    tree_blocks: &[u64],
    seed: Option<u32>,
    image: &Image<'_>,
) -> Result<(), WriteError> {
    if extents.len() <= 4 {
        format::encode_extent_node(iblock, ExtentNode::Leaf(extents), 0);
        return Ok(());
    }
    let mut spare = tree_blocks.iter().copied();
    // Leaves.
    let mut level: Vec<(u32, u64)> = Vec::new();
    for chunk in extents.chunks(EXTENTS_PER_BLOCK) {
        let at = spare.next().expect("tree blocks were allocated for every node");
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        format::encode_extent_node(&mut block, ExtentNode::Leaf(chunk), 0);
        if let Some(seed) = seed {
            format::set_extent_block_checksum(&mut block, seed);
        }
        image.write_at(&block, at * BLOCK_SIZE)?;
        level.push((chunk[0].logical, at));
    }
    let mut depth = 1u16;
    while level.len() > 4 {
        let mut up = Vec::new();
        for chunk in level.chunks(EXTENTS_PER_BLOCK) {
            let at = spare.next().expect("tree blocks were allocated for every node");
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            format::encode_extent_node(&mut block, ExtentNode::Index(chunk), depth);
            if let Some(seed) = seed {
                format::set_extent_block_checksum(&mut block, seed);
            }
            image.write_at(&block, at * BLOCK_SIZE)?;
            up.push((chunk[0].0, at));
        }
        level = up;
        depth += 1;
    }
    format::encode_extent_node(iblock, ExtentNode::Index(&level), depth);
    Ok(())
}

//! Phase 7, the metadata: inode tables, bitmaps, group descriptors and
//! superblocks, with their backups.

use crate::checksum::fs_seed;
use crate::format::{
    self, BG_BLOCK_UNINIT, BG_INODE_UNINIT, BG_INODE_ZEROED, BLOCK_SIZE, BLOCKS_PER_GROUP, FIRST_INODE, GroupDesc,
    INODE_SIZE, JOURNAL_INODE, SuperblockFields,
};
use crate::layout::Geometry;
use crate::tree::Tree;

use super::allocate::Allocation;
use super::error::WriteError;
use super::image::Image;
use super::options::ImageOptions;
use super::plan::Plan;

/// Writes `itable` and every group's metadata. Returns the free blocks.
pub(super) fn write(
    tree: &Tree,
    plan: &Plan,
    geometry: &Geometry,
    allocation: &Allocation,
    itable: &[u8],
    options: &ImageOptions,
    image: &Image<'_>,
) -> Result<u64, WriteError> {
    let ipg = geometry.inodes_per_group;
    let used_inodes = u64::from(plan.numbering.max_ino);
    let mut dirs_per_group = vec![0u16; geometry.groups.len()];
    for (ino, inode) in plan.written() {
        let is_dir = match inode.node {
            Some(id) => tree.node(id).is_dir(),
            None => ino == FIRST_INODE,
        };
        if is_dir {
            dirs_per_group[((ino - 1) / ipg) as usize] += 1;
        }
    }
    // With `metadata_csum`: the checksums' seed, and the descriptors say
    // which inode tables are zeroed and unused, as mke2fs's do.
    let csum_seed = options.features.metadata_csum.then(|| fs_seed(&options.uuid));
    let mut descs = Vec::with_capacity(geometry.groups.len());
    let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
    for (g, group) in geometry.groups.iter().enumerate() {
        let first_ino = g as u64 * u64::from(ipg);
        let used_inodes_here = used_inodes.saturating_sub(first_ino).min(u64::from(ipg));
        if used_inodes_here > 0 {
            let from = first_ino as usize * INODE_SIZE;
            let to = (first_ino + used_inodes_here) as usize * INODE_SIZE;
            image.write_at(&itable[from..to], group.inode_table * BLOCK_SIZE)?;
        }
        // Metadata first, then the blocks handed out from `first_data` on.
        let used_blocks = group.first_data - group.start + allocation.used_per_group[g];
        let block_bitmap = bitmap(used_blocks, group.blocks);
        image.write_at(&block_bitmap, group.block_bitmap * BLOCK_SIZE)?;
        let inode_bitmap = bitmap(used_inodes_here, u64::from(ipg));
        image.write_at(&inode_bitmap, group.inode_bitmap * BLOCK_SIZE)?;
        let group_free_blocks = group.blocks - used_blocks;
        let group_free_inodes = u64::from(ipg) - used_inodes_here;
        free_blocks += group_free_blocks;
        free_inodes += group_free_inodes;
        let mut desc = GroupDesc {
            block_bitmap: group.block_bitmap,
            inode_bitmap: group.inode_bitmap,
            inode_table: group.inode_table,
            free_blocks: group_free_blocks as u32,
            free_inodes: group_free_inodes as u32,
            used_dirs: u32::from(dirs_per_group[g]),
            ..GroupDesc::default()
        };
        if let Some(seed) = csum_seed {
            // The flags mke2fs sets: every inode table zeroed (what is not
            // written is a hole); a group with no inode in use, and one
            // holding no data and no other group's metadata (not the last:
            // e2fsck wants its bitmap), uninitialised, so the kernel and
            // e2fsck compute their bitmaps from the descriptor. Unlike
            // mke2fs, every bitmap is written and checksummed all the same,
            // so a tool that ignores the flags finds them right too.
            let inode_uninit = used_inodes_here == 0;
            let block_uninit = allocation.used_per_group[g] == 0
                && g + 1 < geometry.groups.len()
                && geometry.holds_only_its_own_metadata(g);
            desc.flags = BG_INODE_ZEROED
                | if inode_uninit { BG_INODE_UNINIT } else { 0 }
                | if block_uninit { BG_BLOCK_UNINIT } else { 0 };
            desc.itable_unused = group_free_inodes as u32;
            desc.block_bitmap_csum = format::bitmap_checksum(&block_bitmap, BLOCKS_PER_GROUP, seed);
            desc.inode_bitmap_csum = format::bitmap_checksum(&inode_bitmap, u64::from(ipg), seed);
        }
        descs.push(desc);
    }
    let desc_size = geometry.desc_size as usize;
    let mut gdt = vec![0u8; (geometry.gdt_blocks * BLOCK_SIZE) as usize];
    for (i, d) in descs.iter().enumerate() {
        let at = i * desc_size;
        gdt[at..at + desc_size].copy_from_slice(&d.encode(geometry.desc_size, i as u32, csum_seed));
    }
    let mut label = [0u8; 16];
    let l = options.label.as_bytes();
    label[..l.len().min(16)].copy_from_slice(&l[..l.len().min(16)]);
    let fields = SuperblockFields {
        inodes_count: geometry.inodes() as u32,
        blocks_count: geometry.blocks,
        free_blocks,
        free_inodes: free_inodes as u32,
        inodes_per_group: ipg,
        uuid: options.uuid,
        hash_seed: options.hash_seed,
        label,
        features: options.features,
        journal: (plan.journal_blocks() > 0).then(|| {
            let at = (JOURNAL_INODE as usize - 1) * INODE_SIZE;
            let mut iblock = [0u8; 60];
            iblock.copy_from_slice(&itable[at + 0x28..at + 0x28 + 60]);
            (iblock, plan.journal_blocks() * BLOCK_SIZE)
        }),
        log_groups_per_flex: geometry.log_groups_per_flex,
    };
    for (g, group) in geometry.groups.iter().enumerate() {
        if !group.has_super {
            continue;
        }
        let sb = format::superblock(&fields, g as u16);
        let at = if g == 0 { 1024 } else { group.start * BLOCK_SIZE };
        image.write_at(&sb, at)?;
        image.write_at(&gdt, (group.start + 1) * BLOCK_SIZE)?;
    }
    Ok(free_blocks)
}

/// A bitmap block with the first `used` bits set and every bit from `valid`
/// to the end of the block set too (bits past the group's end are "in use").
fn bitmap(used: u64, valid: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE as usize];
    let bits = BLOCK_SIZE * 8;
    for bit in (0..used).chain(valid..bits) {
        b[(bit / 8) as usize] |= 1 << (bit % 8);
    }
    b
}

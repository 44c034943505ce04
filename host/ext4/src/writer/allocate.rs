//! Phases 2 and 3: the geometry the plan needs, then every block, in inode
//! order.

use crate::format::{BLOCK_SIZE, BLOCKS_PER_GROUP, EXTENTS_PER_BLOCK, Extent, MAX_EXTENT_LEN};
use crate::layout::{Allocator, Geometry};
use crate::xattr::Placement;

use super::error::WriteError;
use super::options::ImageOptions;
use super::plan::Plan;

/// Where one inode's blocks are.
#[derive(Default)]
pub(super) struct InodeBlocks {
    /// Its data, as extents.
    pub extents: Vec<Extent>,
    /// Blocks of its extent tree below the inode, when it has more extents
    /// than the inode holds.
    pub tree_blocks: Vec<u64>,
    /// Its extended-attribute block, or 0.
    pub xattr_block: u64,
}

/// Every inode's blocks, indexed by inode number, and how many blocks of each
/// group were handed out.
pub(super) struct Allocation {
    pub inodes: Vec<InodeBlocks>,
    pub used_per_group: Vec<u64>,
}

/// Blocks the plan needs besides the groups' metadata: data, attribute
/// blocks and an upper bound of extent-tree blocks.
fn content_blocks(plan: &Plan) -> u64 {
    let data_blocks: u64 = plan.inodes.iter().map(|p| p.data_blocks).sum();
    let xattr_blocks = plan.inodes.iter().filter(|p| matches!(p.xattrs, Placement::Block(_))).count() as u64;
    let tree_estimate: u64 = plan
        .inodes
        .iter()
        .map(|p| tree_blocks_for(p.runs.len() + (p.data_blocks / (BLOCKS_PER_GROUP / 2)) as usize + 1))
        .sum::<u64>()
        + 8;
    data_blocks + xattr_blocks + tree_estimate
}

/// The geometry for the plan: the size asked for, or sized from the content
/// (with enough groups for its inodes) with the options' headroom, refused
/// past `max_bytes` or past [`MAX_INODES`](crate::layout::MAX_INODES) inodes,
/// before anything is written.
pub(super) fn geometry(plan: &Plan, options: &ImageOptions) -> Result<Geometry, WriteError> {
    let geometry = Geometry::for_content(
        content_blocks(plan),
        u64::from(plan.numbering.max_ino),
        options.size,
        &options.headroom,
        options.features,
    )?;
    if let Some(max) = options.max_bytes
        && geometry.blocks * BLOCK_SIZE > max
    {
        return Err(WriteError::TooLarge { needed: geometry.blocks * BLOCK_SIZE, max });
    }
    Ok(geometry)
}

/// Places every block of every inode, in inode order: data (as extents of
/// at most [`MAX_EXTENT_LEN`] blocks), then extent-tree blocks, then the
/// attribute block.
pub(super) fn allocate(plan: &Plan, geometry: &Geometry, options: &ImageOptions) -> Result<Allocation, WriteError> {
    let mut alloc = Allocator::new(geometry);
    let no_room = || WriteError::DoesNotFit {
        needed: (content_blocks(plan) + geometry.metadata_blocks()) * BLOCK_SIZE,
        size: options.size.unwrap_or(geometry.blocks * BLOCK_SIZE),
    };
    let mut inodes = Vec::with_capacity(plan.inodes.len());
    for inode in &plan.inodes {
        let mut blocks = InodeBlocks::default();
        let mut logical_runs: Vec<(u64, u64)> =
            inode.runs.iter().map(|(o, l)| (o / BLOCK_SIZE, l / BLOCK_SIZE)).collect();
        if inode.runs.is_empty() && inode.data_blocks > 0 {
            logical_runs.push((0, inode.data_blocks));
        }
        for (logical, count) in logical_runs {
            let mut logical = logical;
            for (start, len) in alloc.allocate(count).map_err(|_| no_room())? {
                let (mut start, mut len) = (start, len);
                while len > 0 {
                    let piece = len.min(MAX_EXTENT_LEN);
                    blocks.extents.push(Extent { logical: logical as u32, start, len: piece as u16 });
                    logical += piece;
                    start += piece;
                    len -= piece;
                }
            }
        }
        let needed = tree_blocks_for(blocks.extents.len());
        if needed > 0 {
            blocks.tree_blocks =
                alloc.allocate(needed).map_err(|_| no_room())?.into_iter().flat_map(|(s, l)| s..s + l).collect();
        }
        if matches!(inode.xattrs, Placement::Block(_)) {
            blocks.xattr_block = alloc.allocate(1).map_err(|_| no_room())?[0].0;
        }
        inodes.push(blocks);
    }
    Ok(Allocation { inodes, used_per_group: alloc.used })
}

/// Extent-tree blocks needed for `extents` extents.
pub(super) fn tree_blocks_for(extents: usize) -> u64 {
    let mut total = 0u64;
    let mut level = extents;
    while level > 4 {
        level = level.div_ceil(EXTENTS_PER_BLOCK);
        total += level as u64;
    }
    total
}

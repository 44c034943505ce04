//! Geometry: how many groups, inodes and blocks an image has, where each
//! group's metadata sits, and a sequential block allocator.

use super::format::{BLOCK_SIZE, BLOCKS_PER_GROUP, DESC_SIZE, INODE_SIZE, INODES_PER_BLOCK, has_superblock};

/// How much room to leave when the image is sized from its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    /// Free space as a percentage of the content's blocks.
    pub free_space_percent: u32,
    /// Free space at least this many bytes.
    pub min_free_bytes: u64,
    /// Free inodes as a percentage of the inodes used.
    pub free_inodes_percent: u32,
    /// Free inodes at least this many.
    pub min_free_inodes: u32,
}

impl Default for Headroom {
    fn default() -> Self {
        Self { free_space_percent: 20, min_free_bytes: 32 << 20, free_inodes_percent: 20, min_free_inodes: 4096 }
    }
}

/// Where one group's metadata is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// First block of the group.
    pub start: u64,
    /// Blocks in the group (the last may be shorter).
    pub blocks: u64,
    /// Whether it holds a superblock and descriptor-table backup.
    pub has_super: bool,
    /// Block bitmap.
    pub block_bitmap: u64,
    /// Inode bitmap.
    pub inode_bitmap: u64,
    /// First inode-table block.
    pub inode_table: u64,
    /// First block after the metadata.
    pub first_data: u64,
}

/// The whole filesystem's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// Inodes per group (a multiple of 16).
    pub inodes_per_group: u32,
    /// Blocks of the group-descriptor table.
    pub gdt_blocks: u64,
    /// Every group.
    pub groups: Vec<Group>,
}

/// Why a geometry cannot be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The content needs more than the requested size.
    DoesNotFit {
        /// Bytes the content needs at least.
        needed: u64,
        /// Bytes asked for.
        size: u64,
    },
    /// Beyond ext4's limits without the 64bit feature.
    TooLarge(String),
}

impl Geometry {
    /// Lays out `blocks` blocks with room for `inodes` inodes.
    pub fn new(blocks: u64, inodes: u64) -> Result<Self, LayoutError> {
        if blocks > u64::from(u32::MAX) {
            return Err(LayoutError::TooLarge(format!("{blocks} blocks is more than 16 TiB")));
        }
        let mut blocks = blocks;
        loop {
            let group_count = blocks.div_ceil(BLOCKS_PER_GROUP).max(1);
            let ipg = inodes
                .div_ceil(group_count)
                .next_multiple_of(u64::from(INODES_PER_BLOCK))
                .max(u64::from(INODES_PER_BLOCK));
            if ipg > BLOCKS_PER_GROUP {
                return Err(LayoutError::TooLarge(format!("{inodes} inodes do not fit in {group_count} groups")));
            }
            let gdt_blocks = (group_count * DESC_SIZE).div_ceil(BLOCK_SIZE);
            let itable_blocks = ipg * INODE_SIZE as u64 / BLOCK_SIZE;
            let mut groups = Vec::with_capacity(group_count as usize);
            for g in 0..group_count {
                let start = g * BLOCKS_PER_GROUP;
                let len = (blocks - start).min(BLOCKS_PER_GROUP);
                let has_super = has_superblock(g);
                let meta_start = start + if has_super { 1 + gdt_blocks } else { 0 };
                groups.push(Group {
                    start,
                    blocks: len,
                    has_super,
                    block_bitmap: meta_start,
                    inode_bitmap: meta_start + 1,
                    inode_table: meta_start + 2,
                    first_data: meta_start + 2 + itable_blocks,
                });
            }
            // A last group too short for its own metadata is dropped, as mke2fs does.
            let last = groups.last().expect("at least one group");
            if last.first_data + 16 > last.start + last.blocks {
                if group_count == 1 {
                    return Err(LayoutError::TooLarge(format!("{blocks} blocks is too small for a filesystem")));
                }
                blocks = last.start;
                continue;
            }
            return Ok(Self { blocks, inodes_per_group: ipg as u32, gdt_blocks, groups });
        }
    }

    /// Total inodes.
    pub fn inodes(&self) -> u64 {
        u64::from(self.inodes_per_group) * self.groups.len() as u64
    }

    /// Blocks used by metadata.
    pub fn metadata_blocks(&self) -> u64 {
        self.groups.iter().map(|g| g.first_data - g.start).sum()
    }

    /// Blocks left for data.
    pub fn data_blocks(&self) -> u64 {
        self.blocks - self.metadata_blocks()
    }

    /// The geometry for content of `data_blocks` blocks and `inodes` inodes:
    /// exactly `size` bytes when given, else sized with `headroom`.
    pub fn for_content(
        data_blocks: u64,
        inodes: u64,
        size: Option<u64>,
        headroom: &Headroom,
    ) -> Result<Self, LayoutError> {
        let free_inodes =
            (inodes * u64::from(headroom.free_inodes_percent) / 100).max(u64::from(headroom.min_free_inodes));
        match size {
            Some(size) => {
                let blocks = size / BLOCK_SIZE;
                // Like mke2fs: an inode per 16 KiB, unless the content needs more.
                let wanted = (inodes + free_inodes).max(size / 16384).min(blocks / 2);
                let geometry = Self::new(blocks, wanted.max(inodes))?;
                if geometry.data_blocks() < data_blocks || geometry.inodes() < inodes {
                    let overhead = geometry.metadata_blocks();
                    return Err(LayoutError::DoesNotFit { needed: (data_blocks + overhead) * BLOCK_SIZE, size });
                }
                Ok(geometry)
            }
            None => {
                let free = (data_blocks * u64::from(headroom.free_space_percent) / 100)
                    .max(headroom.min_free_bytes.div_ceil(BLOCK_SIZE));
                let want_inodes = inodes + free_inodes;
                let mut blocks = data_blocks + free;
                loop {
                    let geometry = Self::new(blocks, want_inodes)?;
                    let needed = data_blocks + free + geometry.metadata_blocks();
                    if geometry.blocks >= needed {
                        return Ok(geometry);
                    }
                    blocks = if needed > blocks {
                        needed
                    } else {
                        // `new` dropped a last group too short for its own
                        // metadata, and the content fits in no more than was
                        // asked for: asking for `needed` again would give the
                        // same geometry forever (about one size in 250 did).
                        // Ask for room for that group's metadata instead: an
                        // upper bound of it (one more group never needs more
                        // inode-table blocks, or more than one more
                        // descriptor block), and 16 blocks.
                        let group = geometry.groups.len() as u64;
                        let backup = if has_superblock(group) { 1 + geometry.gdt_blocks + 1 } else { 0 };
                        let itable = u64::from(geometry.inodes_per_group) * INODE_SIZE as u64 / BLOCK_SIZE;
                        geometry.blocks + backup + 2 + itable + 16
                    };
                }
            }
        }
    }
}

/// Hands out data blocks in order, skipping each group's metadata.
pub struct Allocator<'g> {
    geometry: &'g Geometry,
    group: usize,
    next: u64,
    /// Blocks handed out per group.
    pub used: Vec<u64>,
}

/// Why allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfBlocks;

impl<'g> Allocator<'g> {
    /// Starts at the first data block of group 0.
    pub fn new(geometry: &'g Geometry) -> Self {
        Self { geometry, group: 0, next: geometry.groups[0].first_data, used: vec![0; geometry.groups.len()] }
    }

    /// Allocates `count` blocks as runs of `(first block, length)`, each run
    /// inside one group.
    pub fn allocate(&mut self, mut count: u64) -> Result<Vec<(u64, u64)>, OutOfBlocks> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        while count > 0 {
            let group = self.geometry.groups.get(self.group).ok_or(OutOfBlocks)?;
            let end = group.start + group.blocks;
            if self.next >= end {
                self.group += 1;
                let next = self.geometry.groups.get(self.group).ok_or(OutOfBlocks)?;
                self.next = next.first_data;
                continue;
            }
            let take = count.min(end - self.next);
            match runs.last_mut() {
                Some((start, len)) if *start + *len == self.next => *len += take,
                _ => runs.push((self.next, take)),
            }
            self.used[self.group] += take;
            self.next += take;
            count -= take;
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_image_has_one_group_with_its_metadata_first() {
        let g = Geometry::new(4096, 1000).unwrap();
        assert_eq!(g.groups.len(), 1);
        assert_eq!(g.inodes_per_group, 1008);
        assert_eq!(g.groups[0].block_bitmap, 2);
        assert_eq!(g.groups[0].first_data, 4 + 1008 / 16);
    }

    #[test]
    fn a_too_short_last_group_is_dropped() {
        let g = Geometry::new(BLOCKS_PER_GROUP + 10, 100).unwrap();
        assert_eq!(g.blocks, BLOCKS_PER_GROUP);
        assert_eq!(g.groups.len(), 1);
    }

    #[test]
    fn runs_skip_group_metadata() {
        let g = Geometry::new(BLOCKS_PER_GROUP * 2, 64).unwrap();
        let mut a = Allocator::new(&g);
        let first = a.allocate(BLOCKS_PER_GROUP - g.groups[0].first_data).unwrap();
        assert_eq!(first.len(), 1);
        let second = a.allocate(10).unwrap();
        assert_eq!(second, vec![(g.groups[1].first_data, 10)]);
    }

    #[test]
    fn content_that_does_not_fit_says_how_much_it_needs() {
        let err = Geometry::for_content(10_000, 100, Some(8 << 20), &Headroom::default()).unwrap_err();
        assert!(matches!(err, LayoutError::DoesNotFit { needed, .. } if needed > 10_000 * 4096));
    }

    #[test]
    fn every_content_size_converges_even_where_a_last_group_would_be_too_short() {
        // 23,883 blocks once made `for_content` ask forever for a size whose
        // last group `new` drops (the benchmark's generated tree hit one).
        let h = Headroom::default();
        for data_blocks in (23_800..24_100).chain(381_600..381_800).chain([23_883]) {
            let g = Geometry::for_content(data_blocks, 7000, None, &h).unwrap();
            let free = (data_blocks / 5).max((32 << 20) / BLOCK_SIZE);
            assert!(g.data_blocks() >= data_blocks + free, "{data_blocks}: {g:?}");
            assert!(g.inodes() >= 7000 + 4096);
        }
    }

    #[test]
    fn sized_from_content_leaves_the_headroom() {
        let h = Headroom::default();
        let g = Geometry::for_content(100_000, 5000, None, &h).unwrap();
        assert!(g.data_blocks() >= 120_000);
        assert!(g.inodes() >= 5000 + 4096);
    }
}

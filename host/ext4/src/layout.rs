//! Geometry: how many groups, inodes and blocks an image has, where each
//! group's metadata sits, and a sequential block allocator.

use super::features::Features;
use super::format::{BLOCK_SIZE, BLOCKS_PER_GROUP, INODE_SIZE, INODES_PER_BLOCK, desc_size, has_superblock};

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
///
/// Every group's metadata sits at its start: its superblock and
/// descriptor-table backup, if it has one, then, without `flex_bg`, its own
/// bitmaps and inode table; with `flex_bg`, the first group of each flex
/// group holds the block bitmaps, then the inode bitmaps, then the inode
/// tables of every group of its flex group, as `mke2fs` packs them, and the
/// other groups hold none. Every block from `first_data` to the group's end
/// is data.
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
    /// First block after the metadata the group holds (its own, or its flex
    /// group's).
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
    /// Bytes of one group descriptor: 64 with the `64bit` feature, else 32.
    pub desc_size: u64,
    /// `s_log_groups_per_flex` with `flex_bg`: log2 of the groups whose
    /// metadata is packed together. 4 (16 groups, as `mke2fs`) unless a
    /// flex group's metadata would not fit in its first group.
    pub log_groups_per_flex: Option<u8>,
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
    /// Beyond the writer's limit of 2^32 − 1 blocks (16 TiB), which is
    /// ext4's without the `64bit` feature and kept with it.
    TooLarge(String),
    /// More inodes than the groups `blocks` gives can hold (at most
    /// [`MAX_INODES_PER_GROUP`] each).
    InodesDoNotFit {
        /// Inodes asked for.
        inodes: u64,
        /// Groups the blocks give.
        groups: u64,
    },
    /// Too few blocks for even one group's metadata.
    TooSmall {
        /// Blocks asked for.
        blocks: u64,
    },
    /// More inodes than an image can hold, whatever its size.
    TooManyInodes {
        /// Inodes the content needs.
        inodes: u64,
        /// The most an image holds: [`MAX_INODES`].
        max: u64,
    },
}

/// The most inodes one group holds: one bit each in its one inode-bitmap
/// block (8 × the block size: 32,768 with 4 KiB blocks).
pub const MAX_INODES_PER_GROUP: u64 = 8 * BLOCK_SIZE;

/// The most blocks an image has: ext4's limit without the `64bit` feature,
/// kept with it (its 64-byte descriptors are written, its `_hi` halves are
/// zero).
const MAX_BLOCKS: u64 = u32::MAX as u64;

/// The most inodes an image holds. ext4 counts inodes in 32 bits (at most
/// 2^32 − 1); with 32,768 blocks per group and at most 2^32 − 1 blocks there
/// are at most 131,072 groups, and inodes per group are a multiple of the 16
/// that fill an inode-table block, so, as mke2fs caps `-N`, 131,072 groups of
/// 32,752: 4,292,870,144.
pub const MAX_INODES: u64 = {
    let groups = MAX_BLOCKS.div_ceil(BLOCKS_PER_GROUP);
    let per_group = u32::MAX as u64 / groups / INODES_PER_BLOCK as u64 * INODES_PER_BLOCK as u64;
    per_group * groups
};

impl Geometry {
    /// Lays out `blocks` blocks with room for `inodes` inodes, with the
    /// descriptors and group layout `features` ask for (`64bit`, `flex_bg`).
    pub fn new(blocks: u64, inodes: u64, features: Features) -> Result<Self, LayoutError> {
        if blocks > u64::from(u32::MAX) {
            return Err(LayoutError::TooLarge(format!("{blocks} blocks is more than 16 TiB")));
        }
        let desc_size = desc_size(features);
        let mut blocks = blocks;
        loop {
            let group_count = blocks.div_ceil(BLOCKS_PER_GROUP).max(1);
            let ipg = inodes
                .div_ceil(group_count)
                .next_multiple_of(u64::from(INODES_PER_BLOCK))
                .max(u64::from(INODES_PER_BLOCK));
            if ipg > MAX_INODES_PER_GROUP {
                return Err(LayoutError::InodesDoNotFit { inodes, groups: group_count });
            }
            if ipg * group_count > u64::from(u32::MAX) {
                return Err(LayoutError::TooManyInodes { inodes, max: MAX_INODES });
            }
            let gdt_blocks = (group_count * desc_size).div_ceil(BLOCK_SIZE);
            let itable_blocks = ipg * INODE_SIZE as u64 / BLOCK_SIZE;
            let log_groups_per_flex =
                features.flex_bg.then(|| log_groups_per_flex(group_count, gdt_blocks, itable_blocks));
            let groups = place(blocks, group_count, gdt_blocks, itable_blocks, log_groups_per_flex);
            // A last group too short for its metadata is dropped, as mke2fs does.
            let last = groups.last().expect("at least one group");
            if last.first_data + 16 > last.start + last.blocks {
                if group_count == 1 {
                    return Err(LayoutError::TooSmall { blocks });
                }
                blocks = last.start;
                continue;
            }
            return Ok(Self {
                blocks,
                inodes_per_group: ipg as u32,
                gdt_blocks,
                desc_size,
                log_groups_per_flex,
                groups,
            });
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

    /// Whether group `g` holds no metadata but its own (its backup, and its
    /// bitmaps and inode table if they are in it): what the kernel and
    /// e2fsck assume of a group whose block bitmap is left uninitialised
    /// (`BLOCK_UNINIT`), computing it from the group's own descriptor. Not
    /// the first group of a flex group of several.
    pub fn holds_only_its_own_metadata(&self, g: usize) -> bool {
        let group = &self.groups[g];
        let backup = if group.has_super { 1 + self.gdt_blocks } else { 0 };
        let own_inside = (group.start..group.start + group.blocks).contains(&group.block_bitmap);
        let itable_blocks = u64::from(self.inodes_per_group) * INODE_SIZE as u64 / BLOCK_SIZE;
        let own = if own_inside { 2 + itable_blocks } else { 0 };
        group.first_data - group.start == backup + own
    }

    /// The geometry for content of `data_blocks` blocks and `inodes` inodes:
    /// exactly `size` bytes when given, else sized with `headroom`.
    ///
    /// # Inodes
    ///
    /// Groups keep 32,768 blocks, and a group holds at most
    /// [`MAX_INODES_PER_GROUP`] inodes (one inode-bitmap block), so the
    /// inodes set a least number of groups, `⌈inodes / 32,768⌉`. mke2fs
    /// spreads the inodes it is asked for over the groups a device's size
    /// gives (`⌈inodes / groups⌉`, rounded up to fill inode-table blocks),
    /// and when they do not fit it shrinks the groups (`s_blocks_per_group`)
    /// rather than grow a device it cannot grow. Here the size is ours to
    /// choose: sized from the content, an image whose inodes do not fit in
    /// the groups its data needs gets more groups instead
    /// ([`min_blocks_for_inodes`](Self::min_blocks_for_inodes)), each with
    /// the same even share of the inodes mke2fs would give it, the last one
    /// only as long as its metadata and 16 blocks. So every image keeps the
    /// one group size every image had, and every tree that fitted before
    /// gets the geometry (and the bytes) it got before: the extra groups are
    /// added only where [`new`](Self::new) finds the inodes do not fit. The
    /// cost is at most one block per inode (at most 32,768 inodes per
    /// 32,768-block group), a quarter of mke2fs's default 16 KiB per inode,
    /// and the blocks no inode uses are holes in the image file.
    ///
    /// With a `size` too small for the inodes (or the data), the error names
    /// the least size that holds them, [`LayoutError::DoesNotFit`]; more
    /// than [`MAX_INODES`] inodes is [`LayoutError::TooManyInodes`].
    pub fn for_content(
        data_blocks: u64,
        inodes: u64,
        size: Option<u64>,
        headroom: &Headroom,
        features: Features,
    ) -> Result<Self, LayoutError> {
        if inodes > MAX_INODES {
            return Err(LayoutError::TooManyInodes { inodes, max: MAX_INODES });
        }
        let free_inodes =
            (inodes * u64::from(headroom.free_inodes_percent) / 100).max(u64::from(headroom.min_free_inodes));
        match size {
            Some(size) => match Self::for_size(inodes, free_inodes, size, features) {
                Ok(geometry) if geometry.holds(data_blocks, inodes) => Ok(geometry),
                Ok(_) | Err(LayoutError::InodesDoNotFit { .. } | LayoutError::TooSmall { .. }) => {
                    Err(LayoutError::DoesNotFit {
                        needed: Self::size_needed(data_blocks, inodes, free_inodes, size, features)?,
                        size,
                    })
                }
                Err(e) => Err(e),
            },
            None => {
                let free = (data_blocks * u64::from(headroom.free_space_percent) / 100)
                    .max(headroom.min_free_bytes.div_ceil(BLOCK_SIZE));
                let want_inodes = (inodes + free_inodes).min(MAX_INODES);
                let mut blocks = data_blocks + free;
                loop {
                    let geometry = match Self::new(blocks, want_inodes, features) {
                        Ok(geometry) => geometry,
                        Err(LayoutError::InodesDoNotFit { .. }) => {
                            // Only content that failed here before gets
                            // here: more groups for its inodes. Past
                            // `min_blocks_for_inodes`, every size holds them.
                            let at_least = Self::min_blocks_for_inodes(want_inodes, features);
                            debug_assert!(at_least > blocks, "{blocks} blocks for {want_inodes} inodes");
                            blocks = at_least.max(blocks + 1);
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
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
                        geometry.past_one_more_group()
                    };
                }
            }
        }
    }

    /// The geometry of an image of exactly `size` bytes.
    fn for_size(inodes: u64, free_inodes: u64, size: u64, features: Features) -> Result<Self, LayoutError> {
        let blocks = size / BLOCK_SIZE;
        // Like mke2fs: an inode per 16 KiB, unless the content needs more.
        let wanted = (inodes + free_inodes).max(size / 16384).min(blocks / 2);
        Self::new(blocks, wanted.max(inodes), features)
    }

    /// Whether content of `data_blocks` blocks and `inodes` inodes fits.
    fn holds(&self, data_blocks: u64, inodes: u64) -> bool {
        self.data_blocks() >= data_blocks && self.inodes() >= inodes
    }

    /// The least size past `size` (in whole blocks) whose
    /// [`for_size`](Self::for_size) geometry holds the content: what a
    /// [`LayoutError::DoesNotFit`] names, so asking for it succeeds.
    fn size_needed(
        data_blocks: u64,
        inodes: u64,
        free_inodes: u64,
        size: u64,
        features: Features,
    ) -> Result<u64, LayoutError> {
        let itable = inodes.next_multiple_of(u64::from(INODES_PER_BLOCK)) * INODE_SIZE as u64 / BLOCK_SIZE;
        let mut blocks = (size / BLOCK_SIZE + 1)
            .max(Self::min_blocks_for_inodes(inodes, features))
            .max(data_blocks + itable + 2 + 1 + 16);
        loop {
            let next = match Self::for_size(inodes, free_inodes, blocks * BLOCK_SIZE, features) {
                Ok(geometry) if geometry.holds(data_blocks, inodes) => return Ok(blocks * BLOCK_SIZE),
                Ok(geometry) if geometry.blocks < blocks => {
                    // The last group was dropped: make it long enough.
                    (data_blocks + geometry.metadata_blocks()).max(geometry.past_one_more_group())
                }
                Ok(geometry) => data_blocks + geometry.metadata_blocks(),
                Err(LayoutError::InodesDoNotFit { .. }) => Self::min_blocks_for_inodes(inodes, features),
                Err(LayoutError::TooSmall { .. }) => blocks + 16,
                Err(e) => return Err(e),
            };
            blocks = next.max(blocks + 1);
        }
    }

    /// The blocks that keep, after this geometry's last group, one more group
    /// with room for its metadata: an upper bound of it (one more group never
    /// needs more inode-table blocks, or more than one more descriptor
    /// block), and 16 blocks. With `flex_bg` the new group's bitmaps and
    /// inode table are counted in it too, wherever its flex group puts them
    /// (in it, when it starts a flex group).
    fn past_one_more_group(&self) -> u64 {
        let group = self.groups.len() as u64;
        let backup = if has_superblock(group) { 1 + self.gdt_blocks + 1 } else { 0 };
        let itable = u64::from(self.inodes_per_group) * INODE_SIZE as u64 / BLOCK_SIZE;
        self.blocks + backup + 2 + itable + 16
    }

    /// The fewest blocks with enough groups for `inodes` inodes: with
    /// `g = ⌈inodes / 32,768⌉` groups of `⌈inodes / g⌉` inodes (rounded up
    /// as [`new`](Self::new) does), `g − 1` whole groups and a last one just
    /// long enough for its metadata and 16 blocks (`new` drops a shorter
    /// one). Any more blocks give at least as many groups, so they hold the
    /// inodes too. 0 when one group holds them.
    pub fn min_blocks_for_inodes(inodes: u64, features: Features) -> u64 {
        let groups = inodes.div_ceil(MAX_INODES_PER_GROUP).max(1);
        if groups == 1 {
            return 0;
        }
        let ipg =
            inodes.div_ceil(groups).next_multiple_of(u64::from(INODES_PER_BLOCK)).max(u64::from(INODES_PER_BLOCK));
        let gdt_blocks = (groups * desc_size(features)).div_ceil(BLOCK_SIZE);
        let itable_blocks = ipg * INODE_SIZE as u64 / BLOCK_SIZE;
        // Where the metadata goes does not depend on the last group's length.
        let log = features.flex_bg.then(|| log_groups_per_flex(groups, gdt_blocks, itable_blocks));
        let placed = place(groups * BLOCKS_PER_GROUP, groups, gdt_blocks, itable_blocks, log);
        placed.last().expect("at least one group").first_data + 16
    }
}

/// The blocks of a superblock and descriptor-table backup in group `g`.
fn backup_blocks(g: u64, gdt_blocks: u64) -> u64 {
    if has_superblock(g) { 1 + gdt_blocks } else { 0 }
}

/// log2 of the groups per flex group: 16 groups (as `mke2fs`), or fewer
/// when the packed bitmaps and inode tables of 16 would not fit, with the
/// superblock and descriptor table and 16 data blocks, in one group (dense
/// inode tables: up to 2,048 blocks per group). Group 0, with the primary
/// superblock and as many groups as any flex group, is the fullest first
/// group, so what fits there fits everywhere.
fn log_groups_per_flex(group_count: u64, gdt_blocks: u64, itable_blocks: u64) -> u8 {
    (0..=4u8)
        .rev()
        .find(|&log| {
            let n = (1u64 << log).min(group_count);
            backup_blocks(0, gdt_blocks) + n * (2 + itable_blocks) + 16 <= BLOCKS_PER_GROUP
        })
        .unwrap_or(0)
}

/// Places every group's metadata: each group's own at its start, or with
/// `log_groups_per_flex` each flex group's packed into its first group
/// (block bitmaps, inode bitmaps, inode tables, in group order), exactly
/// where mke2fs puts them (a test compares), with one exception: a last
/// flex group of a single group, where mke2fs leaves room for a whole flex
/// group's bitmaps between them; here they are packed like the others.
fn place(
    blocks: u64,
    group_count: u64,
    gdt_blocks: u64,
    itable_blocks: u64,
    log_groups_per_flex: Option<u8>,
) -> Vec<Group> {
    let mut groups: Vec<Group> = (0..group_count)
        .map(|g| {
            let start = g * BLOCKS_PER_GROUP;
            let meta_start = start + backup_blocks(g, gdt_blocks);
            Group {
                start,
                blocks: (blocks - start).min(BLOCKS_PER_GROUP),
                has_super: has_superblock(g),
                block_bitmap: meta_start,
                inode_bitmap: meta_start + 1,
                inode_table: meta_start + 2,
                first_data: meta_start + 2 + itable_blocks,
            }
        })
        .collect();
    if let Some(log) = log_groups_per_flex {
        let per_flex = 1usize << log;
        for first in (0..groups.len()).step_by(per_flex) {
            let n = per_flex.min(groups.len() - first) as u64;
            let base = groups[first].start + backup_blocks(first as u64, gdt_blocks);
            for (i, group) in groups[first..].iter_mut().take(n as usize).enumerate() {
                let i = i as u64;
                group.block_bitmap = base + i;
                group.inode_bitmap = base + n + i;
                group.inode_table = base + 2 * n + i * itable_blocks;
                group.first_data = group.start + backup_blocks(group.start / BLOCKS_PER_GROUP, gdt_blocks);
            }
            groups[first].first_data = base + n * (2 + itable_blocks);
        }
    }
    groups
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

    /// Every layout: the old one, each of `flex_bg` and `64bit` alone, both.
    const LAYOUTS: [Features; 4] = [
        Features::MINIMAL,
        Features { flex_bg: true, ..Features::MINIMAL },
        Features { sixty_four_bit: true, ..Features::MINIMAL },
        Features::EXT4,
    ];
    const M: Features = Features::MINIMAL;

    #[test]
    fn a_small_image_has_one_group_with_its_metadata_first() {
        for f in LAYOUTS {
            let g = Geometry::new(4096, 1000, f).unwrap();
            assert_eq!(g.groups.len(), 1);
            assert_eq!(g.inodes_per_group, 1008);
            assert_eq!(g.groups[0].block_bitmap, 2);
            assert_eq!(g.groups[0].inode_bitmap, 3);
            assert_eq!(g.groups[0].inode_table, 4);
            assert_eq!(g.groups[0].first_data, 4 + 1008 / 16);
            assert_eq!(g.log_groups_per_flex, f.flex_bg.then_some(4));
            assert_eq!(g.desc_size, if f.sixty_four_bit { 64 } else { 32 });
        }
    }

    #[test]
    fn flex_groups_pack_their_bitmaps_then_inode_tables_into_their_first_group() {
        // 40 groups: flex groups of 16, 16 and 8; 64-byte descriptors take one block.
        let g = Geometry::new(40 * BLOCKS_PER_GROUP, 40 * 512, Features::EXT4).unwrap();
        assert_eq!((g.groups.len(), g.gdt_blocks, g.log_groups_per_flex), (40, 1, Some(4)));
        let itb = 512 * INODE_SIZE as u64 / BLOCK_SIZE;
        for (i, group) in g.groups.iter().enumerate() {
            let (first, n) = (i / 16 * 16, if i < 32 { 16 } else { 8 });
            let base = g.groups[first].start + if has_superblock(first as u64) { 2 } else { 0 };
            let k = (i - first) as u64;
            assert_eq!(group.block_bitmap, base + k, "{i}");
            assert_eq!(group.inode_bitmap, base + n + k, "{i}");
            assert_eq!(group.inode_table, base + 2 * n + k * itb, "{i}");
            let first_data =
                if i == first { base + n * (2 + itb) } else { group.start + if group.has_super { 2 } else { 0 } };
            assert_eq!(group.first_data, first_data, "{i}");
        }
        // The same metadata as without flex groups, only elsewhere.
        assert_eq!(g.metadata_blocks(), Geometry::new(40 * BLOCKS_PER_GROUP, 40 * 512, M).unwrap().metadata_blocks());
        assert_sound(&g);
    }

    #[test]
    fn a_last_group_that_starts_a_flex_group_is_kept_only_with_room_for_its_metadata() {
        for blocks in (16 * BLOCKS_PER_GROUP - 50..16 * BLOCKS_PER_GROUP + 2600).step_by(13) {
            let inodes = blocks / 4;
            let g = Geometry::new(blocks, inodes, Features::EXT4).unwrap();
            assert_sound(&g);
            // The inode table the 17th group would have.
            let itb = inodes.div_ceil(17).next_multiple_of(16) * INODE_SIZE as u64 / BLOCK_SIZE;
            let kept = g.groups.len() == 17;
            assert_eq!(kept, blocks.saturating_sub(16 * BLOCKS_PER_GROUP) >= 2 + itb + 16, "{blocks}");
            if kept {
                assert_eq!(g.groups[16].first_data, 16 * BLOCKS_PER_GROUP + 2 + itb);
            }
        }
    }

    #[test]
    fn only_the_first_group_of_a_flex_group_holds_others_metadata() {
        let g = Geometry::new(40 * BLOCKS_PER_GROUP, 40 * 512, Features::EXT4).unwrap();
        let first_of_flex: Vec<usize> = (0..40).filter(|&i| !g.holds_only_its_own_metadata(i)).collect();
        assert_eq!(first_of_flex, vec![0, 16, 32]);
        let g = Geometry::new(40 * BLOCKS_PER_GROUP, 40 * 512, M).unwrap();
        assert!((0..40).all(|i| g.holds_only_its_own_metadata(i)));
        // A flex group of one group holds only its own.
        let g = Geometry::new(16 * BLOCKS_PER_GROUP + 2000, 17 * 512, Features::EXT4).unwrap();
        assert_eq!(g.groups.len(), 17);
        assert!(g.holds_only_its_own_metadata(16));
    }

    #[test]
    fn dense_inode_tables_get_fewer_groups_per_flex() {
        // 32,768 inodes a group: 2,048 inode-table blocks, 16 of which do not fit in a group.
        let g = Geometry::new(20 * BLOCKS_PER_GROUP, 20 * 32_768, Features::EXT4).unwrap();
        assert_eq!(g.log_groups_per_flex, Some(3));
        assert_sound(&g);
        assert!(g.groups[0].first_data < BLOCKS_PER_GROUP);
    }

    #[test]
    fn with_flex_groups_runs_cross_group_borders() {
        let g = Geometry::new(BLOCKS_PER_GROUP * 12, 64, Features::EXT4).unwrap();
        // Groups 10 and 11 hold no metadata at all: one run crosses their border.
        assert_eq!((g.groups[10].first_data, g.groups[11].first_data), (g.groups[10].start, g.groups[11].start));
        let mut a = Allocator::new(&g);
        let before: u64 = g.groups[..10].iter().map(|gr| gr.start + gr.blocks - gr.first_data).sum();
        a.allocate(before).unwrap();
        let run = a.allocate(BLOCKS_PER_GROUP + 10).unwrap();
        assert_eq!(run, vec![(10 * BLOCKS_PER_GROUP, BLOCKS_PER_GROUP + 10)]);
    }

    #[test]
    fn a_too_short_last_group_is_dropped() {
        for f in LAYOUTS {
            let g = Geometry::new(BLOCKS_PER_GROUP + 10, 100, f).unwrap();
            assert_eq!(g.blocks, BLOCKS_PER_GROUP);
            assert_eq!(g.groups.len(), 1);
        }
    }

    #[test]
    fn runs_skip_group_metadata() {
        let g = Geometry::new(BLOCKS_PER_GROUP * 2, 64, M).unwrap();
        let mut a = Allocator::new(&g);
        let first = a.allocate(BLOCKS_PER_GROUP - g.groups[0].first_data).unwrap();
        assert_eq!(first.len(), 1);
        let second = a.allocate(10).unwrap();
        assert_eq!(second, vec![(g.groups[1].first_data, 10)]);
    }

    #[test]
    fn content_that_does_not_fit_says_how_much_it_needs() {
        for f in LAYOUTS {
            let err = Geometry::for_content(10_000, 100, Some(8 << 20), &Headroom::default(), f).unwrap_err();
            assert!(matches!(err, LayoutError::DoesNotFit { needed, .. } if needed > 10_000 * 4096));
        }
    }

    #[test]
    fn every_content_size_converges_even_where_a_last_group_would_be_too_short() {
        // 23,883 blocks once made `for_content` ask forever for a size whose
        // last group `new` drops (the benchmark's generated tree hit one).
        let h = Headroom::default();
        for (data_blocks, f) in
            (23_800..24_100).chain(381_600..381_800).chain([23_883]).flat_map(|d| LAYOUTS.map(|f| (d, f)))
        {
            let g = Geometry::for_content(data_blocks, 7000, None, &h, f).unwrap();
            let free = (data_blocks / 5).max((32 << 20) / BLOCK_SIZE);
            assert!(g.data_blocks() >= data_blocks + free, "{data_blocks}: {g:?}");
            assert!(g.inodes() >= 7000 + 4096);
        }
    }

    #[test]
    fn sized_from_content_leaves_the_headroom() {
        let h = Headroom::default();
        for f in LAYOUTS {
            let g = Geometry::for_content(100_000, 5000, None, &h, f).unwrap();
            assert!(g.data_blocks() >= 120_000);
            assert!(g.inodes() >= 5000 + 4096);
        }
    }

    /// Checks a geometry the way e2fsck and the guest would: every group
    /// holds its metadata, the inodes per group fill whole inode-table
    /// blocks and fit one bitmap block, and the count fits 32 bits.
    fn assert_sound(g: &Geometry) {
        assert!(u64::from(g.inodes_per_group) <= MAX_INODES_PER_GROUP, "{}", g.inodes_per_group);
        assert_eq!(u64::from(g.inodes_per_group) % u64::from(INODES_PER_BLOCK), 0);
        assert!(g.inodes() <= u64::from(u32::MAX));
        assert_eq!(g.groups.len() as u64, g.blocks.div_ceil(BLOCKS_PER_GROUP));
        assert_eq!(g.gdt_blocks, (g.groups.len() as u64 * g.desc_size).div_ceil(BLOCK_SIZE));
        let itb = u64::from(g.inodes_per_group) * INODE_SIZE as u64 / BLOCK_SIZE;
        // Every bitmap and inode table is in some group's metadata, after
        // its backup, and no two overlap: sorted, each ends before the next.
        let mut metadata = Vec::new();
        for group in &g.groups {
            assert!(group.first_data + 16 <= group.start + group.blocks, "{group:?}");
            metadata.extend([(group.block_bitmap, 1), (group.inode_bitmap, 1), (group.inode_table, itb)]);
        }
        metadata.sort_unstable();
        for pair in metadata.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:?}");
        }
        for &(at, len) in &metadata {
            let group = &g.groups[(at / BLOCKS_PER_GROUP) as usize];
            let after_backup = group.start + if group.has_super { 1 + g.gdt_blocks } else { 0 };
            assert!(at >= after_backup && at + len <= group.first_data, "{at} {len}: {group:?}");
        }
        let backups = g.groups.iter().filter(|gr| gr.has_super).count() as u64 * (1 + g.gdt_blocks);
        assert_eq!(g.metadata_blocks(), g.groups.len() as u64 * (2 + itb) + backups);
    }

    #[test]
    fn the_inode_limit_is_what_mke2fs_would_allow() {
        assert_eq!(MAX_INODES, 131_072 * 32_752);
        assert!(MAX_INODES <= u64::from(u32::MAX));
        for f in LAYOUTS {
            let g = Geometry::new(MAX_BLOCKS, MAX_INODES, f).unwrap();
            assert_eq!(g.inodes(), MAX_INODES);
            assert_sound(&g);
        }
    }

    #[test]
    fn many_inodes_and_little_data_get_enough_groups() {
        // The layer: 100,000 empty files in 100 directories.
        let h = Headroom::default();
        let inodes = 100_000 + 100 + 11;
        for f in LAYOUTS {
            let g = Geometry::for_content(8, inodes, None, &h, f).unwrap();
            assert!(g.inodes() >= inodes + inodes / 5, "{}", g.inodes());
            assert_eq!(g.groups.len(), 4);
            assert_sound(&g);
            // No more groups than the inodes need, and the last one is short.
            assert!(g.blocks < 3 * BLOCKS_PER_GROUP + 4096, "{}", g.blocks);
        }
    }

    #[test]
    fn every_inode_count_and_data_size_converges_to_a_sound_geometry() {
        let h = Headroom::default();
        let inode_counts = (0..40u64)
            .map(|i| 20_000 + i * 1_237)
            .chain([27_300, 27_305, 27_306, 32_768, 65_536, 131_072, 250_000, 1_000_000])
            .chain((0..24u64).map(|i| 300_000 + i * 27_307));
        for (inodes, f) in inode_counts.flat_map(|i| LAYOUTS.map(|f| (i, f))) {
            for data_blocks in [0, 1, 5_000, 23_883, 30_000, 32_700, 70_000, 381_700] {
                let g = Geometry::for_content(data_blocks, inodes, None, &h, f).unwrap();
                let free = (data_blocks / 5).max((32 << 20) / BLOCK_SIZE);
                let free_inodes = (inodes / 5).max(4096);
                assert!(g.data_blocks() >= data_blocks + free, "{inodes} {data_blocks}: {}", g.blocks);
                assert!(g.inodes() >= inodes + free_inodes, "{inodes} {data_blocks}: {}", g.inodes());
                assert_sound(&g);
            }
        }
    }

    #[test]
    fn the_least_blocks_for_inodes_hold_them_and_one_fewer_does_not() {
        for f in LAYOUTS {
            for inodes in [32_769, 40_000, 65_536, 65_537, 98_305, 120_019, 1_000_000, 3_000_000] {
                let at_least = Geometry::min_blocks_for_inodes(inodes, f);
                let g = Geometry::new(at_least, inodes, f).unwrap();
                assert!(g.inodes() >= inodes);
                assert_sound(&g);
                let fewer = Geometry::new(at_least - 1, inodes, f);
                assert!(matches!(fewer, Err(LayoutError::InodesDoNotFit { .. })), "{inodes} {f:?}");
            }
            assert_eq!(Geometry::min_blocks_for_inodes(32_768, f), 0);
        }
    }

    #[test]
    fn a_size_too_small_for_the_inodes_names_a_size_that_holds_them() {
        let h = Headroom::default();
        for (data_blocks, inodes, size, f) in
            [(100, 40_000, 64 << 20), (100, 120_019, 128 << 20), (20_000, 70_000, 200 << 20), (10, 5_000, 1 << 20)]
                .into_iter()
                .flat_map(|(d, i, s)| LAYOUTS.map(|f| (d, i, s, f)))
        {
            let err = Geometry::for_content(data_blocks, inodes, Some(size), &h, f).unwrap_err();
            let LayoutError::DoesNotFit { needed, size: asked } = err else { panic!("{inodes}: {err:?}") };
            assert_eq!(asked, size);
            assert!(needed > size, "{needed}");
            let g = Geometry::for_content(data_blocks, inodes, Some(needed), &h, f).unwrap();
            assert!(g.inodes() >= inodes && g.data_blocks() >= data_blocks);
            assert_sound(&g);
        }
    }

    #[test]
    fn more_inodes_than_ext4_holds_are_refused_naming_the_limit() {
        let h = Headroom::default();
        for f in LAYOUTS {
            for size in [None, Some(1 << 40)] {
                let err = Geometry::for_content(0, MAX_INODES + 1, size, &h, f).unwrap_err();
                assert_eq!(err, LayoutError::TooManyInodes { inodes: MAX_INODES + 1, max: MAX_INODES });
            }
            // As many as it holds fit, the headroom cut to what is left.
            let g = Geometry::for_content(0, MAX_INODES - 1000, None, &h, f).unwrap();
            assert_eq!(g.inodes(), MAX_INODES);
        }
    }

    /// `for_content` as it was before inodes could add groups, kept to
    /// show that every content it laid out still gets the same geometry.
    fn before(data_blocks: u64, inodes: u64, size: Option<u64>, headroom: &Headroom) -> Option<Geometry> {
        let free_inodes =
            (inodes * u64::from(headroom.free_inodes_percent) / 100).max(u64::from(headroom.min_free_inodes));
        match size {
            Some(size) => {
                let blocks = size / BLOCK_SIZE;
                let wanted = (inodes + free_inodes).max(size / 16384).min(blocks / 2);
                let geometry = Geometry::new(blocks, wanted.max(inodes), M).ok()?;
                (geometry.data_blocks() >= data_blocks && geometry.inodes() >= inodes).then_some(geometry)
            }
            None => {
                let free = (data_blocks * u64::from(headroom.free_space_percent) / 100)
                    .max(headroom.min_free_bytes.div_ceil(BLOCK_SIZE));
                let mut blocks = data_blocks + free;
                loop {
                    let geometry = Geometry::new(blocks, inodes + free_inodes, M).ok()?;
                    let needed = data_blocks + free + geometry.metadata_blocks();
                    if geometry.blocks >= needed {
                        return Some(geometry);
                    }
                    blocks = if needed > blocks { needed } else { geometry.past_one_more_group() };
                }
            }
        }
    }

    #[test]
    fn content_that_fitted_before_gets_the_same_geometry_and_only_the_rest_a_new_one() {
        let h = Headroom::default();
        let (mut same, mut new) = (0, 0);
        for inodes in (0..60u64).map(|i| 1 + i * 1_699).chain(27_290..27_320).chain([54_000, 54_700, 110_000]) {
            for data_blocks in (0..30u64).map(|i| i * 13_001).chain([23_883, 32_700, 65_000, 300_000]) {
                for size in [None, Some(64 << 20), Some(129 << 20), Some(600 << 20), Some(1 << 30)] {
                    let now = Geometry::for_content(data_blocks, inodes, size, &h, M);
                    match before(data_blocks, inodes, size, &h) {
                        Some(before) => {
                            assert_eq!(now.as_ref(), Ok(&before), "{inodes} {data_blocks} {size:?}");
                            same += 1;
                        }
                        None if size.is_none() => {
                            assert_sound(&now.unwrap());
                            new += 1;
                        }
                        None => {
                            let Err(LayoutError::DoesNotFit { needed, .. }) = now else { panic!("{now:?}") };
                            let g = Geometry::for_content(data_blocks, inodes, Some(needed), &h, M).unwrap();
                            assert_sound(&g);
                        }
                    }
                }
            }
        }
        assert!(same > 1000 && new > 100, "{same} {new}");
    }
}

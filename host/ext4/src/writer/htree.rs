//! How a directory's entries become its blocks: linear blocks, or a hashed
//! (htree) directory, and the checksums of both under `metadata_csum`.
//!
//! A directory is linear when its entries fit in one block, or when the
//! image has no `dir_index`: entries in name order, packed, the last of each
//! block stretched to its end (to the checksum tail under `metadata_csum`).
//!
//! Otherwise it is hashed, laid out as `e2fsck -D` lays it out: block 0 the
//! root (`.`, `..`, then the index), then the leaves, then (past the
//! root's limit of leaves) one level of index nodes, each full but the
//! last. Leaves hold the entries other than `.` and `..` sorted by (major
//! hash, minor hash, name) and packed **fully**: an image is written once
//! and mostly read, so the fewest blocks make the smallest image and the
//! shortest `readdir` and lookups; a later insertion into a full leaf splits
//! it in two, which the kernel does anyway whenever a leaf fills, for one
//! block. (`e2fsck -D` leaves 20% of each leaf free by default; with
//! `indexed_dir_slack_percentage = 0` it rebuilds exactly these blocks, as
//! the tests check.) Unlike `e2fsck -D`, which keeps a directory linear
//! when its names (without `.` and `..`) take less than a block less 24
//! bytes, every directory over one block is hashed, as the kernel does when
//! a directory grows past its first block: so a directory just over a block
//! may be a root and a single leaf.
//!
//! Each index entry points at a leaf with the major hash of the leaf's first
//! entry; when the previous leaf ends with that same hash (a run of equal
//! hashes cut by the leaf boundary), the entry has its low bit set (the
//! collision bit, `hash | 1`): the kernel's lookup of that hash then
//! continues from the earlier leaf into this one instead of stopping. Runs
//! are cut anywhere, as `e2fsck -D` and the kernel's own splits do; the bit
//! is what makes that safe.
//!
//! Names whose kernel hash is the end-of-directory mark's neighbour (see
//! [`half_md4`]) are sorted by the kernel's value; e2fsck computes the
//! unclamped value for them, which would only matter if such a name fell
//! just before a leaf boundary inside a run of `0xfffffffc` hashes (about
//! one directory in 2^60).

use crate::checksum;
use crate::dirhash::half_md4;
use crate::format::{self, BLOCK_SIZE, ftype};

use super::options::ImageOptions;

/// One directory entry: inode, file type, name.
pub(super) type DirEntry = (u32, u8, Vec<u8>);

/// `EXT4_INDEX_FL`: the directory is hashed.
pub(super) const INDEX_FL: u32 = 0x1000;

const BS: usize = BLOCK_SIZE as usize;
/// The checksum tail of a linear block (`ext4_dir_entry_tail`).
const DIRENT_TAIL: usize = 12;
/// The checksum tail of an index block (`dx_tail`).
const DX_TAIL: usize = 8;
/// Where the root's count and limit are: after `.` (12 bytes), `..` (12)
/// and `dx_root_info` (8).
const ROOT_COUNT_AT: usize = 32;
/// Where a node's count and limit are: after its empty fake entry.
const NODE_COUNT_AT: usize = 8;
/// `DX_HASH_HALF_MD4` (the superblock says signed).
const HASH_HALF_MD4: u8 = 1;
/// The file type of a checksum tail (`EXT4_FT_DIR_CSUM`).
const FT_DIR_CSUM: u8 = 0xDE;

/// How directories are encoded, from the image's options.
#[derive(Clone, Copy, Debug)]
pub(super) struct DirFormat {
    /// Directories over one block are hashed.
    pub dir_index: bool,
    /// The filesystem's checksum seed, with `metadata_csum`.
    pub csum_seed: Option<u32>,
    /// The hash seed (`s_hash_seed`).
    pub hash_seed: [u8; 16],
}

impl DirFormat {
    /// The format the options ask for.
    pub fn new(options: &ImageOptions) -> Self {
        Self {
            dir_index: options.features.dir_index,
            csum_seed: options.features.metadata_csum.then(|| checksum::fs_seed(&options.uuid)),
            hash_seed: options.hash_seed,
        }
    }

    /// Bytes of a linear block that hold entries.
    fn space(&self) -> usize {
        BS - if self.csum_seed.is_some() { DIRENT_TAIL } else { 0 }
    }

    /// Index entries the root holds.
    pub fn root_limit(&self) -> usize {
        (BS - ROOT_COUNT_AT - if self.csum_seed.is_some() { DX_TAIL } else { 0 }) / 8
    }

    /// Index entries a node holds.
    pub fn node_limit(&self) -> usize {
        (BS - NODE_COUNT_AT - if self.csum_seed.is_some() { DX_TAIL } else { 0 }) / 8
    }
}

/// How one directory is laid out.
pub(super) enum Shape {
    /// Linear, in this many blocks.
    Linear(u64),
    /// Hashed.
    Indexed(Htree),
}

impl Shape {
    /// The directory's blocks.
    pub fn blocks(&self) -> u64 {
        match self {
            Self::Linear(n) => *n,
            Self::Indexed(h) => 1 + h.leaf_starts.len() as u64 + h.nodes as u64,
        }
    }
}

/// A hashed directory's layout.
pub(super) struct Htree {
    /// `(major hash, minor hash, index into the entries)`, sorted.
    sorted: Vec<(u32, u32, usize)>,
    /// Where (in `sorted`) each leaf starts.
    leaf_starts: Vec<usize>,
    /// Index nodes below the root (0: the root points at the leaves).
    nodes: usize,
}

/// A directory whose leaves a two-level index cannot hold (`largedir`,
/// which the writer does not make).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct TooManyLeaves {
    /// Leaves the directory needs.
    pub leaves: usize,
    /// The most a two-level index holds.
    pub max: usize,
}

/// Lays out a directory's `entries` (`.` and `..` first): linear in at
/// least `min_blocks` blocks when they fit in one block or the format has no
/// `dir_index`, hashed otherwise.
pub(super) fn shape(entries: &[DirEntry], fmt: &DirFormat, min_blocks: u64) -> Result<Shape, TooManyLeaves> {
    let linear = linear_block_count(entries, fmt.space());
    if linear == 1 || !fmt.dir_index {
        return Ok(Shape::Linear(linear.max(min_blocks)));
    }
    let mut sorted: Vec<(u32, u32, usize)> = entries
        .iter()
        .enumerate()
        .skip(2)
        .map(|(i, (_, _, name))| {
            let (major, minor) = half_md4(name, &fmt.hash_seed);
            (major, minor, i)
        })
        .collect();
    sorted.sort_unstable_by(|a, b| (a.0, a.1, &entries[a.2].2).cmp(&(b.0, b.1, &entries[b.2].2)));
    let mut leaf_starts = vec![0];
    let mut at = 0usize;
    for (i, &(_, _, e)) in sorted.iter().enumerate() {
        let len = format::dirent_len(entries[e].2.len());
        if at + len > fmt.space() {
            leaf_starts.push(i);
            at = 0;
        }
        at += len;
    }
    let leaves = leaf_starts.len();
    let nodes = index_nodes(leaves, fmt)?;
    Ok(Shape::Indexed(Htree { sorted, leaf_starts, nodes }))
}

/// Index nodes a hashed directory of `leaves` leaves needs: none when the
/// root holds them all, else one level of full nodes (as `e2fsck -D` fills
/// them), at most as many as the root holds.
fn index_nodes(leaves: usize, fmt: &DirFormat) -> Result<usize, TooManyLeaves> {
    if leaves <= fmt.root_limit() {
        return Ok(0);
    }
    let max = fmt.root_limit() * fmt.node_limit();
    if leaves > max {
        return Err(TooManyLeaves { leaves, max });
    }
    Ok(leaves.div_ceil(fmt.node_limit()))
}

/// Blocks the packed `entries` take, `space` bytes of each holding entries.
pub(super) fn linear_block_count(entries: &[DirEntry], space: usize) -> u64 {
    let (mut blocks, mut at) = (1u64, 0usize);
    for (_, _, name) in entries {
        let len = format::dirent_len(name.len());
        if at + len > space {
            blocks += 1;
            at = 0;
        }
        at += len;
    }
    blocks
}

/// Encodes directory inode `ino`'s blocks as `shape` lays them out.
pub(super) fn encode(entries: &[DirEntry], shape: &Shape, fmt: &DirFormat, ino: u32) -> Vec<Vec<u8>> {
    let seed = fmt.csum_seed.map(|fs| checksum::inode_seed(fs, ino, 0));
    match shape {
        Shape::Linear(n) => {
            let mut blocks = linear_blocks(entries.iter(), fmt.space(), *n);
            if let Some(seed) = seed {
                blocks.iter_mut().for_each(|b| put_dirent_tail(b, seed));
            }
            blocks
        }
        Shape::Indexed(h) => encode_htree(entries, h, fmt, seed),
    }
}

/// Packs entries into at least `min_blocks` blocks of `space` bytes of
/// entries each; the last entry of each block stretches to `space`.
fn linear_blocks<'a>(entries: impl Iterator<Item = &'a DirEntry>, space: usize, min_blocks: u64) -> Vec<Vec<u8>> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut block = vec![0u8; BS];
    let mut at = 0usize;
    let mut last_at: Option<usize> = None;
    for (ino, ft, name) in entries {
        let len = format::dirent_len(name.len());
        if at + len > space {
            let last = last_at.expect("a block holds at least one entry");
            set_rec_len(&mut block, last, space - last);
            blocks.push(std::mem::replace(&mut block, vec![0u8; BS]));
            at = 0;
        }
        format::put_dirent(&mut block, at, *ino, len, name, *ft);
        last_at = Some(at);
        at += len;
    }
    match last_at {
        Some(last) => set_rec_len(&mut block, last, space - last),
        // An empty block: one unused entry spanning it.
        None => set_rec_len(&mut block, 0, space),
    }
    blocks.push(block);
    while (blocks.len() as u64) < min_blocks {
        let mut empty = vec![0u8; BS];
        set_rec_len(&mut empty, 0, space);
        blocks.push(empty);
    }
    blocks
}

fn set_rec_len(block: &mut [u8], at: usize, rec_len: usize) {
    block[at + 4..at + 6].copy_from_slice(&(rec_len as u16).to_le_bytes());
}

fn put32(block: &mut [u8], at: usize, v: u32) {
    block[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put16(block: &mut [u8], at: usize, v: u16) {
    block[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes the 12-byte `ext4_dir_entry_tail` at the end of a linear block:
/// an unused entry of 12 bytes, file type 0xDE, and the crc32c of the block
/// before it from the directory inode's seed.
fn put_dirent_tail(block: &mut [u8], inode_seed: u32) {
    let at = BS - DIRENT_TAIL;
    block[at..].fill(0);
    set_rec_len(block, at, DIRENT_TAIL);
    block[at + 7] = FT_DIR_CSUM;
    let crc = checksum::crc32c(inode_seed, &block[..at]);
    put32(block, at + 8, crc);
}

/// Writes an index block's count, limit and entries (`(hash, block)`, the
/// first one's hash is not stored: its place holds the count and limit) at
/// `count_at`, and, with checksums, its `dx_tail` after the limit's
/// entries: the crc32c of the block up to the last entry in use, then of
/// the tail with its checksum zero (the kernel's `ext4_dx_csum`).
fn put_index(block: &mut [u8], count_at: usize, limit: usize, entries: &[(u32, u32)], seed: Option<u32>) {
    assert!(!entries.is_empty() && entries.len() <= limit, "{} index entries, limit {limit}", entries.len());
    put16(block, count_at, limit as u16);
    put16(block, count_at + 2, entries.len() as u16);
    for (i, &(hash, child)) in entries.iter().enumerate() {
        let at = count_at + 8 * i;
        if i > 0 {
            put32(block, at, hash);
        }
        put32(block, at + 4, child);
    }
    if let Some(seed) = seed {
        let tail = count_at + 8 * limit;
        let crc = checksum::crc32c(seed, &block[..count_at + 8 * entries.len()]);
        let crc = checksum::crc32c(crc, &[0u8; DX_TAIL]);
        put32(block, tail, 0);
        put32(block, tail + 4, crc);
    }
}

/// The blocks of a hashed directory: root, leaves, nodes.
fn encode_htree(entries: &[DirEntry], h: &Htree, fmt: &DirFormat, seed: Option<u32>) -> Vec<Vec<u8>> {
    let leaves = h.leaf_starts.len();
    // Each leaf's index hash: its first entry's, with the collision bit
    // when the previous leaf ends with the same hash.
    let leaf_hash = |l: usize| {
        let start = h.leaf_starts[l];
        let hash = h.sorted[start].0;
        if start > 0 && h.sorted[start - 1].0 == hash { hash | 1 } else { hash }
    };
    let mut blocks = Vec::with_capacity(1 + leaves + h.nodes);
    // The root: `.` and `..` as entries, then `dx_root_info`.
    let mut root = vec![0u8; BS];
    let (dot, dotdot) = (&entries[0], &entries[1]);
    debug_assert!(dot.2 == b"." && dotdot.2 == b"..");
    format::put_dirent(&mut root, 0, dot.0, 12, b".", ftype::DIR);
    format::put_dirent(&mut root, 12, dotdot.0, BS - 12, b"..", ftype::DIR);
    root[24 + 4] = HASH_HALF_MD4;
    root[24 + 5] = 8; // info_length
    root[24 + 6] = u8::from(h.nodes > 0); // indirect_levels
    blocks.push(root);
    // The leaves, blocks 1 to `leaves`.
    for l in 0..leaves {
        let end = h.leaf_starts.get(l + 1).copied().unwrap_or(h.sorted.len());
        let leaf = h.sorted[h.leaf_starts[l]..end].iter().map(|&(_, _, e)| &entries[e]);
        let mut packed = linear_blocks(leaf, fmt.space(), 1);
        assert_eq!(packed.len(), 1, "a leaf is one block");
        let mut block = packed.pop().expect("one block");
        if let Some(seed) = seed {
            put_dirent_tail(&mut block, seed);
        }
        blocks.push(block);
    }
    let leaf_entries: Vec<(u32, u32)> = (0..leaves).map(|l| (leaf_hash(l), 1 + l as u32)).collect();
    if h.nodes == 0 {
        put_index(&mut blocks[0], ROOT_COUNT_AT, fmt.root_limit(), &leaf_entries, seed);
        return blocks;
    }
    // One level of nodes, blocks `leaves + 1` on, each full but the last.
    let mut root_entries = Vec::with_capacity(h.nodes);
    for (n, chunk) in leaf_entries.chunks(fmt.node_limit()).enumerate() {
        let mut node = vec![0u8; BS];
        set_rec_len(&mut node, 0, BS);
        put_index(&mut node, NODE_COUNT_AT, fmt.node_limit(), chunk, seed);
        blocks.push(node);
        root_entries.push((chunk[0].0, (1 + leaves + n) as u32));
    }
    debug_assert_eq!(root_entries.len(), h.nodes);
    put_index(&mut blocks[0], ROOT_COUNT_AT, fmt.root_limit(), &root_entries, seed);
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(csum: bool) -> DirFormat {
        DirFormat { dir_index: true, csum_seed: csum.then_some(0x1234_5678), hash_seed: [0; 16] }
    }

    #[test]
    fn limits_are_the_kernels() {
        assert_eq!((fmt(false).root_limit(), fmt(false).node_limit()), (508, 511));
        assert_eq!((fmt(true).root_limit(), fmt(true).node_limit()), (507, 510));
    }

    #[test]
    fn leaves_past_the_root_take_one_level_of_nodes_and_past_two_levels_are_refused() {
        let f = fmt(true);
        assert_eq!(index_nodes(507, &f), Ok(0));
        assert_eq!(index_nodes(508, &f), Ok(1));
        assert_eq!(index_nodes(511, &f), Ok(2));
        assert_eq!(index_nodes(507 * 510, &f), Ok(507));
        assert_eq!(index_nodes(507 * 510 + 1, &f), Err(TooManyLeaves { leaves: 507 * 510 + 1, max: 507 * 510 }));
    }

    fn dir_entries(n: usize, name_len: usize) -> Vec<DirEntry> {
        let mut e = vec![(12, ftype::DIR, b".".to_vec()), (2, ftype::DIR, b"..".to_vec())];
        e.extend((0..n).map(|i| (13 + i as u32, ftype::REG, format!("{i:0name_len$}").into_bytes())));
        e
    }

    #[test]
    fn the_block_count_is_the_blocks_encoded() {
        for csum in [false, true] {
            let f = fmt(csum);
            for (n, len) in [(0, 1), (10, 8), (300, 40), (5000, 20), (40_000, 200)] {
                let entries = dir_entries(n, len);
                let shape = shape(&entries, &f, 1).unwrap();
                let blocks = encode(&entries, &shape, &f, 12);
                assert_eq!(blocks.len() as u64, shape.blocks(), "{n} entries of {len} bytes, csum {csum}");
                assert!(blocks.iter().all(|b| b.len() == BS));
            }
        }
    }

    #[test]
    fn one_block_stays_linear_and_csum_leaves_room_for_the_tail() {
        // 4096 bytes of entries: `.` and `..` (24), then 8-byte names (16 each).
        let entries = dir_entries((4096 - 24) / 16, 8);
        assert!(matches!(shape(&entries, &fmt(false), 1).unwrap(), Shape::Linear(1)));
        assert!(matches!(shape(&entries, &fmt(true), 1).unwrap(), Shape::Indexed(_)));
        let f = DirFormat { dir_index: false, ..fmt(true) };
        assert!(matches!(shape(&entries, &f, 1).unwrap(), Shape::Linear(2)));
    }

    #[test]
    fn a_run_of_equal_hashes_cut_by_a_leaf_boundary_sets_the_collision_bit() {
        let entries = dir_entries(3, 8);
        // Hand-made: five entries of two hashes, one leaf boundary inside
        // the run of 0x200.
        let h = Htree { sorted: vec![(0x100, 0, 2), (0x200, 1, 3), (0x200, 2, 4)], leaf_starts: vec![0, 2], nodes: 0 };
        let blocks = encode_htree(&entries, &h, &fmt(false), None);
        let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(word(&blocks[0], 32) >> 16, 2, "count");
        assert_eq!(word(&blocks[0], 36), 1, "first leaf");
        assert_eq!((word(&blocks[0], 40), word(&blocks[0], 44)), (0x201, 2), "second leaf, collision bit");
    }
}

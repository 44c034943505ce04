//! Writes a [`Tree`] into a new ext4 image in one pass.
//!
//! Everything is decided before the first byte is written: inode numbers (in
//! sorted depth-first order), the geometry, and every block. The output is a
//! function of the tree and the options alone, so the same input gives the
//! same bytes. Blocks that hold nothing stay holes in the (sparse) image
//! file, and no byte of anything outside the tree is ever written.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use super::format::{
    self, BLOCK_SIZE, BLOCKS_PER_GROUP, EXTENTS_FL, EXTENTS_PER_BLOCK, Extent, ExtentNode, FIRST_INODE, GroupDesc,
    INODE_SIZE, InodeFields, MAX_EXTENT_LEN, MAX_LINKS, ROOT_INODE, SuperblockFields, ftype, mode,
};
use super::layout::{Allocator, Geometry, Headroom, LayoutError};
use super::tree::{FileData, Kind, Node, NodeId, Tree};
use super::xattr::{self, Placement};

/// How to write an image.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The image's exact size in bytes, or `None` to size it from the content.
    pub size: Option<u64>,
    /// Room to leave when sizing from the content.
    pub headroom: Headroom,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
    /// Volume label, at most 16 bytes.
    pub label: String,
    /// The longest image allowed: an image sized from its content that
    /// would be longer fails with [`WriteError::TooLarge`] before anything
    /// is written.
    pub max_bytes: Option<u64>,
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReport {
    /// The image file's length.
    pub bytes: u64,
    /// Blocks holding data or metadata.
    pub used_blocks: u64,
    /// Inodes in use.
    pub used_inodes: u64,
}

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
    /// The content needs a longer image than [`ImageOptions::max_bytes`].
    #[error("the content needs an image of {needed} bytes, more than the {max} bytes allowed")]
    TooLarge {
        /// Bytes the image would have.
        needed: u64,
        /// Bytes allowed.
        max: u64,
    },
    /// Beyond what this writer supports.
    #[error("{0}")]
    Unsupported(String),
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
            LayoutError::TooLarge(m) => Self::Unsupported(m),
        }
    }
}

/// Per-inode plan.
struct Plan {
    node: Option<NodeId>,
    parent_ino: u32,
    links: u16,
    /// Data runs `(offset, length)` of a regular file, in bytes.
    runs: Vec<(u64, u64)>,
    /// Data blocks (directory blocks, file blocks, symlink block).
    data_blocks: u64,
    xattrs: Placement,
    /// Filled in by allocation.
    extents: Vec<Extent>,
    tree_blocks: Vec<u64>,
    xattr_block: u64,
}

const LOST_FOUND_BLOCKS: u64 = 4;
const LOST_FOUND: &[u8] = b"lost+found";

fn dir_entries(tree: &Tree, dir: NodeId, ino_of: &[u32]) -> Vec<(u32, u8, Vec<u8>)> {
    tree.entries(dir).map(|(name, id)| (ino_of[id], file_type(tree.node(id)), name.clone())).collect()
}

fn file_type(node: &Node) -> u8 {
    match node.kind {
        Kind::Dir(_) => ftype::DIR,
        Kind::File { .. } => ftype::REG,
        Kind::Symlink(_) => ftype::LNK,
        Kind::CharDevice(_) => ftype::CHR,
        Kind::BlockDevice(_) => ftype::BLK,
        Kind::Fifo => ftype::FIFO,
        Kind::Socket => ftype::SOCK,
    }
}

/// Packs directory entries into blocks; the last entry of each block
/// stretches to its end.
fn dir_blocks(entries: &[(u32, u8, Vec<u8>)], min_blocks: u64) -> Vec<Vec<u8>> {
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

fn dir_block_count(entries: &[(u32, u8, Vec<u8>)]) -> u64 {
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

/// A file's bytes on disk: `base..base + size` of `file`.
struct Source {
    file: std::sync::Arc<File>,
    base: u64,
    name: String,
}

fn open_source(data: &FileData) -> Result<Source, WriteError> {
    match data {
        FileData::At { root, path, .. } => {
            // A regular file beneath the root (a FIFO swapped in since the
            // scan would block a plain open); read at offsets below its size.
            let file = crate::source::open_beneath(root.as_fd(), path)
                .map_err(|e| WriteError::Source { path: path.display().to_string(), message: e.to_string() })?;
            Ok(Source { file: std::sync::Arc::new(file), base: 0, name: path.display().to_string() })
        }
        FileData::Range { file, offset } => {
            Ok(Source { file: file.clone(), base: *offset, name: format!("spool at {offset}") })
        }
        FileData::Bytes(_) => unreachable!("in-memory files are not opened"),
    }
}

/// Data runs of a file: `(offset, length)` aligned to blocks, from
/// `SEEK_DATA`/`SEEK_HOLE`, so holes stay holes.
fn data_runs(data: &FileData, size: u64) -> Result<Vec<(u64, u64)>, WriteError> {
    if size == 0 {
        return Ok(Vec::new());
    }
    let source = match data {
        FileData::Bytes(_) | FileData::At { dense: true, .. } => {
            return Ok(vec![(0, size.next_multiple_of(BLOCK_SIZE))]);
        }
        _ => open_source(data)?,
    };
    let (file, base) = (&*source.file, source.base);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let start = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(base + offset)) {
            Ok(s) => s.saturating_sub(base),
            // ENXIO: no data after `offset`.
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: all data.
            Err(_) => {
                runs.push((offset, size - offset));
                break;
            }
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(base + start)).map_or(size, |h| h - base).min(size);
        let (a, b) =
            (start / BLOCK_SIZE * BLOCK_SIZE, end.next_multiple_of(BLOCK_SIZE).min(size.next_multiple_of(BLOCK_SIZE)));
        match runs.last_mut() {
            Some((s, l)) if *s + *l >= a => *l = (*l).max(b - *s),
            _ => runs.push((a, b - a)),
        }
        offset = end;
    }
    Ok(runs)
}

/// Extent-tree blocks needed for `extents` extents.
fn tree_blocks_for(extents: usize) -> u64 {
    let mut total = 0u64;
    let mut level = extents;
    while level > 4 {
        level = level.div_ceil(EXTENTS_PER_BLOCK);
        total += level as u64;
    }
    total
}

/// Writes `tree` into `out`, which must be an empty file opened for writing.
pub fn write_image(tree: &Tree, out: &File, options: &ImageOptions) -> Result<WriteReport, WriteError> {
    // 1. Inode numbers, depth-first in name order; the root is 2, lost+found 11.
    let mut ino_of = vec![0u32; tree.nodes().len()];
    ino_of[Tree::ROOT] = ROOT_INODE;
    let existing_lost_found = tree.lookup(Tree::ROOT, LOST_FOUND).filter(|&id| tree.node(id).is_dir());
    if let Some(id) = existing_lost_found {
        ino_of[id] = FIRST_INODE;
    }
    let mut next_ino = FIRST_INODE + 1;
    let mut order: Vec<NodeId> = Vec::new();
    let mut parent_of = vec![0u32; tree.nodes().len()];
    let mut stack = vec![Tree::ROOT];
    while let Some(dir) = stack.pop() {
        let mut subdirs = Vec::new();
        for (name, id) in tree.entries(dir) {
            if name.len() > 255 {
                return Err(WriteError::Unsupported(format!(
                    "a name of {} bytes is longer than ext4's 255",
                    name.len()
                )));
            }
            if ino_of[id] == 0 {
                ino_of[id] = next_ino;
                next_ino = next_ino.checked_add(1).ok_or_else(|| WriteError::Unsupported("too many inodes".into()))?;
                order.push(id);
            }
            if tree.node(id).is_dir() {
                parent_of[id] = ino_of[dir];
                subdirs.push(id);
            }
        }
        // Visit subdirectories in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    let max_ino = next_ino - 1;
    parent_of[Tree::ROOT] = ROOT_INODE;

    // Link counts: one per name for files, 2 + subdirectories for directories.
    let mut links = vec![0u32; tree.nodes().len()];
    for (id, node) in tree.nodes().iter().enumerate() {
        if ino_of[id] == 0 && id != Tree::ROOT {
            continue;
        }
        if let Kind::Dir(map) = &node.kind {
            links[id] += 2;
            for &child in map.values() {
                if tree.node(child).is_dir() {
                    links[id] += 1;
                } else {
                    links[child] += 1;
                }
            }
        }
    }
    let synthetic_lost_found = existing_lost_found.is_none() && tree.lookup(Tree::ROOT, LOST_FOUND).is_none();
    if synthetic_lost_found {
        links[Tree::ROOT] += 1;
    }

    // 2. Plans, indexed by inode number.
    let empty_plan = || Plan {
        node: None,
        parent_ino: 0,
        links: 0,
        runs: Vec::new(),
        data_blocks: 0,
        xattrs: Placement::None,
        extents: Vec::new(),
        tree_blocks: Vec::new(),
        xattr_block: 0,
    };
    let mut plans: Vec<Plan> = (0..=max_ino).map(|_| empty_plan()).collect();
    let mut root_entries_extra = Vec::new();
    if synthetic_lost_found {
        root_entries_extra.push((FIRST_INODE, ftype::DIR, LOST_FOUND.to_vec()));
        plans[FIRST_INODE as usize] =
            Plan { parent_ino: ROOT_INODE, links: 2, data_blocks: LOST_FOUND_BLOCKS, ..empty_plan() };
    }
    for (id, node) in tree.nodes().iter().enumerate() {
        let ino = ino_of[id];
        if ino == 0 {
            continue;
        }
        // A directory past ext4's limit counts 1 (`dir_nlink`); a file cannot
        // have more names: `Tree::split_link_groups` splits such groups first.
        let link_count = match links[id] {
            n if n >= MAX_LINKS && node.is_dir() => 1,
            n if n > MAX_LINKS => {
                return Err(WriteError::Unsupported(format!(
                    "a file with {n} names: ext4 holds at most {MAX_LINKS} links to one inode"
                )));
            }
            n => n as u16,
        };
        let xattrs = xattr::encode(&node.meta.xattrs)
            .map_err(|e| WriteError::Unsupported(format!("extended attributes: {e}")))?;
        let (runs, data_blocks) = match &node.kind {
            Kind::File { size, data } => {
                let runs = data_runs(data, *size)?;
                let blocks = runs.iter().map(|(_, l)| l / BLOCK_SIZE).sum();
                (runs, blocks)
            }
            Kind::Dir(_) => {
                let mut entries = vec![(ino, ftype::DIR, b".".to_vec()), (parent_of[id], ftype::DIR, b"..".to_vec())];
                if id == Tree::ROOT {
                    entries.extend(root_entries_extra.iter().cloned());
                }
                entries.extend(dir_entries(tree, id, &ino_of));
                let min = if Some(id) == existing_lost_found { LOST_FOUND_BLOCKS } else { 1 };
                (Vec::new(), dir_block_count(&entries).max(min))
            }
            Kind::Symlink(target) if target.len() >= 60 => {
                if target.len() >= BLOCK_SIZE as usize {
                    return Err(WriteError::Unsupported(format!("a symlink target of {} bytes", target.len())));
                }
                (Vec::new(), 1)
            }
            _ => (Vec::new(), 0),
        };
        plans[ino as usize] = Plan {
            node: Some(id),
            parent_ino: parent_of[id],
            links: link_count,
            runs,
            data_blocks,
            xattrs,
            ..empty_plan()
        };
    }

    // 3. Geometry.
    let data_blocks: u64 = plans.iter().map(|p| p.data_blocks).sum();
    let xattr_blocks = plans.iter().filter(|p| matches!(p.xattrs, Placement::Block(_))).count() as u64;
    let tree_estimate: u64 = plans
        .iter()
        .map(|p| tree_blocks_for(p.runs.len() + (p.data_blocks / (BLOCKS_PER_GROUP / 2)) as usize + 1))
        .sum::<u64>()
        + 8;
    let geometry = Geometry::for_content(
        data_blocks + xattr_blocks + tree_estimate,
        u64::from(max_ino),
        options.size,
        &options.headroom,
    )?;
    if let Some(max) = options.max_bytes
        && geometry.blocks * BLOCK_SIZE > max
    {
        return Err(WriteError::TooLarge { needed: geometry.blocks * BLOCK_SIZE, max });
    }

    // 4. Blocks, in inode order.
    let mut alloc = Allocator::new(&geometry);
    let no_room = || WriteError::DoesNotFit {
        needed: (data_blocks + xattr_blocks + tree_estimate + geometry.metadata_blocks()) * BLOCK_SIZE,
        size: options.size.unwrap_or(geometry.blocks * BLOCK_SIZE),
    };
    for plan in plans.iter_mut() {
        let mut logical_runs: Vec<(u64, u64)> =
            plan.runs.iter().map(|(o, l)| (o / BLOCK_SIZE, l / BLOCK_SIZE)).collect();
        if plan.runs.is_empty() && plan.data_blocks > 0 {
            logical_runs.push((0, plan.data_blocks));
        }
        for (logical, count) in logical_runs {
            let mut logical = logical;
            for (start, len) in alloc.allocate(count).map_err(|_| no_room())? {
                let (mut start, mut len) = (start, len);
                while len > 0 {
                    let piece = len.min(MAX_EXTENT_LEN);
                    plan.extents.push(Extent { logical: logical as u32, start, len: piece as u16 });
                    logical += piece;
                    start += piece;
                    len -= piece;
                }
            }
        }
        let needed = tree_blocks_for(plan.extents.len());
        if needed > 0 {
            plan.tree_blocks =
                alloc.allocate(needed).map_err(|_| no_room())?.into_iter().flat_map(|(s, l)| s..s + l).collect();
        }
        if matches!(plan.xattrs, Placement::Block(_)) {
            plan.xattr_block = alloc.allocate(1).map_err(|_| no_room())?[0].0;
        }
    }

    // 5. Write. The file is sized first, so every block not written stays a hole.
    let file_len = options.size.unwrap_or(geometry.blocks * BLOCK_SIZE);
    out.set_len(file_len).map_err(WriteError::Write)?;
    let write_at = |bytes: &[u8], offset: u64| out.write_all_at(bytes, offset).map_err(WriteError::Write);
    let write_blocks = |extents: &[Extent], blocks: &[Vec<u8>]| -> Result<(), WriteError> {
        let mut i = 0usize;
        for e in extents {
            for b in 0..u64::from(e.len) {
                write_at(&blocks[i], (e.start + b) * BLOCK_SIZE)?;
                i += 1;
            }
        }
        Ok(())
    };

    let used_inodes = u64::from(max_ino);
    let mut written_since_kick = 0u64;
    // Whether copy_file_range works from these sources (not across overlayfs).
    let kernel_copy = std::cell::Cell::new(true);
    let mut itable = vec![0u8; max_ino as usize * INODE_SIZE];
    let mut dirs_per_group = vec![0u16; geometry.groups.len()];
    let ipg = geometry.inodes_per_group;
    for (ino, plan) in plans.iter().enumerate().skip(1) {
        let ino = ino as u32;
        let is_synthetic_lf = ino == FIRST_INODE && synthetic_lost_found;
        if plan.node.is_none() && !is_synthetic_lf {
            continue;
        }
        let (meta_perm, uid, gid, time, kind) = match plan.node {
            Some(id) => {
                let n = tree.node(id);
                (n.meta.perm & 0o7777, n.meta.uid, n.meta.gid, n.meta.mtime, Some(&n.kind))
            }
            None => (0o700, 0, 0, tree.node(Tree::ROOT).meta.mtime, None),
        };
        let mut block = [0u8; 60];
        let mut flags = 0u32;
        let (type_bits, size) = match kind {
            None | Some(Kind::Dir(_)) => {
                dirs_per_group[((ino - 1) / ipg) as usize] += 1;
                let entries = match plan.node {
                    Some(id) => {
                        let mut e =
                            vec![(ino, ftype::DIR, b".".to_vec()), (plan.parent_ino, ftype::DIR, b"..".to_vec())];
                        if id == Tree::ROOT {
                            e.extend(root_entries_extra.iter().cloned());
                        }
                        e.extend(dir_entries(tree, id, &ino_of));
                        e
                    }
                    None => vec![(ino, ftype::DIR, b".".to_vec()), (ROOT_INODE, ftype::DIR, b"..".to_vec())],
                };
                let blocks = dir_blocks(&entries, plan.data_blocks);
                write_blocks(&plan.extents, &blocks)?;
                (mode::DIR, plan.data_blocks * BLOCK_SIZE)
            }
            Some(Kind::File { size, data }) => {
                copy_file(out, data, *size, &plan.runs, &plan.extents, &kernel_copy)?;
                written_since_kick += *size;
                if written_since_kick >= WRITEBACK_KICK {
                    start_writeback(out);
                    written_since_kick = 0;
                }
                (mode::REG, *size)
            }
            Some(Kind::Symlink(target)) => {
                if target.len() < 60 {
                    block[..target.len()].copy_from_slice(target);
                } else {
                    let mut data = vec![0u8; BLOCK_SIZE as usize];
                    data[..target.len()].copy_from_slice(target);
                    write_blocks(&plan.extents, &[data])?;
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
            write_extent_tree(&mut block, &plan.extents, &plan.tree_blocks, &write_at)?;
        }
        let (inline_xattrs, xattr_block) = match &plan.xattrs {
            Placement::None => (None, 0),
            Placement::Inline(area) => (Some(area.clone()), 0),
            Placement::Block(data) => {
                write_at(data, plan.xattr_block * BLOCK_SIZE)?;
                (None, plan.xattr_block)
            }
        };
        let allocated = plan.extents.iter().map(|e| u64::from(e.len)).sum::<u64>()
            + plan.tree_blocks.len() as u64
            + u64::from(xattr_block != 0);
        let fields = InodeFields {
            mode: type_bits | meta_perm as u16,
            uid,
            gid,
            size,
            time,
            links: if is_synthetic_lf { 2 } else { plan.links },
            sectors: allocated * (BLOCK_SIZE / 512),
            flags,
            block,
            xattr_block,
            inline_xattrs,
        };
        let at = (ino as usize - 1) * INODE_SIZE;
        fields.encode(&mut itable[at..at + INODE_SIZE]);
    }

    // 6. Inode tables, bitmaps, descriptors, superblocks.
    let mut descs = Vec::with_capacity(geometry.groups.len());
    let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
    for (g, group) in geometry.groups.iter().enumerate() {
        let first_ino = g as u64 * u64::from(ipg);
        let used_inodes_here = used_inodes.saturating_sub(first_ino).min(u64::from(ipg));
        if used_inodes_here > 0 {
            let from = first_ino as usize * INODE_SIZE;
            let to = (first_ino + used_inodes_here) as usize * INODE_SIZE;
            write_at(&itable[from..to], group.inode_table * BLOCK_SIZE)?;
        }
        let used_blocks = group.first_data - group.start + alloc.used[g];
        write_at(&bitmap(used_blocks, group.blocks), group.block_bitmap * BLOCK_SIZE)?;
        write_at(&bitmap(used_inodes_here, u64::from(ipg)), group.inode_bitmap * BLOCK_SIZE)?;
        let group_free_blocks = group.blocks - used_blocks;
        let group_free_inodes = u64::from(ipg) - used_inodes_here;
        free_blocks += group_free_blocks;
        free_inodes += group_free_inodes;
        descs.push(GroupDesc {
            block_bitmap: group.block_bitmap as u32,
            inode_bitmap: group.inode_bitmap as u32,
            inode_table: group.inode_table as u32,
            free_blocks: group_free_blocks as u16,
            free_inodes: group_free_inodes as u16,
            used_dirs: dirs_per_group[g],
        });
    }
    let mut gdt = vec![0u8; (geometry.gdt_blocks * BLOCK_SIZE) as usize];
    for (i, d) in descs.iter().enumerate() {
        let at = i * format::DESC_SIZE as usize;
        gdt[at..at + format::DESC_SIZE as usize].copy_from_slice(&d.encode());
    }
    let mut label = [0u8; 16];
    let l = options.label.as_bytes();
    label[..l.len().min(16)].copy_from_slice(&l[..l.len().min(16)]);
    let fields = SuperblockFields {
        inodes_count: geometry.inodes() as u32,
        blocks_count: geometry.blocks as u32,
        free_blocks: free_blocks as u32,
        free_inodes: free_inodes as u32,
        inodes_per_group: ipg,
        uuid: options.uuid,
        hash_seed: options.hash_seed,
        label,
    };
    for (g, group) in geometry.groups.iter().enumerate() {
        if !group.has_super {
            continue;
        }
        let sb = format::superblock(&fields, g as u16);
        let at = if g == 0 { 1024 } else { group.start * BLOCK_SIZE };
        write_at(&sb, at)?;
        write_at(&gdt, (group.start + 1) * BLOCK_SIZE)?;
    }
    start_writeback(out);
    Ok(WriteReport { bytes: file_len, used_blocks: geometry.blocks - free_blocks, used_inodes })
}

/// Bytes written between two nudges to the kernel to start writing back.
const WRITEBACK_KICK: u64 = 32 << 20;

/// Starts writing what is dirty in `file` back to disk, without waiting: the
/// fsync when the image is published then has little left to do, and the
/// disk works while the writer goes on.
fn start_writeback(file: &File) {
    // SAFETY: a valid descriptor; offset 0 and length 0 mean the whole file.
    unsafe {
        libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(file), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
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

/// Writes bytes at an offset of the image.
type WriteAt<'a> = dyn Fn(&[u8], u64) -> Result<(), WriteError> + 'a;

/// Writes the extent tree: the root into `iblock`, deeper levels into
/// `tree_blocks`.
fn write_extent_tree(
    iblock: &mut [u8; 60],
    extents: &[Extent],
    tree_blocks: &[u64],
    write_at: &WriteAt<'_>,
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
        write_at(&block, at * BLOCK_SIZE)?;
        level.push((chunk[0].logical, at));
    }
    let mut depth = 1u16;
    while level.len() > 4 {
        let mut up = Vec::new();
        for chunk in level.chunks(EXTENTS_PER_BLOCK) {
            let at = spare.next().expect("tree blocks were allocated for every node");
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            format::encode_extent_node(&mut block, ExtentNode::Index(chunk), depth);
            write_at(&block, at * BLOCK_SIZE)?;
            up.push((chunk[0].0, at));
        }
        level = up;
        depth += 1;
    }
    format::encode_extent_node(iblock, ExtentNode::Index(&level), depth);
    Ok(())
}

/// Copies a file's data runs to the blocks its extents name.
fn copy_file(
    out: &File,
    data: &FileData,
    size: u64,
    runs: &[(u64, u64)],
    extents: &[Extent],
    kernel_copy: &std::cell::Cell<bool>,
) -> Result<(), WriteError> {
    if runs.is_empty() {
        return Ok(());
    }
    // Map logical blocks to physical through the extents, in order.
    let physical = |logical_block: u64| -> Option<(u64, u64)> {
        extents.iter().find_map(|e| {
            let l = u64::from(e.logical);
            (logical_block >= l && logical_block < l + u64::from(e.len))
                .then(|| (e.start + logical_block - l, l + u64::from(e.len) - logical_block))
        })
    };
    match data {
        FileData::Bytes(bytes) => {
            let mut offset = 0u64;
            while offset < size {
                let (phys, blocks_left) = physical(offset / BLOCK_SIZE).expect("every data block was allocated");
                let n = (blocks_left * BLOCK_SIZE).min(size - offset);
                out.write_all_at(&bytes[offset as usize..(offset + n) as usize], phys * BLOCK_SIZE)
                    .map_err(WriteError::Write)?;
                offset += n;
            }
            Ok(())
        }
        FileData::At { .. } | FileData::Range { .. } => {
            let source = open_source(data)?;
            let name = source.name.clone();
            let changed =
                || WriteError::Source { path: name.clone(), message: "changed while it was being copied".into() };
            let mut buf = Vec::new();
            for &(run_start, run_len) in runs {
                let end = (run_start + run_len).min(size);
                let mut offset = run_start;
                while offset < end {
                    let (phys, blocks_left) = physical(offset / BLOCK_SIZE).expect("every data block was allocated");
                    let n = (blocks_left * BLOCK_SIZE).min(end - offset);
                    copy_range(&source.file, source.base + offset, out, phys * BLOCK_SIZE, n, &mut buf, kernel_copy)
                        .map_err(|e| match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => changed(),
                            _ if e.raw_os_error() == Some(libc::ENOSPC) => WriteError::Write(e),
                            _ => WriteError::Source { path: name.clone(), message: e.to_string() },
                        })?;
                    offset += n;
                }
            }
            Ok(())
        }
    }
}

/// Copies `len` bytes, in the kernel when it can (`copy_file_range`), else
/// through a buffer.
fn copy_range(
    src: &File,
    mut from: u64,
    dst: &File,
    mut to: u64,
    mut len: u64,
    buf: &mut Vec<u8>,
    kernel_copy: &std::cell::Cell<bool>,
) -> std::io::Result<()> {
    while len > 0 && kernel_copy.get() {
        let (mut f, mut t) = (from, to);
        match rustix::fs::copy_file_range(src, Some(&mut f), dst, Some(&mut t), len.min(1 << 30) as usize) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                from += n as u64;
                to += n as u64;
                len -= n as u64;
            }
            // Not between these files (across overlayfs, say): copy through
            // a buffer from now on.
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP,
            ) => kernel_copy.set(false),
            Err(e) => return Err(e.into()),
        }
    }
    // Grow the buffer only as far as this file needs: most files are small.
    let want = len.min(1 << 20) as usize;
    if buf.len() < want {
        buf.resize(want, 0);
    }
    while len > 0 {
        let n = len.min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], from)?;
        dst.write_all_at(&buf[..n], to)?;
        from += n as u64;
        to += n as u64;
        len -= n as u64;
    }
    Ok(())
}

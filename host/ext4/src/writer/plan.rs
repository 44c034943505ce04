//! Phase 1, the plan: inode numbers, link counts, and what each inode
//! holds and how many blocks it needs, before any block is placed.

use crate::format::{
    BLOCK_SIZE, FIRST_INODE, JOURNAL_INODE, MAX_FILE_BYTES, MAX_LINKS, MAX_NAME_LEN, ROOT_INODE, ftype,
};
use crate::layout::MAX_INODES;
use crate::tree::{Kind, NodeId, Tree};
use crate::xattr::{self, Placement};

use super::error::WriteError;
use super::file_data;
use super::htree::{self, DirEntry, DirFormat, Shape};
use super::options::ImageOptions;

/// Which inode each node is, and each directory's parent.
pub(super) struct Numbering {
    /// The inode of each node, 0 for a node no name reaches.
    pub ino_of: Vec<u32>,
    /// The parent directory's inode of each directory node.
    pub parent_of: Vec<u32>,
    /// The highest inode in use.
    pub max_ino: u32,
    /// The tree's own `lost+found` directory, if it has one.
    pub existing_lost_found: Option<NodeId>,
    /// Whether the writer adds `lost+found` (inode 11): the tree has no
    /// entry of that name at all.
    pub synthetic_lost_found: bool,
}

/// What one inode holds.
pub(super) struct InodePlan {
    /// Its node, `None` for the reserved inodes and a synthetic `lost+found`.
    pub node: Option<NodeId>,
    /// Its link count as stored.
    pub links: u16,
    /// Data runs `(offset, length)` of a regular file, in bytes.
    pub runs: Vec<(u64, u64)>,
    /// Data blocks (directory blocks, file blocks, symlink block).
    pub data_blocks: u64,
    /// A hashed directory (`EXT4_INDEX_FL`).
    pub indexed: bool,
    /// Its extended attributes, encoded.
    pub xattrs: Placement,
}

/// The whole plan: inodes indexed by number (index 0 is unused).
pub(super) struct Plan {
    pub numbering: Numbering,
    pub inodes: Vec<InodePlan>,
    /// How directories are encoded.
    pub dir_format: DirFormat,
}

impl Plan {
    /// The inodes to write, with their numbers: those of the tree's nodes
    /// and a synthetic `lost+found`.
    pub fn written(&self) -> impl Iterator<Item = (u32, &InodePlan)> {
        self.inodes.iter().enumerate().skip(1).map(|(ino, plan)| (ino as u32, plan)).filter(|&(ino, plan)| {
            plan.node.is_some()
                || (ino == FIRST_INODE && self.numbering.synthetic_lost_found)
                || (ino == JOURNAL_INODE && plan.data_blocks > 0)
        })
    }

    /// Gives the journal inode `blocks` blocks (0: no journal).
    pub fn set_journal(&mut self, blocks: u64) {
        let journal = &mut self.inodes[JOURNAL_INODE as usize];
        journal.links = u16::from(blocks > 0);
        journal.data_blocks = blocks;
    }

    /// The journal's blocks (0 without one).
    pub fn journal_blocks(&self) -> u64 {
        self.inodes[JOURNAL_INODE as usize].data_blocks
    }
}

/// Plans every inode of `tree`, its directories encoded as `options` ask.
pub(super) fn plan(tree: &Tree, options: &ImageOptions) -> Result<Plan, WriteError> {
    let dir_format = DirFormat::new(options);
    let numbering = number(tree)?;
    let links = link_counts(tree, &numbering);
    let empty = || InodePlan {
        node: None,
        links: 0,
        runs: Vec::new(),
        data_blocks: 0,
        indexed: false,
        xattrs: Placement::None,
    };
    let mut inodes: Vec<InodePlan> = (0..=numbering.max_ino).map(|_| empty()).collect();
    if numbering.synthetic_lost_found {
        inodes[FIRST_INODE as usize] = InodePlan { links: 2, data_blocks: LOST_FOUND_BLOCKS, ..empty() };
    }
    for (id, node) in tree.nodes().iter().enumerate() {
        let ino = numbering.ino_of[id];
        if ino == 0 {
            continue;
        }
        // A directory past ext4's limit counts 1 (`dir_nlink`); a file cannot
        // have more names: `Tree::split_link_groups` splits such groups first.
        let link_count = match links[id] {
            n if n >= MAX_LINKS && node.is_dir() => 1,
            n if n > MAX_LINKS => {
                return Err(WriteError::Unsupported(format!(
                    "{}: a file with {n} names, and ext4 holds at most {MAX_LINKS} links to one inode",
                    path_of(tree, id)
                )));
            }
            n => n as u16,
        };
        let xattrs = xattr::encode(&node.meta.xattrs)
            .map_err(|source| WriteError::Xattrs { path: path_of(tree, id), source })?;
        let mut indexed = false;
        let (runs, data_blocks) = match &node.kind {
            Kind::File { size, .. } if *size > MAX_FILE_BYTES => {
                return Err(WriteError::Unsupported(format!(
                    "{}: a file of {size} bytes, and an ext4 file holds at most {MAX_FILE_BYTES} (2^32 − 1 blocks)",
                    path_of(tree, id)
                )));
            }
            Kind::File { size, data } => {
                let runs = file_data::runs(data, *size)?;
                let blocks = runs.iter().map(|(_, l)| l / BLOCK_SIZE).sum();
                (runs, blocks)
            }
            Kind::Dir(_) => {
                let shape = dir_shape(tree, &numbering, &dir_format, id)?;
                indexed = matches!(shape, Shape::Indexed(_));
                (Vec::new(), shape.blocks())
            }
            Kind::Symlink(target) if target.len() >= 60 => {
                if target.len() >= BLOCK_SIZE as usize {
                    return Err(WriteError::Unsupported(format!(
                        "{}: a symlink target of {} bytes, and ext4 holds at most {}",
                        path_of(tree, id),
                        target.len(),
                        BLOCK_SIZE - 1
                    )));
                }
                (Vec::new(), 1)
            }
            _ => (Vec::new(), 0),
        };
        inodes[ino as usize] = InodePlan { node: Some(id), links: link_count, runs, data_blocks, indexed, xattrs };
    }
    Ok(Plan { numbering, inodes, dir_format })
}

/// How directory node `dir` is laid out (see [`htree`]): its entries in at
/// least one block (the tree's own `lost+found` in at least
/// [`LOST_FOUND_BLOCKS`] when linear), refused when a two-level index cannot
/// hold them.
pub(super) fn dir_shape(tree: &Tree, numbering: &Numbering, fmt: &DirFormat, dir: NodeId) -> Result<Shape, WriteError> {
    let entries = entries(tree, numbering, dir);
    let min = if Some(dir) == numbering.existing_lost_found { LOST_FOUND_BLOCKS } else { 1 };
    htree::shape(&entries, fmt, min).map_err(|e| {
        WriteError::Unsupported(format!(
            "{}: a directory of {} entries needs {} leaf blocks, more than the {} of a two-level hashed \
             directory (a third level needs `largedir`, which the writer does not make; without `dir_index` the \
             directory stays linear)",
            path_of(tree, dir),
            entries.len() - 2,
            e.leaves,
            e.max
        ))
    })
}

/// Inode numbers, depth-first in name order; the root is 2, `lost+found` 11.
fn number(tree: &Tree) -> Result<Numbering, WriteError> {
    let mut ino_of = vec![0u32; tree.nodes().len()];
    ino_of[Tree::ROOT] = ROOT_INODE;
    let existing_lost_found = tree.lookup(Tree::ROOT, LOST_FOUND).filter(|&id| tree.node(id).is_dir());
    if let Some(id) = existing_lost_found {
        ino_of[id] = FIRST_INODE;
    }
    let mut next_ino = FIRST_INODE + 1;
    let mut parent_of = vec![0u32; tree.nodes().len()];
    let mut stack = vec![Tree::ROOT];
    while let Some(dir) = stack.pop() {
        let mut subdirs = Vec::new();
        for (name, id) in tree.entries(dir) {
            if name.len() > MAX_NAME_LEN {
                let parent = path_of(tree, dir);
                let sep = if parent == "/" { "" } else { "/" };
                return Err(WriteError::Unsupported(format!(
                    "{parent}{sep}{}: a name of {} bytes is longer than ext4's {MAX_NAME_LEN}",
                    String::from_utf8_lossy(name),
                    name.len()
                )));
            }
            if ino_of[id] == 0 {
                ino_of[id] = next_ino;
                next_ino = next_ino
                    .checked_add(1)
                    .ok_or(WriteError::TooManyInodes { inodes: u64::from(u32::MAX) + 1, max: MAX_INODES })?;
            }
            if tree.node(id).is_dir() {
                parent_of[id] = ino_of[dir];
                subdirs.push(id);
            }
        }
        // Visit subdirectories in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    parent_of[Tree::ROOT] = ROOT_INODE;
    let synthetic_lost_found = existing_lost_found.is_none() && tree.lookup(Tree::ROOT, LOST_FOUND).is_none();
    Ok(Numbering { ino_of, parent_of, max_ino: next_ino - 1, existing_lost_found, synthetic_lost_found })
}

/// Link counts: one per name for files, 2 + subdirectories for directories.
fn link_counts(tree: &Tree, numbering: &Numbering) -> Vec<u32> {
    let mut links = vec![0u32; tree.nodes().len()];
    for (id, node) in tree.nodes().iter().enumerate() {
        if numbering.ino_of[id] == 0 && id != Tree::ROOT {
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
    if numbering.synthetic_lost_found {
        links[Tree::ROOT] += 1;
    }
    links
}

/// The first path (depth-first in name order) that names node `id`, for
/// messages.
fn path_of(tree: &Tree, id: NodeId) -> String {
    fn find(tree: &Tree, dir: NodeId, id: NodeId, path: &mut Vec<u8>) -> bool {
        for (name, child) in tree.entries(dir) {
            let len = path.len();
            path.push(b'/');
            path.extend_from_slice(name);
            if child == id || (tree.node(child).is_dir() && find(tree, child, id, path)) {
                return true;
            }
            path.truncate(len);
        }
        false
    }
    let mut path = Vec::new();
    if id != Tree::ROOT && !find(tree, Tree::ROOT, id, &mut path) {
        return format!("node {id}");
    }
    if path.is_empty() {
        path.push(b'/');
    }
    String::from_utf8_lossy(&path).into_owned()
}

/// The file type a directory entry records for `kind`.
pub(super) fn file_type(kind: &Kind) -> u8 {
    match kind {
        Kind::Dir(_) => ftype::DIR,
        Kind::File { .. } => ftype::REG,
        Kind::Symlink(_) => ftype::LNK,
        Kind::CharDevice(_) => ftype::CHR,
        Kind::BlockDevice(_) => ftype::BLK,
        Kind::Fifo => ftype::FIFO,
        Kind::Socket => ftype::SOCK,
    }
}

/// `lost+found`'s name.
pub(super) const LOST_FOUND: &[u8] = b"lost+found";

/// Blocks of `lost+found`: room for e2fsck to reconnect files without
/// allocating.
pub(super) const LOST_FOUND_BLOCKS: u64 = 4;

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

//! The tree an image will hold, in memory: what a container sees, after every
//! layer was applied.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

/// Index of a node in a [`Tree`].
pub type NodeId = usize;

/// A point in time with nanoseconds, as ext4 stores it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the Unix epoch (negative before it).
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

/// What every node has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time; the image stores it as the access, change and
    /// creation time too, so that the same tree always gives the same bytes.
    pub mtime: Timestamp,
    /// Extended attributes, full names (`user.x`, `security.capability`).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where a regular file's bytes come from.
#[derive(Clone, Debug)]
pub enum FileData {
    /// A file below a directory handle.
    At {
        /// The directory handle (a tree root, e.g. an overlay mount).
        root: Arc<OwnedFd>,
        /// The path below it.
        path: PathBuf,
        /// Every block is allocated (by `st_blocks`): there are no holes to
        /// look for, so the writer need not open the file to find them.
        dense: bool,
    },
    /// Bytes in memory.
    Bytes(Arc<Vec<u8>>),
    /// A range of a file, from `offset` for the node's size (a spool of
    /// layer contents).
    Range {
        /// The file.
        file: Arc<std::fs::File>,
        /// Where the content starts.
        offset: u64,
    },
}

/// What a node is.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A directory: names (raw bytes, sorted) to nodes.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// A regular file of `size` bytes.
    File {
        /// Its length.
        size: u64,
        /// Where its bytes are.
        data: FileData,
    },
    /// A symlink and its target (raw bytes).
    Symlink(Vec<u8>),
    /// A character device with its `rdev`.
    CharDevice(u64),
    /// A block device with its `rdev`.
    BlockDevice(u64),
    /// A FIFO.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// One node: metadata and kind. A regular file listed under several names is
/// one node (a hardlink group).
#[derive(Clone, Debug)]
pub struct Node {
    /// Its metadata.
    pub meta: Meta,
    /// What it is.
    pub kind: Kind,
}

impl Node {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }
}

/// A filesystem tree. Node 0 is the root directory.
#[derive(Clone, Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    /// Each directory's parent, for `..` in symlink targets.
    parents: std::collections::HashMap<NodeId, NodeId>,
}

/// Why a path could not be resolved inside a tree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A component is missing.
    #[error("{} does not exist", String::from_utf8_lossy(.0))]
    Missing(Vec<u8>),
    /// A component is not a directory.
    #[error("{} is not a directory", String::from_utf8_lossy(.0))]
    NotDirectory(Vec<u8>),
    /// Too many symlinks.
    #[error("too many levels of symbolic links")]
    Loop,
    /// A symlink or `..` leads out of the tree (only when resolving beneath).
    #[error("{} leads out of the image root", String::from_utf8_lossy(.0))]
    Escapes(Vec<u8>),
}

/// How [`Tree::resolve_dir_with`] treats paths that lead out of the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containment {
    /// As in a chroot: `/` and `..` at the root stay at the root.
    InRoot,
    /// As `RESOLVE_BENEATH`: absolute symlinks and `..` above the root are errors.
    Beneath,
}

impl Tree {
    /// A tree with only a root directory.
    pub fn new(root: Meta) -> Self {
        Self { nodes: vec![Node { meta: root, kind: Kind::Dir(BTreeMap::new()) }], parents: Default::default() }
    }

    /// The root's id.
    pub const ROOT: NodeId = 0;

    /// Every node.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// One node, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// The entries of a directory node (empty for other kinds).
    pub fn entries(&self, dir: NodeId) -> impl Iterator<Item = (&Vec<u8>, NodeId)> {
        let map = match &self.nodes[dir].kind {
            Kind::Dir(map) => Some(map),
            _ => None,
        };
        map.into_iter().flat_map(|m| m.iter().map(|(k, v)| (k, *v)))
    }

    /// Adds `node` as `name` in directory `parent`, replacing what was there.
    /// Returns the new node's id.
    pub fn add(&mut self, parent: NodeId, name: Vec<u8>, node: Node) -> NodeId {
        let id = self.nodes.len();
        if node.is_dir() {
            self.parents.insert(id, parent);
        }
        self.nodes.push(node);
        self.link(parent, name, id);
        id
    }

    /// Lists `target` as `name` in `parent` too (a hardlink).
    pub fn link(&mut self, parent: NodeId, name: Vec<u8>, target: NodeId) {
        if let Kind::Dir(map) = &mut self.nodes[parent].kind {
            map.insert(name, target);
        }
    }

    /// Gives every hardlink group at most `max` names, as ext4 holds at most
    /// 65,000 links to a file: names past the `max`-th (in a depth-first
    /// walk in name order, so the result is reproducible) go to copies of
    /// the node, with the same metadata and contents. Returns how many
    /// copies were made.
    pub fn split_link_groups(&mut self, max: u32) -> usize {
        let mut names = vec![0u32; self.nodes.len()];
        // For each node split so far, the copy taking its current names.
        let mut current: std::collections::HashMap<NodeId, NodeId> = std::collections::HashMap::new();
        let mut copies = 0;
        let mut stack = vec![Self::ROOT];
        while let Some(dir) = stack.pop() {
            let entries: Vec<(Vec<u8>, NodeId)> = self.entries(dir).map(|(k, v)| (k.clone(), v)).collect();
            let mut subdirs = Vec::new();
            for (name, id) in entries {
                if self.nodes[id].is_dir() {
                    subdirs.push(id);
                    continue;
                }
                let target = *current.get(&id).unwrap_or(&id);
                if names[target] < max {
                    names[target] += 1;
                    if target != id {
                        self.link(dir, name, target);
                    }
                    continue;
                }
                let copy = self.nodes.len();
                self.nodes.push(self.nodes[id].clone());
                names.push(1);
                current.insert(id, copy);
                copies += 1;
                self.link(dir, name, copy);
            }
            stack.extend(subdirs.into_iter().rev());
        }
        copies
    }

    /// Removes the entry `name` from `parent` (the node and what it
    /// contains are no longer reachable). Returns whether it was there.
    pub fn remove(&mut self, parent: NodeId, name: &[u8]) -> bool {
        match &mut self.nodes[parent].kind {
            Kind::Dir(map) => map.remove(name).is_some(),
            _ => false,
        }
    }

    /// Keeps only the entries of `dir` for which `keep` holds.
    pub fn retain(&mut self, dir: NodeId, mut keep: impl FnMut(&[u8], NodeId) -> bool) {
        if let Kind::Dir(map) = &mut self.nodes[dir].kind {
            map.retain(|name, id| keep(name, *id));
        }
    }

    /// The entry `name` of `dir`.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &self.nodes[dir].kind {
            Kind::Dir(map) => map.get(name).copied(),
            _ => None,
        }
    }

    /// Resolves an absolute or relative path inside the tree as if its root
    /// were `/`, following symlinks in every component (`..` at the root
    /// stays at the root). Returns the directory the path names.
    pub fn resolve_dir(&self, path: &[u8]) -> Result<NodeId, ResolveError> {
        self.resolve_dir_with(Self::ROOT, path, Containment::InRoot)
    }

    /// Resolves `path` from the directory `start`, following symlinks in
    /// every component, contained as `containment` says.
    pub fn resolve_dir_with(
        &self,
        start: NodeId,
        path: &[u8],
        containment: Containment,
    ) -> Result<NodeId, ResolveError> {
        self.resolve_from(start, path, 0, containment)
    }

    fn resolve_from(
        &self,
        start: NodeId,
        path: &[u8],
        depth: usize,
        containment: Containment,
    ) -> Result<NodeId, ResolveError> {
        if depth > 40 {
            return Err(ResolveError::Loop);
        }
        if path.starts_with(b"/") && containment == Containment::Beneath {
            return Err(ResolveError::Escapes(path.to_vec()));
        }
        let mut stack: Vec<NodeId> = if path.starts_with(b"/") { vec![Self::ROOT] } else { self.path_to(start) };
        for part in path.split(|&c| c == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    } else if containment == Containment::Beneath {
                        return Err(ResolveError::Escapes(path.to_vec()));
                    }
                }
                name => {
                    let here = *stack.last().expect("the stack holds the root");
                    let next = self.lookup(here, name).ok_or_else(|| ResolveError::Missing(name.to_vec()))?;
                    match &self.nodes[next].kind {
                        Kind::Dir(_) => stack.push(next),
                        Kind::Symlink(target) => {
                            let resolved = self.resolve_from(here, target, depth + 1, containment)?;
                            stack = self.path_to(resolved);
                        }
                        _ => return Err(ResolveError::NotDirectory(name.to_vec())),
                    }
                }
            }
        }
        Ok(*stack.last().expect("the stack holds the root"))
    }

    /// The chain of directories from the root to `dir`.
    fn path_to(&self, dir: NodeId) -> Vec<NodeId> {
        let mut path = vec![dir];
        let mut at = dir;
        while at != Self::ROOT {
            match self.parents.get(&at) {
                Some(&parent) => {
                    path.push(parent);
                    at = parent;
                }
                None => break,
            }
        }
        if path.last() != Some(&Self::ROOT) {
            path.push(Self::ROOT);
        }
        path.reverse();
        path
    }

    /// The newest modification time in the tree.
    pub fn newest_mtime(&self) -> Timestamp {
        self.nodes.iter().map(|n| n.meta.mtime).max().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tree: &mut Tree, parent: NodeId, name: &str) -> NodeId {
        tree.add(parent, name.into(), Node { meta: Meta::default(), kind: Kind::Dir(BTreeMap::new()) })
    }

    #[test]
    fn link_groups_past_the_limit_split_into_copies_in_name_order() {
        let mut t = Tree::new(Meta::default());
        let a = dir(&mut t, Tree::ROOT, "a");
        let b = dir(&mut t, Tree::ROOT, "b");
        let file = t.add(a, b"f0".to_vec(), Node { meta: Meta::default(), kind: Kind::Fifo });
        for i in 1..3 {
            t.link(a, format!("f{i}").into_bytes(), file);
        }
        for i in 0..4 {
            t.link(b, format!("g{i}").into_bytes(), file);
        }
        assert_eq!(t.split_link_groups(3), 2, "7 names, 3 per inode: two copies");
        let ids: Vec<NodeId> = t.entries(a).chain(t.entries(b)).map(|(_, id)| id).collect();
        assert_eq!(ids[..3], [file; 3]);
        assert_eq!(ids[3..6], [ids[3]; 3]);
        assert_eq!(ids[6], ids[6]);
        assert!(ids[3] != file && ids[6] != ids[3] && ids[6] != file);
        assert!(matches!(t.node(ids[6]).kind, Kind::Fifo));
        assert_eq!(t.split_link_groups(3), 0, "splitting again changes nothing");
    }

    #[test]
    fn symlinked_directories_resolve_inside_the_tree() {
        let mut t = Tree::new(Meta::default());
        let usr = dir(&mut t, Tree::ROOT, "usr");
        let sbin = dir(&mut t, usr, "sbin");
        t.add(Tree::ROOT, b"sbin".to_vec(), Node { meta: Meta::default(), kind: Kind::Symlink(b"usr/sbin".to_vec()) });
        t.add(
            Tree::ROOT,
            b"abs".to_vec(),
            Node { meta: Meta::default(), kind: Kind::Symlink(b"/usr/../../../usr/sbin".to_vec()) },
        );
        assert_eq!(t.resolve_dir(b"/sbin"), Ok(sbin));
        assert_eq!(t.resolve_dir(b"/abs"), Ok(sbin));
        assert_eq!(t.resolve_dir(b"/missing"), Err(ResolveError::Missing(b"missing".to_vec())));
    }

    #[test]
    fn beneath_refuses_what_in_root_contains() {
        let mut t = Tree::new(Meta::default());
        let etc = dir(&mut t, Tree::ROOT, "etc");
        t.add(Tree::ROOT, b"abs".to_vec(), Node { meta: Meta::default(), kind: Kind::Symlink(b"/etc".to_vec()) });
        t.add(Tree::ROOT, b"up".to_vec(), Node { meta: Meta::default(), kind: Kind::Symlink(b"../etc".to_vec()) });
        t.add(Tree::ROOT, b"rel".to_vec(), Node { meta: Meta::default(), kind: Kind::Symlink(b"./etc".to_vec()) });
        assert_eq!(t.resolve_dir(b"abs"), Ok(etc));
        assert_eq!(t.resolve_dir(b"up"), Ok(etc));
        assert!(matches!(t.resolve_dir_with(Tree::ROOT, b"abs", Containment::Beneath), Err(ResolveError::Escapes(_))));
        assert!(matches!(t.resolve_dir_with(Tree::ROOT, b"up", Containment::Beneath), Err(ResolveError::Escapes(_))));
        assert_eq!(t.resolve_dir_with(Tree::ROOT, b"rel", Containment::Beneath), Ok(etc));
    }

    #[test]
    fn symlink_loops_end() {
        let mut t = Tree::new(Meta::default());
        t.add(Tree::ROOT, b"a".to_vec(), Node { meta: Meta::default(), kind: Kind::Symlink(b"b".to_vec()) });
        t.add(Tree::ROOT, b"b".to_vec(), Node { meta: Meta::default(), kind: Kind::Symlink(b"a".to_vec()) });
        assert_eq!(t.resolve_dir(b"/a"), Err(ResolveError::Loop));
    }
}

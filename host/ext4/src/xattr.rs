//! Extended attributes in ext4's encoding: inside the inode when they fit,
//! otherwise in one attribute block.

use super::format::{BLOCK_SIZE, EXTRA_ISIZE, INODE_SIZE, XATTR_MAGIC};

/// Where an inode's attributes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// None at all.
    None,
    /// Inside the inode: the bytes after `i_extra_isize`.
    Inline(Vec<u8>),
    /// In an attribute block: its 4096 bytes.
    Block(Vec<u8>),
}

/// Why attributes cannot be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XattrError {
    /// A name with a prefix ext4 cannot store.
    #[error("the attribute {0:?} has a namespace ext4 cannot store (user., trusted., security. and POSIX ACLs only)")]
    UnknownPrefix(String),
    /// More than fits in the inode and one block together.
    #[error("{0} bytes of extended attributes do not fit in the inode and one 4096-byte block")]
    TooLarge(usize),
    /// A name longer than ext4's 255 bytes (after its namespace prefix).
    #[error("an attribute name of {0} bytes is longer than ext4's 255")]
    NameTooLong(usize),
}

struct Entry {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

const ACL_VERSION_VFS: u32 = 2;
const ACL_VERSION_EXT4: u32 = 1;

/// Converts a POSIX ACL from the kernel's xattr format to ext4's on-disk one
/// (short entries for the owner, group, mask and other tags).
fn acl_to_disk(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < 4
        || u32::from_le_bytes(value[..4].try_into().ok()?) != ACL_VERSION_VFS
        || !(value.len() - 4).is_multiple_of(8)
    {
        return None;
    }
    let mut out = ACL_VERSION_EXT4.to_le_bytes().to_vec();
    for entry in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        out.extend_from_slice(&entry[..4]);
        // ACL_USER (2) and ACL_GROUP (8) carry an id.
        if tag == 2 || tag == 8 {
            out.extend_from_slice(&entry[4..8]);
        }
    }
    Some(out)
}

fn split_name(name: &[u8], value: &[u8]) -> Result<Entry, XattrError> {
    let text = String::from_utf8_lossy(name).into_owned();
    let (index, rest, value) = match name {
        b"system.posix_acl_access" => (2, &b""[..], acl_to_disk(value).unwrap_or_else(|| value.to_vec())),
        b"system.posix_acl_default" => (3, &b""[..], acl_to_disk(value).unwrap_or_else(|| value.to_vec())),
        _ if name.starts_with(b"user.") => (1, &name[5..], value.to_vec()),
        _ if name.starts_with(b"trusted.") => (4, &name[8..], value.to_vec()),
        _ if name.starts_with(b"security.") => (6, &name[9..], value.to_vec()),
        _ if name.starts_with(b"system.") => (7, &name[7..], value.to_vec()),
        _ => return Err(XattrError::UnknownPrefix(text)),
    };
    if rest.len() > 255 {
        return Err(XattrError::NameTooLong(rest.len()));
    }
    Ok(Entry { index, name: rest.to_vec(), value })
}

fn entry_len(e: &Entry) -> usize {
    (16 + e.name.len() + 3) & !3
}

fn value_len(e: &Entry) -> usize {
    (e.value.len() + 3) & !3
}

/// The hash of one entry (name, then value), as e2fsprogs and the kernel
/// compute it.
fn entry_hash(e: &Entry) -> u32 {
    let mut hash: u32 = 0;
    for &c in &e.name {
        // The name's bytes are hashed as signed chars (ASCII in practice).
        hash = (hash << 5) ^ (hash >> 27) ^ (c as i8 as i32 as u32);
    }
    if !e.value.is_empty() {
        let mut padded = e.value.clone();
        padded.resize(value_len(e), 0);
        for word in padded.chunks_exact(4) {
            hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(word.try_into().expect("4 bytes"));
        }
    }
    hash
}

/// Lays entries out in `area`: entries from `entries_at` (the first 4
/// bytes after it stay zero as the end marker), values packed from the end.
/// Value offsets count from `base`. Returns false if they do not fit.
fn lay_out(area: &mut [u8], entries: &[Entry], entries_at: usize, base: usize) -> bool {
    let needed: usize = entries.iter().map(|e| entry_len(e) + value_len(e)).sum::<usize>() + 4;
    if entries_at + needed > area.len() {
        return false;
    }
    let mut at = entries_at;
    let mut value_end = area.len();
    for e in entries {
        let value_at = value_end - value_len(e);
        area[value_at..value_at + e.value.len()].copy_from_slice(&e.value);
        value_end = value_at;
        area[at] = e.name.len() as u8;
        area[at + 1] = e.index;
        let offs = if e.value.is_empty() { 0 } else { value_at - base };
        area[at + 2..at + 4].copy_from_slice(&(offs as u16).to_le_bytes());
        area[at + 4..at + 8].copy_from_slice(&0u32.to_le_bytes());
        area[at + 8..at + 12].copy_from_slice(&(e.value.len() as u32).to_le_bytes());
        area[at + 12..at + 16].copy_from_slice(&entry_hash(e).to_le_bytes());
        area[at + 16..at + 16 + e.name.len()].copy_from_slice(&e.name);
        at += entry_len(e);
    }
    true
}

/// Decides where `xattrs` go and encodes them. Names are full names
/// (`user.x`); entries are stored sorted as the kernel sorts them.
pub fn encode(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<Placement, XattrError> {
    if xattrs.is_empty() {
        return Ok(Placement::None);
    }
    let mut entries = xattrs.iter().map(|(n, v)| split_name(n, v)).collect::<Result<Vec<_>, _>>()?;
    entries.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));

    // In the inode: magic, then entries; value offsets count from the first entry.
    let mut inline = vec![0u8; INODE_SIZE - 0x80 - EXTRA_ISIZE as usize];
    inline[..4].copy_from_slice(&XATTR_MAGIC.to_le_bytes());
    if lay_out(&mut inline, &entries, 4, 4) {
        return Ok(Placement::Inline(inline));
    }

    // A block: a 32-byte header, entries from 32; offsets count from the block.
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    if !lay_out(&mut block, &entries, 32, 0) {
        let total = entries.iter().map(|e| entry_len(e) + value_len(e)).sum();
        return Err(XattrError::TooLarge(total));
    }
    block[..4].copy_from_slice(&XATTR_MAGIC.to_le_bytes());
    block[4..8].copy_from_slice(&1u32.to_le_bytes()); // refcount
    block[8..12].copy_from_slice(&1u32.to_le_bytes()); // blocks
    let mut hash: u32 = 0;
    for e in &entries {
        hash = (hash << 16) ^ (hash >> 16) ^ entry_hash(e);
    }
    block[12..16].copy_from_slice(&hash.to_le_bytes());
    Ok(Placement::Block(block))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capability_fits_in_the_inode() {
        let cap = vec![0u8; 20];
        let Placement::Inline(area) = encode(&[(b"security.capability".to_vec(), cap)]).unwrap() else { panic!() };
        assert_eq!(&area[..4], &XATTR_MAGIC.to_le_bytes());
        assert_eq!(area[4], b"capability".len() as u8);
        assert_eq!(area[5], 6);
    }

    #[test]
    fn large_values_go_to_a_block_and_huge_ones_are_refused() {
        let big = vec![7u8; 1000];
        assert!(matches!(encode(&[(b"user.big".to_vec(), big)]).unwrap(), Placement::Block(_)));
        let huge = vec![7u8; 5000];
        assert!(matches!(encode(&[(b"user.huge".to_vec(), huge)]), Err(XattrError::TooLarge(_))));
        assert!(matches!(encode(&[(b"weird.x".to_vec(), vec![])]), Err(XattrError::UnknownPrefix(_))));
    }

    #[test]
    fn acls_shrink_to_ext4_short_entries() {
        // user::rw-, user:1000:r--, group::r--, mask::r--, other::---
        let mut vfs = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in
            [(1u16, 6u16, u32::MAX), (2, 4, 1000), (4, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)]
        {
            vfs.extend_from_slice(&tag.to_le_bytes());
            vfs.extend_from_slice(&perm.to_le_bytes());
            vfs.extend_from_slice(&id.to_le_bytes());
        }
        let disk = acl_to_disk(&vfs).unwrap();
        assert_eq!(disk.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert_eq!(&disk[..4], &1u32.to_le_bytes());
    }
}

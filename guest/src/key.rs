//! The cache key: SHA-256 over everything that changes the bytes built.
//!
//! The key hashes an explicit, versioned, length-prefixed encoding of every
//! input (the source's identity, the agent's digest, the converter's identity,
//! the options), so it is the same in every process, on every machine and
//! under every compiler, and it changes whenever any input changes. (A
//! `std` hasher gives neither: its output may change between compiler
//! versions.)

use sha2::{Digest, Sha256};
use std::fmt;

/// Bumped whenever the encoding below, or what an image contains for the same
/// inputs, changes. Old entries then simply stop matching.
///
/// v2: OCI layouts are keyed by content only (no path, no `index.json`
/// times) and overlay2 chains by their chain ID when Docker's layer database
/// names one, so that keys are the same on every host.
const KEY_TAG: &[u8] = b"rootfs-cache/key/v2";

/// A cache key: 64 lowercase hexadecimal digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// Accepts exactly 64 lowercase hexadecimal digits.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = text.len() == 64 && text.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        ok.then(|| Self(text.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `images/<key>.ext4`, relative to the cache directory.
    pub fn image_path(&self) -> String {
        format!("images/{}.ext4", self.0)
    }

    /// `images/<key>.json`, relative to the cache directory.
    pub fn manifest_path(&self) -> String {
        format!("images/{}.json", self.0)
    }

    /// `tmp/<key>.<token>.ext4`: an in-progress build, named so that a sweep
    /// can tell whose it is (the lock for `<key>`) and which attempt.
    pub fn staging_path(&self, token: &str) -> String {
        format!("tmp/{}.{token}.ext4", self.0)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds a [`CacheKey`] from named fields.
///
/// Each field is written as its name, then its length and bytes, so no two
/// different sequences of fields encode to the same bytes.
pub struct KeyBuilder(Sha256);

impl Default for KeyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyBuilder {
    /// Starts a key with the versioned tag.
    pub fn new() -> Self {
        let mut builder = Self(Sha256::new());
        builder.bytes("tag", KEY_TAG);
        builder
    }

    /// Adds a field of raw bytes.
    pub fn bytes(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
        self
    }

    /// Adds a text field.
    pub fn text(&mut self, name: &str, value: &str) -> &mut Self {
        self.bytes(name, value.as_bytes())
    }

    /// Adds a number.
    pub fn number(&mut self, name: &str, value: u64) -> &mut Self {
        self.bytes(name, &value.to_le_bytes())
    }

    /// Adds an optional number; `None` and every `Some` encode differently.
    pub fn optional(&mut self, name: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.bytes(name, &[&[1u8][..], &v.to_le_bytes()].concat()),
            None => self.bytes(name, &[0u8]),
        }
    }

    /// Finishes the key.
    pub fn finish(self) -> CacheKey {
        CacheKey(hex(&self.0.finalize()))
    }
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(f: impl FnOnce(&mut KeyBuilder)) -> CacheKey {
        let mut b = KeyBuilder::new();
        f(&mut b);
        b.finish()
    }

    #[test]
    fn the_key_is_pinned_across_compilers_and_machines() {
        // A fixed input gives a fixed key forever; if this changes, KEY_TAG must
        // too. The value was computed with an independent Python
        // implementation (which also gives v1's pinned e03e1b8b…fe10):
        //   def f(h, n, v): h.update(struct.pack('<Q', len(n)) + n + struct.pack('<Q', len(v)) + v)
        //   h = hashlib.sha256(); f(h, b"tag", b"rootfs-cache/key/v2")
        //   f(h, b"source", b"/var/lib/docker/overlay2/abc"); f(h, b"size", b"\0"); h.hexdigest()
        let k = key(|b| {
            b.text("source", "/var/lib/docker/overlay2/abc").optional("size", None);
        });
        assert_eq!(k.as_str(), "ba5513a8b61e02e70c19afdb706e037afac27a1e9ea8df831121b5a50cb64bc1");
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let a = key(|b| {
            b.text("a", "bc").text("d", "");
        });
        let b = key(|b| {
            b.text("a", "b").text("cd", "");
        });
        assert_ne!(a, b);
    }

    #[test]
    fn none_differs_from_every_size() {
        assert_ne!(
            key(|b| {
                b.optional("size", None);
            }),
            key(|b| {
                b.optional("size", Some(0));
            })
        );
        assert_ne!(
            key(|b| {
                b.optional("size", Some(1));
            }),
            key(|b| {
                b.optional("size", Some(2));
            })
        );
    }

    #[test]
    fn keys_parse_only_as_64_lowercase_hex_digits() {
        let k = key(|_| {});
        assert_eq!(CacheKey::parse(k.as_str()), Some(k.clone()));
        assert_eq!(CacheKey::parse(&k.as_str().to_uppercase()), None);
        assert_eq!(CacheKey::parse("../etc/passwd"), None);
        assert_eq!(CacheKey::parse(""), None);
        assert!(k.image_path().starts_with("images/") && k.image_path().ends_with(".ext4"));
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

//! Entry validation: a cached image is served only when its manifest is
//! present and matches, the image has the recorded length, and its superblock
//! has the ext4 magic and a geometry that fits the file.

use std::path::Path;

use crate::error::{SourceError, describe};
use crate::ext4::{SUPERBLOCK_LEN, SUPERBLOCK_OFFSET, Superblock};
use crate::key::CacheKey;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::probe::{self, Probe};
use crate::wit::host::{PathInfo, PathKind};
use crate::wit::types::Error;

/// A valid entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Hit {
    /// Its manifest.
    pub manifest: Manifest,
    /// When it was last served (its manifest's modification time, in ns
    /// since the Unix epoch), if known.
    pub last_used: Option<u64>,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A valid entry.
    Hit(Box<Hit>),
    /// No entry at all.
    Miss,
    /// Something is there but must not be served; the reason says what.
    Corrupt(String),
}

/// What the manifest must say for an entry to serve a request.
pub struct Expected<'a> {
    /// The key, which is also the file name.
    pub key: &'a CacheKey,
    /// The agent's SHA-256.
    pub agent_sha256: &'a str,
    /// The converter's identity.
    pub converter: &'a str,
    /// What the entry must record as its source, for a key local to this
    /// host; `None` for a shareable key, which names the source's content
    /// wherever it is kept.
    pub source: Option<&'a str>,
}

/// Reads the superblock of the image at `path` and returns it with the
/// file's length.
pub fn read_superblock(path: &Path) -> std::io::Result<(Option<Superblock>, u64)> {
    let (buf, len) = crate::sys::read(path, SUPERBLOCK_OFFSET, SUPERBLOCK_LEN as u64)?;
    if len < SUPERBLOCK_OFFSET + SUPERBLOCK_LEN as u64 {
        return Ok((None, len));
    }
    if buf.len() < SUPERBLOCK_LEN {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((Superblock::parse(&buf), len))
}

/// Checks that the image at `path` is a sound ext4 filesystem of exactly
/// `expected_len` bytes (when given).
pub fn check_image(path: &Path, expected_len: Option<u64>) -> Result<u64, String> {
    let (sb, len) = read_superblock(path).map_err(|e| format!("{}: {e}", path.display()))?;
    judge(sb, len, expected_len)
}

/// Whether an image of `len` bytes with superblock `sb` is sound and as long
/// as its manifest says.
fn judge(sb: Option<Superblock>, len: u64, expected_len: Option<u64>) -> Result<u64, String> {
    if let Some(want) = expected_len
        && want != len
    {
        return Err(format!("the image has {len} bytes, its manifest records {want}"));
    }
    let sb = sb.ok_or_else(|| format!("the image has only {len} bytes, too short for an ext4 superblock"))?;
    sb.check_geometry(len)?;
    Ok(len)
}

/// Bytes of an image a lookup reads: everything up to the superblock's end.
const IMAGE_HEAD_BYTES: u32 = SUPERBLOCK_OFFSET as u32 + SUPERBLOCK_LEN as u32;

/// Looks up and validates the entry for `expected.key`, with one probe of
/// the manifest and the image's head. A failed probe (the host refusing or
/// failing the call) is an error, never a reason to drop the entry.
pub fn lookup(fs: &impl Probe, expected: &Expected<'_>) -> Result<Lookup, SourceError> {
    let (manifest_path, image_path) = (expected.key.manifest_path(), expected.key.image_path());
    let answers = probe::ask(
        fs,
        &[(Path::new(&manifest_path), MAX_MANIFEST_BYTES as u32), (Path::new(&image_path), IMAGE_HEAD_BYTES)],
    )?;
    let mut answers = answers.into_iter();
    let (Some(manifest), Some(image)) = (answers.next(), answers.next()) else {
        return Err(SourceError::Io("probe answered too few paths".into()));
    };
    Ok(judge_entry(manifest, image, expected))
}

fn judge_entry(manifest: Result<PathInfo, Error>, image: Result<PathInfo, Error>, expected: &Expected<'_>) -> Lookup {
    let manifest_info = match manifest {
        Ok(info) if info.kind == PathKind::File => info,
        Ok(_) => return Lookup::Corrupt("the manifest is not a regular file".into()),
        Err(Error::NotFound(_)) => {
            return match image {
                Ok(_) => Lookup::Corrupt("the image has no manifest: its build never finished".into()),
                Err(_) => Lookup::Miss,
            };
        }
        Err(e) => return Lookup::Corrupt(format!("opening the manifest: {}", describe(&e))),
    };
    if manifest_info.size > MAX_MANIFEST_BYTES {
        return Lookup::Corrupt(format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes"));
    }
    let last_used = Some(manifest_info.modified_ns);
    let manifest = match Manifest::parse(&manifest_info.head) {
        Ok(m) => m,
        Err(why) => return Lookup::Corrupt(why),
    };
    if let Err(why) = check_manifest(&manifest, expected) {
        return Lookup::Corrupt(why);
    }
    let image = match image {
        Ok(info) if info.kind == PathKind::File => info,
        Ok(_) => return Lookup::Corrupt("the image is not a regular file".into()),
        Err(e) => return Lookup::Corrupt(format!("the image: {}", describe(&e))),
    };
    let start = SUPERBLOCK_OFFSET as usize;
    let sb = image.head.get(start..start + SUPERBLOCK_LEN).and_then(Superblock::parse);
    match judge(sb, image.size, Some(manifest.image_bytes)) {
        Ok(_) => Lookup::Hit(Box::new(Hit { manifest, last_used })),
        Err(why) => Lookup::Corrupt(why),
    }
}

/// Checks that a manifest describes the entry that `expected` asks for.
pub fn check_manifest(manifest: &Manifest, expected: &Expected<'_>) -> Result<(), String> {
    let mismatch =
        |what: &str, found: &str, want: &str| Err(format!("the manifest records {what} {found:?}, expected {want:?}"));
    if manifest.key != expected.key.as_str() {
        return mismatch("key", &manifest.key, expected.key.as_str());
    }
    if manifest.agent.sha256 != expected.agent_sha256 {
        return mismatch("agent digest", &manifest.agent.sha256, expected.agent_sha256);
    }
    if manifest.converter != expected.converter {
        return mismatch("converter", &manifest.converter, expected.converter);
    }
    if let Some(source) = expected.source
        && manifest.source != source
    {
        return mismatch("source", &manifest.source, source);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{AgentRecord, FORMAT};
    use std::fs;

    struct Fixture {
        dir: tempfile::TempDir,
        key: CacheKey,
    }

    fn superblock_image(blocks: u32) -> Vec<u8> {
        let mut image = vec![0u8; blocks as usize * 4096];
        let sb = crate::ext4::tests_support::sample(blocks);
        image[1024..2048].copy_from_slice(&sb);
        image
    }

    fn manifest(key: &CacheKey, image_bytes: u64) -> Manifest {
        Manifest {
            format: FORMAT,
            key: key.to_string(),
            kind: "overlay2".into(),
            source: "/src".into(),
            layers: vec![],
            platform: None,
            agent: AgentRecord { path: "/agent".into(), sha256: "a".repeat(64), size: 1 },
            converter: "test".into(),
            requested_size: None,
            image_bytes,
            created: 0,
            builder: "test".into(),
            image_sha256: None,
        }
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("images")).unwrap();
        let key = CacheKey::parse(&"1".repeat(64)).unwrap();
        let image = superblock_image(256);
        fs::write(dir.path().join(key.image_path()), &image).unwrap();
        fs::write(dir.path().join(key.manifest_path()), manifest(&key, image.len() as u64).to_json()).unwrap();
        Fixture { dir, key }
    }

    fn probe(f: &Fixture) -> crate::fake::FsProbe {
        crate::fake::FsProbe::new(f.dir.path())
    }

    fn expected(key: &CacheKey) -> Expected<'_> {
        Expected {
            key,
            agent_sha256: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            converter: "test",
            source: Some("/src"),
        }
    }

    #[test]
    fn a_complete_entry_is_a_hit() {
        let f = fixture();
        assert!(matches!(lookup(&probe(&f), &expected(&f.key)).unwrap(), Lookup::Hit(_)));
    }

    #[test]
    fn nothing_is_a_miss() {
        let f = fixture();
        let other = CacheKey::parse(&"2".repeat(64)).unwrap();
        assert_eq!(lookup(&probe(&f), &expected(&other)).unwrap(), Lookup::Miss);
    }

    #[test]
    fn a_truncated_image_is_corrupt() {
        let f = fixture();
        let path = f.dir.path().join(f.key.image_path());
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(4096 * 100).unwrap();
        let Lookup::Corrupt(why) = lookup(&probe(&f), &expected(&f.key)).unwrap() else {
            panic!("served a truncated image")
        };
        assert!(why.contains("manifest records"), "{why}");
    }

    #[test]
    fn a_zeroed_image_of_the_right_length_is_corrupt() {
        let f = fixture();
        let path = f.dir.path().join(f.key.image_path());
        fs::write(&path, vec![0u8; 256 * 4096]).unwrap();
        let Lookup::Corrupt(why) = lookup(&probe(&f), &expected(&f.key)).unwrap() else {
            panic!("served a zeroed image")
        };
        assert!(why.contains("no ext4 magic"), "{why}");
    }

    #[test]
    fn an_image_without_manifest_is_corrupt() {
        let f = fixture();
        fs::remove_file(f.dir.path().join(f.key.manifest_path())).unwrap();
        assert!(matches!(lookup(&probe(&f), &expected(&f.key)).unwrap(), Lookup::Corrupt(_)));
    }

    #[test]
    fn a_manifest_for_another_agent_does_not_match() {
        let f = fixture();
        let mut e = expected(&f.key);
        e.agent_sha256 = "bbbb";
        let Lookup::Corrupt(why) = lookup(&probe(&f), &e).unwrap() else { panic!("matched another agent") };
        assert!(why.contains("agent digest"), "{why}");
    }

    #[test]
    fn a_manifest_under_another_name_does_not_match() {
        let f = fixture();
        let other = CacheKey::parse(&"3".repeat(64)).unwrap();
        fs::copy(f.dir.path().join(f.key.manifest_path()), f.dir.path().join(other.manifest_path())).unwrap();
        fs::copy(f.dir.path().join(f.key.image_path()), f.dir.path().join(other.image_path())).unwrap();
        let Lookup::Corrupt(why) = lookup(&probe(&f), &expected(&other)).unwrap() else {
            panic!("matched a copied manifest")
        };
        assert!(why.contains("key"), "{why}");
    }
}

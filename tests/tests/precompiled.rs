//! The precompiled component in `<cache>/engine/`: made on the first open,
//! loaded by later ones, and ignored and replaced when it does not match.

use rootfs_cache::{Capabilities, Config, LoadPath, RootfsCache};

fn open(dir: &std::path::Path) -> RootfsCache {
    RootfsCache::open(Config::new(dir.join("cache")).capabilities(Capabilities::fake().0).pooling(false)).unwrap()
}

fn artifact(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("cache/engine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("no precompiled component")
}

#[test]
fn the_first_open_compiles_and_later_ones_load_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(open(dir.path()).load_path(), LoadPath::Compiled);
    assert_eq!(open(dir.path()).load_path(), LoadPath::Precompiled);
}

#[test]
fn a_corrupt_or_truncated_artifact_is_ignored_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path());
    let path = artifact(dir.path());
    let good = std::fs::read(&path).unwrap();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xFF;
    std::fs::write(&path, &flipped).unwrap();
    assert_eq!(open(dir.path()).load_path(), LoadPath::Compiled, "a corrupt artifact was loaded");
    assert_eq!(std::fs::read(&path).unwrap(), good, "it was not replaced");
    assert_eq!(open(dir.path()).load_path(), LoadPath::Precompiled);

    std::fs::write(&path, &good[..good.len() / 3]).unwrap();
    assert_eq!(open(dir.path()).load_path(), LoadPath::Compiled, "a truncated artifact was loaded");
    assert_eq!(open(dir.path()).load_path(), LoadPath::Precompiled);
}

#[test]
fn a_foreign_file_under_the_artifacts_name_is_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path());
    let path = artifact(dir.path());
    // Not a compiled component at all, with a checksum that matches it.
    std::fs::write(&path, b"\x7fELF but not wasmtime's").unwrap();
    let sum = path.with_extension("cwasm.xxh3");
    std::fs::write(&sum, format!("{:032x}", host_checksum(b"\x7fELF but not wasmtime's"))).unwrap();
    let cache = open(dir.path());
    assert_eq!(cache.load_path(), LoadPath::Compiled);
}

/// The checksum the host uses (XXH3-128), computed here independently.
fn host_checksum(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

#[test]
fn a_superseded_artifact_is_removed_and_another_engines_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path());
    let path = artifact(dir.path());
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    let (engine, _) = name.split_once('-').unwrap();
    let engine_dir = dir.path().join("cache/engine");
    // What an older guest left under this engine, and another engine's artifact.
    let superseded = engine_dir.join(format!("{engine}-{}.cwasm", "0".repeat(32)));
    let other_engine = engine_dir.join(format!("{}-{}.cwasm", "f".repeat(16), "0".repeat(32)));
    for file in [&superseded, &other_engine] {
        std::fs::write(file, b"old").unwrap();
        std::fs::write(file.with_extension("cwasm.xxh3"), b"0").unwrap();
    }
    std::fs::remove_file(&path).unwrap();
    assert_eq!(open(dir.path()).load_path(), LoadPath::Compiled);
    assert!(path.exists(), "the new artifact was not saved");
    assert!(!superseded.exists() && !superseded.with_extension("cwasm.xxh3").exists(), "the old one stayed");
    assert!(other_engine.exists() && other_engine.with_extension("cwasm.xxh3").exists(), "another engine's went");
}

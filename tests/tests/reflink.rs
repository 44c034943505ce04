//! Sharing data instead of copying it, on real filesystems the tests make:
//! xfs (`reflink=1`) and btrfs, which share blocks, and ext4, which does not.
//! The layers, the spool and the cache live on the filesystem under test.
//!
//! - a conversion clones each file's whole blocks from the layer (or the
//!   spool) that holds them, and the image is the same, byte for byte, as
//!   the copying converter's;
//! - `clone` makes a VM's private copy of an entry without copying it;
//! - an entry is published read-only with its SHA-256, and `verify --deep`
//!   catches one changed in place.
//!
//! Needs root (loop mounts, overlayfs), xfsprogs, btrfs-progs and e2fsprogs.

use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rootfs_cache::capabilities::converter::exact::ExactConverter;
use rootfs_cache::ext4::Reflink;
use rootfs_cache::{Capabilities, CloneMethod, Config, ConverterSpec, Request, RootfsCache};
use rootfs_cache_tests::compare::differences;
use rootfs_cache_tests::oci::{Compression, IndexStyle, TarEntry, layout_with, tar};
use rootfs_cache_tests::scratch_fs::{FsKind, ScratchFs, allocated_bytes};
use rootfs_cache_tests::{
    DELETED_MARKER, Overlay2, OverlayMount, ReadOnlyMount, agent, fsck, incompressible, is_root, sha256_hex,
};

const MIB: u64 = 1 << 20;

/// Whether the parts are here: root, the three filesystems, e2fsck. Outside
/// CI a missing part skips the test, saying so; under CI it fails.
fn tools() -> bool {
    let e2fsck = std::process::Command::new("e2fsck").arg("-V").output().is_ok();
    let missing: Vec<String> = [FsKind::Xfs, FsKind::Btrfs, FsKind::Ext4]
        .into_iter()
        .filter(|k| !k.available())
        .map(|k| format!("{k:?}"))
        .chain((!is_root()).then(|| "root".to_owned()))
        .chain((!e2fsck).then(|| "e2fsck".to_owned()))
        .collect();
    if !missing.is_empty() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but this machine lacks {missing:?}");
        println!("SKIPPED: needs root, xfsprogs, btrfs-progs and e2fsprogs; missing {missing:?}");
    }
    missing.is_empty()
}

/// A cache on `dir` whose exact converter clones (or, with
/// `Reflink::Never`, always copies).
fn cache(dir: &Path, reflink: Reflink) -> RootfsCache {
    let exact = ExactConverter { reflink, ..Default::default() };
    RootfsCache::open(Config::new(dir).capabilities(Capabilities::native_with_exact(exact))).unwrap()
}

/// Writes `len` bytes of incompressible data to `path`, 8 MiB at a time.
fn big_file(path: &Path, len: u64, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0;
    while written < len {
        let n = (len - written).min(8 * MIB);
        file.write_all(&incompressible(n as usize, seed + written)).unwrap();
        written += n;
    }
}

/// A chain whose data is mostly one file of `big` bytes (not a multiple of
/// a block), with what cloning must get right around it: a file replaced
/// by the top layer, one deleted by it (its bytes a marker that must not
/// reach the image), an opaque directory hiding a lower file, a sparse
/// file, a file of less than a block, and one of exactly one block.
fn data_chain(root: &Path, big: u64) -> PathBuf {
    let mut o = Overlay2::new(root);
    o.layer(|l| {
        big_file(&l.diff.join("opt/big.bin"), big, 1);
        l.file("/etc/replaced", &incompressible(100_000, 2), 0o644);
        l.file("/etc/deleted", &DELETED_MARKER.repeat(5_000), 0o644);
        l.file("/var/hidden/old", &DELETED_MARKER.repeat(3_000), 0o644);
        l.file("/etc/one-block", &incompressible(4096, 3), 0o644);
    });
    o.layer(|l| {
        l.file("/etc/replaced", &incompressible(50_001, 4), 0o600);
        l.whiteout("/etc/deleted");
        l.opaque("/var/hidden");
        l.file("/var/hidden/new", &incompressible(9_000, 5), 0o644);
        l.file("/etc/small", b"less than a block\n", 0o644);
        let sparse = std::fs::File::create(l.diff.join("etc/sparse")).unwrap();
        sparse.write_all_at(&incompressible(10_000, 6), 0).unwrap();
        sparse.write_all_at(&incompressible(777, 7), 5 * MIB).unwrap();
    })
}

/// The image holds exactly the merged chain (compared entry by entry with
/// the kernel's overlay mount), passes `e2fsck -fn`, and no byte of what
/// the top layer deleted.
fn assert_exact(top: &Path, image: &Path) {
    let reference = OverlayMount::new(top);
    let mnt = ReadOnlyMount::new(image);
    let diffs = differences(&reference.path, &mnt.path, &[b"lost+found", b"sbin"]);
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
    drop(mnt);
    let (code, out) = fsck(image);
    assert_eq!(code, 0, "e2fsck -fn:\n{out}");
    let bytes = std::fs::read(image).unwrap();
    assert!(!bytes.windows(DELETED_MARKER.len()).any(|w| w == DELETED_MARKER), "deleted data reached the image");
}

async fn a_300_mib_file_grows_disk_use_by_less_than_40_mib(kind: FsKind) {
    if !tools() {
        return;
    }
    let fs = ScratchFs::new(kind, 2 << 30);
    let top = data_chain(&fs.dir("overlay2"), 300 * MIB + 123);
    let agent = agent(&fs.path, "vm-agent", "reflink");
    let cache_copying = cache(&fs.dir("copying"), Reflink::Never);
    let cache = cache(&fs.dir("cache"), Reflink::Auto);
    let before = fs.used_bytes();
    let outcome = cache.convert(&Request::new(&top, &agent).converter(ConverterSpec::Exact)).await.unwrap();
    let grown = fs.used_bytes() - before;
    println!(
        "{kind:?}: disk use grew {} KiB; cloned {} B, copied {} B",
        grown >> 10,
        outcome.cloned_bytes,
        outcome.copied_bytes
    );
    assert!(grown < 40 * MIB, "{kind:?}: the conversion grew disk use by {grown} bytes");
    assert!(outcome.cloned_bytes >= 300 * MIB, "{kind:?}: only {} bytes were cloned", outcome.cloned_bytes);
    assert!(outcome.copied_bytes < MIB, "{kind:?}: {} bytes were copied", outcome.copied_bytes);
    assert_exact(&top, &outcome.image);
    // What the figure rests on: the same conversion copying shows its data.
    let before = fs.used_bytes();
    let copied = cache_copying.convert(&Request::new(&top, &agent)).await.unwrap();
    let grown = fs.used_bytes() - before;
    assert!(grown > 250 * MIB, "{kind:?}: a copying conversion grew disk use by only {grown} bytes");
    assert_eq!(std::fs::read(&copied.image).unwrap(), std::fs::read(&outcome.image).unwrap());
}

#[tokio::test]
async fn on_xfs_a_300_mib_file_is_cloned_from_its_layer_not_copied() {
    a_300_mib_file_grows_disk_use_by_less_than_40_mib(FsKind::Xfs).await;
}

#[tokio::test]
async fn on_btrfs_a_300_mib_file_is_cloned_from_its_layer_not_copied() {
    a_300_mib_file_grows_disk_use_by_less_than_40_mib(FsKind::Btrfs).await;
}

#[tokio::test]
async fn a_cloned_image_has_the_same_bytes_as_a_copied_one() {
    if !tools() {
        return;
    }
    let fs = ScratchFs::new(FsKind::Xfs, 1 << 30);
    let top = data_chain(&fs.dir("overlay2"), 20 * MIB + 4095);
    let agent = agent(&fs.path, "vm-agent", "reflink");
    let request = Request::new(&top, &agent).converter(ConverterSpec::Exact);
    let before = fs.used_bytes();
    let cloned = cache(&fs.dir("cloning"), Reflink::Auto).convert(&request).await.unwrap();
    let between = fs.used_bytes();
    let copied = cache(&fs.dir("copying"), Reflink::Never).convert(&request).await.unwrap();
    // What the disk-use figures of the other tests rest on: a copy shows.
    let (cloning_grew, copying_grew) = (between - before, fs.used_bytes() - between);
    assert!(cloning_grew < 4 * MIB && copying_grew > 20 * MIB, "grew {cloning_grew} cloning, {copying_grew} copying");
    assert_eq!(cloned.key, copied.key, "whether data is cloned is not part of the key");
    assert!(cloned.cloned_bytes >= 20 * MIB, "cloned {}", cloned.cloned_bytes);
    assert_eq!(copied.cloned_bytes, 0);
    // Cloning moves whole blocks; the rest is copied: together, the same data.
    assert_eq!(cloned.cloned_bytes + cloned.copied_bytes, copied.copied_bytes);
    let digest = |p: &Path| sha256_hex(&std::fs::read(p).unwrap());
    assert_eq!(digest(&cloned.image), digest(&copied.image), "the two images differ");
    assert_exact(&top, &cloned.image);
}

#[tokio::test]
async fn on_ext4_cloning_falls_back_to_copying_silently() {
    if !tools() {
        return;
    }
    let fs = ScratchFs::new(FsKind::Ext4, 1 << 30);
    let top = data_chain(&fs.dir("overlay2"), 20 * MIB + 1);
    let agent = agent(&fs.path, "vm-agent", "reflink");
    let request = Request::new(&top, &agent).converter(ConverterSpec::Exact);
    let outcome = cache(&fs.dir("cache"), Reflink::Auto).convert(&request).await.unwrap();
    assert_eq!(outcome.cloned_bytes, 0);
    assert!(outcome.copied_bytes >= 20 * MIB);
    assert_exact(&top, &outcome.image);
}

#[tokio::test]
async fn two_images_on_one_base_share_the_bases_data() {
    if !tools() {
        return;
    }
    let fs = ScratchFs::new(FsKind::Xfs, 2 << 30);
    let mut o = Overlay2::new(&fs.dir("overlay2"));
    o.layer(|l| big_file(&l.diff.join("usr/lib/base.so"), 200 * MIB, 11));
    let first = o.layer(|l| big_file(&l.diff.join("app/one"), MIB, 12));
    o.branch(1);
    let second = o.layer(|l| big_file(&l.diff.join("app/two"), MIB, 13));
    let agent = agent(&fs.path, "vm-agent", "reflink");
    let cache = cache(&fs.dir("cache"), Reflink::Auto);
    cache.convert(&Request::new(&first, &agent)).await.unwrap();
    let before = fs.used_bytes();
    let outcome = cache.convert(&Request::new(&second, &agent)).await.unwrap();
    let grown = fs.used_bytes() - before;
    println!("the second image grew disk use by {} KiB", grown >> 10);
    // Its own layer (1 MiB) and the image's metadata; the base's 200 MiB are shared.
    assert!(grown < 20 * MIB, "the second image grew disk use by {grown} bytes");
    assert_exact(&second, &outcome.image);
}

#[tokio::test]
async fn an_oci_layouts_files_are_cloned_from_the_spool() {
    if !tools() {
        return;
    }
    let fs = ScratchFs::new(FsKind::Xfs, 1 << 30);
    let big = incompressible((16 * MIB + 5) as usize, 21);
    let layer = tar(&[TarEntry::file("data/big.bin", &big, 0o644), TarEntry::file("etc/hostname", b"oci\n", 0o644)]);
    let layout = fs.dir("oci");
    layout_with(&layout, &[(layer, Compression::Gzip)], "amd64", IndexStyle::Skopeo);
    let agent = agent(&fs.path, "vm-agent", "reflink");
    let request = Request::new(&layout, &agent).converter(ConverterSpec::Exact);
    let cloned = cache(&fs.dir("cloning"), Reflink::Auto).convert(&request).await.unwrap();
    let copied = cache(&fs.dir("copying"), Reflink::Never).convert(&request).await.unwrap();
    assert!(cloned.cloned_bytes >= 16 * MIB, "cloned {}", cloned.cloned_bytes);
    let digest = |p: &Path| sha256_hex(&std::fs::read(p).unwrap());
    assert_eq!(digest(&cloned.image), digest(&copied.image), "the two images differ");
    let mnt = ReadOnlyMount::new(&cloned.image);
    assert_eq!(std::fs::read(mnt.path.join("data/big.bin")).unwrap(), big);
    drop(mnt);
    let (code, out) = fsck(&cloned.image);
    assert_eq!(code, 0, "e2fsck -fn:\n{out}");
}

#[tokio::test]
async fn a_clone_of_a_1_gib_image_takes_no_space_and_leaves_the_entry_unchanged() {
    if !tools() {
        return;
    }
    let fs = ScratchFs::new(FsKind::Xfs, 3 << 30);
    let mut o = Overlay2::new(&fs.dir("overlay2"));
    let top = o.layer(|l| big_file(&l.diff.join("opt/data.bin"), 512 * MIB, 31));
    let agent = agent(&fs.path, "vm-agent", "reflink");
    let cache = cache(&fs.dir("cache"), Reflink::Auto);
    let mut request = Request::new(&top, &agent);
    request.size = Some(1 << 30);
    let outcome = cache.convert(&request).await.unwrap();
    assert_eq!(std::fs::metadata(&outcome.image).unwrap().permissions().mode() & 0o777, 0o444, "entries are read-only");
    let entry_digest = sha256_hex(&std::fs::read(&outcome.image).unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outcome.image.with_extension("json")).unwrap()).unwrap();
    assert_eq!(manifest["image_sha256"], entry_digest.as_str(), "the manifest records the image's SHA-256");

    let dest = fs.path.join("vm-1.ext4");
    let before = fs.used_bytes();
    let report = cache.clone_entry(&outcome.key, &dest).await.unwrap();
    let grown = fs.used_bytes() - before;
    println!("clone of a 1 GiB image: {} µs, disk use grew {} KiB", report.duration_us, grown >> 10);
    assert_eq!(report.method, CloneMethod::Reflink);
    assert_eq!(report.copied_bytes, 0);
    assert!(grown < MIB, "the clone grew disk use by {grown} bytes");
    assert!(allocated_bytes(&dest) >= 512 * MIB, "the clone shares the entry's blocks");

    // The VM writes to its clone (it is writable, the entry is not touched).
    assert_ne!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o200, 0);
    let clone = std::fs::OpenOptions::new().write(true).open(&dest).unwrap();
    clone.write_all_at(b"written by the VM", 300 * MIB).unwrap();
    clone.sync_all().unwrap();
    assert_eq!(sha256_hex(&std::fs::read(&outcome.image).unwrap()), entry_digest);
    let report = cache.verify_deep(false).await.unwrap();
    assert!(report.broken.is_empty(), "{:?}", report.broken);
    assert_eq!(report.hashed, 1);
    let (code, out) = fsck(&dest);
    assert_eq!(code, 0, "e2fsck -fn of the clone:\n{out}");
}

#[tokio::test]
async fn on_ext4_clone_makes_a_sparse_copy_and_says_so() {
    if !tools() {
        return;
    }
    let fs = ScratchFs::new(FsKind::Ext4, 1 << 30);
    let mut o = Overlay2::new(&fs.dir("overlay2"));
    let top = o.layer(|l| big_file(&l.diff.join("opt/data.bin"), 8 * MIB, 41));
    let agent = agent(&fs.path, "vm-agent", "reflink");
    let cache_dir = fs.dir("cache");
    let mut request = Request::new(&top, &agent);
    request.size = Some(512 * MIB);
    let outcome = cache(&cache_dir, Reflink::Auto).convert(&request).await.unwrap();
    let dest = fs.path.join("vm.ext4");
    let (code, stdout, stderr) = rootfs_cache_tests::cli(&[
        "--cache-dir".as_ref(),
        cache_dir.as_os_str(),
        "clone".as_ref(),
        outcome.image.as_os_str(),
        dest.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["method"], "copy");
    assert_eq!(report["key"], outcome.key.as_str());
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&outcome.image).unwrap());
    assert!(allocated_bytes(&dest) < 64 * MIB, "the copy is sparse: {} bytes allocated", allocated_bytes(&dest));
    // A second clone to the same place is refused, and changes nothing.
    let (code, _, stderr) = rootfs_cache_tests::cli(&[
        "--cache-dir".as_ref(),
        cache_dir.as_os_str(),
        "clone".as_ref(),
        outcome.key.as_ref(),
        dest.as_os_str(),
    ]);
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test]
async fn an_entry_changed_in_place_is_caught_by_verify_deep() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut o = Overlay2::new(&dir.path().join("overlay2"));
    let top = o.layer(|l| {
        l.file("/etc/hostname", b"entry\n", 0o644);
    });
    let agent = agent(dir.path(), "vm-agent", "reflink");
    let cache_dir = dir.path().join("cache");
    let cache = cache(&cache_dir, Reflink::Auto);
    let outcome = cache.convert(&Request::new(&top, &agent)).await.unwrap();
    // The digest the converter took while writing the image is the image's.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outcome.image.with_extension("json")).unwrap()).unwrap();
    assert_eq!(manifest["image_sha256"], sha256_hex(&std::fs::read(&outcome.image).unwrap()).as_str());
    let fresh = cache.verify_deep(false).await.unwrap();
    assert!(fresh.broken.is_empty() && fresh.hashed == 1, "{fresh:?}");
    // A runtime that booted the entry itself: root writes through 0444.
    let image = std::fs::OpenOptions::new().write(true).open(&outcome.image).unwrap();
    image.write_all_at(b"a VM was here", 20 * MIB).unwrap();
    drop(image);
    // The quick checks (length, superblock, geometry) see nothing.
    assert!(cache.verify(false).await.unwrap().broken.is_empty());
    let (code, stdout, stderr) = rootfs_cache_tests::cli(&[
        "--cache-dir".as_ref(),
        cache_dir.as_os_str(),
        "verify".as_ref(),
        "--deep".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["broken"][0]["key"], outcome.key.as_str(), "{report}");
    assert!(report["broken"][0]["problem"].as_str().unwrap().contains("changed since it was published"), "{report}");
    assert!(!outcome.image.exists(), "the changed entry was removed");
    assert!(!outcome.image.with_extension("json").exists());
}

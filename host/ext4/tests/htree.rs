//! Hashed directories (`dir_index`) and directory checksums
//! (`metadata_csum`), checked with the real tools: the hash against
//! debugfs's `dx_hash`; images against `e2fsck -fn` (whose pass 2 checks
//! every index and leaf), `e2fsck -fD` (which rebuilds each index: into the
//! writer's exact bytes), debugfs's `htree` and the kernel (a loop mount:
//! exact lookups, absent names, a full listing, then entries created and
//! deleted and e2fsck again, and nothing said in the kernel's log).
//!
//! Each image case runs twice: without `metadata_csum`, and with it (the
//! `…_with_metadata_csum` tests). The writer does not yet checksum the
//! superblock, descriptors, bitmaps and inodes (another change adds them),
//! so e2fsck and the kernel refuse its `metadata_csum` images as they are:
//! those tests have `tune2fs` checksum a copy, check that it left every
//! directory block as written (tails, limits and checksums included), and
//! check the copy. Once images carry their superblock checksum, they check
//! the image itself too; until then they print `NOT CHECKED`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rootfs_cache_ext4::dirhash::half_md4;
use rootfs_cache_ext4::{Features, FileData, ImageOptions, Kind, Node, Tree};

/// The default profile's directory features, without what the other half
/// adds (flex_bg, 64bit, huge_file), with or without `metadata_csum`.
fn features(metadata_csum: bool) -> Features {
    Features { metadata_csum, flex_bg: false, sixty_four_bit: false, huge_file: false, ..Features::EXT4 }
}

fn options(metadata_csum: bool) -> ImageOptions {
    ImageOptions { features: features(metadata_csum), ..common::options() }
}

/// Whether the tools can run here: root (for loop mounts) and e2fsprogs.
/// Outside CI a missing tool skips the test, saying so.
fn tools() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let e2fsprogs = Command::new("debugfs").arg("-V").output().is_ok();
    if !(root && e2fsprogs) {
        assert!(std::env::var_os("CI").is_none(), "CI is set but this is not root with e2fsprogs");
        println!("SKIPPED: needs root (loop mounts) and e2fsprogs");
    }
    root && e2fsprogs
}

fn seed_uuid(seed: &[u8; 16]) -> String {
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Hashes of `names` with `seed` by debugfs's `dx_hash -h half_md4` (one
/// run, commands from a file).
fn debugfs_hashes(names: &[Vec<u8>], seed: &[u8; 16]) -> Vec<(u32, u32)> {
    let dir = tempfile::tempdir().unwrap();
    let cmds = dir.path().join("cmds");
    let mut f = std::fs::File::create(&cmds).unwrap();
    for name in names {
        f.write_all(format!("dx_hash -h half_md4 -s {} -- ", seed_uuid(seed)).as_bytes()).unwrap();
        f.write_all(name).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);
    let out = Command::new("debugfs").arg("-f").arg(&cmds).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
    let hashes: Vec<(u32, u32)> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"Hash of "))
        .map(|line| {
            // "Hash of NAME is 0xMAJOR (minor 0xMINOR)": from the end, as
            // the name may hold anything.
            let at = line.windows(6).rposition(|w| w == b" is 0x").unwrap();
            let tail = &line[at + 6..];
            let sp = tail.iter().position(|&b| b == b' ').unwrap();
            let minor = &tail[sp + " (minor 0x".len()..tail.len() - 1];
            (hex(&tail[..sp]), hex(minor))
        })
        .collect();
    assert_eq!(hashes.len(), names.len(), "{}", String::from_utf8_lossy(&out.stderr));
    hashes
}

/// A deterministic stream of pseudo-random numbers (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn the_hash_is_debugfs_half_md4_for_every_kind_of_name() {
    if !tools() {
        return;
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Bytes debugfs's command parser passes through: not NUL, not blanks,
    // not quotes; every byte from 0x80 up (where signed chars matter).
    let allowed: Vec<u8> = (1..=255u8).filter(|b| !b" \t\n\r\x0b\x0c\"".contains(b)).collect();
    let mut names: Vec<Vec<u8>> = ["a", "hello", ".", "..", "lost+found", "entry-000001", "Makefile", "libc.so.6"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    // Every length from 1 to 255 (each piece and padding boundary), ASCII
    // and with high bytes; then some longer than 32, of random bytes.
    for len in 1..=255usize {
        names.push((0..len).map(|i| b'a' + ((i * 7 + len) % 26) as u8).collect());
        names.push((0..len).map(|_| allowed[rng.next() as usize % allowed.len()]).collect());
        names.push((0..len).map(|i| 0x80 + ((i + len) % 128) as u8).collect());
    }
    names.push(vec![0xFF; 255]);
    names.push("é日本語-ünïcödé".as_bytes().to_vec());
    names.push(vec![0xC3, 0x28, 0xA0, 0xA1]); // not UTF-8
    let seeds: [[u8; 16]; 3] =
        [[0; 16], *b"hash-seed-012345", [0xA5, 0x5A, 0xFF, 0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]];
    for seed in &seeds {
        let expected = debugfs_hashes(&names, seed);
        for (name, want) in names.iter().zip(expected) {
            assert_eq!(half_md4(name, seed), want, "seed {seed:?}, name {:?}", String::from_utf8_lossy(name));
        }
    }
}

fn empty_file() -> Node {
    let kind = Kind::File { size: 0, data: FileData::Bytes(Arc::new(Vec::new())) };
    Node { meta: common::meta(0o644, 0, 1_700_000_000), kind }
}

/// A tree with directory `/d` of `names`, empty files, and a small
/// directory beside it.
fn tree_of(names: &[Vec<u8>]) -> Tree {
    let mut tree = Tree::new(common::meta(0o755, 0, 1_700_000_000));
    let d = common::dir(&mut tree, Tree::ROOT, "d");
    for name in names {
        tree.add(d, name.clone(), empty_file());
    }
    let small = common::dir(&mut tree, Tree::ROOT, "small");
    common::file(&mut tree, small, "f", b"x\n");
    tree
}

/// `n` distinct names of `len` bytes (at least 8).
fn names(n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{i:0>len$x}").into_bytes()).collect()
}

/// A loop mount, unmounted when dropped, after checking that the kernel
/// said nothing about its device: a lookup in an index the kernel finds
/// corrupt falls back to reading the whole directory, and only says so.
struct Mount {
    dir: tempfile::TempDir,
    device: String,
    /// A line written to the kernel's log before the mount: what follows
    /// it is what the kernel said since. (Counting lines would not do: the
    /// log is a ring that drops its oldest lines when full.)
    mark: String,
}

/// Writes a unique line to the kernel's log and returns it.
fn mark_kernel_log(device: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mark = format!("rootfs-cache htree test {} mount {n} of {device}", std::process::id());
    std::fs::write("/dev/kmsg", format!("{mark}\n")).expect("writing to /dev/kmsg");
    mark
}

/// The kernel's log after the last line containing `mark`.
fn kernel_log_since(mark: &str) -> Vec<String> {
    let out = Command::new("dmesg").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.contains(mark))
        .unwrap_or_else(|| panic!("the kernel's log lost the mark {mark:?}"));
    lines[start + 1..].iter().map(|l| (*l).to_owned()).collect()
}

impl Mount {
    fn new(image: &Path, rw: bool) -> Self {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(image).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let device = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let mark = mark_kernel_log(&device);
        let dir = tempfile::tempdir().unwrap();
        let opts = if rw { "rw" } else { "ro,noload" };
        let out = Command::new("mount").args(["-t", "ext4", "-o", opts]).arg(&device).arg(dir.path()).output().unwrap();
        if !out.status.success() {
            Command::new("losetup").arg("-d").arg(&device).status().unwrap();
            panic!("mount: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self { dir, device, mark }
    }

    fn path(&self, rel: &[u8]) -> PathBuf {
        self.dir.path().join(OsStr::from_bytes(rel))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(self.dir.path()).output().unwrap();
        Command::new("losetup").arg("-d").arg(&self.device).status().unwrap();
        if std::thread::panicking() {
            return;
        }
        assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
        // "EXT4-fs warning (device loop3): dx_probe:…", "EXT4-fs error …".
        let name = self.device.trim_start_matches("/dev/");
        let log = kernel_log_since(&self.mark);
        let said: Vec<&str> = log
            .iter()
            .map(String::as_str)
            .filter(|l| l.contains(&format!("(device {name})")) || l.contains(&format!("({name}):")))
            .filter(|l| l.contains("warning") || l.contains("rror"))
            .collect();
        assert!(said.is_empty(), "the kernel complained:\n{}", said.join("\n"));
    }
}

/// What `debugfs htree` shows of a directory: its indirect levels, the
/// hashes of its index entries (root and nodes), the leaves it reads and
/// the names in them.
struct HtreeDump {
    levels: u32,
    index_hashes: Vec<u32>,
    leaves: usize,
    names: usize,
}

fn htree_dump(image: &Path, dir: &str, metadata_csum: bool) -> HtreeDump {
    let out = Command::new("debugfs").arg("-R").arg(format!("htree {dir}")).arg(image).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs 1.47 computes index checksums even without metadata_csum,
    // and says it cannot: that is the only complaint allowed.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .filter(|l| metadata_csum || !l.contains("does not have space for checksum"))
        .collect();
    assert!(out.status.success() && complaints.is_empty(), "debugfs htree: {stderr}");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    // With checksums, debugfs checks each index block's and says what it
    // expected when they differ; it reads leaves only if theirs match.
    assert!(!out.contains("EXPECTED"), "{out}");
    if metadata_csum {
        let checksums = out.matches("Checksum: 0x").count();
        assert!(checksums >= 1, "index checksums: {out}");
    }
    let levels = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Indirect levels: "))
        .unwrap_or_else(|| panic!("no htree root in {out}"))
        .parse()
        .unwrap();
    // debugfs lists each index block's entries, then each again before
    // what it points at: one per block pointed at.
    let index_entries: BTreeSet<(u32, u32)> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Entry #"))
        .map(|l| {
            let hash = l.split("Hash 0x").nth(1).unwrap();
            let block = l.rsplit("block ").next().unwrap();
            (block.parse().unwrap(), u32::from_str_radix(&hash[..8], 16).unwrap())
        })
        .collect();
    let index_hashes = index_entries.iter().map(|&(_, hash)| hash).collect();
    let leaves = out.matches("Reading directory block").count();
    // Leaf entries read "INODE 0xHASH-MINOR (REC_LEN) NAME".
    let names =
        out.split_whitespace().filter(|w| w.len() == 19 && w.starts_with("0x") && w.as_bytes()[10] == b'-').count();
    assert!(!out.contains("rror") && !out.contains("orrupt"), "{out}");
    if metadata_csum {
        assert_eq!(out.matches("leaf block checksum: 0x").count(), leaves, "a checksum tail in every leaf");
    }
    HtreeDump { levels, index_hashes, leaves, names }
}

/// The directories of [`tree_of`]'s trees.
const DIRECTORIES: [&str; 4] = ["/", "/lost+found", "/d", "/small"];

/// Checks that e2fsprogs computes the directory checksums the writer wrote:
/// on a copy of `image` (written with `metadata_csum`), the feature is
/// cleared, then set again by `tune2fs -O metadata_csum`, which checksums
/// every piece of metadata and rewrites each directory block's checksum;
/// every block of `directories` must come out exactly as the writer wrote
/// it. (tune2fs leaves a full index block alone, so only the checksums of
/// index blocks with room to grow are recomputed, and marks the copy not
/// clean, asking for `e2fsck -D`: the copy is only compared, then removed.)
fn same_as_tune2fs_checksums(image: &Path, directories: &[&str]) {
    let copy = image.with_extension("tune2fs.ext4");
    let mut bytes = std::fs::read(image).unwrap();
    // s_feature_ro_compat: clear RO_COMPAT_METADATA_CSUM (0x400).
    let at = 1024 + 0x64 + 1;
    assert_eq!(bytes[at] & 0x04, 0x04);
    bytes[at] &= !0x04;
    std::fs::write(&copy, &bytes).unwrap();
    let out = Command::new("tune2fs").args(["-O", "metadata_csum"]).arg(&copy).output().unwrap();
    assert!(
        out.status.success(),
        "tune2fs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::read(&copy).unwrap();
    for &dir in directories {
        let blocks = common::debugfs(&copy, &format!("blocks {dir}")).expect("debugfs is installed");
        for block in blocks.split_whitespace() {
            let at = block.parse::<usize>().unwrap() * 4096;
            assert!(bytes[at..at + 4096] == after[at..at + 4096], "{dir}: block {block} differs after tune2fs");
        }
    }
    std::fs::remove_file(&copy).unwrap();
}

/// Checks that `e2fsck -fD` (which rebuilds every directory's index) with
/// full leaves (`indexed_dir_slack_percentage = 0`, the writer's choice)
/// rebuilds `/d` into exactly the blocks the writer wrote: the same sort,
/// leaves, collision bits, nodes, limits and (with `metadata_csum`)
/// checksums, all computed by e2fsprogs.
fn same_as_e2fsck_rebuilds(image: &Path) {
    let copy = image.with_extension("rehashed.ext4");
    std::fs::copy(image, &copy).unwrap();
    let config = image.with_extension("e2fsck.conf");
    std::fs::write(&config, "[options]\n\tindexed_dir_slack_percentage = 0\n").unwrap();
    let out = Command::new("e2fsck").arg("-fyD").arg(&copy).env("E2FSCK_CONFIG", &config).output().unwrap();
    // 1: the filesystem was changed (rewritten, here).
    assert!(matches!(out.status.code(), Some(0 | 1)), "e2fsck -fyD: {}", String::from_utf8_lossy(&out.stdout));
    let (before, after) = (std::fs::read(image).unwrap(), std::fs::read(&copy).unwrap());
    let blocks = common::debugfs(&copy, "blocks /d").expect("debugfs is installed");
    assert_eq!(blocks, common::debugfs(image, "blocks /d").expect("debugfs is installed"), "the same blocks");
    for block in blocks.split_whitespace() {
        let at = block.parse::<usize>().unwrap() * 4096;
        assert!(before[at..at + 4096] == after[at..at + 4096], "/d: block {block} differs after e2fsck -D");
    }
    std::fs::remove_file(&copy).unwrap();
}

/// Writes a tree whose `/d` holds `names`, and checks it every way (see
/// [`check_image`]); with `metadata_csum`, also that e2fsprogs computes
/// the same directory checksums (see [`same_as_tune2fs_checksums`]).
fn check_directory(names: &[Vec<u8>], levels: u32, metadata_csum: bool) -> Option<HtreeDump> {
    if !tools() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (image, _) = common::write(&tree_of(names), tmp.path(), &options(metadata_csum));
    if metadata_csum {
        same_as_tune2fs_checksums(&image, &DIRECTORIES);
    }
    same_as_e2fsck_rebuilds(&image);
    Some(check_image(&image, names, levels, metadata_csum))
}

/// Checks an image whose `/d` holds `names`: e2fsck, debugfs `htree`
/// (`levels` levels of index, every name in a leaf), the kernel's exact
/// lookups of every name and of absent names, a full listing,
/// then a read-write mount that creates and deletes entries in `/d`, and
/// e2fsck again. Returns the dump, for more checks.
fn check_image(image: &Path, names: &[Vec<u8>], levels: u32, metadata_csum: bool) -> HtreeDump {
    let image = image.to_path_buf();
    common::e2fsck(&image);
    let dump = htree_dump(&image, "/d", metadata_csum);
    assert_eq!(dump.levels, levels, "indirect levels");
    assert_eq!(dump.names, names.len(), "names in the leaves debugfs reaches through the index");
    // One-block directories stay linear.
    let stat = common::debugfs(&image, "stat /small").expect("debugfs is installed");
    assert!(stat.contains("Flags: 0x80000"), "extents only: {stat}");
    let stat = common::debugfs(&image, "stat /d").expect("debugfs is installed");
    assert!(stat.contains("Flags: 0x81000"), "indexed and extents: {stat}");

    {
        let m = Mount::new(&image, false);
        for name in names {
            let path = m.path(&[b"d/", name.as_slice()].concat());
            let meta = std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(meta.is_file());
        }
        for i in 0..2000 {
            let absent = format!("d/absent-{i}");
            let err = std::fs::symlink_metadata(m.path(absent.as_bytes())).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{absent}");
        }
        let listed: BTreeSet<Vec<u8>> =
            std::fs::read_dir(m.path(b"d")).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
        assert_eq!(listed.len(), names.len());
        assert!(names.iter().all(|n| listed.contains(n)), "ls lists every name");
    }
    {
        // Creates enough to split full leaves, deletes a tenth.
        let m = Mount::new(&image, true);
        for i in 0..(names.len() / 10).clamp(50, 2000) {
            std::fs::write(m.path(format!("d/new-{i:05}").as_bytes()), b"").unwrap();
        }
        for name in names.iter().step_by(10) {
            std::fs::remove_file(m.path(&[b"d/", name.as_slice()].concat())).unwrap();
        }
        for (i, name) in names.iter().enumerate().step_by(97) {
            let found = std::fs::symlink_metadata(m.path(&[b"d/", name.as_slice()].concat())).is_ok();
            assert_eq!(found, i % 10 != 0, "entry {i}");
        }
        for i in (0..(names.len() / 10).clamp(50, 2000)).step_by(7) {
            assert!(m.path(format!("d/new-{i:05}").as_bytes()).exists());
        }
    }
    common::e2fsck(&image);
    dump
}

fn two_blocks(metadata_csum: bool) {
    // 24 + 200 * 24 bytes: two leaves.
    let dump = check_directory(&names(200, 16), 0, metadata_csum);
    if let Some(dump) = dump {
        assert_eq!((dump.leaves, dump.index_hashes.len()), (2, 2), "a root pointing at two leaves");
    }
}

#[test]
fn a_directory_of_two_blocks() {
    two_blocks(false);
}

#[test]
fn a_directory_of_two_blocks_with_metadata_csum() {
    two_blocks(true);
}

fn one_leaf(metadata_csum: bool) {
    // 255 entries of 16 bytes: with `.` and `..`, more than a block (even
    // less a checksum tail); without them, one leaf.
    if let Some(dump) = check_directory(&names(255, 8), 0, metadata_csum) {
        assert_eq!((dump.leaves, dump.index_hashes.len()), (1, 1), "a root pointing at one leaf");
    }
}

#[test]
fn a_directory_just_over_a_block_is_a_root_and_one_leaf() {
    one_leaf(false);
}

#[test]
fn a_directory_just_over_a_block_is_a_root_and_one_leaf_with_metadata_csum() {
    one_leaf(true);
}

fn a_hundred_blocks(metadata_csum: bool) {
    // 56 entries of 72 bytes a leaf: 100 leaves.
    let dump = check_directory(&names(5600, 64), 0, metadata_csum);
    if let Some(dump) = dump {
        assert_eq!(dump.leaves, 100);
    }
}

#[test]
fn a_directory_of_a_hundred_blocks() {
    a_hundred_blocks(false);
}

#[test]
fn a_directory_of_a_hundred_blocks_with_metadata_csum() {
    a_hundred_blocks(true);
}

fn a_hundred_thousand(metadata_csum: bool) {
    check_directory(&names(100_000, 12), 0, metadata_csum);
}

#[test]
fn a_directory_of_a_hundred_thousand_entries() {
    a_hundred_thousand(false);
}

#[test]
fn a_directory_of_a_hundred_thousand_entries_with_metadata_csum() {
    a_hundred_thousand(true);
}

fn two_levels(metadata_csum: bool) {
    // 19 entries of 208 bytes a leaf: over 1,000 leaves, past the root's 508.
    if let Some(dump) = check_directory(&names(20_000, 200), 1, metadata_csum) {
        // 1,053 leaves under three nodes (of 511, or 510 with checksums).
        assert_eq!((dump.leaves, dump.index_hashes.len()), (1053, 1053 + 3));
    }
}

#[test]
fn a_directory_of_two_index_levels() {
    two_levels(false);
}

#[test]
fn a_directory_of_two_index_levels_with_metadata_csum() {
    two_levels(true);
}

/// Pairs of 200-byte names with equal major hashes under the test seed:
/// the names share a 192-byte prefix, so a birthday search over the last
/// eight bytes finds a pair every ~2^16 candidates.
fn colliding_pairs(pairs: usize) -> Vec<[Vec<u8>; 2]> {
    let seed = common::options().hash_seed;
    let prefix = "p".repeat(192);
    let mut seen: HashMap<u32, u32> = HashMap::new();
    let mut found = Vec::new();
    for i in 0u32.. {
        let name = format!("{prefix}{i:08x}").into_bytes();
        let (major, _) = half_md4(&name, &seed);
        if let Some(j) = seen.insert(major, i) {
            found.push([format!("{prefix}{j:08x}").into_bytes(), name]);
            if found.len() == pairs {
                break;
            }
        }
    }
    found
}

fn collisions(metadata_csum: bool) {
    // 19 entries of 208 bytes a leaf: 12 pairs sorted by hash put entries
    // 18 and 19, a pair, on both sides of the first leaf boundary.
    let pairs = colliding_pairs(12);
    let seed = common::options().hash_seed;
    for [a, b] in &pairs {
        assert_eq!(half_md4(a, &seed).0, half_md4(b, &seed).0);
    }
    let names: Vec<Vec<u8>> = pairs.into_iter().flatten().collect();
    if let Some(dump) = check_directory(&names, 0, metadata_csum) {
        assert!(
            dump.index_hashes.iter().any(|h| h & 1 == 1),
            "a leaf starts inside a run of equal hashes: {:x?}",
            dump.index_hashes
        );
    }
}

/// A two-level directory whose first node ends inside a run of equal
/// hashes: `fillers` names hashing below the pair, the pair, then 190 names
/// hashing above it. The second name is found only if the kernel's lookup
/// climbs back to the root and down into the next node, which it does
/// because the root's entry for that node has the collision bit.
fn collision_across_nodes(metadata_csum: bool) {
    let seed = common::options().hash_seed;
    // The pair of the highest hash, so most fillers hash below it.
    let pair = colliding_pairs(12).into_iter().max_by_key(|[a, _]| half_md4(a, &seed).0).unwrap();
    let hash = half_md4(&pair[0], &seed).0;
    // 19 entries of 208 bytes a leaf; 511 leaves a node (510 with checksums).
    let node_limit = if metadata_csum { 510 } else { 511 };
    let below_wanted = node_limit * 19 - 1;
    let (mut below, mut above) = (Vec::new(), Vec::new());
    let prefix = "q".repeat(192);
    for i in 0u32.. {
        let name = format!("{prefix}{i:08x}").into_bytes();
        match half_md4(&name, &seed).0 {
            h if h < hash && below.len() < below_wanted => below.push(name),
            h if h > hash && above.len() < 190 => above.push(name),
            _ => {}
        }
        if below.len() == below_wanted && above.len() == 190 {
            break;
        }
    }
    let names: Vec<Vec<u8>> = below.into_iter().chain(pair).chain(above).collect();
    if let Some(dump) = check_directory(&names, 1, metadata_csum) {
        assert_eq!(dump.leaves, node_limit + 11);
        assert!(dump.index_hashes.contains(&(hash | 1)), "the second node starts with {:x}|1", hash);
    }
}

#[test]
fn a_node_boundary_inside_a_run_of_equal_hashes() {
    collision_across_nodes(false);
}

#[test]
fn a_node_boundary_inside_a_run_of_equal_hashes_with_metadata_csum() {
    collision_across_nodes(true);
}

#[test]
fn a_leaf_boundary_inside_a_run_of_equal_hashes() {
    collisions(false);
}

#[test]
fn a_leaf_boundary_inside_a_run_of_equal_hashes_with_metadata_csum() {
    collisions(true);
}

/// A tree of one-block directories only, with names of every kind: the
/// varied tree without its big directory, and names not UTF-8.
fn small_directories() -> Tree {
    let mut tree = common::varied_tree();
    assert!(tree.remove(Tree::ROOT, b"many"));
    let odd = common::dir(&mut tree, Tree::ROOT, "odd");
    tree.add(odd, vec![0xC3, 0x28, 0xFF], empty_file());
    tree.add(odd, "é".repeat(100).into_bytes(), empty_file());
    tree
}

#[test]
fn with_dir_index_one_block_directories_keep_their_bytes() {
    let tree = small_directories();
    let dir = tempfile::tempdir().unwrap();
    let minimal = common::options();
    let indexed = ImageOptions { features: Features { dir_index: true, ..Features::MINIMAL }, ..common::options() };
    let (pa, _) = write_in(&tree, dir.path(), "minimal", &minimal);
    let (pb, _) = write_in(&tree, dir.path(), "indexed", &indexed);
    let (a, b) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    assert_eq!(a.len(), b.len());
    // Only the superblock's compatible features differ (dir_index), in the
    // primary superblock and its backups.
    let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert!(!differing.is_empty());
    for &i in &differing {
        let in_sb = if i < 4096 { i - 1024 } else { i % (32768 * 4096) };
        assert!((0x5C..0x60).contains(&in_sb), "byte {i} differs");
    }
    common::e2fsck(&pb);
}

fn write_in(tree: &Tree, dir: &Path, name: &str, options: &ImageOptions) -> (PathBuf, rootfs_cache_ext4::WriteReport) {
    let sub = dir.join(name);
    std::fs::create_dir(&sub).unwrap();
    common::write(tree, &sub, options)
}

#[test]
fn without_dir_index_big_directories_stay_linear_with_checksum_tails() {
    if !tools() {
        return;
    }
    let names = names(5600, 64);
    let tmp = tempfile::tempdir().unwrap();
    let options = ImageOptions { features: Features { dir_index: false, ..features(true) }, ..common::options() };
    let (image, _) = common::write(&tree_of(&names), tmp.path(), &options);
    // Every block of the linear /d has the tail tune2fs expects, with
    // e2fsprogs' checksum.
    same_as_tune2fs_checksums(&image, &DIRECTORIES);
    common::e2fsck(&image);
    let stat = common::debugfs(&image, "stat /d").expect("debugfs is installed");
    assert!(stat.contains("Flags: 0x80000") && stat.contains("Size: 409600"), "linear, 100 blocks: {stat}");
    let m = Mount::new(&image, false);
    for name in names.iter().step_by(7) {
        assert!(std::fs::symlink_metadata(m.path(&[b"d/", name.as_slice()].concat())).is_ok());
    }
    assert_eq!(std::fs::read_dir(m.path(b"d")).unwrap().count(), names.len());
}

#[test]
fn a_big_lost_and_found_is_hashed_and_e2fsck_finds_it_whole() {
    if !tools() {
        return;
    }
    for metadata_csum in [false, true] {
        let mut tree = Tree::new(common::meta(0o755, 0, 1_700_000_000));
        let lf = common::dir(&mut tree, Tree::ROOT, "lost+found");
        for name in names(600, 24) {
            tree.add(lf, name, empty_file());
        }
        let tmp = tempfile::tempdir().unwrap();
        let (image, _) = common::write(&tree, tmp.path(), &options(metadata_csum));
        if metadata_csum {
            same_as_tune2fs_checksums(&image, &["/", "/lost+found"]);
        }
        common::e2fsck(&image);
        let dump = htree_dump(&image, "/lost+found", metadata_csum);
        assert_eq!((dump.levels, dump.names), (0, 600));
    }
}

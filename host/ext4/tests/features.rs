//! The optional features (`64bit`, `flex_bg`, `huge_file`,
//! `metadata_csum`), each alone and together as `Features::EXT4`: images
//! e2fsck passes, with the features `dumpe2fs` lists and `mke2fs -t ext4`
//! sets, that the kernel mounts and reads back; checksums e2fsck checks
//! (one flipped byte is caught), and flex groups laid out as mke2fs lays
//! them out.
//!
//! Directory blocks are checksummed by the `dir_index` work (another
//! branch). Until it lands, an image with `metadata_csum` has directory
//! blocks without checksums: the e2fsck check then accepts exactly those
//! complaints (every one paired with a "has no checksum" for its block) and
//! nothing else, and the kernel's reads go through inode numbers
//! (`open_by_handle_at`) instead of paths; a copy that `e2fsck -fy` gave
//! directory checksums (nothing else) is then read back through paths and
//! written to. Once directory blocks carry their checksums, the same tests
//! require a silent e2fsck and read the image itself back through paths.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rootfs_cache_ext4::format::BLOCKS_PER_GROUP;
use rootfs_cache_ext4::{Features, FileData, ImageOptions, Kind, NodeId, Tree};

/// `Features::EXT4` without `dir_index`, which another branch implements.
const EXT4: Features = Features { dir_index: false, ..Features::EXT4 };

/// Each feature alone, then all of them.
fn variants() -> [(&'static str, Features); 5] {
    let m = Features::MINIMAL;
    [
        ("64bit", Features { sixty_four_bit: true, ..m }),
        ("flex_bg", Features { flex_bg: true, ..m }),
        ("huge_file", Features { huge_file: true, ..m }),
        ("metadata_csum", Features { metadata_csum: true, ..m }),
        ("ext4", EXT4),
    ]
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command; its exit code and its stdout and stderr together.
fn run(program: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn tools_present() -> bool {
    let present = Command::new("e2fsck").arg("-V").output().is_ok();
    if !present {
        assert!(std::env::var_os("CI").is_none(), "CI is set but e2fsprogs is not installed");
        println!("SKIPPED: e2fsprogs not installed");
    }
    present
}

fn write(tree: &Tree, features: Features, size: Option<u64>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let options = ImageOptions { features, size, ..common::options() };
    let (path, report) = common::write(tree, dir.path(), &options);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), report.bytes);
    (dir, path)
}

/// The problems `e2fsck -fn` reports: its exit code and every line that is
/// not a pass heading, a "Fix? no", the version or the summary.
fn e2fsck_problems(image: &Path) -> (i32, Vec<String>) {
    let (code, text) = run("e2fsck", &["-fn", image.to_str().unwrap()]);
    let problems = text
        .lines()
        .filter(|l| {
            !(l.trim().is_empty()
                || l.starts_with("Pass ")
                || l.starts_with("e2fsck ")
                || l.trim() == "Fix? no"
                || l.contains(" files (")
                || l.contains("WARNING: Filesystem still has errors"))
        })
        .map(str::to_owned)
        .collect();
    (code, problems)
}

/// Checks `image` with `e2fsck -fn`: silent, or (with `metadata_csum`,
/// until directory blocks are checksummed) complaining of nothing but
/// directory blocks without checksums. Returns whether directory blocks are
/// checksummed (or need none): whether the kernel can read directories.
fn e2fsck_clean(image: &Path, features: Features) -> bool {
    let (code, problems) = e2fsck_problems(image);
    let unchecksummed: BTreeSet<String> = problems
        .iter()
        .filter_map(|l| l.strip_suffix(", offset 0: directory has no checksum."))
        .map(str::to_owned)
        .collect();
    if unchecksummed.is_empty() {
        assert!(
            code == 0 && problems.is_empty(),
            "e2fsck -fn {}: exit {code}:\n{}",
            image.display(),
            problems.join("\n")
        );
        return true;
    }
    assert!(features.metadata_csum, "directory checksums without metadata_csum: {problems:?}");
    for line in &problems {
        let tolerated = line.ends_with(", offset 0: directory has no checksum.")
            || line
                .strip_suffix(": directory passes checks but fails checksum.")
                .is_some_and(|block| unchecksummed.contains(block));
        assert!(tolerated, "e2fsck -fn {}: {line}\n(all: {problems:#?})", image.display());
    }
    assert_eq!(code, 4, "{problems:?}");
    false
}

/// The features `dumpe2fs -h` lists.
fn listed_features(image: &Path) -> BTreeSet<String> {
    let (_, text) = run("dumpe2fs", &["-h", image.to_str().unwrap()]);
    let line = text.lines().find_map(|l| l.strip_prefix("Filesystem features:")).expect("a feature line");
    line.split_whitespace().map(str::to_owned).collect()
}

/// The features an image with `features` has: the base every image has, and
/// each optional one's name.
fn expected_features(features: Features) -> BTreeSet<String> {
    let base = ["ext_attr", "filetype", "extent", "sparse_super", "large_file", "dir_nlink", "extra_isize"];
    let optional = [
        (features.journal, "has_journal"),
        (features.dir_index, "dir_index"),
        (features.sixty_four_bit, "64bit"),
        (features.flex_bg, "flex_bg"),
        (features.huge_file, "huge_file"),
        (features.metadata_csum, "metadata_csum"),
    ];
    base.into_iter()
        .chain(optional.into_iter().filter(|(on, _)| *on).map(|(_, name)| name))
        .map(str::to_owned)
        .collect()
}

/// A mount of its own loop device (not one `mount -o loop` might reuse,
/// read-only, from the mount before), unmounted and detached when dropped.
struct Mount {
    at: PathBuf,
    device: String,
}

impl Mount {
    fn new(image: &Path, at: &Path, options: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let mut losetup = vec!["--find", "--show"];
        if options == "ro" {
            losetup.push("--read-only");
        }
        losetup.push(image.to_str().unwrap());
        let (code, text) = run("losetup", &losetup);
        assert_eq!(code, 0, "losetup: {text}");
        let device = text.trim().to_owned();
        let (code, text) = run("mount", &["-t", "ext4", "-o", options, &device, at.to_str().unwrap()]);
        if code != 0 {
            run("losetup", &["-d", &device]);
        }
        assert_eq!(code, 0, "mount -o {options} {}: {text}\n{}", image.display(), kernel_log());
        Self { at: at.to_owned(), device }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Retried: something else on the machine (a udev probe) may hold
        // the new device for a moment.
        let mut umount = run("umount", &[self.at.to_str().unwrap()]);
        for _ in 0..20 {
            if umount.0 == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            umount = run("umount", &[self.at.to_str().unwrap()]);
        }
        let (code, text) = umount;
        if code != 0 {
            // Not left mounted: detached lazily, when whatever holds it lets go.
            run("umount", &["-l", self.at.to_str().unwrap()]);
        }
        let (detached, detach_text) = run("losetup", &["-d", &self.device]);
        if !std::thread::panicking() {
            assert_eq!(code, 0, "umount: {text}");
            assert_eq!(detached, 0, "losetup -d: {detach_text}");
        }
    }
}

/// The kernel's last messages, for a failure's message.
fn kernel_log() -> String {
    let (_, text) = run("dmesg", &[]);
    text.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The bytes of a file of the tree.
fn content(kind: &Kind) -> Vec<u8> {
    let Kind::File { size, data } = kind else { panic!("not a file") };
    match data {
        FileData::Bytes(bytes) => bytes.to_vec(),
        FileData::Range { file, offset } => {
            let mut buf = vec![0u8; *size as usize];
            file.read_exact_at(&mut buf, *offset).unwrap();
            buf
        }
        FileData::At { .. } => panic!("the tests' trees hold no such file"),
    }
}

/// The extended attributes of `path` (not following a symlink), sorted.
fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 1 << 16];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names[..n]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 1 << 16];
            let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
            value.truncate(len);
            (name.to_vec(), value)
        })
        .collect();
    out.sort();
    out
}

/// Compares the mounted tree at `at` with node `id` of `tree`: kind, mode,
/// owner, content, target, device number and attributes, recursively.
fn compare(tree: &Tree, id: NodeId, at: &Path) {
    let node = tree.node(id);
    let md = std::fs::symlink_metadata(at).unwrap_or_else(|e| panic!("{}: {e}", at.display()));
    assert_eq!(md.mode() & 0o7777, node.meta.perm, "{}", at.display());
    assert_eq!((md.uid(), md.gid()), (node.meta.uid, node.meta.gid), "{}", at.display());
    let mut want_xattrs = node.meta.xattrs.clone();
    want_xattrs.sort();
    assert_eq!(xattrs_of(at), want_xattrs, "{}", at.display());
    let ft = md.file_type();
    match &node.kind {
        Kind::Dir(entries) => {
            assert!(ft.is_dir(), "{}", at.display());
            let mut names: Vec<Vec<u8>> = std::fs::read_dir(at)
                .unwrap()
                .map(|e| std::os::unix::ffi::OsStrExt::as_bytes(e.unwrap().file_name().as_os_str()).to_vec())
                .collect();
            names.sort();
            let mut want: Vec<Vec<u8>> = entries.keys().cloned().collect();
            if id == Tree::ROOT && !entries.contains_key(&b"lost+found"[..]) {
                want.push(b"lost+found".to_vec());
                want.sort();
            }
            assert_eq!(names, want, "{}", at.display());
            for (name, &child) in entries {
                compare(tree, child, &at.join(std::ffi::OsStr::new(std::str::from_utf8(name).unwrap())));
            }
        }
        Kind::File { size, .. } => {
            assert!(ft.is_file(), "{}", at.display());
            assert_eq!(md.len(), *size, "{}", at.display());
            assert!(std::fs::read(at).unwrap() == content(&node.kind), "{}: content differs", at.display());
        }
        Kind::Symlink(target) => {
            assert!(ft.is_symlink());
            let read = std::fs::read_link(at).unwrap();
            assert_eq!(std::os::unix::ffi::OsStrExt::as_bytes(read.as_os_str()), &target[..]);
        }
        Kind::CharDevice(rdev) => assert!(ft.is_char_device() && md.rdev() == *rdev, "{}", at.display()),
        Kind::BlockDevice(rdev) => assert!(ft.is_block_device() && md.rdev() == *rdev, "{}", at.display()),
        Kind::Fifo => assert!(ft.is_fifo()),
        Kind::Socket => assert!(ft.is_socket()),
    }
}

/// The inode number of `path` in `image`, from debugfs (`-n`: without
/// checking checksums, so that it reads directory blocks without them).
fn inode_of(image: &Path, path: &str) -> u32 {
    let (code, text) = run("debugfs", &["-n", "-R", &format!("stat \"{path}\""), image.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let at = text.find("Inode: ").unwrap_or_else(|| panic!("no inode for {path}: {text}"));
    text[at + 7..].split_whitespace().next().unwrap().parse().unwrap()
}

/// Opens inode `ino` of the filesystem mounted at `mount` by its number,
/// through no directory (`open_by_handle_at`, a handle of type
/// `FILEID_INO32_GEN`): the kernel reads and checks the inode, its extent
/// tree and its attribute block, not the directories above it.
fn open_inode(mount: &Path, ino: u32, flags: i32) -> File {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        ino: u32,
        generation: u32,
    }
    let dir = File::open(mount).unwrap();
    let mut handle = Handle { bytes: 8, kind: 1, ino, generation: 0 };
    // SAFETY: `handle` is a `struct file_handle` with its 8 bytes of handle
    // after the header, and lives across the call.
    let fd = unsafe {
        libc::open_by_handle_at(dir.as_raw_fd(), (&raw mut handle).cast::<libc::file_handle>(), flags | libc::O_CLOEXEC)
    };
    assert!(fd >= 0, "open_by_handle_at({ino}): {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor, owned by nothing else.
    unsafe { File::from_raw_fd(fd) }
}

/// Reads the files of the varied tree with attributes, extent blocks and
/// plain data by inode number, and compares them with the tree.
fn compare_by_inode(tree: &Tree, image: &Path, mount: &Path) {
    for path in ["/etc/passwd", "/var/holes", "/var/xattr-inline", "/var/xattr-block"] {
        let ino = inode_of(image, path);
        let mut id = Tree::ROOT;
        for part in path[1..].split('/') {
            id = tree.lookup(id, part.as_bytes()).unwrap();
        }
        let file = open_inode(mount, ino, libc::O_RDONLY);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes).unwrap();
        assert!(bytes == content(&tree.node(id).kind), "{path}: content differs");
        for (name, value) in &tree.node(id).meta.xattrs {
            let mut buf = vec![0u8; 1 << 16];
            let len = rustix::fs::fgetxattr(&file, &name[..], &mut buf[..])
                .unwrap_or_else(|e| panic!("{path}: {}: {e}", String::from_utf8_lossy(name)));
            assert_eq!(&buf[..len], &value[..], "{path}");
        }
    }
}

/// Mounts `image` read-only and reads the tree back, then read-write and
/// writes to it (new directories, which the kernel places in groups of
/// their own, and files; or, without readable directories, more blocks for
/// an existing file: block bitmaps and descriptors the kernel checks and
/// updates), and checks it with e2fsck again.
///
/// Without readable directories (directory blocks not yet checksummed), a
/// copy that `e2fsck -fy` gave directory checksums (and nothing else: the
/// check before found nothing else) then goes through the path-based checks
/// too, so the kernel allocates inodes and blocks in our groups.
fn kernel_reads_and_writes(tree: &Tree, image: &Path, features: Features, dirs_readable: bool) {
    let mnt = image.with_extension("mnt");
    {
        let _m = Mount::new(image, &mnt, "ro");
        if dirs_readable {
            compare(tree, Tree::ROOT, &mnt);
        } else {
            compare_by_inode(tree, image, &mnt);
        }
    }
    {
        let _m = Mount::new(image, &mnt, "rw");
        if dirs_readable {
            for d in 0..8 {
                let new = mnt.join(format!("new-dir-{d}"));
                std::fs::create_dir(&new).unwrap();
                std::fs::write(new.join("new-file"), vec![d as u8; 1 << 20]).unwrap();
            }
            std::fs::write(mnt.join("etc/hostname"), b"written\n").unwrap();
        } else {
            let file = open_inode(&mnt, inode_of(image, "/etc/passwd"), libc::O_WRONLY);
            file.write_all_at(&vec![7u8; 1 << 20], 1 << 20).unwrap();
        }
        // Into the journal, and through it to the image.
        rustix::fs::sync();
    }
    e2fsck_clean(image, features);
    if !dirs_readable {
        let copy = image.with_extension("dirs-checksummed");
        std::fs::copy(image, &copy).unwrap();
        let (code, text) = run("e2fsck", &["-fy", copy.to_str().unwrap()]);
        assert_eq!(code, 1, "e2fsck -fy: {text}");
        assert!(e2fsck_clean(&copy, features), "e2fsck -fy left directories without checksums");
        // The tree as written, with the bytes the first mount wrote to /etc/passwd.
        let mut tree = tree.clone();
        let etc = tree.lookup(Tree::ROOT, b"etc").unwrap();
        let passwd = tree.lookup(etc, b"passwd").unwrap();
        let mut bytes = content(&tree.node(passwd).kind);
        bytes.resize(1 << 20, 0);
        bytes.extend(vec![7u8; 1 << 20]);
        tree.node_mut(passwd).kind = Kind::File { size: bytes.len() as u64, data: FileData::Bytes(Arc::new(bytes)) };
        kernel_reads_and_writes(&tree, &copy, features, true);
        std::fs::remove_file(&copy).unwrap();
    }
}

/// A tree of the varied tree and one file of two groups' blocks: past
/// group 0's data and group 1's backup, an extent of the longest length
/// runs on into group 2 (which has no backup).
fn tree_with_a_long_file() -> Tree {
    let mut tree = common::varied_tree();
    let mut bytes = vec![0u8; 2 * BLOCKS_PER_GROUP as usize * 4096];
    for (i, block) in bytes.chunks_mut(4096).enumerate() {
        block.fill((i % 251) as u8);
    }
    let kind = Kind::File { size: bytes.len() as u64, data: FileData::Bytes(Arc::new(bytes)) };
    tree.add(Tree::ROOT, b"long".to_vec(), rootfs_cache_ext4::Node { meta: common::meta(0o644, 0, 1), kind });
    tree
}

/// Over 16 groups: two flex groups, and backups past group 1.
const MANY_GROUPS: u64 = 18 * BLOCKS_PER_GROUP * 4096;

#[test]
fn each_feature_and_all_give_clean_images_the_kernel_reads_back() {
    if !tools_present() {
        return;
    }
    let small = common::varied_tree();
    let long = tree_with_a_long_file();
    for (name, features) in variants() {
        for (tree, size) in [(&small, None), (&long, Some(MANY_GROUPS))] {
            let (_dir, image) = write(tree, features, size);
            let dirs_readable = e2fsck_clean(&image, features);
            assert_eq!(listed_features(&image), expected_features(features), "{name}");
            if is_root() {
                kernel_reads_and_writes(tree, &image, features, dirs_readable);
            } else {
                assert!(std::env::var_os("CI").is_none(), "CI is set but the test does not run as root");
            }
        }
    }
}

#[test]
fn ext4s_features_are_mke2fs_ext4s_less_resize_inode() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("mke2fs.img");
    File::create(&reference).unwrap().set_len(256 << 20).unwrap();
    let (code, text) = run("mke2fs", &["-q", "-F", "-t", "ext4", reference.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let mut want = listed_features(&reference);
    want.remove("resize_inode");
    if !Features::EXT4.dir_index {
        want.remove("dir_index");
    }
    for features in [EXT4, Features::EXT4] {
        let (_dir, image) = write(&common::varied_tree(), features, None);
        let mut got = listed_features(&image);
        if features.dir_index != Features::EXT4.dir_index {
            got.insert("dir_index".into());
        }
        assert_eq!(got, want);
    }
}

/// The journal superblock of an image with every feature is the one
/// mke2fs writes for a filesystem of the same size and UUID.
#[test]
fn the_journal_superblock_is_mke2fss_with_checksums_on() {
    if !tools_present() {
        return;
    }
    let (dir, image) = write(&common::varied_tree(), EXT4, Some(256 << 20));
    let reference = dir.path().join("mke2fs.img");
    File::create(&reference).unwrap().set_len(256 << 20).unwrap();
    let uuid = uuid_text(b"rootfs-cache-ext");
    let (code, text) =
        run("mke2fs", &["-q", "-F", "-t", "ext4", "-b", "4096", "-U", &uuid, reference.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let journal_sb = |image: &Path| {
        let out = dir.path().join("journal");
        let (code, text) =
            run("debugfs", &["-n", "-R", &format!("dump <8> {}", out.display()), image.to_str().unwrap()]);
        assert_eq!(code, 0, "{text}");
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        bytes[..1024].to_vec()
    };
    let (ours, theirs) = (journal_sb(&image), journal_sb(&reference));
    assert_eq!(&ours[..4], &[0xC0, 0x3B, 0x39, 0x98]);
    assert!(ours == theirs, "ours {:02x?}\nmke2fs's {:02x?}", &ours[..0x100], &theirs[..0x100]);
}

fn uuid_text(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// `dumpe2fs`'s group lines, by group: its whole paragraph.
fn groups(image: &Path) -> Vec<String> {
    let (code, text) = run("dumpe2fs", &[image.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("Group ") && line.contains(": (Blocks ") {
            out.push(String::new());
        }
        if let Some(last) = out.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    out
}

/// The first number after `label` in `text`.
fn number_after(text: &str, label: &str) -> u64 {
    let at = text.find(label).unwrap_or_else(|| panic!("no {label:?} in {text}")) + label.len();
    text[at..].trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn flex_groups_pack_metadata_into_group_0_and_extents_cross_group_borders() {
    if !tools_present() {
        return;
    }
    let (_dir, image) = write(&tree_with_a_long_file(), EXT4, Some(MANY_GROUPS));
    let groups = groups(&image);
    assert_eq!(groups.len(), 18);
    let (code, text) = run("dumpe2fs", &["-h", image.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(number_after(&text, "Flex block group size:"), 16);
    assert_eq!(number_after(&text, "Group descriptor size:"), 64);
    let itable_blocks = number_after(&text, "Inode blocks per group:");
    let first_block_bitmap = number_after(&groups[0], "Block bitmap at ");
    for (g, group) in groups.iter().enumerate() {
        let (bb, ib, it) = (
            number_after(group, "Block bitmap at "),
            number_after(group, "Inode bitmap at "),
            number_after(group, "Inode table at "),
        );
        let (first, n, index) = if g < 16 { (0, 16, g as u64) } else { (16, 2, g as u64 - 16) };
        let base = if first == 0 { first_block_bitmap } else { 16 * BLOCKS_PER_GROUP };
        // Block bitmaps, then inode bitmaps, then inode tables, in group order.
        assert_eq!((bb, ib, it), (base + index, base + n + index, base + 2 * n + index * itable_blocks), "{group}");
        if (1..16).contains(&g) {
            assert!(bb < BLOCKS_PER_GROUP && ib < BLOCKS_PER_GROUP && it < BLOCKS_PER_GROUP, "{group}");
            assert!(group.contains("(bg #0 + "), "{group}");
        }
    }
    // Where mke2fs -t ext4 (without resize_inode) puts them, for the same
    // size and inodes: exactly there.
    let reference = image.with_extension("mke2fs");
    File::create(&reference).unwrap().set_len(MANY_GROUPS).unwrap();
    let inodes = number_after(&text, "Inode count:").to_string();
    let args = ["-q", "-F", "-t", "ext4", "-O", "^resize_inode", "-b", "4096", "-N", &inodes];
    let (code, out) = run("mke2fs", &[&args[..], &[reference.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{out}");
    let places = |groups: &[String]| -> Vec<(u64, u64, u64)> {
        groups
            .iter()
            .map(|g| {
                (
                    number_after(g, "Block bitmap at "),
                    number_after(g, "Inode bitmap at "),
                    number_after(g, "Inode table at "),
                )
            })
            .collect()
    };
    assert_eq!(places(&groups), places(&self::groups(&reference)), "the bitmaps and inode tables mke2fs places");
    // The long file's extents: one runs from group 1 into group 2 (no backup there).
    let (code, text) = run("debugfs", &["-n", "-R", "ex /long", image.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let crossing =
        text.lines().filter_map(physical_range).find(|&(from, to)| from / BLOCKS_PER_GROUP != to / BLOCKS_PER_GROUP);
    assert!(crossing.is_some(), "no extent crosses a group border:\n{text}");
}

/// The physical range `from - to` of a line of debugfs's `ex`.
fn physical_range(line: &str) -> Option<(u64, u64)> {
    // " 0/ 0   1/  3     0 - 32767  8034 - 40801  32768"
    let fields: Vec<&str> = line.split_whitespace().collect();
    let dashes: Vec<usize> = fields.iter().enumerate().filter(|(_, f)| **f == "-").map(|(i, _)| i).collect();
    let &[_, second] = &dashes[..] else { return None };
    Some((fields.get(second - 1)?.parse().ok()?, fields.get(second + 1)?.parse().ok()?))
}

/// Flips one byte of `image` at `offset`.
fn flip(image: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(image).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], offset).unwrap();
}

#[test]
fn one_flipped_byte_in_checksummed_metadata_is_caught() {
    if !tools_present() {
        return;
    }
    let (dir, image) = write(&common::varied_tree(), EXT4, None);
    let clean = e2fsck_problems(&image);
    e2fsck_clean(&image, EXT4);
    let groups = groups(&image);
    let inode_table = number_after(&groups[0], "Inode table at ");
    let block_bitmap = number_after(&groups[0], "Block bitmap at ");
    let stat = |path: &str| run("debugfs", &["-n", "-R", &format!("stat \"{path}\""), image.to_str().unwrap()]).1;
    let xattr_block = number_after(&stat("/var/xattr-block"), "File ACL:");
    let holes = stat("/var/holes");
    let extent_block = number_after(&holes, "(ETB0):");
    let etc = u64::from(inode_of(&image, "/etc"));
    // (what, where, e2fsck's complaint, whether e2fsck -n fails on it).
    let cases = [
        // An inode's access time.
        ("an inode", inode_table * 4096 + (etc - 1) * 256 + 0x08, "checksum does not match inode", true),
        // Group 0's descriptor: bg_exclude_bitmap_lo, unused. e2fsck -n
        // reports it and carries on ("IGNORED", exit 0); the kernel refuses
        // to mount it read-write (below; read-only, it only logs it).
        ("a descriptor", 4096 + 0x14, "descriptor checksums are invalid", false),
        // A block in use marked free, in group 0's block bitmap.
        ("a bitmap", block_bitmap * 4096 + 1, "block bitmap does not match checksum", true),
        // An unused entry slot of an extent block.
        ("an extent block", extent_block * 4096 + 2000, "checksum does not match extent", true),
        // The free room between an attribute block's entries and values.
        ("an attribute block", xattr_block * 4096 + 1000, "checksum does not match block", true),
    ];
    for (what, offset, complaint, fails) in cases {
        let copy = dir.path().join("flipped.img");
        std::fs::copy(&image, &copy).unwrap();
        flip(&copy, offset);
        let (code, problems) = e2fsck_problems(&copy);
        if fails {
            assert_ne!(code, 0, "{what}: e2fsck -fn passed it");
        }
        let new: Vec<&String> = problems.iter().filter(|p| !clean.1.contains(p)).collect();
        assert!(
            new.iter().any(|p| p.contains(complaint)),
            "{what}: no {complaint:?} among e2fsck's complaints: {new:#?}"
        );
        println!("{what}: exit {code}, {new:?}");
        if !fails && is_root() {
            assert!(!mounts_rw(&copy), "{what}: the kernel mounted it read-write");
        }
        std::fs::remove_file(&copy).unwrap();
    }
}

/// Whether the kernel mounts `image` read-write; unmounted again if so.
fn mounts_rw(image: &Path) -> bool {
    let (code, text) = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
    assert_eq!(code, 0, "losetup: {text}");
    let device = text.trim().to_owned();
    let at = image.with_extension("mnt");
    std::fs::create_dir_all(&at).unwrap();
    let (code, _) = run("mount", &["-t", "ext4", "-o", "rw", &device, at.to_str().unwrap()]);
    if code == 0 {
        run("umount", &[at.to_str().unwrap()]);
    }
    run("losetup", &["-d", &device]);
    code == 0
}

#[test]
fn each_feature_gives_the_same_bytes_every_time() {
    for (name, features) in variants() {
        let tree = common::varied_tree();
        let (_a, one) = write(&tree, features, None);
        let (_b, two) = write(&tree, features, None);
        assert!(std::fs::read(one).unwrap() == std::fs::read(two).unwrap(), "{name}: two images differ");
    }
}

/// A short last group that starts a flex group of its own holds its
/// bitmaps and inode table, and the image is clean and mounts.
#[test]
fn a_short_last_group_starting_a_flex_group_holds_its_own_metadata() {
    if !tools_present() {
        return;
    }
    let size = (16 * BLOCKS_PER_GROUP + 600) * 4096;
    for features in [EXT4, Features { metadata_csum: false, ..EXT4 }] {
        let (_dir, image) = write(&common::varied_tree(), features, Some(size));
        let dirs_readable = e2fsck_clean(&image, features);
        let groups = groups(&image);
        assert_eq!(groups.len(), 17);
        let last = &groups[16];
        let start = 16 * BLOCKS_PER_GROUP;
        let (bb, ib, it) = (
            number_after(last, "Block bitmap at "),
            number_after(last, "Inode bitmap at "),
            number_after(last, "Inode table at "),
        );
        assert_eq!((bb, ib, it), (start, start + 1, start + 2), "{last}");
        if is_root() {
            kernel_reads_and_writes(&common::varied_tree(), &image, features, dirs_readable);
        }
    }
}

/// Every combination of the four features (with a journal, without
/// `dir_index`) gives an image e2fsck passes, listing exactly its features.
#[test]
fn every_combination_of_the_features_is_clean() {
    if !tools_present() {
        return;
    }
    let tree = common::varied_tree();
    for bits in 0..16u8 {
        let features = Features {
            sixty_four_bit: bits & 1 != 0,
            flex_bg: bits & 2 != 0,
            huge_file: bits & 4 != 0,
            metadata_csum: bits & 8 != 0,
            ..EXT4
        };
        let (_dir, image) = write(&tree, features, None);
        e2fsck_clean(&image, features);
        assert_eq!(listed_features(&image), expected_features(features), "{features:?}");
    }
}

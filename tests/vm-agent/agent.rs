//! The micro-VM test agent: `/sbin/vm-agent`, PID 1 of a VM booted from an
//! image (see `tests/src/vm.rs`). Std only, linked statically, so the image
//! needs no shell and no libraries.
//!
//! It checks that it is PID 1, walks the whole tree and prints one line per
//! entry between `BEGIN-REPORT` and `END-REPORT`; then it mounts `/proc`
//! (creating the directory if the image has none: the walk never sees a
//! mounted `/proc`), checks that `/` is ext4 mounted read-write, writes a
//! file, renames one, deletes one, calls `sync` and powers the VM off.
//!
//! Every line it prints starts with a tag. Entry lines are
//! `E <kind> <mode> <uid> <gid> <size> <mtime> <rdev> <ino> <nlink> <sha256|-> <target|-> <xattrs|-> <path>`
//! with the mode in octal, `rdev` in hex, the target and path hex-encoded
//! (names need not be UTF-8) and xattrs as `name=sha256(value)` joined by
//! commas, names hex-encoded. Other lines: `PID1 <pid>`,
//! `ROOT <fstype> <options> <source>`, `CREATED <path>`,
//! `WROTE <path> <sha256>`, `RENAMED <from> <to>`, `DELETED <path>`,
//! `SYNCED`, `AGENT-ERROR <message>`, `POWER-OFF`.
//!
//! With `vm_agent.churn=<seed>` on the kernel command line (read from
//! `/proc/cmdline`; the kernel passes dotted parameters to no one else), it
//! does not write, rename, delete or power off after the checks: it churns
//! instead, forever, until the host kills the VM. Under `/churn` it creates,
//! overwrites, appends to, renames, hard-links and deletes files, makes and
//! removes directories, and calls `fsync` on some files and directories and
//! now and then `sync`, in a sequence drawn from `seed` (bounded to a few
//! MiB, so a small image does not fill up). It prints `CHURN-STARTED <seed>`
//! once its first write is done, `CHURN <ops>` every 64 operations, and
//! `CHURN-ERROR <message>` for an error a churn cannot cause (not a missing
//! file, which the random sequence runs into all the time).
//!
//! When the image holds `/vm-agent-bench` (the benchmark's images, see
//! `tests/benches/vm_ext4.rs`), it measures instead of reporting, timing
//! with `clock_gettime(CLOCK_MONOTONIC)`: it prints `BENCH-AGENT <pid>`
//! first, then walks the whole tree while the page cache is still cold
//! (`readdir` and `lstat` of every entry, as `find` does, in the order the
//! directories give; no file content is read) and prints
//! `BENCH-WALK <entries> <ns>`; then it reads the file (its first line is a
//! directory, each further line a name to look up in it), mounts `/proc`,
//! calls `sync` and drops the caches (`/proc/sys/vm/drop_caches`), and
//! `lstat`s every name relative to the directory (`fstatat`), printing
//! `BENCH-LOOKUP <names> <found> <absent> <ns>`. Then `AGENT-ERROR` lines
//! for what went wrong, `BENCH-DONE`, `sync`, and it powers off.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

unsafe extern "C" {
    fn mount(source: *const i8, target: *const i8, fstype: *const i8, flags: u64, data: *const u8) -> i32;
    fn llistxattr(path: *const i8, list: *mut u8, size: usize) -> isize;
    fn lgetxattr(path: *const i8, name: *const i8, value: *mut u8, size: usize) -> isize;
    fn sync();
    fn reboot(cmd: i32) -> i32;
    fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    fn fstatat(dirfd: i32, path: *const i8, stat: *mut u8, flags: i32) -> i32;
}

/// `struct timespec` on 64-bit Linux.
#[repr(C)]
struct Timespec {
    secs: i64,
    nanos: i64,
}

/// `CLOCK_MONOTONIC`.
const CLOCK_MONOTONIC: i32 = 1;
/// `AT_SYMLINK_NOFOLLOW`: `fstatat` as `lstat`.
const AT_SYMLINK_NOFOLLOW: i32 = 0x100;
/// `ENOENT`.
const ENOENT: i32 = 2;
/// The file whose presence selects the benchmark mode, and which lists its
/// lookups.
const BENCH_LIST: &str = "/vm-agent-bench";

/// `RB_POWER_OFF` (`LINUX_REBOOT_CMD_POWER_OFF`).
const RB_POWER_OFF: i32 = 0x4321_fedc_u32 as i32;

/// The file the agent writes.
const WRITTEN: &str = "/vm-agent-wrote-this";
/// What the agent appends to the name of the file it renames.
const RENAMED_SUFFIX: &str = ".vm-agent-renamed";

fn main() {
    if fs::symlink_metadata(BENCH_LIST).is_ok() {
        bench();
    }
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut errors = Vec::new();
    let mut candidates = Vec::new();
    writeln!(out, "BEGIN-REPORT").ok();
    writeln!(out, "PID1 {}", std::process::id()).ok();
    if std::process::id() != 1 {
        // Never mount, write or power off anything but a VM.
        writeln!(out, "AGENT-ERROR running as PID {}, not 1: refusing to touch this machine", std::process::id()).ok();
        out.flush().ok();
        std::process::exit(2);
    }
    walk(&mut out, &mut errors, &mut candidates);
    writeln!(out, "END-REPORT").ok();
    // /proc is mounted after the walk, so the walk shows the image's own
    // directory (or its absence).
    if fs::symlink_metadata("/proc").is_err() {
        match fs::create_dir("/proc") {
            Ok(()) => writeln!(out, "CREATED {}", hex(b"/proc")).map(drop).unwrap_or(()),
            Err(e) => errors.push(format!("mkdir /proc: {e}")),
        }
    }
    if let Err(e) = mount_proc() {
        errors.push(format!("mount proc: {e}"));
    }
    match root_mount() {
        Ok((fstype, options, source)) => {
            writeln!(out, "ROOT {fstype} {options} {source}").ok();
            if fstype != "ext4" || !options.split(',').any(|o| o == "rw") {
                errors.push(format!("/ is {fstype} ({options}), not ext4 read-write"));
            }
        }
        Err(e) => errors.push(format!("reading /proc/self/mountinfo: {e}")),
    }
    out.flush().ok();

    if let Some(seed) = churn_seed() {
        for e in &errors {
            writeln!(out, "AGENT-ERROR {}", e.replace('\n', " ")).ok();
        }
        out.flush().ok();
        drop(out);
        churn(seed);
    }

    // The writes, after the walk so that it shows the image as built.
    if let Err(e) = write_file(&mut out) {
        errors.push(format!("writing {WRITTEN}: {e}"));
    }
    let mut candidates = candidates.into_iter();
    if let Some(from) = candidates.next() {
        let mut to = from.clone().into_os_string();
        to.push(RENAMED_SUFFIX);
        match fs::rename(&from, &to) {
            Ok(()) => {
                writeln!(out, "RENAMED {} {}", hex(from.as_os_str().as_bytes()), hex(to.as_bytes())).ok();
            }
            Err(e) => errors.push(format!("rename {}: {e}", from.display())),
        }
    }
    if let Some(doomed) = candidates.next() {
        match fs::remove_file(&doomed) {
            Ok(()) => writeln!(out, "DELETED {}", hex(doomed.as_os_str().as_bytes())).map(drop).unwrap_or(()),
            Err(e) => errors.push(format!("delete {}: {e}", doomed.display())),
        }
    }
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { sync() };
    writeln!(out, "SYNCED").ok();
    for e in &errors {
        writeln!(out, "AGENT-ERROR {}", e.replace('\n', " ")).ok();
    }
    writeln!(out, "POWER-OFF").ok();
    out.flush().ok();
    drop(out);
    // SAFETY: powers the machine off; returns only on failure.
    unsafe { reboot(RB_POWER_OFF) };
    eprintln!("AGENT-ERROR reboot(RB_POWER_OFF): {}", io::Error::last_os_error());
    // Exiting PID 1 panics the kernel, which then reboots (`panic=-1`), and
    // QEMU exits (`-no-reboot`).
}

/// `CLOCK_MONOTONIC` in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut t = Timespec { secs: 0, nanos: 0 };
    // SAFETY: a valid clock and a valid `timespec` to fill.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut t) };
    t.secs as u64 * 1_000_000_000 + t.nanos as u64
}

/// The benchmark mode (see the module's documentation).
fn bench() -> ! {
    let mut out = io::stdout().lock();
    writeln!(out, "BENCH-AGENT {}", std::process::id()).ok();
    if std::process::id() != 1 {
        writeln!(out, "AGENT-ERROR running as PID {}, not 1: refusing to touch this machine", std::process::id()).ok();
        std::process::exit(2);
    }
    let mut errors = Vec::new();

    // The cold walk, first: nothing but the init and this file's lookup
    // has touched the filesystem yet.
    let started = monotonic_ns();
    let entries = bench_walk(&mut errors);
    writeln!(out, "BENCH-WALK {entries} {}", monotonic_ns() - started).ok();

    // The names, read before the caches are dropped.
    let list = fs::read(BENCH_LIST).unwrap_or_else(|e| {
        errors.push(format!("reading {BENCH_LIST}: {e}"));
        Vec::new()
    });
    let mut lines = list.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let dir = lines.next().map(|d| PathBuf::from(std::ffi::OsStr::from_bytes(d)));
    let names: Vec<CString> = lines.filter_map(|l| CString::new(l).ok()).collect();

    if fs::symlink_metadata("/proc").is_err()
        && let Err(e) = fs::create_dir("/proc")
    {
        errors.push(format!("mkdir /proc: {e}"));
    }
    if let Err(e) = mount_proc() {
        errors.push(format!("mount proc: {e}"));
    }
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { sync() };
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3\n") {
        errors.push(format!("dropping the caches: {e}"));
    }

    // The lookups, relative to the directory (opened before the clock
    // starts), from a cold cache.
    match dir.as_deref().map(File::open) {
        Some(Ok(dir)) => {
            use std::os::fd::AsRawFd;
            let (mut found, mut absent) = (0u64, 0u64);
            let mut stat = [0u64; 32];
            let started = monotonic_ns();
            for name in &names {
                // SAFETY: an open directory, a NUL-terminated name and a
                // buffer larger than `struct stat`.
                let rc =
                    unsafe { fstatat(dir.as_raw_fd(), name.as_ptr(), stat.as_mut_ptr().cast(), AT_SYMLINK_NOFOLLOW) };
                if rc == 0 {
                    found += 1;
                } else {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(ENOENT) {
                        absent += 1;
                    } else if errors.len() < 10 {
                        errors.push(format!("lstat {}: {e}", name.to_string_lossy()));
                    }
                }
            }
            let elapsed = monotonic_ns() - started;
            writeln!(out, "BENCH-LOOKUP {} {found} {absent} {elapsed}", names.len()).ok();
        }
        Some(Err(e)) => errors.push(format!("opening the lookup directory: {e}")),
        None => errors.push(format!("{BENCH_LIST} names no directory")),
    }
    for e in &errors {
        writeln!(out, "AGENT-ERROR {}", e.replace('\n', " ")).ok();
    }
    writeln!(out, "BENCH-DONE").ok();
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { sync() };
    writeln!(out, "POWER-OFF").ok();
    out.flush().ok();
    // SAFETY: powers the machine off; returns only on failure.
    unsafe { reboot(RB_POWER_OFF) };
    eprintln!("AGENT-ERROR reboot(RB_POWER_OFF): {}", io::Error::last_os_error());
    std::process::exit(1);
}

/// `readdir` and `lstat` of every entry under `/`, depth first in the order
/// the directories give their entries; the number of entries.
fn bench_walk(errors: &mut Vec<String>) -> u64 {
    let mut entries = 1;
    let mut stack = vec![PathBuf::from("/")];
    while let Some(dir) = stack.pop() {
        let read = match fs::read_dir(&dir) {
            Ok(read) => read,
            Err(e) => {
                errors.push(format!("readdir {}: {e}", dir.display()));
                continue;
            }
        };
        for entry in read {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    errors.push(format!("readdir {}: {e}", dir.display()));
                    break;
                }
            };
            entries += 1;
            // `fstatat` on the directory, without following symlinks.
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(_) => {}
                Err(e) => errors.push(format!("lstat {}: {e}", entry.path().display())),
            }
        }
    }
    entries
}

/// The seed of `vm_agent.churn=<seed>` on the kernel command line.
fn churn_seed() -> Option<u64> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline.split_whitespace().find_map(|p| p.strip_prefix("vm_agent.churn=")?.parse().ok())
}

/// xorshift64*: the churn's deterministic sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Directories the churn works in, files per directory, subdirectories per
/// directory, and the largest file it lets grow (about 8 MiB at most).
const CHURN_DIRS: u64 = 4;
const CHURN_FILES: u64 = 16;
const CHURN_SUBDIRS: u64 = 4;
const CHURN_MAX_FILE: u64 = 128 << 10;

/// Churns under `/churn` forever (see the module's documentation).
fn churn(seed: u64) -> ! {
    let mut out = io::stdout().lock();
    // Never 0: xorshift would stay there.
    let mut rng = Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1);
    let root = Path::new("/churn");
    for d in 0..CHURN_DIRS {
        if let Err(e) = fs::create_dir_all(root.join(format!("d{d}"))) {
            writeln!(out, "CHURN-ERROR mkdir: {e}").ok();
        }
    }
    let file = |rng: &mut Rng| root.join(format!("d{}/f{:02}", rng.below(CHURN_DIRS), rng.below(CHURN_FILES)));
    let subdir = |rng: &mut Rng| root.join(format!("d{}/s{}", rng.below(CHURN_DIRS), rng.below(CHURN_SUBDIRS)));
    let mut ops: u64 = 0;
    loop {
        let op = rng.below(100);
        let result = match op {
            // Create or overwrite a file, and fsync half of them.
            0..=24 => {
                let path = file(&mut rng);
                let len = 1 + rng.below(64 << 10);
                let fsync = rng.below(2) == 0;
                File::create(&path).and_then(|mut f| {
                    f.write_all(&pattern(&mut rng, len))?;
                    if fsync { f.sync_all() } else { Ok(()) }
                })
            }
            // Append to a file (or empty it when it has grown large).
            25..=44 => {
                let path = file(&mut rng);
                let len = 1 + rng.below(16 << 10);
                let fsync = rng.below(3) == 0;
                fs::OpenOptions::new().append(true).open(&path).and_then(|mut f| {
                    if f.metadata()?.len() + len > CHURN_MAX_FILE {
                        f.set_len(0)?;
                    }
                    f.write_all(&pattern(&mut rng, len))?;
                    if fsync { f.sync_data() } else { Ok(()) }
                })
            }
            // Rename over another name, maybe in another directory.
            45..=59 => {
                let (from, to) = (file(&mut rng), file(&mut rng));
                fs::rename(from, to)
            }
            // Delete.
            60..=72 => fs::remove_file(file(&mut rng)),
            // A hard link.
            73..=77 => {
                let (from, to) = (file(&mut rng), file(&mut rng));
                fs::hard_link(from, to)
            }
            // A subdirectory: made with a file in it, or emptied and removed.
            78..=89 => {
                let dir = subdir(&mut rng);
                if dir.is_dir() {
                    fs::read_dir(&dir)
                        .and_then(|entries| entries.flatten().try_for_each(|e| fs::remove_file(e.path())))
                        .and_then(|()| fs::remove_dir(&dir))
                } else {
                    let len = rng.below(8 << 10);
                    fs::create_dir(&dir).and_then(|()| fs::write(dir.join("inner"), pattern(&mut rng, len)))
                }
            }
            // fsync a directory.
            90..=96 => File::open(root.join(format!("d{}", rng.below(CHURN_DIRS)))).and_then(|d| d.sync_all()),
            // Everything.
            _ => {
                // SAFETY: sync takes no arguments and cannot fail.
                unsafe { sync() };
                Ok(())
            }
        };
        match result {
            Ok(()) => {}
            // The sequence names files that are not there, directories
            // that are, and links that exist.
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists) => {}
            Err(e) => {
                writeln!(out, "CHURN-ERROR op {op}: {e}").ok();
            }
        }
        ops += 1;
        if ops == 1 {
            writeln!(out, "CHURN-STARTED {seed}").ok();
        } else if ops.is_multiple_of(64) {
            writeln!(out, "CHURN {ops}").ok();
        }
        out.flush().ok();
    }
}

/// `len` bytes drawn from `rng`, cheaply: one word repeated per 4 KiB.
fn pattern(rng: &mut Rng, len: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len as usize);
    while (bytes.len() as u64) < len {
        let word = rng.next().to_le_bytes();
        for _ in 0..512 {
            bytes.extend_from_slice(&word);
        }
    }
    bytes.truncate(len as usize);
    bytes
}

fn mount_proc() -> io::Result<()> {
    let c = |s: &str| CString::new(s).unwrap();
    let (src, target, fstype) = (c("proc"), c("/proc"), c("proc"));
    // SAFETY: NUL-terminated strings; no data.
    let rc = unsafe { mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The filesystem type, mount options and source of the mount at `/`.
fn root_mount() -> io::Result<(String, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    // The last line for `/` is the one on top.
    let line =
        text.lines().rfind(|l| l.split(' ').nth(4) == Some("/")).ok_or_else(|| io::Error::other("no mount at /"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-").ok_or_else(|| io::Error::other("no separator"))?;
    let get = |i: usize| fields.get(i).copied().unwrap_or("?").to_string();
    Ok((get(dash + 1), get(5), get(dash + 2)))
}

/// Prints every entry in sorted depth-first order; collects the regular
/// files the agent may rename and delete (not its own, one name only, with
/// content).
fn walk(out: &mut impl Write, errors: &mut Vec<String>, candidates: &mut Vec<PathBuf>) {
    // Through `/sbin` even where it is a symlink (merged /usr).
    let own_inode = fs::metadata("/sbin/vm-agent").ok().map(|m| m.ino());
    let mut stack = vec![PathBuf::from("/")];
    while let Some(path) = stack.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("lstat {}: {e}", path.display()));
                continue;
            }
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else if ft.is_socket() {
            's'
        } else {
            'f'
        };
        let digest = if kind == 'f' {
            match sha256_file(&path) {
                Ok(d) => d,
                Err(e) => {
                    errors.push(format!("read {}: {e}", path.display()));
                    "-".into()
                }
            }
        } else {
            "-".into()
        };
        let target = if kind == 'l' {
            fs::read_link(&path).map(|t| hex(t.as_os_str().as_bytes())).unwrap_or_else(|e| {
                errors.push(format!("readlink {}: {e}", path.display()));
                "-".into()
            })
        } else {
            "-".into()
        };
        let xattrs = xattrs(&path).unwrap_or_else(|e| {
            errors.push(format!("xattrs of {}: {e}", path.display()));
            Vec::new()
        });
        let xattrs = if xattrs.is_empty() { "-".to_string() } else { xattrs.join(",") };
        let rdev = if matches!(kind, 'c' | 'b') { meta.rdev() } else { 0 };
        writeln!(
            out,
            "E {kind} {:o} {} {} {} {}.{:09} {rdev:x} {} {} {digest} {target} {xattrs} {}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            if kind == 'd' { 0 } else { meta.size() },
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ino(),
            meta.nlink(),
            hex(path.as_os_str().as_bytes()),
        )
        .ok();
        if kind == 'f' && meta.nlink() == 1 && meta.size() > 0 && Some(meta.ino()) != own_inode {
            candidates.push(path.clone());
        }
        if kind == 'd' {
            let mut children: Vec<PathBuf> = match fs::read_dir(&path) {
                Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
                Err(e) => {
                    errors.push(format!("readdir {}: {e}", path.display()));
                    Vec::new()
                }
            };
            children.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
            stack.extend(children.into_iter().rev());
        }
    }
}

fn write_file(out: &mut impl Write) -> io::Result<()> {
    // Several blocks, so the write allocates more than an inline inode.
    let mut content = Vec::new();
    for i in 0..20_000u32 {
        content.extend_from_slice(format!("line {i} written by the VM agent\n").as_bytes());
    }
    let mut f = File::create(WRITTEN)?;
    f.write_all(&content)?;
    f.sync_all()?;
    writeln!(out, "WROTE {} {}", hex(WRITTEN.as_bytes()), to_hex(&Sha256::digest(&content)))?;
    Ok(())
}

fn xattrs(path: &Path) -> io::Result<Vec<String>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: a valid path and a buffer of the given length.
    let n = unsafe { llistxattr(c_path.as_ptr(), names.as_mut_ptr(), names.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut value = vec![0u8; 65536];
    let mut list: Vec<&[u8]> = names[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    list.sort();
    for name in list {
        let c_name = CString::new(name).unwrap();
        // SAFETY: valid strings and a buffer of the given length.
        let len = unsafe { lgetxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_mut_ptr(), value.len()) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        out.push(format!("{}={}", hex(name), to_hex(&Sha256::digest(&value[..len as usize]))));
    }
    Ok(out)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(to_hex(&h.finish()))
}

fn hex(bytes: &[u8]) -> String {
    to_hex(bytes)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 (FIPS 180-4).
struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    filled: usize,
    length: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

impl Sha256 {
    fn new() -> Self {
        Self {
            state: [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19],
            block: [0; 64],
            filled: 0,
            length: 0,
        }
    }

    fn digest(data: &[u8]) -> [u8; 32] {
        let mut h = Self::new();
        h.update(data);
        h.finish()
    }

    fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        if self.filled > 0 {
            let take = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < 64 {
                return;
            }
            let block = self.block;
            self.compress(&block);
            self.filled = 0;
        }
        let mut chunks = data.chunks_exact(64);
        for chunk in &mut chunks {
            self.compress(chunk.try_into().unwrap());
        }
        let rest = chunks.remainder();
        self.block[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    fn finish(mut self) -> [u8; 32] {
        let bits = self.length.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        let used = (self.length % 64) as usize;
        let zeros = if used < 56 { 55 - used } else { 119 - used };
        pad.extend(std::iter::repeat_n(0u8, zeros));
        pad.extend_from_slice(&bits.to_be_bytes());
        let length = self.length;
        self.update(&pad);
        self.length = length;
        let mut out = [0u8; 32];
        for (i, word) in self.state.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

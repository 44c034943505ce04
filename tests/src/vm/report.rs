//! The agent's report, parsed from the serial console, and its comparison
//! with a tree on the host.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use super::{VmError, failed, tail};
use crate::sha256_hex;

/// One entry as the agent saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEntry {
    /// `f`ile, `d`ir, `l`ink, `c`har, `b`lock, `p`ipe, `s`ocket.
    pub kind: char,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length for files and symlinks, 0 for directories.
    pub size: u64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Device number of character and block devices.
    pub rdev: u64,
    /// Inode number.
    pub ino: u64,
    /// Link count.
    pub nlink: u64,
    /// SHA-256 of a file's content, hex.
    pub digest: Option<String>,
    /// A symlink's target, raw.
    pub target: Option<Vec<u8>>,
    /// Extended attributes: names and SHA-256 of values (hex), sorted.
    pub xattrs: Vec<(Vec<u8>, String)>,
}

/// What the agent reported from inside the VM.
#[derive(Clone, Debug, Default)]
pub struct BootReport {
    /// Every entry, keyed by its path relative to `/` (the root is the empty
    /// path, as in [`crate::compare::walk`]).
    pub entries: BTreeMap<Vec<u8>, VmEntry>,
    /// The paths in the order the agent walked them (sorted depth-first).
    pub order: Vec<Vec<u8>>,
    /// The agent's PID.
    pub pid: u32,
    /// The root mount's filesystem type, options and source, from
    /// `/proc/self/mountinfo`.
    pub root: Option<(String, String, String)>,
    /// Paths the agent created for itself (`/proc` where the image has none).
    pub created: Vec<Vec<u8>>,
    /// The file the agent wrote and the SHA-256 of its content.
    pub wrote: Option<(Vec<u8>, String)>,
    /// The file the agent renamed, and its new name.
    pub renamed: Option<(Vec<u8>, Vec<u8>)>,
    /// The file the agent deleted.
    pub deleted: Option<Vec<u8>>,
    /// Whether the agent called `sync` and got as far as powering off.
    pub powered_off: bool,
    /// What went wrong inside the VM, as the agent saw it.
    pub errors: Vec<String>,
    /// The whole serial console.
    pub console: String,
    /// From starting QEMU to its exit.
    pub elapsed: Duration,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The path relative to `/`, as [`crate::compare::walk`] keys it.
fn relative(hex: &str) -> Option<Vec<u8>> {
    let path = unhex(hex)?;
    Some(path.strip_prefix(b"/").unwrap_or(&path).to_vec())
}

impl BootReport {
    /// Parses the console; fails (with its tail) without a complete report.
    pub fn parse(console: &str, elapsed: Duration) -> Result<Self, VmError> {
        let mut report = Self { console: console.to_string(), elapsed, ..Self::default() };
        let (mut begun, mut ended) = (false, false);
        for line in console.lines() {
            let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
            let fields: Vec<&str> = rest.split(' ').collect();
            let parsed = match tag {
                "BEGIN-REPORT" => {
                    begun = true;
                    true
                }
                "END-REPORT" => {
                    ended = true;
                    true
                }
                "PID1" => rest.parse().map(|pid| report.pid = pid).is_ok(),
                "ROOT" if fields.len() == 3 => {
                    report.root = Some((fields[0].into(), fields[1].into(), fields[2].into()));
                    true
                }
                "CREATED" => relative(rest).map(|p| report.created.push(p)).is_some(),
                "WROTE" if fields.len() == 2 => {
                    relative(fields[0]).map(|p| report.wrote = Some((p, fields[1].into()))).is_some()
                }
                "RENAMED" if fields.len() == 2 => {
                    relative(fields[0]).zip(relative(fields[1])).map(|r| report.renamed = Some(r)).is_some()
                }
                "DELETED" => relative(rest).map(|p| report.deleted = Some(p)).is_some(),
                "POWER-OFF" => {
                    report.powered_off = true;
                    true
                }
                "AGENT-ERROR" => {
                    report.errors.push(rest.to_string());
                    true
                }
                "E" if begun && !ended => parse_entry(&fields)
                    .map(|(path, e)| {
                        report.order.push(path.clone());
                        report.entries.insert(path, e);
                    })
                    .is_some(),
                // Kernel messages, and the init's.
                _ => true,
            };
            if !parsed {
                report.errors.push(format!("unparsable console line: {line}"));
            }
        }
        if !begun || !ended {
            return Err(failed(format!("the console holds no complete report; its tail:\n{}", tail(console))));
        }
        Ok(report)
    }

    /// Every difference between the agent's view and `reference` (a tree
    /// on this host: the kernel's overlay mount, or the image mounted here),
    /// one line each, with `ignore`d paths (and below them) and what the agent
    /// created skipped on both sides. Compares type, mode, owner, size,
    /// content, symlink target, device number, xattrs, mtime and hardlink
    /// groups.
    pub fn differences(&self, reference: &Path, ignore: &[&[u8]]) -> Vec<String> {
        let skip = |p: &[u8]| {
            ignore
                .iter()
                .chain(self.created.iter().map(Vec::as_slice).collect::<Vec<_>>().iter())
                .any(|i| p == *i || (p.starts_with(i) && (i.is_empty() || p.get(i.len()) == Some(&b'/'))))
        };
        let show = |p: &[u8]| format!("/{}", String::from_utf8_lossy(p));
        let groups = self.hardlink_groups();
        let reference = crate::compare::walk(reference);
        let mut diffs = Vec::new();
        for (path, r) in &reference {
            if skip(path) {
                continue;
            }
            let Some(v) = self.entries.get(path) else {
                diffs.push(format!("{}: missing in the VM", show(path)));
                continue;
            };
            let mut fields = Vec::new();
            if r.kind != v.kind {
                fields.push(format!("type {} vs {}", r.kind, v.kind));
            }
            if r.mode != v.mode {
                fields.push(format!("mode {:o} vs {:o}", r.mode, v.mode));
            }
            if (r.uid, r.gid) != (v.uid, v.gid) {
                fields.push(format!("owner {}:{} vs {}:{}", r.uid, r.gid, v.uid, v.gid));
            }
            if r.size != v.size || r.digest != v.digest {
                fields.push(format!("content {} bytes vs {} bytes", r.size, v.size));
            }
            if r.target != v.target {
                fields.push("symlink target".into());
            }
            if r.rdev != v.rdev {
                fields.push(format!("device {:x} vs {:x}", r.rdev, v.rdev));
            }
            let xattrs: Vec<(Vec<u8>, String)> = r.xattrs.iter().map(|(n, val)| (n.clone(), sha256_hex(val))).collect();
            if xattrs != v.xattrs {
                let names = |x: &[(Vec<u8>, String)]| {
                    x.iter().map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>()
                };
                fields.push(format!("xattrs {:?} vs {:?}", names(&xattrs), names(&v.xattrs)));
            }
            if r.mtime != v.mtime {
                fields.push(format!("mtime {}.{:09} vs {}.{:09}", r.mtime.0, r.mtime.1, v.mtime.0, v.mtime.1));
            }
            if r.hardlink_group.as_ref() != groups.get(path) {
                fields.push("hardlink group".into());
            }
            if !fields.is_empty() {
                diffs.push(format!("{}: {}", show(path), fields.join(", ")));
            }
        }
        for path in self.entries.keys() {
            if !skip(path) && !reference.contains_key(path) {
                diffs.push(format!("{}: only in the VM", show(path)));
            }
        }
        diffs
    }

    /// For every file with other names in the report: the first of its
    /// names in walk order, as [`crate::compare::walk`] groups them.
    fn hardlink_groups(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        let mut first: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut sizes: HashMap<u64, usize> = HashMap::new();
        for path in &self.order {
            let e = &self.entries[path];
            if e.kind == 'f' && e.nlink > 1 {
                first.entry(e.ino).or_insert_with(|| path.clone());
                *sizes.entry(e.ino).or_default() += 1;
            }
        }
        self.entries
            .iter()
            .filter(|(_, e)| e.kind == 'f' && sizes.get(&e.ino).is_some_and(|&n| n > 1) && e.nlink > 1)
            .map(|(p, e)| (p.clone(), first[&e.ino].clone()))
            .collect()
    }
}

fn parse_entry(f: &[&str]) -> Option<(Vec<u8>, VmEntry)> {
    let [kind, mode, uid, gid, size, mtime, rdev, ino, nlink, digest, target, xattrs, path] = f else { return None };
    let (secs, nanos) = mtime.split_once('.')?;
    let opt = |s: &str| (s != "-").then(|| s.to_string());
    let xattrs = if *xattrs == "-" {
        Vec::new()
    } else {
        xattrs
            .split(',')
            .map(|x| x.split_once('=').and_then(|(n, v)| Some((unhex(n)?, v.to_string()))))
            .collect::<Option<Vec<_>>>()?
    };
    Some((
        relative(path)?,
        VmEntry {
            kind: kind.chars().next()?,
            mode: u32::from_str_radix(mode, 8).ok()?,
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            size: size.parse().ok()?,
            mtime: (secs.parse().ok()?, nanos.parse().ok()?),
            rdev: u64::from_str_radix(rdev, 16).ok()?,
            ino: ino.parse().ok()?,
            nlink: nlink.parse().ok()?,
            digest: opt(digest),
            target: match opt(target) {
                Some(t) => Some(unhex(&t)?),
                None => None,
            },
            xattrs,
        },
    ))
}

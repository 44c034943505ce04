//! A real micro-VM boots the images (see `rootfs_cache_tests::vm`): QEMU's
//! `microvm` with Debian's cloud kernel mounts a converted image as its root
//! filesystem and runs the test agent, installed by the conversion, as PID 1.
//! What the agent sees must be exactly the reference tree and the host's
//! own view of the image; what it writes, renames and deletes must be in the
//! image after it powered off, and the image must stay `e2fsck`-clean.
//!
//! Runs for the bundled example chain always, and for every Docker fixture
//! in `ROOTFS_FIXTURES` when that is set: its overlay2 chain (against the
//! kernel's overlay mount) and its OCI layout (against `umoci unpack` of the
//! layout, or of its gzip twin for a zstd one, as the differential tests
//! do). Without root, QEMU or the kernel package it prints `SKIPPED:` and
//! the reason; under `CI=true` it fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rootfs_cache::{Config, ConverterSpec, Request, RootfsCache};
use rootfs_cache_tests::compare::{added_by_image, walk};
use rootfs_cache_tests::oci::{is_zstd, umoci_unpack};
use rootfs_cache_tests::vm::{BootReport, Vm};
use rootfs_cache_tests::{OverlayMount, ReadOnlyMount, fsck, require_root};

/// The bundled example chain's top layer.
fn example_chain() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/overlay2/c81e4f2a6b9d0c3e5f7a1b2d4c6e8f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d2e")
}

/// One Docker fixture of `ROOTFS_FIXTURES`.
struct Fixture {
    name: String,
    overlay2: PathBuf,
    oci: PathBuf,
}

/// The Docker fixtures, when `ROOTFS_FIXTURES` names them.
fn fixtures() -> Vec<Fixture> {
    let Some(path) = std::env::var_os("ROOTFS_FIXTURES") else {
        eprintln!("ROOTFS_FIXTURES is not set: booting the example chain only");
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("ROOTFS_FIXTURES")).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|f| Fixture {
            name: f["name"].as_str().unwrap().into(),
            overlay2: f["overlay2"].as_str().unwrap().into(),
            oci: f["oci"].as_str().unwrap().into(),
        })
        .collect()
}

/// What one boot converts, and the tree its image must hold.
enum Source {
    /// An overlay2 chain's top layer directory: the reference is the
    /// kernel's overlay mount of the chain.
    Chain(PathBuf),
    /// An OCI layout, and the layout `umoci unpack` makes the reference
    /// from (the gzip twin of a zstd layout: umoci reads no zstd).
    Oci { layout: PathBuf, unpacked_from: PathBuf },
}

/// The example chain, then each fixture's overlay2 chain (once per chain:
/// the zstd export of an image shares its chain) and each fixture's OCI
/// layout.
fn sources(fixtures: &[Fixture]) -> Vec<(String, Source)> {
    let mut sources = vec![("example".to_string(), Source::Chain(example_chain()))];
    let mut seen = std::collections::HashSet::new();
    for f in fixtures.iter().filter(|f| seen.insert(f.overlay2.clone())) {
        sources.push((f.name.clone(), Source::Chain(f.overlay2.clone())));
    }
    for f in fixtures {
        let unpacked_from = if is_zstd(&f.oci) {
            let twin = fixtures.iter().find(|t| t.overlay2 == f.overlay2 && !is_zstd(&t.oci));
            twin.unwrap_or_else(|| panic!("{}: a zstd layout without a gzip twin", f.name)).oci.clone()
        } else {
            f.oci.clone()
        };
        sources.push((format!("{}-oci", f.name), Source::Oci { layout: f.oci.clone(), unpacked_from }));
    }
    sources
}

fn show(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// `umoci unpack` of a layout into a bundle directory, removed on drop.
struct Unpacked {
    bundle: PathBuf,
    rootfs: PathBuf,
}

impl Unpacked {
    fn new(layout: &Path, bundle: &Path) -> Self {
        let rootfs = umoci_unpack(layout, bundle);
        Self { bundle: bundle.to_path_buf(), rootfs }
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

/// Mounts `image` read-write and unmounts it: the kernel replays whatever
/// the VM left to replay.
fn mount_and_unmount(image: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("mount").args(["-t", "ext4", "-o", "loop"]).arg(image).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "mount {}: {}", image.display(), String::from_utf8_lossy(&out.stderr));
    let out = Command::new("umount").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
}

/// Converts the source, boots a copy of its image and checks everything the
/// agent reported and left behind. Returns the failures.
async fn boot_and_check(vm: &Vm, cache: &RootfsCache, name: &str, source: &Source, work: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let started = Instant::now();
    let input = match source {
        Source::Chain(chain) => chain,
        Source::Oci { layout, .. } => layout,
    };
    let image = cache.convert(&Request::new(input, vm.agent()).converter(ConverterSpec::Exact)).await.unwrap().image;
    let converted = started.elapsed();
    // The VM writes to its disk: boot a copy, so the cached image stays valid.
    let booted = work.join(format!("{name}.ext4"));
    let out = Command::new("cp").arg("--sparse=always").arg(&image).arg(&booted).output().unwrap();
    assert!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));

    let report: BootReport = match vm.boot(&booted, Duration::from_secs(600)) {
        Ok(report) => report,
        Err(e) => return vec![format!("{name}: booting failed: {e}")],
    };
    eprintln!(
        "{name}: converted in {converted:.1?}, booted and walked {} entries in {:.1?} ({} bytes of console)",
        report.entries.len(),
        report.elapsed,
        report.console.len()
    );

    // PID 1 on ext4, read-write, without an error.
    if report.pid != 1 {
        failures.push(format!("{name}: the agent ran as PID {}", report.pid));
    }
    match &report.root {
        Some((fstype, options, _)) if fstype == "ext4" && options.split(',').any(|o| o == "rw") => {}
        other => failures.push(format!("{name}: / is not ext4 read-write: {other:?}")),
    }
    if !report.errors.is_empty() {
        failures.push(format!("{name}: the agent reported errors:\n{}", report.errors.join("\n")));
    }
    if !report.powered_off {
        failures.push(format!("{name}: the agent did not get to power off"));
    }

    // What the VM saw is what the host sees in the image, and what the
    // container sees (the kernel's overlay mount of a chain, umoci's unpack
    // of a layout), but for what the image adds.
    {
        let host_view = ReadOnlyMount::new(&image);
        let diffs = report.differences(&host_view.path, &[]);
        if !diffs.is_empty() {
            failures.push(format!(
                "{name}: {} differences between the VM's view and the host's view of the image\n{}",
                diffs.len(),
                diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            ));
        }
        // Held (mounted, unpacked) until the comparisons are done.
        let (mut mount, mut unpacked) = (None, None);
        let (reference, what): (&Path, &str) = match source {
            Source::Chain(chain) => (&mount.insert(OverlayMount::new(chain)).path, "the overlay mount"),
            Source::Oci { unpacked_from, .. } => {
                let bundle = work.join(format!("{name}.bundle"));
                (&unpacked.insert(Unpacked::new(unpacked_from, &bundle)).rootfs, "umoci's unpack")
            }
        };
        let added = added_by_image(reference);
        let ignore: Vec<&[u8]> = added.iter().map(Vec::as_slice).collect();
        // The comparison sees what the image adds when told nothing.
        let unfiltered = report.differences(reference, &[]);
        if !unfiltered.iter().any(|d| d == "/lost+found: only in the VM") {
            failures.push(format!("{name}: the VM's lost+found went unnoticed: {unfiltered:?}"));
        }
        let diffs = report.differences(reference, &ignore);
        if !diffs.is_empty() {
            failures.push(format!(
                "{name}: {} differences between the VM's view and {what}\n{}",
                diffs.len(),
                diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            ));
        }
    }

    // After power-off: clean as the VM left it, and after the host's kernel
    // mounted and unmounted it.
    let (code, out) = fsck(&booted);
    if code != 0 {
        failures.push(format!("{name}: e2fsck -fn right after the VM exited {code}\n{out}"));
    }
    mount_and_unmount(&booted);
    let (code, out) = fsck(&booted);
    if code != 0 {
        failures.push(format!("{name}: e2fsck -fn after a mount and unmount exited {code}\n{out}"));
    }

    // The agent's writes are in the image.
    let after = ReadOnlyMount::new(&booted);
    let tree = walk(&after.path);
    match &report.wrote {
        Some((path, digest)) => match tree.get(path) {
            Some(e) if e.digest.as_ref() == Some(digest) => {}
            other => failures.push(format!("{name}: {} is not as written: {other:?}", show(path))),
        },
        None => failures.push(format!("{name}: the agent wrote no file")),
    }
    match &report.renamed {
        Some((from, to)) => {
            let before = report.entries.get(from).and_then(|e| e.digest.clone());
            if tree.contains_key(from) {
                failures.push(format!("{name}: {} is still there after its rename", show(from)));
            }
            if tree.get(to).map(|e| e.digest.clone()) != Some(before) {
                failures.push(format!("{name}: {} does not hold what {} held", show(to), show(from)));
            }
        }
        None => failures.push(format!("{name}: the agent renamed no file")),
    }
    match &report.deleted {
        Some(path) if tree.contains_key(path) => {
            failures.push(format!("{name}: {} is still there after its deletion", show(path)))
        }
        Some(_) => {}
        None => failures.push(format!("{name}: the agent deleted no file")),
    }
    for path in &report.created {
        if !tree.contains_key(path) {
            failures.push(format!("{name}: {} the agent created is missing", show(path)));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_micro_vm_boots_every_image_and_its_agent_sees_exactly_the_reference_tree() {
    require_root!();
    let Some(vm) = Vm::prepare_or_skip() else { return };
    let (kernel, initrd, accel) = vm.parts();
    eprintln!("booting {} with {} under {accel}", kernel.display(), initrd.display());
    let dir = tempfile::tempdir().unwrap();
    let cache = RootfsCache::open(Config::new(dir.path().join("cache"))).unwrap();
    let started = Instant::now();
    let sources = sources(&fixtures());
    let mut failures = Vec::new();
    for (name, source) in &sources {
        failures.extend(boot_and_check(&vm, &cache, name, source, dir.path()).await);
    }
    eprintln!("booted {} images in {:.1?}", sources.len(), started.elapsed());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

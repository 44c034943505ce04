//! The native host adapter end to end: the in-process oci2rootfs converter and
//! external commands, real loop devices, the kernel's ext4 driver, fsync and
//! flock. Needs root; CI runs as root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rootfs_cache::{Config, ConverterSpec, Limits, Policy, Request, RootfsCache, SourceKind};
use rootfs_cache_tests::oci::{IndexStyle, standard_layout};
use rootfs_cache_tests::{
    ReadOnlyMount, agent, converter_script, loop_devices_under, mounts_under, oci2rootfs_cli, require_root, snapshot,
    standard_chain, temp_files,
};

struct World {
    dir: tempfile::TempDir,
    cache: RootfsCache,
    top: PathBuf,
    agent: PathBuf,
}

impl World {
    fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let top = standard_chain(&dir.path().join("overlay2"));
        let agent = agent(dir.path(), "vm-agent", "v1");
        let policy = Policy { limits, ..Policy::default() };
        let cache = RootfsCache::open(Config::new(dir.path().join("cache")).policy(policy)).unwrap();
        Self { dir, cache, top, agent }
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache.cache_dir().to_path_buf()
    }

    /// oci2rootfs, which does not install the agent itself, so that the
    /// mount-and-install path runs (the exact converter has its own tests).
    fn request(&self) -> Request {
        Request::new(&self.top, &self.agent).size(64 << 20).converter(ConverterSpec::Oci2rootfs)
    }

    fn assert_nothing_left_behind(&self) {
        let cache = self.cache_dir();
        assert_eq!(temp_files(&cache), Vec::<String>::new(), "temporary files left behind");
        assert_eq!(loop_devices_under(&cache), Vec::<String>::new(), "loop devices left attached");
        assert_eq!(mounts_under(&cache), Vec::<String>::new(), "mounts left behind");
    }
}

fn assert_agent(root: &Path, agent: &Path) {
    let installed = root.join("sbin/vm-agent");
    let meta = std::fs::metadata(&installed).expect("/sbin/vm-agent is missing");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(agent).unwrap(), "the agent's bytes differ");
}

#[tokio::test]
async fn an_overlay2_chain_becomes_a_mountable_image_with_the_agent() {
    require_root!();
    let w = World::new();
    let outcome = w.cache.convert(&w.request()).await.unwrap();
    assert!(!outcome.cached);
    assert_eq!(outcome.kind, SourceKind::Overlay2);
    let mnt = ReadOnlyMount::new(&outcome.image);
    assert_agent(&mnt.path, &w.agent);
    assert_eq!(std::fs::read_to_string(mnt.path.join("etc/motd")).unwrap(), "top layer\n");
    assert_eq!(std::fs::read_to_string(mnt.path.join("etc/os-release")).unwrap(), "ID=fixture\n");
    assert_eq!(std::fs::read_to_string(mnt.path.join("srv/data.txt")).unwrap(), "data from the top layer\n");
    assert!(!mnt.path.join("etc/deleted-by-top").exists(), "a whiteout in the top layer did not hide the base file");
    assert_eq!(std::fs::read_link(mnt.path.join("bin")).unwrap(), Path::new("usr/bin"));
    drop(mnt);
    w.assert_nothing_left_behind();
}

#[tokio::test]
async fn an_oci_layout_with_gzip_layers_becomes_a_mountable_image_with_the_agent() {
    require_root!();
    let w = World::new();
    let layout = w.dir.path().join("oci");
    standard_layout(&layout, IndexStyle::WithPlatform);
    let outcome = w
        .cache
        .convert(&Request::new(&layout, &w.agent).size(64 << 20).converter(ConverterSpec::Oci2rootfs))
        .await
        .unwrap();
    assert_eq!(outcome.kind, SourceKind::OciLayout);
    let mnt = ReadOnlyMount::new(&outcome.image);
    assert_agent(&mnt.path, &w.agent);
    assert_eq!(std::fs::read_to_string(mnt.path.join("etc/motd")).unwrap(), "oci top layer\n");
    assert!(!mnt.path.join("etc/removed").exists(), "an OCI whiteout did not remove the file");
    assert!(mnt.path.join("usr/bin/app").is_file());
    drop(mnt);
    let again = w
        .cache
        .convert(&Request::new(&layout, &w.agent).size(64 << 20).converter(ConverterSpec::Oci2rootfs))
        .await
        .unwrap();
    assert!(again.cached);
    w.assert_nothing_left_behind();
}

#[tokio::test]
async fn the_second_request_is_a_hit_runs_no_converter_and_returns_the_same_image() {
    require_root!();
    let w = World::new();
    let log = w.dir.path().join("converter.log");
    let cli = oci2rootfs_cli();
    let counting =
        converter_script(w.dir.path(), "counting-converter", &log, &format!("exec '{}' \"$@\"", cli.display()));
    // oci2rootfs's own size (512 MiB): its command line rounds other sizes
    // into images the kernel refuses, which the guest reports as corrupt.
    let request = Request::new(&w.top, &w.agent).converter(ConverterSpec::Command(counting));
    let first = w.cache.convert(&request).await.unwrap();
    let bytes_before = std::fs::read(&first.image).unwrap();
    let second = w.cache.convert(&request).await.unwrap();
    assert!(second.cached);
    assert_eq!(second.image, first.image);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1, "the converter ran for a hit");
    assert_eq!(std::fs::read(&second.image).unwrap(), bytes_before, "a hit changed the image");
    let mnt = ReadOnlyMount::new(&second.image);
    assert_agent(&mnt.path, &w.agent);
}

#[tokio::test]
async fn a_new_agent_gives_a_new_key_and_an_image_with_the_new_agent() {
    require_root!();
    let w = World::new();
    let first = w.cache.convert(&w.request()).await.unwrap();
    let newer = agent(w.dir.path(), "vm-agent-2", "v2");
    let second = w
        .cache
        .convert(&Request::new(&w.top, &newer).size(64 << 20).converter(ConverterSpec::Oci2rootfs))
        .await
        .unwrap();
    assert_ne!(second.key, first.key);
    assert!(!second.cached);
    assert_agent(&ReadOnlyMount::new(&second.image).path, &newer);
    // The first entry still holds the first agent.
    assert_agent(&ReadOnlyMount::new(&first.image).path, &w.agent);
}

#[tokio::test]
async fn a_recreated_layer_at_the_same_path_gives_a_new_key_and_image() {
    require_root!();
    let w = World::new();
    let first = w.cache.convert(&w.request()).await.unwrap();
    std::fs::remove_dir_all(w.dir.path().join("overlay2")).unwrap();
    let top = standard_chain(&w.dir.path().join("overlay2"));
    std::fs::write(top.join("diff/etc/motd"), "recreated\n").unwrap();
    let second = w.cache.convert(&w.request()).await.unwrap();
    assert_ne!(second.key, first.key);
    let mnt = ReadOnlyMount::new(&second.image);
    assert_eq!(std::fs::read_to_string(mnt.path.join("etc/motd")).unwrap(), "recreated\n");
}

#[tokio::test]
async fn truncated_and_zeroed_images_are_rebuilt() {
    require_root!();
    let w = World::new();
    let first = w.cache.convert(&w.request()).await.unwrap();
    rootfs_cache_tests::open_entry_for_writing(&first.image).set_len(1 << 20).unwrap();
    let rebuilt = w.cache.convert(&w.request()).await.unwrap();
    assert!(!rebuilt.cached);
    assert!(rebuilt.rebuilt_because.is_some());
    assert_agent(&ReadOnlyMount::new(&rebuilt.image).path, &w.agent);

    std::fs::write(&rebuilt.image, vec![0u8; rebuilt.image_bytes as usize]).unwrap();
    let again = w.cache.convert(&w.request()).await.unwrap();
    assert!(!again.cached);
    assert!(again.rebuilt_because.unwrap().contains("magic"));
    assert_agent(&ReadOnlyMount::new(&again.image).path, &w.agent);
    w.assert_nothing_left_behind();
}

#[tokio::test]
async fn a_converter_that_exits_1_gives_its_status_and_stderr_and_leaves_nothing() {
    require_root!();
    let w = World::new();
    let before = snapshot(&w.cache_dir());
    let log = w.dir.path().join("log");
    // It writes a partial image first, as a real converter would.
    let failing = converter_script(
        w.dir.path(),
        "failing",
        &log,
        "out=$3\nhead -c 100000 /dev/zero > \"$out\"\necho 'oci2rootfs: layer 3 is corrupt' >&2\nexit 1",
    );
    let err = w.cache.convert(&w.request().converter(ConverterSpec::Command(failing))).await.unwrap_err();
    match &err {
        rootfs_cache::Error::ConverterFailed { exit_status, stderr_tail, .. } => {
            assert_eq!(*exit_status, Some(1));
            assert!(stderr_tail.contains("layer 3 is corrupt"), "{stderr_tail}");
        }
        other => panic!("expected converter-failed, got {other}"),
    }
    assert_eq!(snapshot(&w.cache_dir()), before);
    w.assert_nothing_left_behind();
}

#[tokio::test]
async fn a_converter_that_hangs_is_killed_at_the_timeout_and_leaves_nothing() {
    require_root!();
    let w = World::with_limits(Limits { convert_timeout: Duration::from_secs(2), ..Limits::default() });
    let before = snapshot(&w.cache_dir());
    let log = w.dir.path().join("log");
    let pidfile = w.dir.path().join("pid");
    let hanging = converter_script(
        w.dir.path(),
        "hanging",
        &log,
        &format!(
            "head -c 100000 /dev/zero > \"$3\"\n{{ read -r pid rest < /proc/self/stat; echo $pid > '{}'; exec sleep 600; }} &\nwait",
            pidfile.display()
        ),
    );
    let err = w.cache.convert(&w.request().converter(ConverterSpec::Command(hanging))).await.unwrap_err();
    assert_eq!(err.class(), "timeout", "{err}");
    // The converter's child was in its PID namespace and was killed too. The
    // signal is delivered asynchronously: wait for its exit on a pidfd (a
    // `sleep 600` that was not killed keeps it unreadable past the bound).
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => {
            let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
            let bound = rustix::event::Timespec { tv_sec: 30, tv_nsec: 0 };
            let ready = rustix::event::poll(&mut fds, Some(&bound)).unwrap();
            assert_eq!(ready, 1, "the converter's child {pid:?} survived the timeout");
        }
        Err(rustix::io::Errno::SRCH) => {} // gone and reaped already
        Err(e) => panic!("pidfd_open({pid:?}): {e}"),
    }
    assert_eq!(snapshot(&w.cache_dir()), before);
    w.assert_nothing_left_behind();
}

#[tokio::test]
async fn an_agent_that_does_not_fit_fails_the_install_and_detaches_everything() {
    require_root!();
    let w = World::new();
    // A converter that makes a valid but full 2 MiB image.
    let log = w.dir.path().join("log");
    let filler = w.dir.path().join("filler");
    std::fs::create_dir_all(&filler).unwrap();
    std::fs::write(filler.join("blob"), vec![7u8; 1800 * 1024]).unwrap();
    let full = converter_script(
        w.dir.path(),
        "full",
        &log,
        &format!("exec mke2fs -q -F -t ext4 -b 1024 -m 0 -N 32 -O ^has_journal -d '{}' \"$3\" 2048", filler.display()),
    );
    let big_agent = w.dir.path().join("big-agent");
    std::fs::write(&big_agent, vec![1u8; 1 << 20]).unwrap();
    let err = w
        .cache
        .convert(&Request::new(&w.top, &big_agent).size(2 << 20).converter(ConverterSpec::Command(full)))
        .await
        .unwrap_err();
    assert_eq!(err.class(), "inject-failed", "{err}");
    assert!(err.to_string().contains("no room"), "{err}");
    w.assert_nothing_left_behind();
}

#[tokio::test]
async fn a_size_too_small_for_the_content_is_a_clear_error_and_changes_nothing() {
    require_root!();
    let w = World::new();
    // Content larger than the image (oci2rootfs rounds sizes up to 128 MiB).
    std::fs::File::create(w.top.join("diff/srv/big")).unwrap().set_len(160 << 20).unwrap();
    let before = snapshot(&w.cache_dir());
    let err = w.cache.convert(&w.request().size(2 << 20)).await.unwrap_err();
    assert_eq!(err.class(), "converter-failed", "{err}");
    assert!(err.to_string().contains("does not fit in an image of 2097152 bytes"), "{err}");
    assert_eq!(snapshot(&w.cache_dir()), before);
    w.assert_nothing_left_behind();
}

#[tokio::test]
async fn an_image_whose_superblock_overstates_its_size_is_never_mounted() {
    require_root!();
    let w = World::new();
    let before = snapshot(&w.cache_dir());
    // oci2rootfs's command line declares a whole 128 MiB block group in a
    // 64 MiB file: magic-only validation would hand it to the kernel.
    let log = w.dir.path().join("log");
    let cli = oci2rootfs_cli();
    let rounding = converter_script(w.dir.path(), "rounding", &log, &format!("exec '{}' \"$@\"", cli.display()));
    let err = w.cache.convert(&w.request().converter(ConverterSpec::Command(rounding))).await.unwrap_err();
    assert_eq!(err.class(), "corrupt", "{err}");
    assert!(err.to_string().contains("declares 32768 blocks"), "{err}");
    assert_eq!(snapshot(&w.cache_dir()), before);
    w.assert_nothing_left_behind();
}

/// A child forked by any thread of the process holds copies of every
/// descriptor until it execs, the mount's among them, which keeps the
/// superblock, and so the loop device, alive after the unmount's close. The
/// unmount must not report success (and let the image be published) while
/// the kernel may still write it.
#[test]
fn an_unmount_waits_for_a_forked_copy_of_the_mount_and_says_so_when_it_outlives_the_timeout() {
    use rootfs_cache::capabilities::mounter::ImageMounter;
    use rootfs_cache::capabilities::mounter::loop_mount::LoopMounter;

    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.ext4");
    let made =
        std::process::Command::new("mke2fs").args(["-q", "-F", "-t", "ext4"]).arg(&image).arg("8M").status().unwrap();
    assert!(made.success());
    let open = || std::fs::OpenOptions::new().read(true).write(true).open(&image).unwrap();
    let mounter = LoopMounter::with_release_timeout(Duration::from_millis(300));
    let mounted = mounter.mount(open()).unwrap();

    let copies = rootfs_cache_tests::ForkedCopies::hold();
    let err = mounted.unmount().expect_err("the unmount reported success while a copy of the mount was alive");
    assert!(err.to_string().contains("still serves"), "{err}");
    assert_eq!(loop_devices_under(dir.path()).len(), 1, "the device should still serve the image");

    // The copy goes away with the child: the kernel then unmounts, and
    // autoclear detaches the device, before the child is reaped.
    copies.release();
    assert_eq!(loop_devices_under(dir.path()), Vec::<String>::new());
    let (code, output) = rootfs_cache_tests::fsck(&image);
    assert_eq!(code, 0, "{output}");

    // Without a holder, a mount and unmount of the same image succeeds.
    mounter.mount(open()).unwrap().unmount().unwrap();
    assert_eq!(loop_devices_under(dir.path()), Vec::<String>::new());
}

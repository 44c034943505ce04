//! The whole CLI flow for a user without privileges (`nobody`, through
//! `setpriv`): OCI layouts convert with the exact converter, which needs
//! none, and the agent goes into images of converters that do not install
//! it with `debugfs` instead of a loop mount. Root sets the scene.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_cache_tests::oci::{IndexStyle, standard_layout};
use rootfs_cache_tests::{ReadOnlyMount, agent, fsck, require_root, rootfs_cache_bin};

const NOBODY: u32 = 65534;

/// A directory everyone can read, outside root's private temporary dirs.
fn public_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("rootless-").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn chown_r(path: &Path, uid: u32) {
    assert!(Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(path).status().unwrap().success());
}

/// Runs the CLI as `nobody`.
fn as_nobody(cache: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("setpriv")
        .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
        .arg(rootfs_cache_bin())
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

fn image_of(out: &std::process::Output) -> PathBuf {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PathBuf::from(json["image"].as_str().unwrap())
}

#[test]
fn nobody_converts_an_oci_layout_with_the_exact_converter() {
    require_root!();
    let dir = public_dir();
    let layout = dir.path().join("oci");
    standard_layout(&layout, IndexStyle::Skopeo);
    let agent = agent(dir.path(), "vm-agent", "rootless");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    chown_r(&cache, NOBODY);
    let out = as_nobody(
        &cache,
        &["convert".as_ref(), layout.as_os_str(), "--agent".as_ref(), agent.as_os_str(), "--json".as_ref()],
    );
    let image = image_of(&out);
    let mnt = ReadOnlyMount::new(&image);
    assert_eq!(std::fs::read(mnt.path.join("sbin/vm-agent")).unwrap(), std::fs::read(&agent).unwrap());
    assert_eq!(std::fs::read_to_string(mnt.path.join("etc/motd")).unwrap(), "oci top layer\n");
    drop(mnt);
    assert_eq!(fsck(&image).0, 0);
    // And nobody gets the hit.
    let again = as_nobody(
        &cache,
        &["convert".as_ref(), layout.as_os_str(), "--agent".as_ref(), agent.as_os_str(), "--json".as_ref()],
    );
    assert_eq!(image_of(&again), image);
}

#[test]
fn without_cap_sys_admin_the_agent_goes_in_with_debugfs() {
    require_root!();
    let dir = public_dir();
    // The bundled example chain: plain files and symlinks, readable by all.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/overlay2");
    let copy = dir.path().join("overlay2");
    assert!(Command::new("cp").arg("-a").arg(&example).arg(&copy).status().unwrap().success());
    let top = copy.join("c81e4f2a6b9d0c3e5f7a1b2d4c6e8f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d2e");
    let agent = agent(dir.path(), "vm-agent", "debugfs");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    chown_r(&cache, NOBODY);
    let out = as_nobody(
        &cache,
        &[
            "convert".as_ref(),
            top.as_os_str(),
            "--agent".as_ref(),
            agent.as_os_str(),
            "--converter".as_ref(),
            "oci2rootfs".as_ref(),
            "--json".as_ref(),
        ],
    );
    let image = image_of(&out);
    let mnt = ReadOnlyMount::new(&image);
    let installed = mnt.path.join("sbin/vm-agent");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&agent).unwrap());
    let meta = std::fs::metadata(&installed).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o755, 0, 0));
    assert_eq!(
        std::fs::read_to_string(mnt.path.join("etc/motd")).unwrap(),
        "Welcome to a VM booted from a rootfs-cache image.\n"
    );
}

#[test]
fn debugfs_injection_follows_a_symlinked_sbin_and_can_be_forced() {
    require_root!();
    let dir = public_dir();
    // A merged-usr tree: /sbin -> usr/sbin.
    let mut o = rootfs_cache_tests::Overlay2::new(&dir.path().join("overlay2"));
    let top = o.layer(|l| {
        l.dir("/usr/sbin", 0o755).symlink("/sbin", "usr/sbin").file("/etc/hostname", b"merged\n", 0o644);
    });
    let agent = agent(dir.path(), "vm-agent", "forced");
    let cache = dir.path().join("cache");
    let out = Command::new(rootfs_cache_bin())
        .arg("--cache-dir")
        .arg(&cache)
        .arg("convert")
        .arg(&top)
        .arg("--agent")
        .arg(&agent)
        .args(["--converter", "oci2rootfs", "--inject", "debugfs", "--json"])
        .output()
        .unwrap();
    let image = image_of(&out);
    let mnt = ReadOnlyMount::new(&image);
    assert_eq!(std::fs::read(mnt.path.join("usr/sbin/vm-agent")).unwrap(), std::fs::read(&agent).unwrap());
    assert!(std::fs::symlink_metadata(mnt.path.join("sbin")).unwrap().file_type().is_symlink());
}

//! Images of the local Docker engine (`docker-daemon:NAME`), end to end through the CLI,
//! against real engines: Debian's dockerd started by the tests (`rootfs_cache_tests::dockerd`)
//! with the overlay2 driver (the image is its overlay2 chain) and with vfs (no overlay2
//! directory: the image is exported through the API), each fed an OCI layout with skopeo
//! (the Docker fixtures' `base` when `ROOTFS_FIXTURES` names them, else the tests' feature
//! layout). Every converted image is compared entry by entry with a reference: for the
//! overlay2 engine, the kernel's overlay mount of the engine's chain (the differential
//! tests' reference for overlay2: Docker's own extraction sets some directory times
//! differently from umoci, and the image must be what the chain holds); for the exported
//! image, `umoci unpack` of the layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_cache_tests::compare::{added_by_image, differences};
use rootfs_cache_tests::dockerd::Dockerd;
use rootfs_cache_tests::oci;
use rootfs_cache_tests::{OverlayMount, ReadOnlyMount, agent, require_root, rootfs_cache_bin, snapshot};

/// Whether skopeo and umoci are here; outside CI their absence skips the test.
fn tools() -> bool {
    for tool in ["skopeo", "umoci"] {
        if Command::new(tool).arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "CI must have {tool}");
            println!("SKIPPED: {tool} is not installed");
            return false;
        }
    }
    true
}

/// A running engine holding the test image as `team/app:v1`, and where a test keeps its
/// files: the image's layout, an agent and a cache directory.
struct Engine {
    engine: Dockerd,
    dir: tempfile::TempDir,
    layout: PathBuf,
    agent: PathBuf,
    cache: PathBuf,
}

impl Engine {
    /// Starts dockerd with `driver` and loads the test image; `None` (said why) without the
    /// tools.
    fn with(driver: &str) -> Option<Self> {
        if !tools() {
            return None;
        }
        let engine = Dockerd::start(driver)?;
        let dir = tempfile::tempdir().unwrap();
        let layout = oci::base_or_feature_layout(dir.path());
        engine.load_layout(&layout, "team/app:v1");
        let agent = agent(dir.path(), "vm-agent", "daemon");
        let cache = dir.path().join("cache");
        Some(Self { engine, dir, layout, agent, cache })
    }
}

/// `rootfs-cache --cache-dir CACHE convert SOURCE --agent AGENT --json EXTRA…` with
/// `DOCKER_HOST` naming `socket`: exit code, JSON, stderr.
fn convert(
    cache: &Path,
    socket: &Path,
    source: &str,
    agent: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let out = Command::new(rootfs_cache_bin())
        .arg("--cache-dir")
        .arg(cache)
        .args(["convert", source, "--json", "--agent"])
        .arg(agent)
        .args(extra)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env_remove("ROOTFS_CACHE_AGENT")
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Checks the image of `outcome` against `umoci unpack` of `layout`, entry by entry.
fn matches_umoci(outcome: &serde_json::Value, layout: &Path, dir: &Path) {
    let image = PathBuf::from(outcome["image"].as_str().unwrap());
    let mnt = ReadOnlyMount::new(&image);
    let rootfs = oci::umoci_unpack(layout, &dir.join("bundle"));
    let added = added_by_image(&rootfs);
    let ignore: Vec<&[u8]> = added.iter().map(Vec::as_slice).collect();
    let diffs = differences(&rootfs, &mnt.path, &ignore);
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
}

#[test]
fn an_overlay2_engine_image_is_its_chain_and_matches_the_kernels_view() {
    require_root!();
    let Some(Engine { engine, dir, agent, cache, .. }) = Engine::with("overlay2") else { return };

    let (code, first, stderr) = convert(&cache, &engine.socket, "docker-daemon:team/app:v1", &agent, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((first["kind"].as_str(), first["cached"].as_bool()), (Some("overlay2"), Some(false)));
    assert_eq!(first["reference"], "docker-daemon:team/app:v1");
    let upper = engine.docker(&["image", "inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", "team/app:v1"]);
    let top = Path::new(upper.trim()).parent().unwrap().to_str().unwrap().to_owned();
    {
        let reference = OverlayMount::new(Path::new(&top));
        let mnt = ReadOnlyMount::new(Path::new(first["image"].as_str().unwrap()));
        let added = added_by_image(&reference.path);
        let ignore: Vec<&[u8]> = added.iter().map(Vec::as_slice).collect();
        let diffs = differences(&reference.path, &mnt.path, &ignore);
        assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.join("\n"));
    }

    // The chain's own path is the same entry, and so is the image's ID.
    let (code, by_path, stderr) = convert(&cache, &engine.socket, &top, &agent, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((&by_path["key"], by_path["cached"].as_bool()), (&first["key"], Some(true)));
    let id = engine.docker(&["image", "inspect", "-f", "{{.Id}}", "team/app:v1"]);
    let (code, by_id, stderr) = convert(&cache, &engine.socket, &format!("docker-daemon:{}", id.trim()), &agent, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((&by_id["key"], by_id["cached"].as_bool()), (&first["key"], Some(true)));

    // An image the engine lacks, an engine that is not running, another platform:
    // a clear error and an unchanged cache.
    let before = snapshot(&cache);
    let (code, _, stderr) = convert(&cache, &engine.socket, "docker-daemon:team/absent:v1", &agent, &[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("has no image \"team/absent:v1\""), "{stderr}");
    let gone = dir.path().join("no-engine.sock");
    let (code, _, stderr) = convert(&cache, &gone, "docker-daemon:team/app:v1", &agent, &[]);
    assert_eq!(code, 11, "{stderr}");
    assert!(stderr.contains("is not running") && stderr.contains("DOCKER_HOST"), "{stderr}");
    let (code, _, stderr) =
        convert(&cache, &engine.socket, "docker-daemon:team/app:v1", &agent, &["--platform", "linux/arm64"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("is for linux/amd64"), "{stderr}");
    assert_eq!(snapshot(&cache), before, "a failed request changed the cache");
}

#[test]
fn an_engine_without_overlay2_exports_the_image_which_matches_umoci() {
    require_root!();
    let Some(Engine { engine, dir, layout, agent, cache }) = Engine::with("vfs") else { return };

    let (code, first, stderr) = convert(&cache, &engine.socket, "docker-daemon:team/app:v1", &agent, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((first["kind"].as_str(), first["cached"].as_bool()), (Some("docker-archive"), Some(false)));
    assert_eq!(first["reference"], "docker-daemon:team/app:v1");
    matches_umoci(&first, &layout, dir.path());
    // Only verified blobs are left of the export: no temporary file.
    assert_eq!(std::fs::read_dir(cache.join("blobs/tmp")).unwrap().count(), 0);

    // The key is the image's: another cache, the image's ID, the same key.
    let id = engine.docker(&["image", "inspect", "-f", "{{.Id}}", "team/app:v1"]);
    let other = dir.path().join("other-cache");
    let (code, again, stderr) = convert(&other, &engine.socket, &format!("docker-daemon:{}", id.trim()), &agent, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again["key"], first["key"]);
    let (code, hit, stderr) = convert(&cache, &engine.socket, "docker-daemon:team/app:v1", &agent, &[]);
    assert_eq!((code, hit["cached"].as_bool()), (0, Some(true)), "{stderr}");

    // A policy that does not name the engine: refused before anything is sent.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "docker_engines = [\"/var/run/elsewhere.sock\"]\n").unwrap();
    let before = snapshot(&cache);
    let out = Command::new(rootfs_cache_bin())
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--policy")
        .arg(&policy)
        .args(["convert", "docker-daemon:team/app:v2", "--agent"])
        .arg(&agent)
        .env("DOCKER_HOST", format!("unix://{}", engine.socket.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("docker_engines"), "{stderr}");
    assert_eq!(snapshot(&cache), before);
}

#[test]
fn a_bad_name_or_engine_is_refused_clearly_and_changes_nothing() {
    // No engine needed: the name is refused before one is contacted, and a missing engine
    // is named with what to do.
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), "vm-agent", "daemon");
    let cache = dir.path().join("cache");
    let gone = dir.path().join("no-engine.sock");
    let (code, _, stderr) = convert(&cache, &gone, "docker-daemon:../etc", &agent, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not a Docker image name"), "{stderr}");
    let (code, _, stderr) = convert(&cache, &gone, "docker-daemon:app:dev", &agent, &[]);
    assert_eq!(code, 11, "{stderr}");
    assert!(stderr.contains(&format!("{} is not running", gone.display())), "{stderr}");
    let out = Command::new(rootfs_cache_bin())
        .arg("--cache-dir")
        .arg(&cache)
        .args(["convert", "docker-daemon:app:dev", "--agent"])
        .arg(&agent)
        .env("DOCKER_HOST", "tcp://127.0.0.1:2375")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unix socket"));
    let images = std::fs::read_dir(cache.join("images")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(images, 0);
}

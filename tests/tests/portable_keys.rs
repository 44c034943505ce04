//! Portable keys (issue 14, point 1): the same image gives the same key on every host.
//!
//! Two real Docker engines (Debian's dockerd, `rootfs_cache_tests::dockerd`) with separate
//! data roots and the overlay2 driver are each fed the same image with `docker load` (a
//! `docker-archive` made by skopeo from a layout the tests write): their overlay2
//! directories have different random names and times, but Docker's layer database gives
//! the image's top layer the same chain ID on both, and so the same key, whether the image
//! is named `docker-daemon:NAME` or by its overlay2 path. A bare overlay2 chain (no layer
//! database) still converts, with its local key. An OCI layout copied to two paths has one
//! key in two caches.

use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_cache_tests::dockerd::Dockerd;
use rootfs_cache_tests::oci::{self, IndexStyle};
use rootfs_cache_tests::{agent, require_root, rootfs_cache_bin, standard_chain};

/// Whether skopeo is here; outside CI its absence skips the test.
fn skopeo() -> bool {
    if Command::new("skopeo").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must have skopeo");
        println!("SKIPPED: skopeo is not installed");
        return false;
    }
    true
}

/// `rootfs-cache --cache-dir CACHE convert SOURCE --agent AGENT --json` with `DOCKER_HOST`
/// naming `socket` when there is one; the JSON of a successful conversion.
fn convert(cache: &Path, socket: Option<&Path>, source: &str, agent: &Path) -> serde_json::Value {
    let mut command = Command::new(rootfs_cache_bin());
    command.arg("--cache-dir").arg(cache).args(["convert", source, "--json", "--agent"]).arg(agent);
    command.env_remove("ROOTFS_CACHE_AGENT");
    match socket {
        Some(socket) => command.env("DOCKER_HOST", format!("unix://{}", socket.display())),
        None => command.env_remove("DOCKER_HOST"),
    };
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "convert {source}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("convert {source}: {e}: {stderr}"))
}

/// The key of a conversion's JSON, checked to be one.
fn key(outcome: &serde_json::Value) -> String {
    let key = outcome["key"].as_str().unwrap_or_else(|| panic!("no key in {outcome}")).to_owned();
    assert!(key.len() == 64 && key.bytes().all(|c| c.is_ascii_hexdigit()), "{key}");
    key
}

/// The top layer directory of `name` on `engine` (its `UpperDir` without `/diff`).
fn top_layer(engine: &Dockerd, name: &str) -> PathBuf {
    let upper = engine.docker(&["image", "inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", name]);
    Path::new(upper.trim()).parent().unwrap().to_path_buf()
}

#[test]
fn two_engines_fed_the_same_image_give_its_overlay2_chain_one_key() {
    require_root!();
    if !skopeo() {
        return;
    }
    let Some(one) = Dockerd::start("overlay2") else { return };
    let Some(two) = Dockerd::start("overlay2") else { return };
    let dir = tempfile::tempdir().unwrap();
    let layout = oci::base_or_feature_layout(dir.path());
    let archive = dir.path().join("image.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker-archive:{}:team/app:v1", archive.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy to an archive: {}", String::from_utf8_lossy(&out.stderr));
    for engine in [&one, &two] {
        engine.docker(&["load", "--quiet", "--input", archive.to_str().unwrap()]);
    }
    let agent = agent(dir.path(), "vm-agent", "portable");

    let (top_one, top_two) = (top_layer(&one, "team/app:v1"), top_layer(&two, "team/app:v1"));
    assert_ne!(top_one.file_name(), top_two.file_name(), "the engines chose the same layer directory");
    let (cache_one, cache_two) = (dir.path().join("cache-one"), dir.path().join("cache-two"));
    let by_name_one = convert(&cache_one, Some(&one.socket), "docker-daemon:team/app:v1", &agent);
    let by_name_two = convert(&cache_two, Some(&two.socket), "docker-daemon:team/app:v1", &agent);
    assert_eq!(by_name_one["kind"], "overlay2");
    assert_eq!(key(&by_name_one), key(&by_name_two), "the engines' keys differ");

    // By path, each engine's chain is the same entry of its cache.
    for (cache, top, first) in [(&cache_one, &top_one, &by_name_one), (&cache_two, &top_two, &by_name_two)] {
        let by_path = convert(cache, None, top.to_str().unwrap(), &agent);
        assert_eq!((key(&by_path), by_path["cached"].as_bool()), (key(first), Some(true)));
    }
    // And a fresh cache computes the same key from the other engine's path.
    let by_path = convert(&dir.path().join("cache-three"), None, top_two.to_str().unwrap(), &agent);
    assert_eq!((key(&by_path), by_path["cached"].as_bool()), (key(&by_name_one), Some(false)));

    // A bare overlay2 chain (no layer database beside it) still converts, with its local
    // key, which depends on where it is.
    let bare = dir.path().join("bare/overlay2");
    let bare_top = standard_chain(&bare);
    let local = convert(&cache_one, None, bare_top.to_str().unwrap(), &agent);
    assert_eq!(local["cached"].as_bool(), Some(false));
    assert_ne!(key(&local), key(&by_name_one));
}

#[test]
fn an_oci_layout_copied_to_two_paths_has_one_key_in_two_caches() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), "vm-agent", "portable");
    let one = dir.path().join("one/app");
    oci::standard_layout(&one, IndexStyle::Skopeo);
    // Copied later, elsewhere: other paths, other times of index.json.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let two = dir.path().join("somewhere/else/app");
    std::fs::create_dir_all(two.parent().unwrap()).unwrap();
    let out = Command::new("cp").arg("-r").arg(&one).arg(&two).output().unwrap();
    assert!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));

    let first = convert(&dir.path().join("cache-one"), None, one.to_str().unwrap(), &agent);
    let second = convert(&dir.path().join("cache-two"), None, two.to_str().unwrap(), &agent);
    assert_eq!(first["kind"], "oci-layout");
    assert_eq!((second["cached"].as_bool(), key(&second)), (Some(false), key(&first)));
}

//! The exact converter on images a real Docker engine built (see
//! `tests/fixtures/docker-fixtures.sh`): every overlay2 chain against the
//! kernel's overlay mount of it, every OCI layout against `umoci unpack`,
//! zero differences, and a clean `e2fsck -fn`.
//!
//! `ROOTFS_FIXTURES` names the `fixtures.json` the script wrote; CI builds
//! the small set first. Without it the test prints why it skips, and under
//! `CI=true` it fails instead.

use std::path::{Path, PathBuf};

use rootfs_cache::{Config, ConverterSpec, Request, RootfsCache};
use rootfs_cache_tests::compare::{added_by_image, differences};
use rootfs_cache_tests::oci::{is_zstd, umoci_unpack};
use rootfs_cache_tests::{OverlayMount, ReadOnlyMount, agent, fsck, require_root};

struct Fixture {
    name: String,
    overlay2: PathBuf,
    oci: PathBuf,
}

fn fixtures() -> Option<Vec<Fixture>> {
    let Some(path) = std::env::var_os("ROOTFS_FIXTURES") else {
        eprintln!(
            "SKIPPED: ROOTFS_FIXTURES is not set; build fixtures with `tests/fixtures/docker-fixtures.sh --small DIR` \
             and set ROOTFS_FIXTURES=DIR/fixtures.json"
        );
        assert!(std::env::var_os("CI").is_none(), "CI must build the Docker fixtures");
        return None;
    };
    let list: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("ROOTFS_FIXTURES")).unwrap();
    Some(
        list.as_array()
            .unwrap()
            .iter()
            .map(|f| Fixture {
                name: f["name"].as_str().unwrap().into(),
                overlay2: f["overlay2"].as_str().unwrap().into(),
                oci: f["oci"].as_str().unwrap().into(),
            })
            .collect(),
    )
}

fn diff(reference: &Path, image: &Path) -> Vec<String> {
    let added = added_by_image(reference);
    let ignore: Vec<&[u8]> = added.iter().map(Vec::as_slice).collect();
    differences(reference, image, &ignore)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_docker_fixture_converts_with_zero_differences_and_a_clean_fsck() {
    require_root!();
    let Some(fixtures) = fixtures() else { return };
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), "vm-agent", "fixtures");
    let cache = RootfsCache::open(Config::new(dir.path().join("cache"))).unwrap();
    let mut failures = Vec::new();
    for f in &fixtures {
        // overlay2 against the kernel's overlay mount.
        let image =
            cache.convert(&Request::new(&f.overlay2, &agent).converter(ConverterSpec::Exact)).await.unwrap().image;
        let reference = OverlayMount::new(&f.overlay2);
        let mnt = ReadOnlyMount::new(&image);
        let diffs = diff(&reference.path, &mnt.path);
        if !diffs.is_empty() {
            failures.push(format!(
                "{} (overlay2): {} differences\n{}",
                f.name,
                diffs.len(),
                diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            ));
        }
        let (code, out) = fsck(&image);
        if code != 0 {
            failures.push(format!("{} (overlay2): e2fsck -fn exited {code}\n{out}", f.name));
        }
        drop((mnt, reference));

        // OCI against umoci (which reads no zstd: those layouts are checked
        // against the overlay2 reference of the same image instead).
        let image = cache.convert(&Request::new(&f.oci, &agent).converter(ConverterSpec::Exact)).await.unwrap().image;
        let mnt = ReadOnlyMount::new(&image);
        // umoci reads no zstd: a zstd layout is compared with umoci's unpack
        // of the gzip export of the same image.
        let gzip_twin = if is_zstd(&f.oci) {
            fixtures.iter().find(|t| t.overlay2 == f.overlay2 && !is_zstd(&t.oci)).map(|t| t.oci.clone())
        } else {
            Some(f.oci.clone())
        };
        let twin = gzip_twin.unwrap_or_else(|| panic!("{}: a zstd layout without a gzip twin", f.name));
        let bundle = dir.path().join(format!("bundle-{}", f.name));
        let rootfs = umoci_unpack(&twin, &bundle);
        let diffs = diff(&rootfs, &mnt.path);
        let _ = std::fs::remove_dir_all(&bundle);
        if !diffs.is_empty() {
            failures.push(format!(
                "{} (OCI): {} differences\n{}",
                f.name,
                diffs.len(),
                diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            ));
        }
        let (code, out) = fsck(&image);
        if code != 0 {
            failures.push(format!("{} (OCI): e2fsck -fn exited {code}\n{out}", f.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

//! The same committed component in a second runtime: Node.js through jco,
//! with the host adapter of `examples/jco/` written in JavaScript. It
//! converts the bundled example and gets a hit on the second call.
//!
//! Needs `npm ci --prefix examples/jco` (CI runs it); without it the test
//! says so and skips, and under `CI=true` it fails instead.

use std::path::Path;
use std::process::Command;

#[test]
fn the_component_runs_under_node_with_a_javascript_host() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jco");
    if !example.join("node_modules/@bytecodealliance/jco").exists() {
        eprintln!("SKIPPED: run `npm ci --prefix examples/jco` first (needs Node.js and the npm registry)");
        assert!(std::env::var_os("CI").is_none(), "CI must install the jco example");
        return;
    }
    let mut npm = Command::new("npm");
    npm.arg("test").current_dir(&example);
    if let Some(component) = std::env::var_os("ROOTFS_CACHE_COMPONENT") {
        npm.env("ROOTFS_CACHE_COMPONENT", component);
    }
    let out = npm.output().expect("running npm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "npm test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hit on the second call"), "{stdout}");
}

//! The same committed component in a third runtime: Python through
//! wasmtime-py, with the host adapter of `examples/wasmtime-py/` written in
//! Python. It converts the bundled example and gets a hit on the second call.
//!
//! Needs the example's virtual environment (CI makes it:
//! `python3 -m venv examples/wasmtime-py/.venv` and
//! `examples/wasmtime-py/.venv/bin/pip install -r examples/wasmtime-py/requirements.txt`);
//! without it the test says so and skips, and under `CI=true` it fails instead.

use std::path::Path;
use std::process::Command;

#[test]
fn the_component_runs_under_wasmtime_py_with_a_python_host() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasmtime-py");
    let python = example.join(".venv/bin/python");
    let installed = Command::new(&python).args(["-c", "import wasmtime.component"]).output();
    if !installed.is_ok_and(|out| out.status.success()) {
        eprintln!(
            "SKIPPED: make the example's environment first: python3 -m venv examples/wasmtime-py/.venv && \
             examples/wasmtime-py/.venv/bin/pip install -r examples/wasmtime-py/requirements.txt"
        );
        assert!(std::env::var_os("CI").is_none(), "CI must install the wasmtime-py example");
        return;
    }
    // The test uses ROOTFS_CACHE_COMPONENT, when CI sets it, as the Rust tests do.
    let out = Command::new(&python).arg(example.join("test.py")).output().expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "test.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hit on the second call"), "{stdout}");
}

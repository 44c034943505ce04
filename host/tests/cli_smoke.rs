//! The binary starts, documents itself and refuses nonsense. (The end-to-end
//! CLI tests live in `tests/`; this target also makes `cargo test
//! --workspace` build the binary they run.)

use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rootfs-cache")).args(args).output().unwrap()
}

#[test]
fn version_and_help_exit_zero() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rootfs-cache "));
    let out = run(&["help", "convert"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--agent"));
}

#[test]
fn no_command_is_a_usage_error() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
}

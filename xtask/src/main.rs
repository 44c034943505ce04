//! Project tasks that cargo alone does not do.
//!
//! ```text
//! cargo xtask build-guest      rebuild the component and install it in host/component/
//! cargo xtask check-guest      rebuild it and compare with the committed artifact
//! cargo xtask check-modules    no crate's module graph has a cycle (--verbose: every edge)
//! ```
//!
//! The guest is built by the standard route (`rustup target add wasm32-wasip2`)
//! when that target is installed, and otherwise by the offline route: Debian's
//! `rustc-web` toolchain building the standard library from source with
//! `-Zbuild-std` (see README, "Rebuilding the guest"). The offline route also
//! builds with `-Cpanic=immediate-abort` (nightly-only, hence not on the
//! standard route): without the standard library's panic printing, the guest
//! links no libc I/O at all and the component needs no Preview 1 adapter.

mod modules;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const TARGET: &str = "wasm32-wasip2";
const TOOLCHAIN_RECORD: &str = "host/component/rootfs-cache.wasm.toolchain";

/// Each component: (package, built file, committed artifact).
const COMPONENTS: &[(&str, &str, &str)] = &[
    ("rootfs-cache-guest", "rootfs_cache_guest.wasm", "host/component/rootfs-cache.wasm"),
    ("rootfs-cache-hostile-guest", "rootfs_cache_hostile_guest.wasm", "tests/components/hostile.wasm"),
];

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = workspace_root();
    match task.as_str() {
        "build-guest" => {
            let built = build(&root)?;
            for ((_, _, artifact), wasm) in COMPONENTS.iter().zip(&built.wasm) {
                let dest = root.join(artifact);
                std::fs::create_dir_all(dest.parent().expect("artifacts live in a directory"))?;
                std::fs::copy(wasm, &dest).with_context(|| format!("installing {artifact}"))?;
                println!("installed {artifact} ({} bytes)", std::fs::metadata(&dest)?.len());
            }
            std::fs::write(root.join(TOOLCHAIN_RECORD), &built.toolchain)?;
            println!("built with:\n{}", built.toolchain.trim_end());
            Ok(())
        }
        "check-guest" => check(&root),
        "check-modules" => modules::check(&root, std::env::args().any(|a| a == "--verbose")),
        _ => {
            eprintln!("usage: cargo xtask <build-guest|check-guest|check-modules>");
            eprintln!("  build-guest  rebuild the components (guest/, tests/hostile/) and install them");
            eprintln!("  check-guest  rebuild them and compare with the committed artifacts; when the");
            eprintln!("               toolchain differs from the one that built them, write the rebuilt");
            eprintln!("               ones to target/ and print ROOTFS_CACHE_COMPONENT=<path> and");
            eprintln!("               ROOTFS_CACHE_HOSTILE_COMPONENT=<path>");
            eprintln!("  check-modules  fail on a module cycle in any crate (--verbose prints every use)");
            std::process::exit(2)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

struct Built {
    /// One file per entry of [`COMPONENTS`].
    wasm: Vec<PathBuf>,
    toolchain: String,
}

enum Route {
    /// rustup with the `wasm32-wasip2` target installed.
    Standard,
    /// Debian's rustc-web with `-Zbuild-std`.
    Offline,
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pick_route() -> Result<Route> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == TARGET) {
        return Ok(Route::Standard);
    }
    if Path::new("/usr/bin/rustc").exists() && Path::new("/usr/lib/rustlib/src/rust/library").exists() {
        return Ok(Route::Offline);
    }
    bail!(
        "no way to build for {TARGET}: either `rustup target add {TARGET}`, or on Debian \
         `apt-get install rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc`"
    )
}

fn build(root: &Path) -> Result<Built> {
    let route = pick_route()?;
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo"));
    // Paths differ between checkouts and machines; map them away so that the
    // same source gives the same bytes wherever it is built.
    let mut rustflags = vec![
        format!("--remap-path-prefix={}=/rootfs-cache", root.display()),
        format!("--remap-path-prefix={}=/cargo", home.join("registry/src").display()),
    ];
    let target_dir = root.join("target/guest");
    let (mut cmd, toolchain) = match route {
        Route::Standard => {
            let version = output(Command::new("rustc").arg("-V")).unwrap_or_default();
            let mut cmd = Command::new("cargo");
            cmd.args(["build", "--locked", "--profile", "guest", "--target", TARGET]);
            (cmd, format!("route: standard (rustup, {TARGET} target)\n{version}"))
        }
        Route::Offline => {
            rustflags.extend([
                "-C".into(),
                "link-self-contained=no".into(),
                "-L".into(),
                "/usr/lib/wasm32-wasi".into(),
                "--remap-path-prefix=/usr/lib/rustlib/src/rust=/rustc-src".into(),
                "-Zunstable-options".into(),
                "-Cpanic=immediate-abort".into(),
            ]);
            let version = output(Command::new("/usr/bin/rustc").arg("-V")).unwrap_or_default();
            let libc =
                output(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "wasi-libc"])).unwrap_or_default();
            let mut cmd = Command::new("/usr/bin/cargo");
            cmd.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1").args([
                "build",
                "--locked",
                "--profile",
                "guest",
                "-Zbuild-std=std,panic_abort",
                "--target",
                TARGET,
            ]);
            (cmd, format!("route: offline (Debian rustc-web, -Zbuild-std)\n{version}wasi-libc {libc}\n"))
        }
    };
    cmd.current_dir(root);
    for (package, _, _) in COMPONENTS {
        cmd.args(["-p", package]);
    }
    cmd.arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env_remove("RUSTFLAGS");
    eprintln!("building the guest ({})", toolchain.lines().next().unwrap_or_default());
    let status = cmd.status().context("running cargo for the guest")?;
    if !status.success() {
        bail!("building the guest failed ({status})");
    }
    let out = target_dir.join(TARGET).join("guest");
    Ok(Built { wasm: COMPONENTS.iter().map(|(_, file, _)| out.join(file)).collect(), toolchain })
}

fn check(root: &Path) -> Result<()> {
    let built = build(root)?;
    let recorded = std::fs::read_to_string(root.join(TOOLCHAIN_RECORD)).unwrap_or_default();
    let mut differing = Vec::new();
    for ((_, _, artifact), wasm) in COMPONENTS.iter().zip(&built.wasm) {
        let fresh = std::fs::read(wasm)?;
        let committed = std::fs::read(root.join(artifact)).with_context(|| format!("reading {artifact}"))?;
        if fresh == committed {
            println!("{artifact} matches its source ({} bytes)", fresh.len());
        } else {
            differing.push((*artifact, wasm.clone(), committed.len(), fresh.len()));
        }
    }
    if differing.is_empty() {
        return Ok(());
    }
    if recorded != built.toolchain {
        println!("the toolchain differs from the one that built the committed components:");
        println!("  committed with: {}", recorded.trim_end().replace('\n', "; "));
        println!("  this machine:   {}", built.toolchain.trim_end().replace('\n', "; "));
        println!("so the bytes cannot be compared; test the rebuilt components instead:");
        for (artifact, wasm, _, _) in &differing {
            let name = Path::new(artifact).file_name().expect("a file name");
            let rebuilt = root.join("target").join(format!("rebuilt-{}", name.to_string_lossy()));
            std::fs::copy(wasm, &rebuilt)?;
            let var =
                if artifact.contains("hostile") { "ROOTFS_CACHE_HOSTILE_COMPONENT" } else { "ROOTFS_CACHE_COMPONENT" };
            println!("{var}={}", rebuilt.display());
        }
        return Ok(());
    }
    let list: Vec<String> =
        differing.iter().map(|(a, _, c, f)| format!("{a} ({c} bytes committed, {f} rebuilt)")).collect();
    bail!(
        "{} do not match their source with the same toolchain: run `cargo xtask build-guest` and commit the result",
        list.join(", ")
    )
}

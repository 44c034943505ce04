//! A hostile guest: it implements the rootfs-cache world, and its `convert`
//! performs the attack its request names as `command:/attack/<name>`,
//! reporting what the host answered. The host's sandbox
//! tests run it (see `tests/tests/hostile_guest.rs`).

// Only a component has something to export; natively this crate is empty.
#[cfg(target_arch = "wasm32")]
mod hostile {
    mod bindings {
        wit_bindgen::generate!({ path: "../../wit", world: "rootfs-cache" });
    }

    use bindings::exports::rootfs::cache::cache::Guest;
    use bindings::rootfs::cache::host::{self, Conversion, FileInstall, Layer, PathInfo, PathKind, ProbeRequest};
    use bindings::rootfs::cache::types::{
        ConvertRequest, Entry, Error, GcReport, ImageInfo, Origin, Outcome, SourceKind, SweepReport, Timings,
        VerifyReport,
    };

    struct Hostile;

    bindings::export!(Hostile with_types_in bindings);

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    /// What a harmless call returns: the attack was refused.
    fn refused(what: &str) -> Outcome {
        Outcome {
            image: String::new(),
            key: what.into(),
            cached: false,
            kind: SourceKind::Overlay2,
            image_bytes: 0,
            rebuilt_because: None,
            timings: Timings {
                resolve_us: 0,
                lookup_us: 0,
                lock_us: 0,
                convert_us: 0,
                inject_us: 0,
                publish_us: 0,
                total_us: 0,
            },
            reference: None,
            manifest_digest: None,
            origin: Origin::Built,
            shareable: false,
            warnings: Vec::new(),
            remote_digest: None,
            pushed: false,
        }
    }

    /// An attack that should be refused: returns the host's error, or says it
    /// was let through.
    fn expect_refusal<T>(what: &str, result: Result<T, Error>) -> Result<Outcome, Error> {
        match result {
            Err(e) => Err(e),
            Ok(_) => Ok(refused(&format!("ALLOWED: {what}"))),
        }
    }

    /// `host.probe` of one path.
    fn probe_one(path: &str, read_bytes: u32) -> Result<PathInfo, Error> {
        let mut answers = host::probe(&[ProbeRequest { path: path.into(), read_bytes }])?;
        answers.pop().unwrap_or_else(|| Err(Error::Io("probe gave no answer".into())))
    }

    fn job(request: &ConvertRequest, output: &str, layers: Vec<Layer>) -> Conversion {
        Conversion {
            converter: "exact".into(),
            kind: SourceKind::Overlay2,
            source: request.source.clone(),
            layers,
            platform: "linux/amd64".into(),
            output: output.into(),
            size: Some(64 << 20),
            key: KEY.into(),
            agent: None,
        }
    }

    /// A real temporary image, made by the host's own converter from the
    /// request's (allowed) source.
    fn staged_image(request: &ConvertRequest) -> Result<String, Error> {
        let output = format!("tmp/{KEY}.hostile.ext4");
        let diff = format!("{}/diff", request.source);
        host::run_converter(&job(
            request,
            &output,
            vec![Layer {
                path: diff,
                media_type: String::new(),
                digest: String::new(),
                size: 0,
                diff_id: String::new(),
            }],
        ))?;
        Ok(output)
    }

    impl Guest for Hostile {
        fn convert(request: ConvertRequest) -> Result<Outcome, Error> {
            let attack = request.converter.strip_prefix("command:/attack/").unwrap_or("noop");
            let top = |p: &str| Layer {
                path: p.into(),
                media_type: String::new(),
                digest: String::new(),
                size: 0,
                diff_id: String::new(),
            };
            match attack {
                "noop" => Ok(refused("noop")),
                "convert-into-parent" => {
                    expect_refusal(attack, host::run_converter(&job(&request, "../outside.ext4", vec![])))
                }
                "convert-into-absolute" => {
                    expect_refusal(attack, host::run_converter(&job(&request, "/tmp/outside.ext4", vec![])))
                }
                "convert-into-images" => {
                    expect_refusal(attack, host::run_converter(&job(&request, &format!("images/{KEY}.ext4"), vec![])))
                }
                "layers-outside-roots" => {
                    let output = format!("tmp/{KEY}.x.ext4");
                    expect_refusal(attack, host::run_converter(&job(&request, &output, vec![top("/etc")])))
                }
                "mount-outside" => expect_refusal(attack, host::mount_image("../../etc/passwd")),
                "remote-without-one" => expect_refusal(attack, host::remote_manifest(KEY)),
                "remote-image-into-parent" => {
                    expect_refusal(attack, host::remote_image(&format!("sha256:{KEY}"), 1, "../outside.ext4"))
                }
                "remote-push-without-one" => {
                    expect_refusal(attack, host::remote_push_image(&format!("images/{KEY}.ext4")))
                }
                "digest-outside" => expect_refusal(attack, host::digest_image("../outside/precious")),
                "mount-published" => expect_refusal(attack, host::mount_image(&format!("images/{KEY}.ext4"))),
                "mount-through-symlink" => expect_refusal(attack, host::mount_image("tmp/escape")),
                "install-from-outside" => {
                    let image = staged_image(&request)?;
                    let mounted = host::mount_image(&image)?;
                    let file = FileInstall {
                        source: "/etc/shadow".into(),
                        sha256: String::new(),
                        target: "/x".into(),
                        mode: 0o644,
                    };
                    let result = mounted.install(&file);
                    drop(mounted);
                    let _ = host::remove(&image);
                    expect_refusal(attack, result)
                }
                "publish-outside" => expect_refusal(
                    attack,
                    host::publish(&format!("tmp/{KEY}.x.ext4"), "../evil.ext4", &format!("images/{KEY}.json"), "{}"),
                ),
                "publish-mismatched" => {
                    let other = "1".repeat(64);
                    expect_refusal(
                        attack,
                        host::publish(
                            &format!("tmp/{KEY}.x.ext4"),
                            &format!("images/{other}.ext4"),
                            &format!("images/{KEY}.json"),
                            "{}",
                        ),
                    )
                }
                "remove-outside" => {
                    for path in [
                        "../../etc/hostname",
                        "/etc/hostname",
                        "locks/../../x",
                        "images/../../../etc/hostname",
                        "tmp/../../x",
                    ] {
                        if host::remove(path).is_ok() {
                            return Ok(refused(&format!("ALLOWED: remove {path}")));
                        }
                    }
                    host::remove("../../etc/hostname").map(|_| refused("ALLOWED"))
                }
                "remove-symlink" => host::remove("tmp/escape").map(|_| refused("removed the link")),
                "agent-outside" => expect_refusal(attack, host::digest_file("/etc/shadow")),
                "converter-outside" => expect_refusal(attack, host::describe_converter("command:/bin/sh")),
                "probe-outside" => expect_refusal(attack, probe_one("/etc/shadow", 4096)),
                "probe-dotdot" => expect_refusal(attack, probe_one("images/../../outside/precious", 4096)),
                "probe-through-symlinked-dir" => expect_refusal(attack, probe_one("tmp/escapedir/precious", 4096)),
                "probe-symlink" => match probe_one("tmp/escape", 4096) {
                    Ok(info) if info.kind == PathKind::Symlink && info.head.is_empty() => Ok(refused("not followed")),
                    Ok(_) => Ok(refused("ALLOWED: read through tmp/escape")),
                    Err(e) => Err(e),
                },
                "probe-many" => expect_refusal(
                    attack,
                    host::probe(&vec![ProbeRequest { path: "images".into(), read_bytes: 0 }; 10_000]),
                ),
                "probe-huge-read" => expect_refusal(attack, probe_one(&format!("images/{KEY}.json"), u32::MAX)),
                "probe-many-reads" => expect_refusal(
                    attack,
                    host::probe(&vec![ProbeRequest { path: format!("images/{KEY}.json"), read_bytes: 65_536 }; 200]),
                ),
                "read-outside" => match std::fs::read("/etc/hostname") {
                    Ok(_) => Ok(refused("ALLOWED: read /etc/hostname")),
                    Err(e) => Err(Error::Io(format!("read /etc/hostname: {e}"))),
                },
                "read-dotdot" => match std::fs::read("/cache/../etc/hostname") {
                    Ok(_) => Ok(refused("ALLOWED: read /cache/../etc/hostname")),
                    Err(e) => Err(Error::Io(format!("read /cache/../etc/hostname: {e}"))),
                },
                "write-preopen" => match std::fs::write("/cache/images/evil", b"x") {
                    Ok(()) => Ok(refused("ALLOWED: write into the cache")),
                    Err(e) => Err(Error::Io(format!("write /cache/images/evil: {e}"))),
                },
                "endless-loop" => {
                    let mut n: u64 = 0;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                "unbounded-memory" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "huge-string" => expect_refusal(attack, host::digest_file(&"a".repeat(8 << 20))),
                "many-locks" => {
                    let mut held = Vec::new();
                    for i in 0..10_000u32 {
                        held.push(host::lock(&format!("{i:064x}"))?);
                    }
                    Ok(refused(&format!("ALLOWED: {} locks", held.len())))
                }
                "many-mounts" => {
                    let image = staged_image(&request)?;
                    let mut held = Vec::new();
                    for _ in 0..10_000 {
                        held.push(host::mount_image(&image)?);
                    }
                    Ok(refused(&format!("ALLOWED: {} mounts", held.len())))
                }
                "leave-a-temporary-image" => {
                    staged_image(&request)?;
                    // Trap with the temporary image still there.
                    panic!("stopping with a temporary image");
                }
                other => Err(Error::InvalidRequest(format!("unknown attack {other}"))),
            }
        }

        fn inspect(_image: String) -> Result<ImageInfo, Error> {
            Err(Error::InvalidRequest("not implemented".into()))
        }

        fn list_entries() -> Result<Vec<Entry>, Error> {
            Ok(Vec::new())
        }

        fn sweep() -> Result<SweepReport, Error> {
            Ok(SweepReport { removed: Vec::new(), stale_locks: 0, busy: Vec::new() })
        }

        fn gc(_max_bytes: u64, _pins: Vec<String>) -> Result<GcReport, Error> {
            Ok(GcReport { removed: Vec::new(), bytes_before: 0, bytes_after: 0, kept_pinned: 0 })
        }

        fn verify(_fsck: bool) -> Result<VerifyReport, Error> {
            Ok(VerifyReport { checked: 0, broken: Vec::new() })
        }
    }
}

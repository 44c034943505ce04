//! Arguments, defaults and output of the `rootfs-cache` command.

mod progress;
mod size;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rootfs_cache::{
    Config, ConverterSpec, Error, Policy, PullPolicy, RemoteCache, RemoteVerify, Request, RootfsCache, SourceRef,
};

/// Turn container image layers into bootable ext4 root filesystems, cached.
///
/// rootfs-cache converts a Docker overlay2 layer directory or an OCI image
/// layout into an ext4 image with your agent at /sbin/vm-agent (mode 0755),
/// and serves it from a cache on every later request.
#[derive(Debug, Parser)]
#[command(name = "rootfs-cache", version, about, long_about)]
pub struct Cli {
    /// The cache directory [default: the policy's `cache_dir`, else
    /// /var/lib/rootfs-cache for root, $XDG_CACHE_HOME/rootfs-cache otherwise].
    #[arg(long, global = true, env = "ROOTFS_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// A policy file (TOML) that narrows what may be read, run and written.
    /// Without one, exactly what the arguments name is allowed.
    #[arg(long, global = true, value_name = "FILE")]
    policy: Option<PathBuf>,

    /// Collect garbage after every build so that the cache stays under SIZE.
    #[arg(long, global = true, value_name = "SIZE", value_parser = size::parse)]
    max_cache_bytes: Option<u64>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the image for SOURCE, building and caching it on a miss.
    Convert(ConvertArgs),
    /// List the cache's entries.
    List(JsonArg),
    /// Show an image's ext4 superblock and whether its geometry is sound.
    Inspect(InspectArgs),
    /// Remove what crashed builders left (never a live builder's files).
    Sweep(JsonArg),
    /// Evict entries until the cache fits: broken, then superseded, then least recently used.
    Gc(GcArgs),
    /// Check every entry and remove the broken ones.
    Verify(VerifyArgs),
    /// Make DEST a private, writable copy of an entry for one VM (a reflink
    /// where the filesystem allows it, a sparse copy otherwise). Boot
    /// clones, never entries.
    Clone(CloneArgs),
}

#[derive(Debug, Args)]
struct CloneArgs {
    /// The entry: its key, or its image path (<cache>/images/<key>.ext4).
    #[arg(value_name = "IMAGE_OR_KEY")]
    image_or_key: String,

    /// The copy to create; it must not exist.
    #[arg(value_name = "DEST")]
    dest: PathBuf,

    /// Print JSON (key, image, dest, method, image_bytes, copied_bytes,
    /// duration_us) instead of the copy's path.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct GcArgs {
    /// The size the cache must fit in, e.g. 10G.
    #[arg(long, value_name = "SIZE", value_parser = size::parse_allow_zero)]
    max_bytes: u64,

    /// An entry to keep, by key or image path; repeat for more.
    #[arg(long, value_name = "KEY_OR_IMAGE")]
    pin: Vec<String>,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Also run `e2fsck -fn` on every image.
    #[arg(long)]
    fsck: bool,

    /// Also hash every image again and remove those whose bytes differ from
    /// the SHA-256 recorded when they were published (reads every byte).
    #[arg(long)]
    deep: bool,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ConvertArgs {
    /// An overlay2 layer directory (/var/lib/docker/overlay2/<id>), an OCI
    /// image layout directory, `oci:PATH:REF` (the layout's image named REF),
    /// `docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]` (pulled from a registry),
    /// or `docker-daemon:NAME[:TAG]` (an image of the local Docker engine,
    /// the one DOCKER_HOST names, else /var/run/docker.sock).
    #[arg(value_name = "SOURCE")]
    source: PathBuf,

    /// For a docker:// source: `missing` pulls only what the cache lacks (a
    /// tag resolved before is served offline), `always` resolves the tag
    /// again, `never` uses only what the cache holds.
    #[arg(long, value_enum, default_value_t = PullArg::Missing, value_name = "POLICY")]
    pull: PullArg,

    /// Reach this registry (HOST:PORT) over plain HTTP instead of TLS;
    /// repeat for more. With --policy, the policy's `insecure_registries`
    /// must name it too.
    #[arg(long, value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,

    /// The agent binary to install at /sbin/vm-agent.
    #[arg(long, env = "ROOTFS_CACHE_AGENT", value_name = "PATH")]
    agent: PathBuf,

    /// Image size, e.g. 512M, 2G or 1073741824 [default: sized by the converter].
    // Parsed once the cache (and its audit log) is open, so that a size
    // refused as invalid is logged like every other refusal.
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,

    /// exact, oci2rootfs, or command:<absolute path>.
    // Parsed once the cache is open, like `size`.
    #[arg(long, default_value = "exact", value_name = "CONVERTER")]
    converter: String,

    /// Free space the exact converter leaves when it sizes an image from its
    /// content, in percent of the content (at least 32 MiB).
    #[arg(long, default_value_t = 20, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(0..=1000))]
    free_space: u32,

    /// The ext4 features of the exact converter's images: `default` has a
    /// journal (a VM's root disk that survives being killed), `minimal` has
    /// none (read-only uses). Part of the cache key.
    #[arg(long, value_enum, default_value_t = ProfileArg::Default, value_name = "PROFILE")]
    ext4_profile: ProfileArg,

    /// Free inodes the exact converter leaves, in percent of those used (at
    /// least 4096).
    #[arg(long, default_value_t = 20, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(0..=1000))]
    free_inodes: u32,

    /// How to put the agent into images of converters that do not do it
    /// themselves: a loop mount, or `debugfs` (no mount, no root needed).
    /// `auto` mounts when the process has CAP_SYS_ADMIN.
    #[arg(long, value_enum, default_value_t = Injection::Auto)]
    inject: Injection,

    /// Whether the exact converter clones file data from the layers (or its
    /// spool) into the image where the filesystem shares blocks (xfs with
    /// reflink, btrfs): `auto` clones where it can and copies elsewhere,
    /// `never` always copies. The image's bytes are the same either way.
    #[arg(long, value_enum, default_value_t = ReflinkArg::Auto, value_name = "WHEN")]
    reflink: ReflinkArg,

    /// Platform to pick from an OCI image index.
    #[arg(long, default_value = "linux/amd64", value_name = "OS/ARCH[/VARIANT]")]
    platform: String,

    /// Share entries through this remote cache, an OCI registry repository:
    /// on a miss, fetch the entry another host built (checked like a fresh
    /// build); after a build, push it. Only content-named keys are shared
    /// (see `shareable` in --json). [default: the policy's `remote`]
    #[arg(long, value_name = "HOST[:PORT]/REPO")]
    remote: Option<String>,

    /// Fetch from the remote cache, but never push to it.
    #[arg(long)]
    no_remote_push: bool,

    /// How an entry fetched from the remote cache is checked: `digest`
    /// (every check of a fresh build, and its SHA-256 against the artifact),
    /// or `rebuild` (also build it here and compare the bytes).
    #[arg(long, value_enum, default_value_t = VerifyArg::Digest, value_name = "HOW")]
    verify_remote: VerifyArg,

    /// Print one JSON object (image, key, cached, kind, timings) instead of the path.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// An image file, or a path relative to the cache (images/<key>.ext4).
    #[arg(value_name = "IMAGE")]
    image: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `--pull`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PullArg {
    /// Pull only what the cache lacks.
    Missing,
    /// Resolve the reference again.
    Always,
    /// Use only what the cache holds.
    Never,
}

/// `--ext4-profile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ProfileArg {
    /// With a journal.
    Default,
    /// Without a journal.
    Minimal,
}

/// `--reflink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ReflinkArg {
    /// Clone where the filesystem allows it.
    Auto,
    /// Always copy.
    Never,
}

/// `--verify-remote`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum VerifyArg {
    /// The checks of a fresh build and the artifact's SHA-256.
    Digest,
    /// Also rebuild here and compare.
    Rebuild,
}

/// How the agent is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Injection {
    /// A loop mount with CAP_SYS_ADMIN, debugfs without.
    Auto,
    /// Always a loop mount.
    Mount,
    /// Always debugfs.
    Debugfs,
}

impl ConvertArgs {
    /// The request these arguments make. Errors: `InvalidRequest` (a size
    /// or converter that does not parse).
    fn request(&self) -> Result<Request, Error> {
        let converter: ConverterSpec = self.converter.parse()?;
        let size = match &self.size {
            Some(text) => Some(size::parse(text).map_err(|e| Error::InvalidRequest(format!("--size {text}: {e}")))?),
            None => None,
        };
        let pull = match self.pull {
            PullArg::Missing => PullPolicy::Missing,
            PullArg::Always => PullPolicy::Always,
            PullArg::Never => PullPolicy::Never,
        };
        let mut request =
            Request::new(&self.source, &self.agent).converter(converter).platform(&self.platform).pull(pull);
        request.size = size;
        Ok(request)
    }

    /// The arguments as the audit log records a request refused for them.
    fn audited(&self) -> serde_json::Value {
        serde_json::json!({
            "source": self.source.to_string_lossy(),
            "agent": self.agent.to_string_lossy(),
            "converter": self.converter,
            "size": self.size,
            "platform": self.platform,
            "pull": format!("{:?}", self.pull).to_lowercase(),
        })
    }
}

/// `RUST_LOG`-driven logging to stderr; warnings by default.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// The default cache directory for this user.
fn default_cache_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/rootfs-cache");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("rootfs-cache")
}

/// The policy without a policy file: one allowing exactly what the
/// arguments name.
fn implicit_policy(cli: &Cli, cache_dir: &Path) -> Policy {
    let mut policy = Policy { cache_dir: Some(cache_dir.to_path_buf()), ..Policy::default() };
    if let Command::Convert(args) = &cli.command {
        let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        match SourceRef::parse(&args.source) {
            SourceRef::Path(path, _) => {
                policy.source_roots = Some(vec![rootfs_cache::source_root(&real(&path))]);
                policy.registries = Some(Vec::new());
            }
            SourceRef::Registry(reference) => {
                // The named registry, and nothing on the host's filesystem.
                policy.source_roots = Some(Vec::new());
                let host = reference.parse::<rootfs_cache_registry::Reference>().map(|r| r.registry().to_owned());
                policy.registries = Some(host.into_iter().collect());
            }
            SourceRef::Daemon(_) => {
                // The engine DOCKER_HOST names, and its overlay2 directory
                // (the only source root shown; none without overlay2).
                policy.registries = Some(Vec::new());
                let socket = rootfs_cache_docker::DockerHost::from_env().map(|h| h.socket().to_path_buf());
                policy.docker_engines = Some(socket.into_iter().collect());
            }
        }
        if !matches!(SourceRef::parse(&args.source), SourceRef::Daemon(_)) {
            policy.docker_engines = Some(Vec::new());
        }
        if let Some(remote) = args.remote.as_deref().and_then(|r| RemoteCache::new(r).ok())
            && let Some(registries) = &mut policy.registries
        {
            registries.push(remote.registry().to_owned());
        }
        policy.insecure_registries = args.insecure_registry.clone();
        policy.agents = Some(vec![real(&args.agent)]);
        // A converter that does not parse is refused before the policy counts.
        policy.converters = Some(match args.converter.parse::<ConverterSpec>() {
            Ok(ConverterSpec::Command(path)) => vec![format!("command:{}", real(&path).display())],
            Ok(other) => vec![other.to_string()],
            Err(_) => Vec::new(),
        });
    }
    policy
}

fn open(cli: &Cli, observer: Option<Arc<dyn rootfs_cache::Observer>>) -> Result<RootfsCache> {
    let file_policy = cli.policy.as_deref().map(Policy::load).transpose()?;
    // `--cache-dir`, else the policy's `cache_dir`, else the default.
    let cache_dir = cli
        .cache_dir
        .clone()
        .or_else(|| file_policy.as_ref().and_then(|p| p.cache_dir.clone()))
        .unwrap_or_else(default_cache_dir);
    if cache_dir.as_os_str().is_empty() {
        return Err(Error::Config("the cache directory is empty".into()).into());
    }
    if let (Some(file), Command::Convert(args)) = (&file_policy, &cli.command)
        && let Some(host) = args.insecure_registry.iter().find(|h| !file.insecure_registries.contains(h))
    {
        return Err(Error::Config(format!(
            "--insecure-registry {host}: the policy does not name it in insecure_registries, and flags only narrow a policy"
        ))
        .into());
    }
    let policy = file_policy.unwrap_or_else(|| implicit_policy(cli, &cache_dir));
    // One process, one request: preallocating instance slots would cost more
    // than it saves.
    let mut config = Config::new(&cache_dir).policy(policy).pooling(false);
    if let Command::Convert(args) = &cli.command {
        let headroom = rootfs_cache::ext4::Headroom {
            free_space_percent: args.free_space,
            free_inodes_percent: args.free_inodes,
            ..Default::default()
        };
        let profile = match args.ext4_profile {
            ProfileArg::Default => rootfs_cache::Ext4Profile::Default,
            ProfileArg::Minimal => rootfs_cache::Ext4Profile::Minimal,
        };
        let reflink = match args.reflink {
            ReflinkArg::Auto => rootfs_cache::ext4::Reflink::Auto,
            ReflinkArg::Never => rootfs_cache::ext4::Reflink::Never,
        };
        let exact = rootfs_cache::capabilities::converter::exact::ExactConverter { headroom, profile, reflink };
        let mut caps = rootfs_cache::Capabilities::native_with_exact(exact);
        caps = match args.inject {
            Injection::Auto => caps,
            Injection::Mount => caps.with_mount_injection(),
            Injection::Debugfs => caps.with_debugfs_injection(),
        };
        config = config.capabilities(caps);
        if let Some(repository) = args.remote.as_ref().or(config.policy.remote.as_ref()) {
            let verify = match args.verify_remote {
                VerifyArg::Digest => RemoteVerify::Digest,
                VerifyArg::Rebuild => RemoteVerify::Rebuild,
            };
            let remote = RemoteCache::new(repository)?.push(!args.no_remote_push).verify(verify);
            config = config.remote(remote);
        }
    }
    if let Some(observer) = observer {
        config = config.observer(observer);
    }
    if let Some(max) = cli.max_cache_bytes {
        config = config.max_cache_bytes(max);
    }
    Ok(RootfsCache::open(config)?)
}

/// Runs the command; `Err` is printed as one line by `main`.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Convert(args) => {
            // Progress on a terminal only, and never mixed with JSON.
            let progress = (std::io::stderr().is_terminal() && !args.json).then(progress::Spinner::start);
            let cache = open(&cli, progress.as_ref().map(|p| p.observer()))?;
            let request = args.request().inspect_err(|e| cache.audit_refusal("convert", &args.audited(), e));
            let result = match request {
                Ok(request) => cache.convert(&request).await,
                Err(e) => Err(e),
            };
            if let Some(progress) = progress {
                progress.finish();
            }
            let outcome = result?;
            for warning in &outcome.warnings {
                eprintln!("warning: {warning}");
            }
            if args.json {
                println!("{}", serde_json::to_string(&outcome).context("serialising the outcome")?);
            } else {
                println!("{}", outcome.image.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List(args) => {
            let cache = open(&cli, None)?;
            let entries = cache.list().await?;
            if args.json {
                println!("{}", serde_json::to_string(&entries)?);
            } else if entries.is_empty() {
                println!("the cache at {} is empty", cache.cache_dir().display());
            } else {
                println!("{:<16}  {:>10}  {:<20}  {:<8}  SOURCE", "KEY", "SIZE", "LAST USED", "STATUS");
                for e in &entries {
                    println!(
                        "{:<16}  {:>10}  {:<20}  {:<8}  {}",
                        &e.key[..16],
                        size::human(e.image_bytes),
                        &rootfs_cache::audit::rfc3339(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.last_used)
                        )[..19],
                        if e.problem.is_some() { "broken" } else { "ok" },
                        e.source
                    );
                    if let Some(problem) = &e.problem {
                        println!("{:<16}  {problem}", "");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect(args) => {
            let cache = open(&cli, None)?;
            let info = cache.inspect(&args.image).await?;
            if args.json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!("file:        {} bytes", info.file_bytes);
                println!("ext4 magic:  {}", if info.magic { "yes" } else { "no" });
                if info.magic {
                    println!("block size:  {}", info.block_size);
                    println!("blocks:      {} ({} free)", info.blocks_count, info.free_blocks);
                    println!("inodes:      {} ({} free)", info.inodes_count, info.free_inodes);
                    println!("uuid:        {}", info.uuid);
                    println!("label:       {}", info.label);
                }
                println!("geometry:    {}", info.geometry_error.as_deref().unwrap_or("sound"));
            }
            let sound = info.magic && info.geometry_error.is_none();
            Ok(if sound { ExitCode::SUCCESS } else { ExitCode::from(Error::Corrupt(String::new()).exit_code()) })
        }
        Command::Sweep(args) => {
            let report = open(&cli, None)?.sweep().await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for path in &report.removed {
                    println!("removed {path}");
                }
                for device in &report.detached_loop_devices {
                    println!("detached {device}");
                }
                for path in &report.busy {
                    println!("kept {path} (its builder is alive)");
                }
                println!(
                    "{} temporary files removed, {} stale locks removed, {} kept",
                    report.removed.len(),
                    report.stale_locks,
                    report.busy.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc(args) => {
            let report = open(&cli, None)?.gc(args.max_bytes, &args.pin).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for e in &report.removed {
                    println!("evicted {} ({}, {})", e.key, size::human(e.image_bytes), e.source);
                }
                println!(
                    "{} → {} ({} evicted, {} of blobs no entry needs removed, {} kept for pins or builds)",
                    size::human(report.bytes_before),
                    size::human(report.bytes_after),
                    report.removed.len(),
                    size::human(report.blob_bytes_freed),
                    report.kept_pinned
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            let cache = open(&cli, None)?;
            let report = if args.deep { cache.verify_deep(args.fsck).await? } else { cache.verify(args.fsck).await? };
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for e in &report.broken {
                    println!("removed {}: {}", e.key, e.problem.as_deref().unwrap_or("broken"));
                }
                println!("{} entries checked, {} broken and removed", report.checked, report.broken.len());
                if args.deep {
                    println!("{} entries hashed and unchanged", report.hashed);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Clone(args) => {
            let report = open(&cli, None)?.clone_entry(&args.image_or_key, &args.dest).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.dest.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

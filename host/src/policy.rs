//! What the guest may ask the host for.
//!
//! Every capability call is checked here, in one place, before any backend
//! runs (the way wasmtime-wasi checks every filesystem call against its
//! preopens). A refusal is [`Error::Denied`] naming the rule; the guest sees
//! it as `error::denied`, never as a trap.
//!
//! A policy is written in TOML (see [`Policy::from_toml`]); every key is
//! optional:
//!
//! ```toml
//! cache_dir = "/var/lib/rootfs-cache"       # the only cache this policy serves
//! source_roots = ["/var/lib/docker/overlay2", "/srv/oci"]
//! agents = ["/opt/runtime/vm-agent"]
//! converters = ["exact", "oci2rootfs", "command:/usr/local/bin/oci2rootfs"]
//! max_image_bytes = 8589934592
//! convert_timeout_secs = 600
//! max_parallel_conversions = 2
//! guest_memory_bytes = 67108864
//! guest_time_ms = 2000
//! audit_log = "/var/log/rootfs-cache/audit.jsonl"
//! registries = ["registry.example.com", "127.0.0.1:5000"]
//! insecure_registries = ["127.0.0.1:5000"]
//! docker_engines = ["/var/run/docker.sock"]
//! remote = "registry.example.com/rootfs-cache"  # the remote cache, unless the caller names one
//! remote_push = true                             # false: never push what this host builds
//! remote_verify = "digest"                       # "rebuild": rebuild every fetched entry and compare
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::converter_spec::ConverterSpec;
use crate::error::{Error, Result};
use crate::remote_cache::{RemoteCache, RemoteVerify};

/// The longest policy file read (1 MiB): a policy is a few lines, and a
/// path such as `/dev/zero` or an endless file must not be read forever.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Resource limits for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest image a request may ask for (`max_image_bytes`).
    pub max_image_bytes: u64,
    /// Longest a converter may run before it is killed (`convert_timeout_secs`).
    pub convert_timeout: Duration,
    /// Conversions running at once in this process (`max_parallel_conversions`).
    pub max_parallel_conversions: usize,
    /// The guest's linear memory limit (`guest_memory_bytes`).
    pub guest_memory_bytes: u64,
    /// CPU time the guest itself may use per request, not counting time spent
    /// in host calls (`guest_time_ms`).
    pub guest_time: Duration,
    /// Largest string or list a guest may pass to one host call.
    pub max_payload_bytes: usize,
    /// Mounts and locks one guest may hold at once.
    pub max_resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_image_bytes: 64 << 30,
            convert_timeout: Duration::from_secs(30 * 60),
            max_parallel_conversions: std::thread::available_parallelism().map_or(2, |n| n.get()).max(1),
            guest_memory_bytes: 64 << 20,
            guest_time: Duration::from_secs(5),
            max_payload_bytes: 64 << 10,
            max_resources: 16,
        }
    }
}

/// The policy the host enforces on every capability call.
///
/// `None` for a list means "any": the library's default policy allows any
/// source, agent and converter, and per request still exposes to the guest
/// only the directories that request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The only cache directory this policy serves, if set.
    pub cache_dir: Option<PathBuf>,
    /// Directories under which sources (and their layers) may lie.
    pub source_roots: Option<Vec<PathBuf>>,
    /// Agent binaries that may be installed.
    pub agents: Option<Vec<PathBuf>>,
    /// Converters that may run: `exact`, `oci2rootfs`, `command:<path>`.
    pub converters: Option<Vec<String>>,
    /// Resource limits.
    pub limits: Limits,
    /// Where to append one JSON line per capability call.
    pub audit_log: Option<PathBuf>,
    /// Registries (`HOST[:PORT]`, `docker.io` for Docker Hub) that may be
    /// contacted for images by name (`registries`): the token services and
    /// redirect targets they use must be listed too. `None` means any.
    pub registries: Option<Vec<String>>,
    /// Registries reached over plain HTTP instead of TLS
    /// (`insecure_registries`); each must be allowed by `registries` too.
    pub insecure_registries: Vec<String>,
    /// The Docker engine sockets that may be asked for `docker-daemon:`
    /// images (`docker_engines`). `None` means any.
    pub docker_engines: Option<Vec<PathBuf>>,
    /// The remote cache used when the caller names none (`remote`,
    /// `HOST[:PORT]/REPO`); its registry must pass `registries` too.
    pub remote: Option<String>,
    /// Whether entries built here may be pushed to a remote cache
    /// (`remote_push`, default true).
    pub remote_push: bool,
    /// The least checking of entries fetched from a remote cache
    /// (`remote_verify`, `digest` by default); a caller may ask for more.
    pub remote_verify: RemoteVerify,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            cache_dir: None,
            source_roots: None,
            agents: None,
            converters: None,
            limits: Limits::default(),
            audit_log: None,
            registries: None,
            insecure_registries: Vec::new(),
            docker_engines: None,
            remote: None,
            remote_push: true,
            remote_verify: RemoteVerify::Digest,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    cache_dir: Option<PathBuf>,
    source_roots: Option<Vec<PathBuf>>,
    agents: Option<Vec<PathBuf>>,
    converters: Option<Vec<String>>,
    max_image_bytes: Option<u64>,
    convert_timeout_secs: Option<u64>,
    max_parallel_conversions: Option<usize>,
    guest_memory_bytes: Option<u64>,
    guest_time_ms: Option<u64>,
    audit_log: Option<PathBuf>,
    registries: Option<Vec<String>>,
    insecure_registries: Option<Vec<String>>,
    docker_engines: Option<Vec<PathBuf>>,
    remote: Option<String>,
    remote_push: Option<bool>,
    remote_verify: Option<String>,
}

fn canonical(what: &str, path: &Path) -> Result<PathBuf> {
    if !path.is_absolute() {
        return Err(Error::Config(format!("{what} {} is not an absolute path", path.display())));
    }
    path.canonicalize().map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))
}

impl Policy {
    /// Parses a policy file. Unknown keys and impossible limits are errors;
    /// every path must be absolute and exist.
    pub fn from_toml(text: &str) -> Result<Self> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| Error::Config(format!("policy: {}", e.to_string().trim())))?;
        let defaults = Limits::default();
        let positive = |key: &str, v: Option<u64>| -> Result<Option<u64>> {
            match v {
                Some(0) => Err(Error::Config(format!("policy: {key} must be greater than 0"))),
                other => Ok(other),
            }
        };
        let limits = Limits {
            max_image_bytes: positive("max_image_bytes", file.max_image_bytes)?.unwrap_or(defaults.max_image_bytes),
            convert_timeout: positive("convert_timeout_secs", file.convert_timeout_secs)?
                .map_or(defaults.convert_timeout, Duration::from_secs),
            max_parallel_conversions: positive(
                "max_parallel_conversions",
                file.max_parallel_conversions.map(|n| n as u64),
            )?
            .map_or(defaults.max_parallel_conversions, |n| n as usize),
            guest_memory_bytes: positive("guest_memory_bytes", file.guest_memory_bytes)?
                .unwrap_or(defaults.guest_memory_bytes),
            guest_time: positive("guest_time_ms", file.guest_time_ms)?
                .map_or(defaults.guest_time, Duration::from_millis),
            ..defaults
        };
        let converters = match file.converters {
            Some(list) => Some(list.iter().map(|c| canonical_converter(c)).collect::<Result<Vec<_>>>()?),
            None => None,
        };
        Ok(Self {
            cache_dir: file.cache_dir.as_deref().map(|p| absolute("cache_dir", p)).transpose()?,
            source_roots: file
                .source_roots
                .map(|v| v.iter().map(|p| canonical("source root", p)).collect())
                .transpose()?,
            agents: file.agents.map(|v| v.iter().map(|p| canonical("agent", p)).collect()).transpose()?,
            converters,
            limits,
            audit_log: file.audit_log.as_deref().map(|p| absolute("audit_log", p)).transpose()?,
            registries: file
                .registries
                .map(|v| v.iter().map(|h| registry_host("registries", h)).collect())
                .transpose()?,
            insecure_registries: file
                .insecure_registries
                .unwrap_or_default()
                .iter()
                .map(|h| registry_host("insecure_registries", h))
                .collect::<Result<_>>()?,
            docker_engines: file
                .docker_engines
                .map(|v| v.iter().map(|p| absolute("docker_engines", p)).collect())
                .transpose()?,
            remote: match file.remote {
                Some(repository) => {
                    crate::remote_cache::check_repository(&repository)
                        .map_err(|e| Error::Config(format!("policy: {e}")))?;
                    Some(repository)
                }
                None => None,
            },
            remote_push: file.remote_push.unwrap_or(true),
            remote_verify: file
                .remote_verify
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| Error::Config(format!("policy: {e}")))?
                .unwrap_or_default(),
        })
    }

    /// Checks that the Docker engine at `socket` may be asked for images:
    /// nothing is sent to one that may not. Errors: `Denied` (rule
    /// `docker_engines`).
    pub fn check_docker_engine(&self, socket: &Path) -> Result<()> {
        match &self.docker_engines {
            Some(allowed) if !allowed.iter().any(|s| s == socket) => Err(Error::denied(
                "docker_engines",
                format!(
                    "the Docker engine at {} is not allowed (allowed: {}); nothing was sent to it",
                    socket.display(),
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                    }
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The remote cache in force: the caller's (`requested`), else the
    /// policy's `remote`, within the policy's limits (`remote_push = false`
    /// stops pushing, `remote_verify = "rebuild"` cannot be weakened), its
    /// registry checked against `registries`. Errors: `Denied` (rule
    /// `registries`).
    pub fn remote_cache(&self, requested: Option<&RemoteCache>) -> Result<Option<RemoteCache>> {
        let Some(chosen) = requested.cloned().or_else(|| self.remote.clone().map(RemoteCache::from_policy)) else {
            return Ok(None);
        };
        self.check_registry(chosen.registry())?;
        Ok(Some(RemoteCache {
            push: chosen.push && self.remote_push,
            verify: chosen.verify.max(self.remote_verify),
            ..chosen
        }))
    }

    /// Checks that the registry `host` (`HOST[:PORT]`) may be contacted:
    /// nothing is sent to one that may not. Errors: `Denied` (rule
    /// `registries`).
    pub fn check_registry(&self, host: &str) -> Result<()> {
        match &self.registries {
            Some(allowed) if !allowed.iter().any(|h| h == host) => Err(Error::denied(
                "registries",
                format!(
                    "registry {host} is not allowed (allowed: {}); nothing was sent to it",
                    if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") }
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Reads and parses a policy file: a regular file of at most
    /// [`MAX_POLICY_BYTES`] (a FIFO, a device such as `/dev/zero` or a
    /// directory is refused without blocking). Errors: `Config`.
    pub fn load(path: &Path) -> Result<Self> {
        let refused = |e: crate::regular_file::FileError| Error::Config(format!("policy {e}"));
        let bytes = crate::regular_file::read(path, MAX_POLICY_BYTES, crate::regular_file::FinalSymlink::Follow)
            .map_err(refused)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Config(format!("policy {}: not UTF-8 text", path.display())))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Refuses a cache directory other than the policy's.
    pub fn check_cache_dir(&self, cache: &Path) -> Result<()> {
        match &self.cache_dir {
            Some(allowed) if allowed.canonicalize().ok().as_deref() != Some(cache) && allowed != cache => {
                Err(Error::denied(
                    "cache_dir",
                    format!("the cache is {}, the policy allows only {}", cache.display(), allowed.display()),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks that `path` lies under an allowed source root, after resolving
    /// every symlink in it. Returns the canonical path.
    pub fn check_source_path(&self, what: &str, path: &str) -> Result<PathBuf> {
        let real = resolve_existing(what, path)?;
        self.check_source_real(what, path, &real)?;
        Ok(real)
    }

    /// Like [`Self::check_source_path`] for a path the caller has already
    /// resolved to `real`.
    pub fn check_source_real(&self, what: &str, path: &str, real: &Path) -> Result<()> {
        if let Some(roots) = &self.source_roots
            && !roots.iter().any(|root| real.starts_with(root))
        {
            return Err(Error::denied(
                "source_roots",
                format!("{what} {path} resolves to {}, which is outside every allowed source root", real.display()),
            ));
        }
        Ok(())
    }

    /// Checks that `path` is an allowed agent. Returns the canonical path.
    pub fn check_agent(&self, path: &str) -> Result<PathBuf> {
        let real = resolve_existing("agent", path)?;
        self.check_agent_real(path, &real)?;
        Ok(real)
    }

    /// Like [`Self::check_agent`] for a path the caller has already resolved
    /// to `real`.
    pub fn check_agent_real(&self, path: &str, real: &Path) -> Result<()> {
        match &self.agents {
            Some(agents) if !agents.iter().any(|a| a == real) => {
                Err(Error::denied("agents", format!("agent {path} is not an allowed agent")))
            }
            _ => Ok(()),
        }
    }

    /// Checks that the converter may run.
    pub fn check_converter(&self, converter: &str) -> Result<()> {
        if let Some(allowed) = &self.converters {
            let wanted = canonical_converter(converter).unwrap_or_else(|_| converter.to_owned());
            if !allowed.contains(&wanted) {
                return Err(Error::denied(
                    "converters",
                    format!("converter {converter} is not allowed (allowed: {})", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// Checks the length of an image a converter produced against
    /// `max_image_bytes`, however it was sized. Errors: `Denied`.
    pub fn check_image_length(&self, length: u64) -> Result<()> {
        if length > self.limits.max_image_bytes {
            return Err(Error::denied(
                "max_image_bytes",
                format!(
                    "the converter produced an image of {length} bytes, larger than the allowed {}; \
                     nothing was published",
                    self.limits.max_image_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Checks a requested image size.
    pub fn check_size(&self, size: Option<u64>) -> Result<()> {
        match size {
            Some(size) if size > self.limits.max_image_bytes => Err(Error::denied(
                "max_image_bytes",
                format!("an image of {size} bytes is larger than the allowed {}", self.limits.max_image_bytes),
            )),
            _ => Ok(()),
        }
    }
}

/// A registry host as a policy names it: `HOST[:PORT]`, no scheme or path.
fn registry_host(what: &str, host: &str) -> Result<String> {
    let valid = !host.is_empty()
        && host.bytes().all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c))
        && !host.starts_with(['.', '-', ':']);
    if valid {
        Ok(host.to_owned())
    } else {
        Err(Error::Config(format!("policy: {what} entry {host:?} is not HOST or HOST:PORT")))
    }
}

fn absolute(what: &str, path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Err(Error::Config(format!("policy: {what} {} is not an absolute path", path.display())))
    }
}

/// `command:<path>` with its path canonicalised; built-in names unchanged.
fn canonical_converter(name: &str) -> Result<String> {
    match (name.parse::<ConverterSpec>(), name.strip_prefix("command:")) {
        (Ok(ConverterSpec::Command(path)), _) => {
            Ok(format!("command:{}", canonical("converter command", &path)?.display()))
        }
        (Ok(builtin), _) => Ok(builtin.to_string()),
        // A relative command: `canonical` says so.
        (Err(_), Some(path)) => canonical("converter command", Path::new(path)).map(|_| name.to_owned()),
        (Err(_), None) => Err(Error::Config(format!(
            "converter {name:?} is unknown; use exact, oci2rootfs or command:<absolute path>"
        ))),
    }
}

/// Resolves a guest-named absolute path that must exist.
fn resolve_existing(what: &str, path: &str) -> Result<PathBuf> {
    if !path.starts_with('/') {
        return Err(Error::denied("paths", format!("{what} {path:?} is not an absolute path")));
    }
    crate::real_path::real_path(Path::new(path)).map_err(|e| Error::io(format!("{what} {path}"), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_that_is_not_a_bounded_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("policy.fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let long = dir.path().join("long.toml");
        std::fs::write(&long, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        for (path, says) in [
            (Path::new("/dev/zero"), "is a character device, not a regular file"),
            (fifo.as_path(), "is a FIFO, not a regular file"),
            (dir.path(), "is a directory, not a regular file"),
            (long.as_path(), "is longer than the limit of 1048576 bytes"),
        ] {
            let err = Policy::load(path).unwrap_err();
            assert_eq!(err.class(), "config", "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn a_policy_file_with_every_key_parses() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display();
        let p = Policy::from_toml(&format!(
            "cache_dir = \"{root}\"\nsource_roots = [\"{root}\"]\nagents = []\nconverters = [\"exact\"]\n\
             max_image_bytes = 10\nconvert_timeout_secs = 3\nmax_parallel_conversions = 1\n\
             guest_memory_bytes = 1048576\nguest_time_ms = 5\naudit_log = \"/tmp/a.jsonl\"\n\
             registries = [\"127.0.0.1:5000\", \"docker.io\"]\ninsecure_registries = [\"127.0.0.1:5000\"]\n\
             docker_engines = [\"/run/docker.sock\"]\n"
        ))
        .unwrap();
        assert!(p.check_docker_engine(Path::new("/run/docker.sock")).is_ok());
        let err = p.check_docker_engine(Path::new("/var/run/other.sock")).unwrap_err();
        assert!(err.to_string().contains("docker_engines"), "{err}");
        assert_eq!(p.limits.max_image_bytes, 10);
        assert_eq!(p.limits.guest_time, Duration::from_millis(5));
        assert_eq!(p.converters.as_deref(), Some(&["exact".to_owned()][..]));
        assert!(p.check_registry("127.0.0.1:5000").is_ok());
        let err = p.check_registry("evil.example").unwrap_err();
        assert!(err.to_string().contains("registries"), "{err}");
        assert_eq!(p.insecure_registries, ["127.0.0.1:5000"]);
    }

    #[test]
    fn unknown_keys_zero_limits_and_relative_paths_are_errors() {
        for bad in [
            "surprise = 1",
            "max_image_bytes = 0",
            "source_roots = [\"relative\"]",
            "converters = [\"magic\"]",
            "guest_time_ms = \"x\"",
            "registries = [\"https://example.com/v2\"]",
        ] {
            assert_eq!(Policy::from_toml(bad).unwrap_err().class(), "config", "{bad}");
        }
    }

    #[test]
    fn sources_outside_the_roots_are_denied_even_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("inside");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(inside.join("layer")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, inside.join("escape")).unwrap();
        let policy = Policy { source_roots: Some(vec![inside.canonicalize().unwrap()]), ..Policy::default() };
        assert!(policy.check_source_path("source", inside.join("layer").to_str().unwrap()).is_ok());
        let err = policy.check_source_path("source", inside.join("escape").to_str().unwrap()).unwrap_err();
        assert_eq!(err.class(), "denied");
        assert!(err.to_string().contains("source_roots"), "{err}");
    }

    #[test]
    fn sizes_above_the_limit_are_denied() {
        let policy = Policy { limits: Limits { max_image_bytes: 100, ..Limits::default() }, ..Policy::default() };
        assert!(policy.check_size(Some(100)).is_ok());
        assert!(policy.check_size(None).is_ok());
        assert_eq!(policy.check_size(Some(101)).unwrap_err().class(), "denied");
    }

    #[test]
    fn the_policy_bounds_what_the_caller_asks_for() {
        let policy = Policy::from_toml(
            "remote = \"cache.test/fleet\"\nremote_push = false\nremote_verify = \"rebuild\"\nregistries = [\"cache.test\"]",
        )
        .unwrap();
        let effective = policy.remote_cache(None).unwrap().unwrap();
        assert_eq!(
            effective,
            RemoteCache { repository: "cache.test/fleet".into(), push: false, verify: RemoteVerify::Rebuild }
        );
        let asked = RemoteCache::new("other.test/fleet").unwrap();
        let err = policy.remote_cache(Some(&asked)).unwrap_err();
        assert!(err.to_string().contains("registries"), "{err}");
        assert_eq!(Policy::default().remote_cache(None).unwrap(), None);
    }
}

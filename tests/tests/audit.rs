//! The audit log has no blind spot: every refusal is one JSON line naming
//! its rule and arguments, whether the host refused the request before its
//! guest ran (a source outside the roots, an agent, a converter or a size
//! that does not pass, a cache directory the policy does not serve), a
//! capability call refused it, or the guest rejected it as invalid; a guest
//! stopped by a limit is logged too, and no error is logged twice. No root
//! needed: the library tests use the fake adapter, and the CLI's refusals
//! all come before anything privileged.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rootfs_cache::{Capabilities, Config, ConverterSpec, Error, Limits, Policy, Request, RootfsCache};
use rootfs_cache_tests::{agent, cli, standard_chain};
use serde_json::Value;

/// Every line of the audit log at `path`, parsed, each checked for the
/// fields every line has.
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for line in &lines {
        for field in ["time", "request", "capability", "arguments", "verdict", "duration_us"] {
            assert!(line.get(field).is_some(), "an audit line without {field}: {line}");
        }
    }
    lines
}

/// The lines of `capability` in the log at `path`.
fn lines_of(path: &Path, capability: &str) -> Vec<Value> {
    lines(path).into_iter().filter(|l| l["capability"] == capability).collect()
}

/// Checks that `line` records a refusal with `verdict` (and `rule`, for a
/// denial) whose error mentions `says`.
fn refused(line: &Value, verdict: &str, rule: Option<&str>, says: &str) {
    assert_eq!(line["verdict"], verdict, "{line}");
    assert_eq!(line.get("rule").and_then(Value::as_str), rule, "{line}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains(says), "the error does not say {says:?}: {line}");
}

/// A library cache with the fake adapter under `dir`, its policy made by
/// `policy` (the audit log is set here) from the chain's top layer and
/// agent.
struct World {
    dir: tempfile::TempDir,
    cache: RootfsCache,
    top: PathBuf,
    agent: PathBuf,
    log: PathBuf,
}

impl World {
    fn new(policy: impl FnOnce(&Path, &Path) -> Policy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let top = standard_chain(&dir.path().join("overlay2"));
        let agent = agent(dir.path(), "vm-agent", "audit");
        let log = dir.path().join("audit.jsonl");
        let policy = Policy { audit_log: Some(log.clone()), ..policy(&top, &agent) };
        let (caps, _) = Capabilities::fake();
        let config = Config::new(dir.path().join("cache")).capabilities(caps).policy(policy).pooling(false);
        let cache = RootfsCache::open(config).unwrap();
        Self { dir, cache, top, agent, log }
    }

    fn request(&self) -> Request {
        Request::new(&self.top, &self.agent)
    }
}

#[test]
fn refusals_before_the_guest_runs_are_logged_by_the_cli() {
    // The case first: a source outside `source_roots`, refused with
    // exit 5 and, before, not logged at all.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let top = standard_chain(&d.join("overlay2"));
    let outside = standard_chain(&d.join("elsewhere/overlay2"));
    let agent = agent(d, "vm-agent", "audit");
    let cache = d.join("cache");
    let log = d.join("audit.jsonl");
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "cache_dir = \"{}\"\nsource_roots = [\"{}\"]\nmax_image_bytes = 16777216\naudit_log = \"{}\"\n",
            cache.display(),
            d.join("overlay2").display(),
            log.display()
        ),
    )
    .unwrap();
    let convert = |source: &Path, extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("--policy"),
            policy.as_os_str(),
            OsStr::new("convert"),
            source.as_os_str(),
            OsStr::new("--agent"),
            agent.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let (code, _, err) = cli(&args);
        (code, err)
    };

    let (code, err) = convert(&outside, &[]);
    assert_eq!(code, 5, "{err}");
    let [line] = &lines_of(&log, "convert")[..] else { panic!("not one convert line: {:?}", lines(&log)) };
    refused(line, "denied", Some("source_roots"), "outside every allowed source root");
    assert_eq!(line["arguments"]["source"], outside.to_str().unwrap());
    assert_eq!(line["arguments"]["agent"], agent.to_str().unwrap());
    assert_eq!(line["arguments"]["converter"], "exact");

    // A size above the policy's limit, before any lookup.
    let (code, err) = convert(&top, &["--size", "64M"]);
    assert_eq!(code, 5, "{err}");
    let lines = lines_of(&log, "convert");
    refused(&lines[1], "denied", Some("max_image_bytes"), "larger than the allowed");
    assert_eq!(lines[1]["arguments"]["size"], 64 << 20);

    // Arguments that do not parse: an unknown converter, a size of zero.
    let (code, err) = convert(&top, &["--converter", "magic"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = convert(&top, &["--size", "0"]);
    assert_eq!(code, 2, "{err}");
    let lines = lines_of(&log, "convert");
    assert_eq!(lines.len(), 4, "{lines:?}");
    refused(&lines[2], "invalid", None, "converter \"magic\" is unknown");
    assert_eq!(lines[2]["arguments"]["converter"], "magic");
    refused(&lines[3], "invalid", None, "--size 0");
    assert_eq!(lines[3]["arguments"]["size"], "0");
}

#[test]
fn a_cache_directory_the_policy_does_not_serve_is_logged_and_left_uncreated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let top = standard_chain(&d.join("overlay2"));
    let agent = agent(d, "vm-agent", "audit");
    let (log, policy, other) = (d.join("audit.jsonl"), d.join("policy.toml"), d.join("other-cache"));
    std::fs::write(
        &policy,
        format!("cache_dir = \"{}\"\naudit_log = \"{}\"\n", d.join("cache").display(), log.display()),
    )
    .unwrap();
    let args = [
        OsStr::new("--cache-dir"),
        other.as_os_str(),
        OsStr::new("--policy"),
        policy.as_os_str(),
        OsStr::new("convert"),
        top.as_os_str(),
        OsStr::new("--agent"),
        agent.as_os_str(),
    ];
    let (code, _, err) = cli(&args);
    assert_eq!(code, 5, "{err}");
    assert!(!other.exists(), "a cache directory the policy does not serve was created");
    let [line] = &lines(&log)[..] else { panic!("not one line: {:?}", lines(&log)) };
    assert_eq!(line["capability"], "open");
    assert_eq!(line["request"], 0, "nothing runs before the cache is open");
    refused(line, "denied", Some("cache_dir"), "the policy allows only");
    assert_eq!(line["arguments"]["cache_dir"], other.to_str().unwrap());
}

#[tokio::test]
async fn refusals_inside_capability_calls_carry_their_rule_once() {
    // An agent and a converter the policy does not allow: the guest's
    // digest-file and describe-converter are denied, each logged once, and
    // the request's error is not logged again.
    let w = World::new(|top, _| Policy {
        source_roots: Some(vec![top.parent().unwrap().canonicalize().unwrap()]),
        agents: Some(vec![PathBuf::from("/nonexistent/agent")]),
        converters: Some(vec!["oci2rootfs".into()]),
        ..Policy::default()
    });
    let err = w.cache.convert(&w.request()).await.unwrap_err();
    assert!(matches!(&err, Error::Denied { rule, .. } if rule == "agents"), "{err}");
    let [line] = &lines_of(&w.log, "digest-file")[..] else { panic!("{:?}", lines(&w.log)) };
    refused(line, "denied", Some("agents"), "not an allowed agent");
    assert_eq!(line["arguments"]["path"], w.agent.canonicalize().unwrap().to_str().unwrap());
    assert!(lines_of(&w.log, "convert").is_empty(), "a denial logged twice: {:?}", lines(&w.log));

    let other = World::new(|top, agent| Policy {
        source_roots: Some(vec![top.parent().unwrap().canonicalize().unwrap()]),
        agents: Some(vec![agent.canonicalize().unwrap()]),
        converters: Some(vec!["oci2rootfs".into()]),
        ..Policy::default()
    });
    let err = other.cache.convert(&other.request().converter(ConverterSpec::Exact)).await.unwrap_err();
    assert!(matches!(&err, Error::Denied { rule, .. } if rule == "converters"), "{err}");
    let [line] = &lines_of(&other.log, "describe-converter")[..] else { panic!("{:?}", lines(&other.log)) };
    refused(line, "denied", Some("converters"), "is not allowed");
    assert_eq!(line["arguments"]["converter"], "exact");
    assert!(lines_of(&other.log, "convert").is_empty(), "a denial logged twice: {:?}", lines(&other.log));
}

#[tokio::test]
async fn requests_rejected_as_invalid_are_logged_with_their_arguments() {
    let w = World::new(|_, _| Policy::default());
    // The guest rejects these before any host call.
    for (request, says) in
        [(w.request().platform("amd64"), "is not os/arch"), (w.request().size(4096), "below the minimum")]
    {
        let err = w.cache.convert(&request).await.unwrap_err();
        assert_eq!(err.class(), "invalid-request", "{err}");
        let line = lines_of(&w.log, "convert").pop().unwrap();
        refused(&line, "invalid", None, says);
        assert_eq!(line["arguments"]["source"], w.top.to_str().unwrap());
    }
    assert_eq!(lines_of(&w.log, "convert")[0]["arguments"]["platform"], "amd64");
    assert_eq!(lines_of(&w.log, "convert")[1]["arguments"]["size"], 4096);
    // The host rejects an empty agent path before the guest runs.
    let err = w.cache.convert(&Request::new(&w.top, "")).await.unwrap_err();
    assert_eq!(err.class(), "invalid-request", "{err}");
    refused(&lines_of(&w.log, "convert").pop().unwrap(), "invalid", None, "agent is empty");
    // And the other operations like convert: an image path out of the cache.
    let err = w.cache.inspect(Path::new("images/../x.ext4")).await.unwrap_err();
    assert_eq!(err.class(), "invalid-request", "{err}");
    let [line] = &lines_of(&w.log, "inspect")[..] else { panic!("{:?}", lines(&w.log)) };
    refused(line, "invalid", None, "not a path inside the cache");
    assert_eq!(line["arguments"]["image"], "images/../x.ext4");
}

#[tokio::test]
async fn a_missing_source_a_stopped_guest_and_a_success_get_what_they_should() {
    let w = World::new(|_, _| Policy::default());
    // A source that does not exist: refused before the guest, logged as failed.
    let missing = w.dir.path().join("overlay2/missing");
    let err = w.cache.convert(&Request::new(&missing, &w.agent)).await.unwrap_err();
    assert_eq!(err.class(), "not-found", "{err}");
    let [line] = &lines_of(&w.log, "convert")[..] else { panic!("{:?}", lines(&w.log)) };
    refused(line, "failed", None, "missing");

    // A success adds capability lines and no line of its own.
    w.cache.convert(&w.request()).await.unwrap();
    assert_eq!(lines_of(&w.log, "convert").len(), 1, "{:?}", lines(&w.log));
    assert!(lines(&w.log).iter().any(|l| l["capability"] == "run-converter" && l["verdict"] == "allowed"));

    // A guest that cannot even start within its memory limit: stopped, and logged.
    let small = World::new(|_, _| Policy {
        limits: Limits { guest_memory_bytes: 64 << 10, guest_time: Duration::from_secs(5), ..Limits::default() },
        ..Policy::default()
    });
    let err = small.cache.convert(&small.request()).await.unwrap_err();
    assert_eq!(err.class(), "guest-trap", "{err}");
    let [line] = &lines_of(&small.log, "convert")[..] else { panic!("{:?}", lines(&small.log)) };
    assert_eq!(line["verdict"], "trapped", "{line}");
}

//! A real Docker engine for the tests: Debian's `dockerd`, started with its data root,
//! exec root and socket in a temporary directory (no bridge, no iptables), and a storage
//! driver of the test's choice; stopped and its directory removed when dropped.
//!
//! Readiness is what systemd would wait for: dockerd sends `READY=1` to `$NOTIFY_SOCKET`
//! once its API answers, so the tests block on that datagram instead of polling.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long dockerd may take to come up (it starts its own containerd).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running dockerd.
pub struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
    /// Its API socket.
    pub socket: PathBuf,
}

impl Dockerd {
    /// Starts dockerd with `driver` (`overlay2`, `vfs`) under a directory of `/var/tmp`
    /// (overlay2 needs a real filesystem beneath it). `None` (with a printed `SKIPPED`)
    /// when this is not root or dockerd is not installed; in CI both are failures.
    pub fn start(driver: &str) -> Option<Self> {
        let dockerd = Path::new("/usr/sbin/dockerd");
        if !crate::is_root() || !dockerd.is_file() || !Path::new("/usr/bin/docker").is_file() {
            assert!(std::env::var_os("CI").is_none(), "CI must run the Docker engine tests as root with docker.io");
            println!("SKIPPED: needs root and dockerd (apt-get install docker.io)");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("rootfs-cache-dockerd-").tempdir_in("/var/tmp").unwrap();
        let socket = dir.path().join("docker.sock");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(START_TIMEOUT)).unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let name = dir.path().file_name().unwrap().to_str().unwrap().to_owned();
        let child = Command::new(dockerd)
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-masq=false"])
            .arg(format!("--storage-driver={driver}"))
            .arg(format!("--data-root={}", dir.path().join("root").display()))
            .arg(format!("--exec-root={}", dir.path().join("exec").display()))
            .arg(format!("--pidfile={}", dir.path().join("dockerd.pid").display()))
            .arg(format!("--host=unix://{}", socket.display()))
            .arg(format!("--containerd-namespace={name}"))
            .arg(format!("--containerd-plugins-namespace={name}-plugins"))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut engine = Self { child, dir, socket };
        let mut buf = [0u8; 4096];
        loop {
            match notify.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => break,
                Ok(_) => continue,
                Err(e) => panic!("dockerd did not say READY=1 within {START_TIMEOUT:?} ({e}):\n{}", engine.log()),
            }
        }
        if let Ok(Some(status)) = engine.child.try_wait() {
            panic!("dockerd exited ({status}):\n{}", engine.log());
        }
        Some(engine)
    }

    /// `docker -H unix://SOCKET ARGS…` (Debian's CLI, matching its dockerd), which must
    /// succeed; its stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/bin/docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Loads the image `oci:LAYOUT:latest` into the engine as `name` (with skopeo, through
    /// the engine's API, as `docker load` would).
    pub fn load_layout(&self, layout: &Path, name: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("--dest-daemon-host=unix://{}", self.socket.display()))
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker-daemon:{name}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy to the engine: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The engine's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM, then wait: dockerd stops its containerd and unmounts its layers.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

//! Booting an image in a QEMU `microvm` as its root filesystem, with a test
//! agent as PID 1 that reports what it sees (the recipe is in the README's
//! "Booting an image in a micro-VM").
//!
//! [`Vm::prepare`] finds or builds, once per machine under
//! `/var/tmp/rootfs-cache-vm/` (or `ROOTFS_CACHE_VM_DIR`): Debian's cloud
//! kernel and its four virtio modules (unpacked from `apt-get download`, keyed
//! by the package's name and version), a static busybox, an initramfs that
//! loads the modules, mounts `/dev/vda` read-write and `switch_root`s into
//! `/sbin/vm-agent`, and the agent itself, compiled from
//! `tests/vm-agent/agent.rs` (std only, statically linked). [`Vm::boot`] runs
//! QEMU under a timeout and parses the agent's report from the serial
//! console into a [`BootReport`]. [`Vm::start`] runs QEMU without waiting,
//! with more kernel parameters (the agent's churn mode), and returns a
//! [`Running`] VM that the caller can watch for a console line and kill.
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod parts;
mod report;

use parts::{agent, kernel_dir, program_exists};
pub use report::{BootReport, VmEntry};

/// The kernel command line. The three timer options keep TCG boots from
/// hanging while the kernel calibrates the TSC.
const CMDLINE: &str =
    "console=ttyS0 panic=-1 mitigations=off loglevel=3 tsc_early_khz=2000000 lpj=8000000 no_timer_check";

/// Why a VM could not be prepared or booted.
#[derive(Debug)]
pub enum VmError {
    /// This machine cannot boot a VM (no QEMU, no apt, no kernel package):
    /// a test skips, except under `CI=true`.
    Unavailable(String),
    /// A step failed, or the VM did not finish in time; the message carries
    /// the console's tail where there is one.
    Failed(String),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(f, "no micro-VM on this machine: {why}"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for VmError {}

pub(super) fn failed(what: impl fmt::Display) -> VmError {
    VmError::Failed(what.to_string())
}

/// A prepared micro-VM: kernel, initramfs, agent and accelerator.
#[derive(Clone, Debug)]
pub struct Vm {
    kernel: PathBuf,
    initrd: PathBuf,
    agent: PathBuf,
    accel: String,
}

impl Vm {
    /// Finds or builds everything a boot needs (downloads the kernel and,
    /// where `/bin/busybox` is not static, `busybox-static` with `apt-get
    /// download`; compiles the agent with `rustc`) and picks KVM when a
    /// probe boot works with it, TCG otherwise. `ROOTFS_CACHE_VM_ACCEL=tcg`
    /// or `kvm` skips the probe. [`VmError::Unavailable`] when QEMU or apt
    /// is missing or apt knows no cloud kernel.
    pub fn prepare() -> Result<Self, VmError> {
        if !program_exists("qemu-system-x86_64") {
            return Err(VmError::Unavailable(
                "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
            ));
        }
        let root =
            std::env::var_os("ROOTFS_CACHE_VM_DIR").map_or_else(|| "/var/tmp/rootfs-cache-vm".into(), PathBuf::from);
        std::fs::create_dir_all(&root).map_err(|e| failed(format!("creating {}: {e}", root.display())))?;
        let kernel_dir = kernel_dir(&root)?;
        let agent = agent(&root)?;
        let mut vm = Self {
            kernel: kernel_dir.join("vmlinuz"),
            initrd: kernel_dir.join("initrd.gz"),
            agent,
            accel: "tcg".into(),
        };
        vm.accel = match std::env::var("ROOTFS_CACHE_VM_ACCEL") {
            Ok(accel) => accel,
            Err(_) => vm.probe_accel(&kernel_dir)?,
        };
        Ok(vm)
    }

    /// [`Vm::prepare`] for a test: `None` after printing `SKIPPED: <reason>`
    /// when this machine cannot boot a VM, and a panic instead under
    /// `CI=true` or when preparing failed.
    pub fn prepare_or_skip() -> Option<Self> {
        match Self::prepare() {
            Ok(vm) => Some(vm),
            Err(VmError::Unavailable(why)) => {
                eprintln!("SKIPPED: {why}");
                assert!(std::env::var_os("CI").is_none(), "CI must boot the micro-VM: {why}");
                None
            }
            Err(e) => panic!("preparing the micro-VM: {e}"),
        }
    }

    /// The test agent, to install as the image's `/sbin/vm-agent`.
    pub fn agent(&self) -> &Path {
        &self.agent
    }

    /// The kernel, initramfs and accelerator a boot uses.
    pub fn parts(&self) -> (&Path, &Path, &str) {
        (&self.kernel, &self.initrd, &self.accel)
    }

    /// The QEMU command line that boots `image` (raw ext4, written to by
    /// the guest) as `/dev/vda`.
    pub fn command(&self, image: &Path) -> Command {
        self.command_with(image, &[])
    }

    /// [`Vm::command`] with `params` appended to the kernel command line
    /// (the agent reads `vm_agent.*` ones from `/proc/cmdline`).
    pub fn command_with(&self, image: &Path, params: &[&str]) -> Command {
        let cmdline = std::iter::once(CMDLINE).chain(params.iter().copied()).collect::<Vec<_>>().join(" ");
        let mut qemu = Command::new("qemu-system-x86_64");
        let cpu = if self.accel == "kvm" { "host" } else { "qemu64" };
        qemu.args(["-M", &format!("microvm,accel={}", self.accel), "-cpu", cpu, "-m", "512"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &cmdline])
            .arg("-drive")
            .arg(format!("id=root,file={},format=raw,if=none", image.display().to_string().replace(',', ",,")))
            .args(["-device", "virtio-blk-device,drive=root", "-no-reboot"]);
        qemu
    }

    /// Boots `image` (which the agent changes: boot a copy) and returns what
    /// the agent reported. Fails when QEMU fails, runs past `timeout` (QEMU
    /// is killed), or the console holds no complete report; every such
    /// error ends with the console's tail.
    pub fn boot(&self, image: &Path, timeout: Duration) -> Result<BootReport, VmError> {
        let (console, elapsed) = self.run(self.command(image), timeout)?;
        BootReport::parse(&console, elapsed)
    }

    /// Boots `image` (which the agent changes: boot a copy) with `params`
    /// appended to the kernel command line, and returns at once: the
    /// caller waits for the console, kills the VM, or drops it (which kills
    /// it too).
    pub fn start(&self, image: &Path, params: &[&str]) -> Result<Running, VmError> {
        Running::spawn(self.command_with(image, params))
    }

    /// Runs QEMU under `timeout`; returns the console and the time taken.
    fn run(&self, qemu: Command, timeout: Duration) -> Result<(String, Duration), VmError> {
        let mut vm = Running::spawn(qemu)?;
        let status = loop {
            if let Some(status) = vm.child.try_wait().map_err(failed)? {
                break Some(status);
            }
            if vm.started.elapsed() > timeout {
                let _ = vm.child.kill();
                let _ = vm.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let elapsed = vm.started.elapsed();
        let console = vm.console();
        let stderr = vm.stderr();
        match status {
            None => Err(failed(format!(
                "the VM ran past {timeout:?} and was killed; console tail:\n{}\nqemu stderr:\n{}",
                tail(&console),
                tail(&stderr)
            ))),
            Some(status) if !status.success() => Err(failed(format!(
                "qemu-system-x86_64 exited with {status}: {}\nconsole tail:\n{}",
                tail(&stderr),
                tail(&console)
            ))),
            Some(_) => Ok((console, elapsed)),
        }
    }

    /// Boots the kernel with no disk under KVM once per machine: the
    /// initramfs reports `ROOT-MOUNT-FAILED` and powers off where KVM works;
    /// where it does not (KVM inside some VMs fails on the kernel's first
    /// `cmpxchg16b`), the probe fails or times out and TCG is used.
    fn probe_accel(&self, kernel_dir: &Path) -> Result<String, VmError> {
        let remembered = kernel_dir.join("accel");
        if let Ok(accel) = std::fs::read_to_string(&remembered) {
            return Ok(accel.trim().to_string());
        }
        let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
            && Self { accel: "kvm".into(), ..self.clone() }
                .run(self.probe_command(), Duration::from_secs(20))
                .is_ok_and(|(console, _)| console.contains("ROOT-MOUNT-FAILED"));
        let accel = if kvm { "kvm" } else { "tcg" };
        std::fs::write(&remembered, accel).map_err(failed)?;
        Ok(accel.into())
    }

    fn probe_command(&self) -> Command {
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-M", "microvm,accel=kvm", "-cpu", "host", "-m", "512"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", CMDLINE, "-no-reboot"]);
        qemu
    }
}

/// A VM that [`Vm::start`] started: QEMU runs until the guest powers off or
/// [`Running::kill`] kills it; dropping it kills it too.
#[derive(Debug)]
pub struct Running {
    child: Child,
    started: Instant,
    console_path: PathBuf,
    stderr_path: PathBuf,
    _logs: tempfile::TempDir,
}

impl Running {
    /// Starts `qemu` with its serial console (stdout) and stderr in files.
    fn spawn(mut qemu: Command) -> Result<Self, VmError> {
        let logs = tempfile::tempdir().map_err(failed)?;
        let console_path = logs.path().join("console");
        let stderr_path = logs.path().join("stderr");
        let console_file = std::fs::File::create(&console_path).map_err(failed)?;
        let stderr_file = std::fs::File::create(&stderr_path).map_err(failed)?;
        let started = Instant::now();
        let child = qemu
            .stdin(Stdio::null())
            .stdout(console_file)
            .stderr(stderr_file)
            .spawn()
            .map_err(|e| failed(format!("starting qemu-system-x86_64: {e}")))?;
        Ok(Self { child, started, console_path, stderr_path, _logs: logs })
    }

    /// The serial console so far, without carriage returns.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console_path).unwrap_or_default()).replace('\r', "")
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// Time since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until a console line starts with `marker`; returns the time
    /// since QEMU started. Fails (with the console's tail) when QEMU exits
    /// first or `timeout` passes (QEMU is then killed).
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<Duration, VmError> {
        loop {
            let console = self.console();
            // Only complete lines: the marker's own may still be arriving.
            let complete = console.rfind('\n').map_or("", |i| &console[..i]);
            if complete.lines().any(|l| l.starts_with(marker)) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait().map_err(failed)? {
                return Err(self.failure(&format!("QEMU exited with {status} before the console said {marker}")));
            }
            if self.started.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(self.failure(&format!("the console did not say {marker} within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills QEMU with `SIGKILL` (what the guest sees as a power cut: the
    /// disk keeps exactly the writes QEMU made) and returns the console and
    /// how QEMU ended (it may have exited already).
    pub fn kill(mut self) -> Result<(String, ExitStatus), VmError> {
        // `Child::kill` sends SIGKILL; an error means QEMU already exited.
        let _ = self.child.kill();
        let status = self.child.wait().map_err(failed)?;
        Ok((self.console(), status))
    }

    fn failure(&self, what: &str) -> VmError {
        failed(format!("{what}; console tail:\n{}\nqemu stderr:\n{}", tail(&self.console()), tail(&self.stderr())))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last 40 lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

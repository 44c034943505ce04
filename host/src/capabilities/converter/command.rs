//! Any external converter with oci2rootfs's command-line contract:
//! `CMD SOURCE --output OUT [--size BYTES]`.
//!
//! The command runs in its own process group with a null stdin; its stderr is
//! kept (the last 4 KiB go into the error), and on timeout the whole group is
//! killed with SIGKILL before the partial output is removed.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use tokio::io::AsyncReadExt;

use super::{ConversionJob, Converter, SourceLayers, tail};
use crate::digest::FileFingerprint;
use crate::error::{Error, Result};

/// How much of the command's stderr is kept.
const STDERR_TAIL: usize = 4096;

/// An external converter command.
#[derive(Debug)]
pub struct CommandConverter {
    path: PathBuf,
    identity: Mutex<Option<(FileFingerprint, String)>>,
}

impl CommandConverter {
    /// A converter that runs `path`. Errors: `NotFound`, `InvalidRequest` when
    /// it is not an executable regular file.
    pub fn new(path: &Path) -> Result<Self> {
        let meta =
            std::fs::metadata(path).map_err(|e| Error::io(format!("converter command {}", path.display()), &e))?;
        if !meta.is_file() {
            return Err(Error::InvalidRequest(format!("converter command {} is not a regular file", path.display())));
        }
        Ok(Self { path: path.to_path_buf(), identity: Mutex::new(None) })
    }

    fn failed(&self, exit_status: Option<i32>, stderr: &str) -> Error {
        Error::ConverterFailed {
            converter: format!("command:{}", self.path.display()),
            exit_status,
            stderr_tail: tail(stderr, STDERR_TAIL),
        }
    }
}

#[async_trait::async_trait]
impl Converter for CommandConverter {
    fn identity(&self) -> String {
        // The command may be replaced between requests: re-hash it when its
        // fingerprint changes.
        let mut cached = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        match FileFingerprint::of(&self.path) {
            Ok(fp) => {
                if let Some((seen, identity)) = cached.as_ref()
                    && *seen == fp
                {
                    return identity.clone();
                }
                let digest = crate::digest::sha256_file(&self.path).unwrap_or_else(|e| format!("unreadable ({e})"));
                let identity = format!("command:{} sha256:{digest}", self.path.display());
                *cached = Some((fp, identity.clone()));
                identity
            }
            Err(e) => format!("command:{} unreadable ({e})", self.path.display()),
        }
    }

    async fn convert(&self, job: ConversionJob) -> Result<u64> {
        let source = match &job.source {
            SourceLayers::Overlay2 { top, .. } => top.clone(),
            SourceLayers::Oci { layout, .. } => layout.clone(),
        };
        let mut command = tokio::process::Command::new(&self.path);
        command.arg(&source).arg("--output").arg(&job.output);
        if let Some(size) = job.size {
            command.arg("--size").arg(size.to_string());
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
        // Its own process group, so a timeout kills its children too; and
        // SIGKILL when this process dies, so a crashed builder leaves no
        // converter running.
        command.as_std_mut().process_group(0);
        // SAFETY: the closure runs between fork and exec and only makes one
        // async-signal-safe system call.
        unsafe {
            command.as_std_mut().pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                    .map_err(std::io::Error::from)
            });
        }
        let mut child =
            command.spawn().map_err(|e| self.failed(None, &format!("cannot start {}: {e}", self.path.display())))?;
        let pid = child.id();
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let collect = async move {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).into_owned()
        };
        let run = async { tokio::join!(child.wait(), collect) };
        let (status, stderr) = match tokio::time::timeout(job.timeout, run).await {
            Ok((status, stderr)) => (status.map_err(|e| Error::io("waiting for the converter", &e))?, stderr),
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill().await;
                let _ = std::fs::remove_file(&job.output);
                return Err(Error::Timeout(format!(
                    "converter {} did not finish within {}s and was killed",
                    self.path.display(),
                    job.timeout.as_secs()
                )));
            }
        };
        if !status.success() {
            let _ = std::fs::remove_file(&job.output);
            if stderr.contains("No space left on device") {
                return Err(Error::NoSpace(format!("converter {}: {}", self.path.display(), tail(&stderr, 512))));
            }
            return Err(self.failed(status.code(), &stderr));
        }
        match std::fs::symlink_metadata(&job.output) {
            Ok(meta) if meta.is_file() => Ok(meta.len()),
            Ok(_) => {
                let _ = std::fs::remove_file(&job.output);
                Err(self.failed(Some(0), "the converter exited 0 but its output is not a regular file"))
            }
            Err(_) => {
                Err(self.failed(Some(0), &format!("the converter exited 0 but wrote no image; stderr: {stderr}")))
            }
        }
    }
}

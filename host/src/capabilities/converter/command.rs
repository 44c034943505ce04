//! Any external converter with oci2rootfs's command-line contract:
//! `CMD SOURCE --output OUT [--size BYTES]`.
//!
//! A converter is a program the host runs but does not trust, so:
//!
//! - **Its whole process tree dies with us.** It runs in a PID namespace of
//!   its own, under an init that dies with the builder; when that init exits,
//!   the kernel kills everything the converter started, so no grandchild
//!   keeps writing into the cache after a SIGKILL, a timeout or the
//!   converter's own exit (`command/process_tree.rs`; without namespaces, a process
//!   group with PDEATHSIG, as before). Its stdin is null; its stderr is
//!   kept (the last 64 KiB; 4 KiB go into the error).
//! - **Its output is never used in place.** It writes
//!   `tmp/<key>.<pid>-<n>.converter.ext4`; after it exits 0, the host checks
//!   that this is a regular file and copies it into a file it creates
//!   itself at the job's output, then removes the converter's name
//!   (`command/output.rs`). A converter can make its output a hardlink to a file
//!   outside the cache, a symlink, a FIFO, or leave it mounted or open for
//!   writing elsewhere: the image the host mounts, installs the agent into
//!   and publishes is still an inode that only the host has ever held.
//! - **Its failures say what happened**: the exit status, or the signal that
//!   killed it ("killed by signal 11 (SIGSEGV)"), with its stderr tail made
//!   safe for a terminal (`host/src/output_tail.rs`); "No space left on device" is
//!   `NoSpace`, and running past the deadline is `Timeout`.

mod output;
mod process_tree;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::ChildStderr;

use self::output::{Staging, TakeError};
use self::process_tree::ConverterProcess;
use super::{ConversionJob, Converted, Converter, SourceLayers};
use crate::digest::FileFingerprint;
use crate::error::{Error, Result};
use crate::output_tail::tail;

/// How much of the command's stderr goes into an error.
const STDERR_TAIL: usize = 4096;
/// How much of the command's stderr is kept while it runs.
const STDERR_KEPT: usize = 64 << 10;

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

    /// `ConverterFailed` with `reason`, which is already safe to print.
    fn failed(&self, exit_status: Option<i32>, reason: String) -> Error {
        Error::ConverterFailed {
            converter: format!("command:{}", self.path.display()),
            exit_status,
            stderr_tail: reason,
        }
    }

    fn timed_out(&self, limit: Duration) -> Error {
        Error::Timeout(format!(
            "converter {} did not finish within {}s and was killed",
            self.path.display(),
            limit.as_secs()
        ))
    }

    /// The error for a converter that did not exit 0.
    fn failure(&self, status: ExitStatus, stderr: &str) -> Error {
        if stderr.contains("No space left on device") {
            return Error::NoSpace(format!("converter {}: {}", self.path.display(), tail(stderr, 512)));
        }
        let stderr_tail = tail(stderr, STDERR_TAIL);
        match process_tree::killed_by(status) {
            Some(killed) if stderr_tail.is_empty() => self.failed(None, killed),
            Some(killed) => self.failed(None, format!("{killed}; stderr: {stderr_tail}")),
            None => self.failed(status.code(), stderr_tail),
        }
    }

    /// `CMD SOURCE --output OUT [--size BYTES]`, stdin null, stderr piped.
    fn command(&self, source: &Path, output: &Path, size: Option<u64>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.path);
        command.arg(source).arg("--output").arg(output);
        if let Some(size) = size {
            command.arg("--size").arg(size.to_string());
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
        command
    }

    /// Waits for the converter until `deadline`, keeping its stderr's tail;
    /// past the deadline, ends its whole tree and returns `None`.
    async fn wait(
        &self,
        process: &mut ConverterProcess,
        deadline: tokio::time::Instant,
    ) -> Result<Option<(ExitStatus, String)>> {
        let stderr = process.child.stderr.take().expect("stderr is piped");
        let run = async { tokio::join!(process.child.wait(), keep_tail(stderr)) };
        match tokio::time::timeout_at(deadline, run).await {
            Ok((status, stderr)) => {
                process_tree::end_leftovers(process);
                Ok(Some((status.map_err(|e| Error::io("waiting for the converter", &e))?, stderr)))
            }
            Err(_) => {
                process_tree::stop(process).await;
                Ok(None)
            }
        }
    }

    /// Copies the converter's output into the host's own file (on a
    /// blocking thread) and returns its length; removes both on failure.
    async fn take_output(
        &self,
        staging: Staging,
        deadline: tokio::time::Instant,
        limit: Duration,
        stderr: &str,
    ) -> Result<u64> {
        let until = deadline.into_std();
        let (staging, taken) = tokio::task::spawn_blocking(move || {
            let taken = staging.take(until);
            (staging, taken)
        })
        .await
        .map_err(|e| Error::Io(format!("the thread copying the converter's output failed: {e}")))?;
        taken.map_err(|e| {
            staging.discard();
            match e {
                TakeError::Missing => self.failed(
                    Some(0),
                    tail(&format!("the converter exited 0 but wrote no image; stderr: {stderr}"), STDERR_TAIL),
                ),
                TakeError::NotRegular(kind) => {
                    self.failed(Some(0), format!("the converter exited 0 but its output is {kind}, not a regular file"))
                }
                TakeError::Timeout => self.timed_out(limit),
                TakeError::Io { what, source } => Error::io(format!("taking the converter's output: {what}"), &source),
            }
        })
    }
}

/// The last [`STDERR_KEPT`] bytes the converter writes to `pipe`, until it
/// closes.
async fn keep_tail(mut pipe: ChildStderr) -> String {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > 2 * STDERR_KEPT {
            kept.drain(..kept.len() - STDERR_KEPT);
        }
    }
    if kept.len() > STDERR_KEPT {
        kept.drain(..kept.len() - STDERR_KEPT);
    }
    String::from_utf8_lossy(&kept).into_owned()
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

    async fn convert(&self, job: ConversionJob) -> Result<Converted> {
        let deadline = tokio::time::Instant::now() + job.timeout;
        let source = match &job.source {
            SourceLayers::Overlay2 { top, .. } => top.clone(),
            SourceLayers::Oci { layout, .. } => layout.clone(),
            SourceLayers::Pulled { reference, .. } => {
                return Err(SourceLayers::pulled_refused(&format!("command:{}", self.path.display()), reference));
            }
        };
        let staging = Staging::new(&job.output)
            .map_err(|e| Error::io(format!("preparing {} for the converter", job.output.display()), &e))?;
        let command = self.command(&source, &staging.converter_path(), job.size);
        let mut process = process_tree::spawn(command)
            .map_err(|e| self.failed(None, tail(&format!("cannot start {}: {e}", self.path.display()), STDERR_TAIL)))?;
        let (status, stderr) = match self.wait(&mut process, deadline).await {
            Ok(Some(finished)) => finished,
            Ok(None) => {
                staging.discard();
                return Err(self.timed_out(job.timeout));
            }
            Err(e) => {
                staging.discard();
                return Err(e);
            }
        };
        if !status.success() {
            staging.discard();
            return Err(self.failure(status, &stderr));
        }
        self.take_output(staging, deadline, job.timeout, &stderr).await.map(Converted::image)
    }
}

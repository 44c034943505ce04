//! `e2fsck -fn`: the reference check of an image, read-only.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// What e2fsck said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsckOutcome {
    /// Exit status 0: nothing to fix.
    pub clean: bool,
    /// The exit status.
    pub exit_status: i32,
    /// The last lines of its output.
    pub output_tail: String,
}

/// Runs `e2fsck -fn` on `image`, killing it at `timeout`.
pub async fn run(image: &Path, timeout: Duration) -> Result<FsckOutcome> {
    let child = tokio::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(timeout, child).await {
        Err(_) => {
            return Err(Error::Timeout(format!(
                "e2fsck on {} took longer than {}s",
                image.display(),
                timeout.as_secs()
            )));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound("e2fsck is not installed (apt-get install e2fsprogs)".into()));
        }
        Ok(Err(e)) => return Err(Error::io("running e2fsck", &e)),
        Ok(Ok(out)) => out,
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let code = out.status.code().unwrap_or(-1);
    Ok(FsckOutcome {
        clean: code == 0,
        exit_status: code,
        output_tail: crate::output_tail::tail(
            &text.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("; "),
            1024,
        ),
    })
}

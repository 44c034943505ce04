//! The rootless image "mounter": installs files with e2fsprogs' `debugfs -w`
//! on the image file itself, so no loop device, no mount and no root are
//! needed. Chosen automatically when the process lacks `CAP_SYS_ADMIN`, or
//! with `--inject debugfs`.
//!
//! Parent directories are resolved the way the kernel would, following
//! symlinks inside the image (`/sbin -> usr/sbin`), and created when missing
//! (0755, root). The agent is copied to a private file first and its digest
//! checked, so the bytes written are the bytes verified; after the write the
//! file is read back from the image and checked again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::install::components;
use super::{ImageMounter, Install, MountedImage};
use crate::digest::hex;
use crate::error::{Error, Result};

/// Installs through `debugfs`.
#[derive(Debug, Default)]
pub struct DebugfsInstaller;

/// An image being edited with `debugfs`.
#[derive(Debug)]
pub struct DebugfsImage {
    /// The image file, through `/proc/<pid>/fd` (it was handed over open).
    path: PathBuf,
    _file: File,
}

impl ImageMounter for DebugfsInstaller {
    /// Loop devices a loop mounter of an earlier, privileged process left
    /// attached to this cache's images (detaching them needs the privilege
    /// this process may lack: the sweep then warns).
    fn attached_under(&self, dir: &std::path::Path) -> Vec<super::AttachedImage> {
        super::loop_device::attached_images_under(dir)
    }

    fn detach(&self, attached: &super::AttachedImage) -> Result<()> {
        super::loop_device::detach_attached(attached)
    }

    fn mount(&self, image: File) -> Result<Box<dyn MountedImage>> {
        // debugfs is another process: it reaches our open file through our pid.
        let path =
            PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), std::os::fd::AsRawFd::as_raw_fd(&image)));
        let image = DebugfsImage { path, _file: image };
        // Fails early, with debugfs's reason, if the file is not ext4.
        image
            .run(false, &["stats -h"])
            .map_err(|e| Error::MountFailed(format!("debugfs cannot open the image: {e}")))?;
        Ok(Box::new(image))
    }
}

fn inject(message: impl std::fmt::Display) -> Error {
    Error::InjectFailed(message.to_string())
}

/// Quotes a path for a debugfs command line.
fn quote(path: &str) -> Result<String> {
    if path.contains(['"', '\n']) {
        return Err(Error::InvalidRequest(format!("{path:?} cannot be passed to debugfs")));
    }
    Ok(format!("\"{path}\""))
}

impl DebugfsImage {
    /// Runs debugfs commands; returns stdout, or stderr's error lines.
    fn run(&self, write: bool, commands: &[&str]) -> std::result::Result<String, String> {
        let mut script = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        for c in commands {
            writeln!(script, "{c}").map_err(|e| e.to_string())?;
        }
        let mut cmd = Command::new("debugfs");
        if write {
            cmd.arg("-w");
        }
        let out = cmd
            .arg("-f")
            .arg(script.path())
            .arg(&self.path)
            .output()
            .map_err(|e| format!("running debugfs: {e} (apt-get install e2fsprogs)"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // debugfs exits 0 even when a command fails; its errors go to stderr.
        let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()).collect();
        if !out.status.success() || !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The type of `path` in the image and, for a symlink, its target.
    fn kind(&self, path: &str) -> Result<Option<(String, Option<String>)>> {
        match self.run(false, &[&format!("stat {}", quote(path)?)]) {
            Ok(out) => {
                let kind =
                    out.split("Type: ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("").to_owned();
                let target = if kind == "symlink" {
                    match out.split("Fast link dest: \"").nth(1) {
                        Some(rest) => rest.rsplit_once('"').map(|(t, _)| t.to_owned()),
                        None => self.run(false, &[&format!("cat {}", quote(path)?)]).ok(),
                    }
                } else {
                    None
                };
                Ok(Some((kind, target)))
            }
            Err(e) if e.contains("File not found") => Ok(None),
            Err(e) => Err(inject(format!("debugfs stat {path}: {e}"))),
        }
    }

    /// Resolves (creating what is missing) the directory `parts`, following
    /// symlinks inside the image.
    fn directory(&self, parts: &[&str]) -> Result<String> {
        let mut pending: Vec<String> = parts.iter().rev().map(|p| p.to_string()).collect();
        let mut current: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    current.pop();
                    continue;
                }
                _ => {}
            }
            let path = format!("/{}", [current.clone(), vec![part.clone()]].concat().join("/"));
            match self.kind(&path)? {
                Some((kind, _)) if kind == "directory" => current.push(part),
                Some((kind, Some(target))) if kind == "symlink" => {
                    hops += 1;
                    if hops > 40 {
                        return Err(inject(format!("too many symlinks resolving {path}")));
                    }
                    if target.starts_with('/') {
                        current.clear();
                    }
                    pending.extend(target.split('/').rev().map(str::to_owned));
                }
                Some((kind, _)) => return Err(inject(format!("{path} is a {kind} in the image, not a directory"))),
                None => {
                    let q = quote(&path)?;
                    self.run(
                        true,
                        &[
                            &format!("mkdir {q}"),
                            &format!("sif {q} mode 040755"),
                            &format!("sif {q} uid 0"),
                            &format!("sif {q} gid 0"),
                        ],
                    )
                    .map_err(|e| inject(format!("creating {path}: {e}")))?;
                    current.push(part);
                }
            }
        }
        Ok(format!("/{}", current.join("/")))
    }
}

impl MountedImage for DebugfsImage {
    fn install(&mut self, source: &mut dyn std::io::Read, install: &Install) -> Result<()> {
        let parts = components(&install.target)?;
        let (name, parents) = parts.split_last().expect("components is never empty");
        // Copy and check the agent, so the bytes written are the bytes verified.
        let mut copy = tempfile::NamedTempFile::new().map_err(|e| inject(format!("a copy of the agent: {e}")))?;
        let mut hasher = Sha256::new();
        let mut reader = std::io::BufReader::new(source);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n =
                std::io::Read::read(&mut reader, &mut buf).map_err(|e| inject(format!("reading the agent: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            copy.write_all(&buf[..n]).map_err(|e| inject(format!("copying the agent: {e}")))?;
        }
        let actual = hex(&hasher.finalize());
        if actual != install.sha256 {
            return Err(inject(format!(
                "the agent changed during the build (sha256 {actual}, expected {})",
                install.sha256
            )));
        }
        let dir = self.directory(parents)?;
        let target = if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") };
        if let Some((kind, _)) = self.kind(&target)? {
            if kind == "directory" {
                return Err(inject(format!("{target} is a directory in the image")));
            }
            self.run(true, &[&format!("rm {}", quote(&target)?)])
                .map_err(|e| inject(format!("replacing {target}: {e}")))?;
        }
        let copy_path = copy.path().to_str().ok_or_else(|| inject("a temporary path that is not UTF-8"))?.to_owned();
        let q = quote(name)?;
        let script = [
            format!("cd {}", quote(&dir)?),
            format!("write {} {q}", quote(&copy_path)?),
            format!("sif {q} mode 0{:o}", 0o100000 | (install.mode & 0o7777)),
            format!("sif {q} uid 0"),
            format!("sif {q} gid 0"),
        ];
        let script: Vec<&str> = script.iter().map(String::as_str).collect();
        self.run(true, &script).map_err(|e| {
            if e.contains("Could not allocate block") || e.contains("No free space") {
                inject(format!("the image has no room for {}; raise --size or omit it", install.target))
            } else {
                inject(format!("writing {target}: {e}"))
            }
        })?;
        // Read it back.
        let back = tempfile::NamedTempFile::new().map_err(|e| inject(e.to_string()))?;
        let back_path = back.path().to_str().unwrap_or_default().to_owned();
        self.run(false, &[&format!("dump {} {}", quote(&target)?, quote(&back_path)?)])
            .map_err(|e| inject(format!("reading {target} back: {e}")))?;
        let written = crate::digest::sha256_file(Path::new(&back_path)).map_err(|e| inject(e.to_string()))?;
        if written != install.sha256 {
            return Err(inject(format!("{target} reads back with sha256 {written}, expected {}", install.sha256)));
        }
        Ok(())
    }

    fn unmount(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// Whether this process may mount filesystems.
pub fn can_mount() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|c| c.effective.contains(rustix::thread::CapabilitySet::SYS_ADMIN))
}

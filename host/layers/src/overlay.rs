//! The kernel's overlayfs as the merge of an overlay2 chain: exactly what a
//! container on Docker sees, whiteouts, opaque directories and all.
//!
//! The mount is read-only and detached (`fsopen`/`fsmount`): it is reached
//! only through the returned handle, no other process sees it, and it goes
//! away when the handle is closed or the process dies.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

fn describe(what: &str, err: rustix::io::Errno, fs: &OwnedFd) -> String {
    let mut detail = String::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = rustix::io::read(fs, &mut buf) {
        if n == 0 {
            break;
        }
        detail.push_str(&format!("; {}", String::from_utf8_lossy(&buf[..n]).trim_end()));
    }
    format!("{what}: {err}{detail}")
}

/// Escapes a layer path for the legacy `lowerdir=a:b` option.
fn escape(path: &str) -> String {
    path.replace('\\', "\\\\").replace(':', "\\:").replace(',', "\\,")
}

/// Mounts `layers` (top first) as a read-only overlay and returns the root
/// of the mount. Overlayfs needs two layers without an upper directory; pass
/// an empty directory as `padding` for a one-layer chain.
pub fn mount(layers: &[PathBuf], padding: Option<PathBuf>) -> Result<OwnedFd, String> {
    let mut all: Vec<PathBuf> = layers.to_vec();
    all.extend(padding);
    let fs =
        rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| format!("fsopen(overlay): {e}"))?;
    // Since Linux 6.8 layers are added one by one, with no escaping.
    let mut appended = true;
    for layer in &all {
        if let Err(e) = rustix::mount::fsconfig_set_string(&fs, "lowerdir+", layer.as_path()) {
            if e == rustix::io::Errno::INVAL && layer == &all[0] {
                appended = false;
                let _ = describe("", e, &fs); // drain the log
                break;
            }
            return Err(describe(&format!("adding layer {}", layer.display()), e, &fs));
        }
    }
    if !appended {
        let joined: Vec<String> = all.iter().map(|p| escape(&p.to_string_lossy())).collect();
        rustix::mount::fsconfig_set_string(&fs, "lowerdir", joined.join(":").as_str())
            .map_err(|e| describe("setting lowerdir", e, &fs))?;
    }
    rustix::mount::fsconfig_create(&fs).map_err(|e| describe("mounting the overlay", e, &fs))?;
    rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
    .map_err(|e| describe("fsmount", e, &fs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn separators_are_escaped_for_the_legacy_option() {
        assert_eq!(super::escape("/a:b\\c,d"), "/a\\:b\\\\c\\,d");
    }
}

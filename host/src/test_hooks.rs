//! Pause points for the crash tests, compiled in only with the `test-hooks`
//! feature (the tests crate enables it; `cargo build -p rootfs-cache` does
//! not).
//!
//! With `ROOTFS_CACHE_PAUSE_AT=<phase>`, the process stops at that phase:
//! it writes the phase's name to the FIFO named by `ROOTFS_CACHE_PAUSE_FIFO`
//! (opening it blocks until the test reads, so the test needs no sleep) and
//! then waits forever, for the test's SIGKILL.

/// Stops here when the crash tests ask for `phase`.
pub(crate) fn pause(phase: &str) {
    #[cfg(feature = "test-hooks")]
    if std::env::var("ROOTFS_CACHE_PAUSE_AT").is_ok_and(|p| p == phase) {
        use std::io::Write;
        if let Some(fifo) = std::env::var_os("ROOTFS_CACHE_PAUSE_FIFO")
            && let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(fifo)
        {
            let _ = writeln!(f, "{phase}");
        }
        loop {
            std::thread::park();
        }
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = phase;
}

//! A one-line progress indicator on stderr, shown only on a terminal.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rootfs_cache::{Observer, Phase};

/// Redraws `⠋ converting the source to ext4 (3.1s)` ten times a second.
pub struct Spinner {
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    phase: Mutex<Option<(Phase, Instant)>>,
    done: AtomicBool,
}

struct PhaseObserver(Arc<State>);

impl Observer for PhaseObserver {
    fn phase_started(&self, phase: Phase) {
        *self.0.phase.lock().unwrap_or_else(|p| p.into_inner()) = Some((phase, Instant::now()));
    }
}

impl Spinner {
    /// Starts drawing.
    pub fn start() -> Self {
        let state = Arc::new(State { phase: Mutex::new(None), done: AtomicBool::new(false) });
        let drawing = state.clone();
        let thread = std::thread::spawn(move || {
            const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let mut frame = 0;
            while !drawing.done.load(Ordering::Relaxed) {
                if let Some((phase, since)) = *drawing.phase.lock().unwrap_or_else(|p| p.into_inner()) {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[2K{} {} ({:.1}s)",
                        FRAMES[frame % FRAMES.len()],
                        phase.describe(),
                        since.elapsed().as_secs_f64()
                    );
                    let _ = err.flush();
                    frame += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        });
        Self { state, thread: Some(thread) }
    }

    /// The observer to hand to the cache.
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(PhaseObserver(self.state.clone()))
    }

    /// Clears the line.
    pub fn finish(mut self) {
        self.state.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

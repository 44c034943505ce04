//! Progress on stderr, shown only on a terminal (and never with `--json`): a one-line
//! indicator of the request's step, and while an image is pulled one bar per blob with its
//! bytes and rate (`indicatif`).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rootfs_cache::{Observer, Phase};

/// Redraws `⠋ converting the source to ext4 (3.1s)` ten times a second.
pub struct Spinner {
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    phase: Mutex<Option<(Phase, Instant)>>,
    done: AtomicBool,
    /// The blob bars, by digest, drawn together.
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    multi: MultiProgress,
}

struct PhaseObserver(Arc<State>);

impl Observer for PhaseObserver {
    fn phase_started(&self, phase: Phase) {
        *self.0.phase.lock().unwrap_or_else(|p| p.into_inner()) = Some((phase, Instant::now()));
    }

    fn blob_started(&self, digest: &str, size: Option<u64>) {
        let bar = self.0.multi.add(ProgressBar::new(size.unwrap_or(0)));
        let style = ProgressStyle::with_template("{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(digest.chars().take(19).collect::<String>());
        self.0.bars.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.to_owned(), bar);
    }

    fn blob_progress(&self, digest: &str, received: u64) {
        if let Some(bar) = self.0.bars.lock().unwrap_or_else(|p| p.into_inner()).get(digest) {
            bar.set_position(received);
        }
    }

    fn blob_finished(&self, digest: &str, _downloaded: u64) {
        if let Some(bar) = self.0.bars.lock().unwrap_or_else(|p| p.into_inner()).remove(digest) {
            bar.finish();
        }
    }
}

impl Spinner {
    /// Starts drawing.
    pub fn start() -> Self {
        let state = Arc::new(State {
            phase: Mutex::new(None),
            done: AtomicBool::new(false),
            bars: Mutex::new(BTreeMap::new()),
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        });
        let drawing = state.clone();
        let thread = std::thread::spawn(move || {
            const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let mut frame = 0;
            while !drawing.done.load(Ordering::Relaxed) {
                let current = *drawing.phase.lock().unwrap_or_else(|p| p.into_inner());
                // While blobs download, their bars are the progress.
                let pulling = !drawing.bars.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
                if let Some((phase, since)) = current.filter(|_| !pulling) {
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

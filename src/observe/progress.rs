//! Progress of long work: a bar on a terminal, a plain line every [`LINE_EVERY`] elsewhere.
//!
//! `run --until-caught-up` and the embedded run show records read and their rate, the lag
//! left to read (this process's partitions) and the epochs sealed and committed, from the
//! process's metrics — the bar reads the same atomics a scrape does, from a thread of its own.
//! `simulate` counts the records it sent ([`Lines`]). When stderr is not a terminal (a file, a
//! pipe, a container's log) no bar is drawn: the same figures are logged at INFO every
//! [`LINE_EVERY`].

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Outcome;

/// Interval of the plain progress lines.
pub const LINE_EVERY: Duration = Duration::from_secs(10);

/// The bar being drawn, if any: log lines clear it while they are written.
static ACTIVE: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Runs `f` with the active bar (if any) cleared from the terminal, then redraws it.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let bar = ACTIVE.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(b) => b.suspend(f),
        None => f(),
    }
}

/// stderr, written around the progress bar.
#[derive(Debug, Clone, Copy)]
pub struct BarAwareStderr;

impl Write for BarAwareStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        suspend(|| std::io::stderr().write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The progress of one run, drawn until dropped.
#[derive(Debug)]
pub struct RunProgress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunProgress {
    /// Starts showing the progress of a run.
    pub fn start() -> RunProgress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let terminal = std::io::stderr().is_terminal();
        let thread = std::thread::Builder::new()
            .name("citystream-progress".into())
            .spawn(move || {
                let bar = terminal.then(|| {
                    let b = indicatif::ProgressBar::new_spinner();
                    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
                        b.set_style(style);
                    }
                    *ACTIVE.lock().expect("not poisoned") = Some(b.clone());
                    b
                });
                let started = Instant::now();
                let mut last_line = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let line = figures(started.elapsed());
                    match &bar {
                        Some(b) => {
                            b.set_message(line);
                            b.tick();
                        }
                        None if last_line.elapsed() >= LINE_EVERY => {
                            last_line = Instant::now();
                            tracing::info!("progress: {line}");
                        }
                        None => {}
                    }
                }
                if let Some(b) = bar {
                    ACTIVE.lock().expect("not poisoned").take();
                    b.finish_and_clear();
                }
            })
            .ok();
        RunProgress { stop, thread }
    }
}

impl Drop for RunProgress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The figures of a run so far, from the process's metrics.
fn figures(elapsed: Duration) -> String {
    let m = super::metrics();
    let read: u64 = Outcome::ALL.iter().map(|o| m.records_sum(*o)).sum();
    let rate = read as f64 / elapsed.as_secs_f64().max(1e-3);
    let sealed = m.epochs_sealed();
    format!("{read} records read ({rate:.0}/s), lag {} records, {sealed} epochs sealed, {} manifests committed", m.lag_sum(), m.manifests_committed.get())
}

/// Plain progress lines for work that draws its own bar on a terminal (`simulate`): nothing on
/// a terminal, a line every [`LINE_EVERY`] elsewhere.
#[derive(Debug)]
pub struct Lines {
    what: &'static str,
    terminal: bool,
    started: Instant,
    last: Instant,
}

impl Lines {
    /// Lines about `what` (e.g. "records sent").
    pub fn new(what: &'static str) -> Lines {
        let now = Instant::now();
        Lines { what, terminal: std::io::stderr().is_terminal(), started: now, last: now }
    }

    /// `done` so far (of `total`, if known).
    pub fn update(&mut self, done: u64, total: Option<u64>) {
        if self.terminal || self.last.elapsed() < LINE_EVERY {
            return;
        }
        self.last = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        match total {
            Some(t) => tracing::info!("progress: {done} of {t} {} ({rate:.0}/s)", self.what),
            None => tracing::info!("progress: {done} {} ({rate:.0}/s)", self.what),
        }
    }
}

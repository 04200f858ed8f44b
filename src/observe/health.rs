//! Liveness and readiness of the process, for `/healthz` and `/readyz`.
//!
//! *Alive* means every worker thread that started is still stepping: each beats (stores the
//! time) after every step of its dataflow, and timely parks a worker for at most 100 ms, so a
//! beat older than [`STALE_AFTER`] means the thread is stuck in one operator (a deadlock, a
//! blocking call that never returns). A worker that finished is alive by definition.
//!
//! *Ready* means the process does its share: the store answered at start, every worker holds
//! its partitions (its reader is created; before that, a process waits for its peers), and
//! either a commit of this run is durable (the committing process, process 0), the cluster's
//! frontier moved past the first epoch of the run (the other processes, which do not see
//! commits), or every partition of the process is caught up (an idle input commits nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::epoch::Epoch;

/// A worker whose last beat is older than this is stuck: `/healthz` answers 503.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// A beat value meaning "finished": never stale.
const FINISHED: u64 = u64::MAX;

/// The process's health.
#[derive(Debug, Default)]
pub struct Health {
    started: OnceLock<Instant>,
    /// Milliseconds since `started` of each worker's last beat (0: not started).
    beats: Mutex<Vec<std::sync::Arc<AtomicU64>>>,
    store_answered: AtomicBool,
    workers_expected: AtomicUsize,
    workers_assigned: AtomicUsize,
    workers_idle: AtomicUsize,
    committed: AtomicBool,
    first_epoch: AtomicU64,
    frontier_moved: AtomicBool,
}

/// One worker's heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    slot: std::sync::Arc<AtomicU64>,
    started: Instant,
    /// Test hook: stop beating (and stepping) once this instant is reached.
    wedge_at: Option<Instant>,
}

impl Heartbeat {
    /// The worker stepped.
    pub fn beat(&self) {
        self.slot.store(self.started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        if let Some(at) = self.wedge_at
            && Instant::now() >= at
        {
            tracing::warn!("test hook CITYSTREAM_TEST_WEDGE_AFTER: this worker stops stepping");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }

    /// The worker finished: it no longer steps, and is not stuck.
    pub fn finished(&self) {
        self.slot.store(FINISHED, Ordering::Relaxed);
    }
}

/// What `/readyz` found, as a reason when not ready.
pub type Readiness = Result<(), String>;

impl Health {
    fn started(&self) -> Instant {
        *self.started.get_or_init(Instant::now)
    }

    /// Sets what readiness waits for: `workers` worker threads, and `first_epoch`, the first
    /// epoch this run can commit.
    pub fn expect(&self, workers: usize, first_epoch: Epoch) {
        self.started();
        self.workers_expected.store(workers, Ordering::Relaxed);
        self.first_epoch.store(first_epoch.get(), Ordering::Relaxed);
    }

    /// The store answered the start-up check.
    pub fn store_answered(&self) {
        self.store_answered.store(true, Ordering::Relaxed);
    }

    /// A worker's heartbeat, registered as started now. Worker 0 of the process honours the
    /// test hook `CITYSTREAM_TEST_WEDGE_AFTER` (a duration) in debug builds only: it stops
    /// stepping that long after it started, so that tests can see `/healthz` fail.
    pub fn heartbeat(&self, worker_of_process: usize) -> Heartbeat {
        let started = self.started();
        let slot = std::sync::Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64 + 1));
        self.beats.lock().expect("not poisoned").push(slot.clone());
        let wedge_at = if cfg!(debug_assertions) && worker_of_process == 0 {
            std::env::var("CITYSTREAM_TEST_WEDGE_AFTER").ok().and_then(|v| humantime::parse_duration(v.trim()).ok()).map(|d| Instant::now() + d)
        } else {
            None
        };
        Heartbeat { slot, started, wedge_at }
    }

    /// A worker holds its partitions (its reader is created).
    pub fn assigned(&self) {
        self.workers_assigned.fetch_add(1, Ordering::Relaxed);
    }

    /// A worker's partitions all became caught up (`true`) or one of them active again.
    pub fn worker_idle(&self, idle: bool) {
        if idle {
            self.workers_idle.fetch_add(1, Ordering::Relaxed);
        } else {
            self.workers_idle.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A commit of this run is durable.
    pub fn committed(&self) {
        self.committed.store(true, Ordering::Relaxed);
    }

    /// The cluster's frontier as this process sees it.
    pub fn frontier(&self, f: Epoch) {
        if f.get() > self.first_epoch.load(Ordering::Relaxed) {
            self.frontier_moved.store(true, Ordering::Relaxed);
        }
    }

    /// Whether every started worker beat within [`STALE_AFTER`]; the error names the stuck ones.
    pub fn alive(&self) -> Readiness {
        let now = self.started().elapsed().as_millis() as u64;
        let stale = STALE_AFTER.as_millis() as u64;
        let stuck: Vec<String> = self
            .beats
            .lock()
            .expect("not poisoned")
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let last = b.load(Ordering::Relaxed);
                (last != FINISHED && now.saturating_sub(last) > stale).then(|| format!("worker thread {i} has not stepped for {} ms", now - last))
            })
            .collect();
        if stuck.is_empty() { Ok(()) } else { Err(stuck.join("; ")) }
    }

    /// Whether the process is ready; the error says what it waits for.
    pub fn ready(&self) -> Readiness {
        let expected = self.workers_expected.load(Ordering::Relaxed);
        if !self.store_answered.load(Ordering::Relaxed) {
            return Err("the store has not answered yet".into());
        }
        let assigned = self.workers_assigned.load(Ordering::Relaxed);
        if expected == 0 || assigned < expected {
            return Err(format!("{assigned} of {expected} workers hold their partitions (waiting for the cluster's peers or Kafka)"));
        }
        let idle = self.workers_idle.load(Ordering::Relaxed) >= expected;
        if !(self.committed.load(Ordering::Relaxed) || self.frontier_moved.load(Ordering::Relaxed) || idle) {
            return Err("no epoch of this run is committed (or sealed) yet and the input is not idle".into());
        }
        self.alive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_the_store_answered_every_worker_holds_partitions_and_an_epoch_committed() {
        let h = Health::default();
        h.expect(2, Epoch(10));
        assert!(h.ready().unwrap_err().contains("store"));
        h.store_answered();
        assert!(h.ready().unwrap_err().contains("0 of 2 workers"));
        h.assigned();
        h.assigned();
        assert!(h.ready().unwrap_err().contains("committed"));
        h.frontier(Epoch(10));
        assert!(h.ready().is_err(), "the first epoch itself is not sealed yet");
        h.worker_idle(true);
        h.worker_idle(true);
        assert_eq!(h.ready(), Ok(()), "an idle input is ready");
        h.worker_idle(false);
        assert!(h.ready().is_err());
        h.committed();
        assert_eq!(h.ready(), Ok(()));
        assert_eq!(h.alive(), Ok(()));
    }

    #[test]
    fn a_worker_that_stops_beating_is_stuck_and_a_finished_one_is_not() {
        let h = Health::default();
        // The process started 10 s ago; the worker's last beat was right at the start.
        h.started.set(Instant::now() - Duration::from_secs(10)).unwrap();
        let beat = h.heartbeat(1);
        assert_eq!(h.alive(), Ok(()));
        beat.slot.store(1, Ordering::Relaxed);
        assert!(h.alive().unwrap_err().contains("worker thread 0 has not stepped"));
        beat.beat();
        assert_eq!(h.alive(), Ok(()));
        beat.slot.store(1, Ordering::Relaxed);
        beat.finished();
        assert_eq!(h.alive(), Ok(()));
    }
}

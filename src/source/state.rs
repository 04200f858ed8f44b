//! What the source operator knows between activations, and each of its steps as a method.
//!
//! The operator ([`super::operator`]) calls them in this order on every activation: hear the
//! other workers' announcements, notice a shutdown, read, weigh reading against the broker's
//! end offsets, let idle partitions follow the cluster, bound the read-ahead, guard against
//! stalls, announce, and finally advance the capability ([`SourceState::advance`]). The steps
//! touch no timely handle, so each is unit-testable; the operator owns the capabilities.

mod publish;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::batches::EpochBatches;
use super::operator::{OwnedPartition, SourceSpec};
use super::stall::{StallConfig, StallGuard, Verdict};
use super::{Event, Progress, Reader};
use crate::contract::schema::Provenance;
use crate::contract::{DecodeOptions, decode_borrowed};
use crate::dataflow::{Announce, Backpressure, Chunk};
use crate::epoch::Epoch;
use crate::error::{ErrorClass, PipelineError};
use crate::observe::Outcome;
use crate::ownership::{Offset, PartitionId};
use crate::reclock::{Class, PartitionClock, ResumeState};

/// How many epochs a partition may read ahead of the least epoch of the active partitions,
/// cluster-wide. In a backlog, partitions are fetched at uneven speeds; without a bound the
/// fastest ones run ahead by hundreds of epochs, and every epoch between the frontier and them
/// holds open files (measured: 116 epochs, 900 open files per worker, 650 MiB, reading 5
/// million records). A held partition is simply not read: librdkafka's prefetch queue for it
/// fills and fetching pauses. The least active partition is never held, so reading always
/// progresses; live streams, whose partitions advance together, never reach the bound.
pub const READ_AHEAD_EPOCHS: u64 = 8;

/// A read-ahead hold lasting longer than this is logged at INFO, with its release.
pub const HOLD_REPORTED_AFTER: Duration = Duration::from_secs(5);

/// How often each partition's reading state is logged at DEBUG.
const STATE_LOG_EVERY: Duration = Duration::from_secs(15);

/// One owned partition as the source sees it.
pub(super) struct Part {
    pub(super) clock: PartitionClock,
    stop: Option<Offset>,
    /// Nothing to read right now (end of partition, by librdkafka's event or the broker's end).
    caught_up: bool,
    /// Its stop offset is reached: nothing more is read from it in this run.
    pub(super) finished: bool,
    /// Not read for now: too far ahead of the cluster's least active epoch.
    held: bool,
    /// Since when it is held, and whether that was reported (after [`HOLD_REPORTED_AFTER`]).
    held_since: Option<(Instant, bool)>,
    /// The broker's end of the partition when last asked (for the lag metric).
    end: Option<Offset>,
}

impl Part {
    /// Marks the partition finished once its stop offset is reached; `true` the first time.
    fn check_finished(&mut self) -> bool {
        if !self.finished && self.stop.is_some_and(|s| self.clock.next_offset() >= s) {
            self.finished = true;
            return true;
        }
        false
    }
}

/// The cluster as this worker sees it after hearing the announcements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct View {
    /// Least epoch of this worker's active partitions.
    local_active: Option<Epoch>,
    /// Greatest epoch of this worker's idle partitions that have a watermark.
    local_idle: Option<Epoch>,
    /// Least epoch of the active partitions, cluster-wide.
    global_active: Option<Epoch>,
    /// Greatest epoch of the idle partitions with a watermark, cluster-wide.
    global_idle: Option<Epoch>,
    /// The worker whose partition is the least active one.
    least_active_worker: Option<usize>,
}

/// Where the capability goes after an activation.
pub(super) struct Advance {
    /// The new capability (≥ the old one).
    pub(super) to: Epoch,
    /// Every partition is finished: send final states and drop the capabilities.
    pub(super) all_finished: bool,
}

/// The source operator's state.
pub(super) struct SourceState {
    pub(super) worker: usize,
    reader: Box<dyn Reader>,
    decode: DecodeOptions,
    max_future: Option<Duration>,
    shutdown: Arc<AtomicBool>,
    budget: usize,
    pub(super) batches: EpochBatches,
    stall: StallConfig,
    backpressure: Backpressure,
    pub(super) parts: Vec<Part>,
    /// Owned partitions, sorted, with their index in `parts`: a binary search per record is
    /// cheaper than hashing the id.
    index: Vec<(PartitionId, usize)>,
    /// The newest announcement of every other worker.
    others: HashMap<usize, Announce>,
    announce_seq: u64,
    last_announced: Option<(Option<Epoch>, Option<Epoch>)>,
    /// The greatest epoch any row was sent at.
    pub(super) max_sent: Epoch,
    stopping: bool,
    read_any: bool,
    guard: StallGuard,
    check_every: Duration,
    last_check: Instant,
    last_state_log: Instant,
    holds: u64,
    metrics: crate::observe::source::SourceMetrics,
}

impl SourceState {
    /// The state of a source that starts at `spec.committed_below`; partitions already at their
    /// stop offset are paused at once.
    pub(super) fn new(spec: SourceSpec) -> Self {
        let SourceSpec { worker, committed_below, partitions, reader, decode, max_future, shutdown, budget, batches, stall, backpressure, failure: _ } = spec;
        let parts: Vec<Part> = partitions
            .into_iter()
            .map(|OwnedPartition { clock, stop }| Part { clock, stop, caught_up: false, finished: false, held: false, held_since: None, end: None })
            .collect();
        let mut index: Vec<(PartitionId, usize)> = parts.iter().enumerate().map(|(i, p)| (p.clock.id(), i)).collect();
        index.sort_unstable();
        let now = Instant::now();
        let metrics = crate::observe::source::SourceMetrics::new(&index.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        let mut state = SourceState {
            worker,
            reader,
            decode,
            max_future,
            shutdown,
            budget,
            batches,
            stall,
            backpressure,
            parts,
            index,
            others: HashMap::new(),
            announce_seq: 0,
            last_announced: None,
            max_sent: committed_below,
            stopping: false,
            read_any: false,
            guard: StallGuard::new(stall),
            check_every: (stall.timeout / 4).min(Duration::from_secs(1)),
            last_check: now,
            last_state_log: now,
            holds: 0,
            metrics,
        };
        for p in &mut state.parts {
            if p.check_finished() {
                state.reader.pause(p.clock.id());
            }
        }
        state
    }

    fn find(&self, id: &PartitionId) -> Option<usize> {
        self.index.binary_search_by(|(p, _)| p.cmp(id)).ok().map(|k| self.index[k].1)
    }

    /// Keeps the newest announcement of every other worker.
    pub(super) fn hear(&mut self, announcements: impl IntoIterator<Item = Announce>) {
        for a in announcements {
            if a.worker != self.worker && self.others.get(&a.worker).is_none_or(|o| a.seq > o.seq) {
                self.others.insert(a.worker, a);
            }
        }
    }

    /// On SIGTERM/SIGINT: every partition stops where it is, so that what was read is sealed.
    pub(super) fn notice_shutdown(&mut self) {
        if self.stopping || !self.shutdown.load(Ordering::Relaxed) {
            return;
        }
        self.stopping = true;
        tracing::info!(worker = self.worker, "shutdown requested: sealing what was read");
        for p in &mut self.parts {
            p.stop = Some(p.stop.map_or(p.clock.next_offset(), |s| s.min(p.clock.next_offset())));
            p.check_finished();
        }
    }

    /// Whether this activation reads: not while stopping, nor while the process's sinks wait for
    /// the store.
    pub(super) fn reads_now(&self) -> bool {
        !self.stopping && !self.backpressure.engaged()
    }

    /// Reads up to the budget: each record is classified into its epoch (never below `cap`) and
    /// appended to the batch of its object. Returns how many events were read.
    pub(super) fn read(&mut self, cap: Epoch) -> Result<usize, PipelineError> {
        if let Some(ahead) = self.max_future {
            self.decode.not_after = crate::contract::EventTime(crate::clock::now_micros().saturating_add(i64::try_from(ahead.as_micros()).unwrap_or(i64::MAX)));
        }
        let SourceState { reader, parts, index, batches, decode, max_sent, budget, worker, .. } = self;
        let find = |id: &PartitionId| index.binary_search_by(|(p, _)| p.cmp(id)).ok().map(|k| index[k].1);
        let mut broken = None;
        let mut counts = crate::observe::source::ReadCounts::default();
        let result = reader.poll(*budget, &mut |event| match event {
            Event::Record { id, offset, payload } => {
                let Some(i) = find(&id) else { return };
                let p = &mut parts[i];
                if p.finished || p.stop.is_some_and(|s| offset >= s) {
                    return;
                }
                p.caught_up = false;
                let decoded = decode_borrowed(id.stream, payload, decode);
                let event_time = decoded.as_ref().ok().map(|r| r.timestamp());
                if let Some(class) = p.clock.observe(offset, event_time) {
                    // Idle partitions were lifted to at least the capability, and after a restart
                    // everything below it is skipped as committed: a time below the capability
                    // would break exactly-once.
                    if class.epoch() < cap {
                        broken.get_or_insert(format!("internal error: {id} offset {offset} classified at epoch {} below the capability {cap}", class.epoch()));
                        return;
                    }
                    let epoch = class.epoch();
                    match decoded {
                        Ok(record) => {
                            let late = matches!(class, Class::Late(_));
                            counts.add(id.stream, if late { Outcome::Late } else { Outcome::Ok }, payload.len(), epoch);
                            batches.record(epoch, &record, Provenance { partition: id.partition, offset: offset.get(), late });
                        }
                        Err(e) => {
                            counts.add(id.stream, Outcome::DeadLetter, payload.len(), epoch);
                            batches.dead(epoch, id.stream, id.partition, offset.get(), &e, payload)
                        }
                    }
                    *max_sent = (*max_sent).max(epoch);
                }
                p.check_finished();
            }
            Event::Caught { id } => {
                if let Some(i) = find(&id) {
                    let p = &mut parts[i];
                    p.caught_up = true;
                    // At the end of the partition, a stop offset taken earlier is reached even if
                    // the last offsets held no records (transaction markers).
                    if p.stop.is_some() {
                        p.finished = true;
                    }
                }
            }
        });
        self.metrics.read(&counts);
        if let Some(message) = broken {
            return Err(PipelineError::new(ErrorClass::Definite, message));
        }
        let read = result.map_err(|e| PipelineError::caused(ErrorClass::Transient, format!("worker {worker}: reading failed"), e))?;
        if read > 0 && !self.read_any {
            self.read_any = true;
            tracing::debug!(worker = self.worker, "first records read");
        }
        Ok(read)
    }

    /// Weighs reading against the broker's end offsets (at most every `check_every`). A
    /// partition is caught up when the broker's end, asked after its last record, is reached
    /// (an end-of-partition event may never come if the client stalls right before it). It is
    /// never idle while the broker holds records beyond its position: an idle partition follows
    /// the others upward, so its unread records would be committed past and turned late when
    /// read. Returns the progress measured (empty if not measured now).
    pub(super) fn measure(&mut self) -> Vec<Progress> {
        if !self.reads_now() || self.last_check.elapsed() < self.check_every {
            return Vec::new();
        }
        self.last_check = Instant::now();
        let progress = self.reader.progress();
        let log_state = self.last_state_log.elapsed() >= STATE_LOG_EVERY && tracing::enabled!(tracing::Level::DEBUG);
        if log_state {
            self.last_state_log = Instant::now();
        }
        for pr in &progress {
            let Some(i) = self.find(&pr.id) else { continue };
            let p = &mut self.parts[i];
            p.end = pr.end.or(p.end);
            if log_state {
                let client = self.reader.describe(pr.id);
                tracing::debug!(worker = self.worker, partition = %pr.id, position = pr.position.get(), end = ?pr.end.map(Offset::get), fresh = pr.fresh, caught_up = p.caught_up, held = p.held, epoch = p.clock.epoch().get(), %client, "partition state");
            }
            if p.finished {
                continue;
            }
            if pr.caught() {
                p.caught_up = true;
                if p.stop.is_some() {
                    p.finished = true;
                }
            } else if p.caught_up && pr.lag() > 0 {
                tracing::debug!(worker = self.worker, partition = %pr.id, position = pr.position.get(), end = ?pr.end.map(Offset::get), "caught up, but the broker holds more: not idle");
                p.caught_up = false;
            }
        }
        progress
    }

    /// Finished partitions are paused in the reader (once), so that it stops fetching them.
    pub(super) fn pause_finished(&mut self) {
        for p in &mut self.parts {
            if p.finished && p.stop.is_some() && !p.caught_up {
                p.caught_up = true;
                self.reader.pause(p.clock.id());
            }
        }
    }

    /// This worker's and the cluster's least active and greatest idle epochs.
    pub(super) fn view(&self) -> View {
        let local_active = self.parts.iter().filter(|p| !p.caught_up && !p.finished).map(|p| p.clock.epoch()).min();
        let local_idle = self.parts.iter().filter(|p| p.caught_up && !p.finished && p.clock.watermark().is_some()).map(|p| p.clock.epoch()).max();
        View {
            local_active,
            local_idle,
            global_active: self.others.values().filter_map(|o| o.active).chain(local_active).min(),
            global_idle: self.others.values().filter_map(|o| o.idle).chain(local_idle).max(),
            least_active_worker: self
                .others
                .values()
                .filter_map(|o| o.active.map(|a| (a, o.worker)))
                .chain(local_active.map(|a| (a, self.worker)))
                .min()
                .map(|(_, w)| w),
        }
    }

    /// Idle partitions follow the least epoch of the active ones, cluster-wide; when every
    /// partition is idle, the greatest epoch of those that have seen data (an empty partition
    /// has no watermark of its own and must not hold anything back). The greatest, because that
    /// is where the idle ones would have followed the last active partition to, had it been seen
    /// active: a partition that reads a whole burst and its end within one activation is never
    /// seen active, and with the least, partitions that stopped would hold the frontier forever.
    pub(super) fn follow_idle(&mut self, view: View) {
        if let Some(g) = view.global_active.or(view.global_idle) {
            for p in self.parts.iter_mut().filter(|p| p.caught_up && !p.finished) {
                p.clock.advance_idle(g);
            }
        }
    }

    /// Holds back the partitions more than [`READ_AHEAD_EPOCHS`] ahead of the cluster's least
    /// active epoch, and releases them when it catches up; long holds are logged at INFO.
    pub(super) fn bound_read_ahead(&mut self, view: View) {
        for p in self.parts.iter_mut().filter(|p| !p.finished) {
            let held = view.global_active.is_some_and(|g| p.clock.epoch() > g.saturating_add(READ_AHEAD_EPOCHS));
            let id = p.clock.id();
            if held != p.held {
                p.held = held;
                tracing::debug!(worker = self.worker, partition = %id, held, epoch = p.clock.epoch().get(), least_active = view.global_active.map(Epoch::get), "read-ahead bound");
                self.reader.hold(id, held);
                if held {
                    self.holds += 1;
                    p.held_since = Some((Instant::now(), false));
                } else if let Some((since, true)) = p.held_since.take() {
                    tracing::info!(worker = self.worker, partition = %id, after = ?since.elapsed(), epoch = p.clock.epoch().get(), least_active = view.global_active.map(Epoch::get), "read-ahead hold released");
                }
            } else if let Some((since, reported @ false)) = p.held_since.as_mut()
                && since.elapsed() >= HOLD_REPORTED_AFTER
            {
                *reported = true;
                tracing::info!(
                    worker = self.worker,
                    partition = %id,
                    epoch = p.clock.epoch().get(),
                    least_active = view.global_active.map(Epoch::get),
                    least_active_worker = ?view.least_active_worker,
                    bound = READ_AHEAD_EPOCHS,
                    holds_so_far = self.holds,
                    "read-ahead hold: this partition is more epochs ahead of the cluster's least active epoch than the bound; it is read again when that epoch advances"
                );
            }
        }
    }

    /// The stall guard (see [`super::stall`]) on the progress just measured: a stalled client
    /// is re-created; one stalled beyond the give-up bound is an error.
    pub(super) fn guard_stalls(&mut self, progress: &[Progress], view: View) -> Result<(), PipelineError> {
        if progress.is_empty() {
            return Ok(());
        }
        let (parts, index) = (&self.parts, &self.index);
        let find = |id: &PartitionId| index.binary_search_by(|(p, _)| p.cmp(id)).ok().map(|k| index[k].1);
        let asked = |id: PartitionId| find(&id).is_some_and(|i| !parts[i].held && !parts[i].finished);
        match self.guard.check(Instant::now(), progress, asked) {
            Verdict::Fine => Ok(()),
            Verdict::Recover(stalled) => {
                let holding_back = self.parts.iter().filter(|p| p.held).count();
                for s in &stalled {
                    let id = s.progress.id;
                    let epoch = self.find(&id).map(|i| self.parts[i].clock.epoch());
                    tracing::warn!(
                        worker = self.worker,
                        partition = %id,
                        position = s.progress.position.get(),
                        end = ?s.progress.end.map(Offset::get),
                        lag = s.progress.lag(),
                        starved = ?s.starved,
                        recoveries = s.recoveries,
                        held = false,
                        epoch = epoch.map(Epoch::get),
                        least_active = view.global_active.map(Epoch::get),
                        holding_back,
                        client = %self.reader.describe(id),
                        "partition stalled: the broker holds records beyond its position, none arrived; re-creating the Kafka client at its next offset"
                    );
                }
                if let Err(e) = self.reader.recover() {
                    tracing::warn!(worker = self.worker, error = %e, "re-creating the Kafka client failed; trying again after the next stall timeout");
                }
                Ok(())
            }
            Verdict::GiveUp(s) => Err(PipelineError::new(
                ErrorClass::Transient,
                format!(
                    "worker {}: partition {} stalled: the broker holds {} records beyond offset {} and none arrived for {:?}, despite {} re-created clients (--stall-exit {:?}); \
                     stopping so that the cluster is restarted and resumes from the last manifest; client: {}",
                    self.worker,
                    s.progress.id,
                    s.progress.lag(),
                    s.progress.position,
                    s.starved,
                    s.recoveries,
                    self.stall.give_up,
                    self.reader.describe(s.progress.id)
                ),
            )),
        }
    }

    /// This worker's announcement, when it changed. It is made before the capabilities may be
    /// dropped: a worker whose partitions all finished must say "nothing active, nothing idle",
    /// or the others keep its last announcement, whose least active epoch may lie far behind,
    /// and hold their partitions beyond the read-ahead bound of it forever.
    pub(super) fn announcement(&mut self, view: View) -> Option<Announce> {
        let now = (view.local_active, view.local_idle);
        if self.last_announced == Some(now) {
            return None;
        }
        self.announce_seq += 1;
        self.last_announced = Some(now);
        Some(Announce { worker: self.worker, seq: self.announce_seq, active: view.local_active, idle: view.local_idle })
    }

    /// Where the capability goes from `cap`: to the least epoch of the unfinished partitions, or
    /// past everything sent once all are finished.
    pub(super) fn advance(&self, cap: Epoch) -> Advance {
        let all_finished = self.parts.iter().all(|p| p.finished);
        let to = if all_finished {
            self.max_sent.max(cap)
        } else {
            self.parts.iter().filter(|p| !p.finished).map(|p| p.clock.epoch()).min().unwrap_or(cap).max(cap)
        };
        Advance { to, all_finished }
    }

    /// Resume states of every partition valid for committing through any epoch in
    /// `[from, to]` (`to = None`: any epoch ≥ `from`); states the committer no longer needs
    /// (through `to`) are pruned.
    pub(super) fn resume_states(&mut self, from: Epoch, to: Option<Epoch>) -> Vec<ResumeState> {
        let states = self.parts.iter().map(|p| p.clock.resume_state_range(from, to)).collect();
        if let Some(hi) = to {
            for p in &mut self.parts {
                p.clock.prune(hi);
            }
        }
        states
    }

    /// The chunks of rows that filled up, with their epochs.
    pub(super) fn take_ready(&mut self) -> Vec<(Epoch, Chunk)> {
        self.batches.take_ready().collect()
    }
}

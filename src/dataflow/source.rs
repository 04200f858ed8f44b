//! `reclock_source`: Kafka partitions → Arrow batches stamped with their epoch.
//!
//! In: a [`Reader`] over the partitions this worker owns, their [`PartitionClock`]s (resumed
//! from the latest manifest), and the other workers' announcements of their least active
//! epoch. Out: [`Chunk`]s of rows at their epoch (decoded values appended straight into the
//! builders of their objects, see [`super::batches`]), resume states for the committer, and
//! this worker's own announcements. Guarantees: the data output's capability sits at the least epoch of the
//! owned partitions that are still active, so the cluster frontier *is* the watermark; idle
//! partitions follow the cluster's least active epoch (recorded as idle advances) so they never
//! stall it; each time the capability advances past `e`, the resume states for committing `e`
//! are sent, after every row of the epochs below the new capability; when every owned partition is finished (stop offset reached: `--until-caught-up`
//! or shutdown), final states are sent and all capabilities dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};

use super::batches::EpochBatches;
use super::{Announce, Chunk, Report};
use crate::contract::schema::Provenance;
use crate::contract::{DecodeOptions, decode_borrowed};
use crate::epoch::Epoch;
use crate::ownership::PartitionId;
use crate::reclock::{Class, PartitionClock};
use crate::source::stall::{StallConfig, StallGuard, Verdict};
use crate::source::{Event, Progress, Reader};

/// One owned partition: its clock and where reading stops (if anywhere).
pub struct OwnedPartition {
    /// Reclocking state.
    pub clock: PartitionClock,
    /// Stop before this offset (`--until-caught-up`: the high watermark at start).
    pub stop: Option<i64>,
}

/// Everything the source operator needs.
pub struct SourceSpec {
    /// This worker's index.
    pub worker: usize,
    /// Epochs below this are committed; nothing is sent below it.
    pub committed_below: Epoch,
    /// The owned partitions.
    pub partitions: Vec<OwnedPartition>,
    /// Where records come from.
    pub reader: Box<dyn Reader>,
    /// How values are decoded.
    pub decode: DecodeOptions,
    /// Event times later than the wall clock plus this are dead-lettered as implausible
    /// (`--max-future`); `None`: no bound.
    pub max_future: Option<Duration>,
    /// Set on SIGTERM/SIGINT: stop reading, seal and commit what was read.
    pub shutdown: Arc<AtomicBool>,
    /// Events read per activation before yielding to other operators.
    pub budget: usize,
    /// Where decoded rows are built into the batches of their objects.
    pub batches: EpochBatches,
    /// When a partition that delivers nothing although the broker has records for it counts as
    /// stalled (see [`crate::source::stall`]).
    pub stall: StallConfig,
    /// Ends the process on an error the cluster cannot continue after ([`super::fatal`]).
    pub fail: fn(&str) -> !,
}

struct Part {
    clock: PartitionClock,
    stop: Option<i64>,
    caught_up: bool,
    finished: bool,
    /// Not read for now: too far ahead of the cluster's least active epoch.
    held: bool,
    /// Since when it is held, and whether that was reported (after [`HOLD_REPORTED_AFTER`]).
    held_since: Option<(Instant, bool)>,
}

/// How often each partition's reading state is logged at DEBUG.
const STATE_LOG_EVERY: Duration = Duration::from_secs(15);

/// A read-ahead hold lasting longer than this is logged at INFO, with its release.
pub const HOLD_REPORTED_AFTER: Duration = Duration::from_secs(5);

/// How many epochs a partition may read ahead of the least epoch of the active partitions,
/// cluster-wide. In a backlog, partitions are fetched at uneven speeds; without a bound the
/// fastest ones run ahead by hundreds of epochs, and every epoch between the frontier and them
/// holds open files (measured: 116 epochs, 900 open files per worker, 650 MiB, reading 5
/// million records). A held partition is simply not read: librdkafka's prefetch queue for it
/// fills and fetching pauses. The least active partition is never held, so reading always
/// progresses; live streams, whose partitions advance together, never reach the bound.
pub const READ_AHEAD_EPOCHS: Epoch = 8;

impl Part {
    fn check_finished(&mut self) -> bool {
        if !self.finished && self.stop.is_some_and(|s| self.clock.next_offset() >= s) {
            self.finished = true;
            return true;
        }
        false
    }
}

/// The source's outputs: chunks of rows, resume-state reports, announcements.
pub type SourceOutputs<'s> = (Stream<'s, Epoch, Vec<Chunk>>, Stream<'s, Epoch, Vec<Report>>, Stream<'s, Epoch, Vec<Announce>>);

/// Builds the source operator.
pub fn reclock_source<'s>(scope: Scope<'s, Epoch>, spec: SourceSpec, announcements: Stream<'s, Epoch, Vec<Announce>>) -> SourceOutputs<'s> {
    let mut builder = OperatorBuilder::new("ReclockSource".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address.clone());
    let mut input = builder.new_input(announcements, Pipeline);
    let (chunks_out, chunks) = builder.new_output();
    let (reports_out, reports) = builder.new_output();
    let (announce_out, announced) = builder.new_output();
    let mut chunks_out: OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Chunk>>> = OutputBuilder::from(chunks_out);
    let mut reports_out: OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Report>>> = OutputBuilder::from(reports_out);
    let mut announce_out: OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Announce>>> = OutputBuilder::from(announce_out);

    builder.build(move |mut caps| {
        let SourceSpec { worker, committed_below, partitions, mut reader, decode: mut decode_opts, max_future, shutdown, budget, mut batches, stall, fail } = spec;
        let mut announce_cap = caps.pop();
        let mut report_cap = caps.pop();
        let mut data_cap = caps.pop();
        for c in [&mut data_cap, &mut report_cap, &mut announce_cap].into_iter().flatten() {
            c.downgrade(&committed_below);
        }
        let mut parts: Vec<Part> =
            partitions.into_iter().map(|p| Part { clock: p.clock, stop: p.stop, caught_up: false, finished: false, held: false, held_since: None }).collect();
        // Sorted, for a binary search per record (cheaper than hashing the id).
        let mut index: Vec<(PartitionId, usize)> = parts.iter().enumerate().map(|(i, p)| (p.clock.id(), i)).collect();
        index.sort_unstable();
        let find = move |id: &PartitionId| index.binary_search_by(|(p, _)| p.cmp(id)).ok().map(|k| index[k].1);
        for p in &mut parts {
            if p.check_finished() {
                reader.pause(p.clock.id());
            }
        }
        let mut others: HashMap<usize, Announce> = HashMap::new();
        let mut announce_seq: u64 = 0;
        let mut last_announced: Option<(Option<Epoch>, Option<Epoch>)> = None;
        let mut max_sent: Epoch = committed_below;
        let mut stopping = false;
        let mut read_any = false;
        let mut guard = StallGuard::new(stall);
        let check_every = (stall.timeout / 4).min(Duration::from_secs(1));
        let mut last_check = Instant::now();
        let mut progress: Vec<Progress> = Vec::new();
        let mut holds: u64 = 0;
        let mut last_state_log = Instant::now();

        move |_frontiers| {
            // Announcements of the other workers: keep the newest per worker.
            input.for_each(|_cap, data| {
                for a in data.drain(..) {
                    if a.worker != worker && others.get(&a.worker).is_none_or(|o| a.seq > o.seq) {
                        others.insert(a.worker, a);
                    }
                }
            });
            let Some(cap) = data_cap.as_ref().map(|c| *c.time()) else { return };

            if !stopping && shutdown.load(Ordering::Relaxed) {
                stopping = true;
                tracing::info!(worker, "shutdown requested: sealing what was read");
                for p in &mut parts {
                    p.stop = Some(p.stop.map_or(p.clock.next_offset(), |s| s.min(p.clock.next_offset())));
                    p.check_finished();
                }
            }

            // Read.
            let started = Instant::now();
            if let Some(ahead) = max_future {
                decode_opts.not_after = wall_clock_micros().saturating_add(i64::try_from(ahead.as_micros()).unwrap_or(i64::MAX));
            }
            let mut read = 0;
            if !stopping {
                let result = reader.poll(budget, &mut |event| match event {
                    Event::Record { id, offset, payload } => {
                        let Some(i) = find(&id) else { return };
                        let p = &mut parts[i];
                        if p.finished || p.stop.is_some_and(|s| offset >= s) {
                            return;
                        }
                        p.caught_up = false;
                        let decoded = decode_borrowed(id.stream, payload, &decode_opts);
                        let event_time = decoded.as_ref().ok().map(|r| r.timestamp());
                        if let Some(class) = p.clock.observe(offset, event_time) {
                            // Idle partitions were lifted to at least the capability, and after a
                            // restart everything below it is skipped as committed: a time below
                            // the capability would be a bug that breaks exactly-once. Stop.
                            if class.epoch() < cap {
                                fail(&format!("internal error: {id} offset {offset} classified at epoch {} below the capability {cap}", class.epoch()));
                            }
                            let epoch = class.epoch();
                            match decoded {
                                Ok(record) => {
                                    let late = matches!(class, Class::Late(_));
                                    batches.record(epoch, &record, Provenance { partition: id.partition, offset, late });
                                }
                                Err(e) => batches.dead(epoch, id.stream, id.partition, offset, &e, payload),
                            }
                            max_sent = max_sent.max(epoch);
                        }
                        p.check_finished();
                    }
                    Event::Caught { id } => {
                        if let Some(i) = find(&id) {
                            let p = &mut parts[i];
                            p.caught_up = true;
                            // At the end of the partition, a stop offset taken earlier is reached
                            // even if the last offsets held no records (transaction markers).
                            if p.stop.is_some() {
                                p.finished = true;
                            }
                        }
                    }
                });
                match result {
                    Ok(n) if n > 0 && !read_any => {
                        read_any = true;
                        read = n;
                        tracing::debug!(worker, "first records read");
                    }
                    Ok(n) => read = n,
                    Err(e) => fail(&format!("worker {worker}: reading failed: {e}")),
                }
            }

            // Where reading stands against the broker. A partition is caught up when the broker's
            // end, asked after its last record, is reached (an end-of-partition event may never
            // come if the client stalls right before it). It is never idle while the broker
            // holds records beyond its position: an idle partition follows the others upward, so
            // its unread records would be committed past and turned late when read.
            progress.clear();
            if !stopping && last_check.elapsed() >= check_every {
                last_check = Instant::now();
                progress = reader.progress();
                if last_state_log.elapsed() >= STATE_LOG_EVERY && tracing::enabled!(tracing::Level::DEBUG) {
                    last_state_log = Instant::now();
                    for pr in &progress {
                        let Some(p) = find(&pr.id).map(|i| &parts[i]) else { continue };
                        tracing::debug!(
                            worker,
                            partition = %pr.id,
                            position = pr.position,
                            end = ?pr.end,
                            fresh = pr.fresh,
                            caught_up = p.caught_up,
                            held = p.held,
                            epoch = p.clock.epoch(),
                            client = %reader.describe(pr.id),
                            "partition state"
                        );
                    }
                }
                for pr in &progress {
                    let Some(p) = find(&pr.id).map(|i| &mut parts[i]) else { continue };
                    if p.finished {
                        continue;
                    }
                    if pr.caught() {
                        p.caught_up = true;
                        if p.stop.is_some() {
                            p.finished = true;
                        }
                    } else if p.caught_up && pr.lag() > 0 {
                        tracing::debug!(worker, partition = %pr.id, position = pr.position, end = ?pr.end, "caught up, but the broker holds more: not idle");
                        p.caught_up = false;
                    }
                }
            }
            for p in &mut parts {
                if p.finished && p.stop.is_some() && !p.caught_up {
                    p.caught_up = true;
                    reader.pause(p.clock.id());
                }
            }

            // Send the chunks that filled up, at their epochs.
            if let Some(c) = data_cap.as_ref() {
                let mut out = chunks_out.activate();
                for (t, chunk) in batches.take_ready() {
                    out.session(&c.delayed(&t)).give(chunk);
                }
            }

            // Idle partitions follow the least epoch of the active ones, cluster-wide; when
            // every partition is idle, the greatest epoch of those that have seen data (an empty
            // partition has no watermark of its own and must not hold anything back). The
            // greatest, because that is where the idle ones would have followed the last active
            // partition to, had it been seen active: a partition that reads a whole burst and
            // its end within one activation is never seen active, and with the least, partitions
            // that stopped would hold the frontier forever (tests/run_cluster.rs, under load).
            let local_active = parts.iter().filter(|p| !p.caught_up && !p.finished).map(|p| p.clock.epoch()).min();
            let local_idle = parts.iter().filter(|p| p.caught_up && !p.finished && p.clock.watermark().is_some()).map(|p| p.clock.epoch()).max();
            let global_active = others.values().filter_map(|o| o.active).chain(local_active).min();
            let global_idle = others.values().filter_map(|o| o.idle).chain(local_idle).max();
            if let Some(g) = global_active.or(global_idle) {
                for p in parts.iter_mut().filter(|p| p.caught_up && !p.finished) {
                    p.clock.advance_idle(g);
                }
            }
            // Bound the read-ahead (see READ_AHEAD_EPOCHS).
            let least_active_worker = others.values().filter_map(|o| o.active.map(|a| (a, o.worker))).chain(local_active.map(|a| (a, worker))).min().map(|(_, w)| w);
            for p in parts.iter_mut().filter(|p| !p.finished) {
                let held = global_active.is_some_and(|g| p.clock.epoch() > g.saturating_add(READ_AHEAD_EPOCHS));
                let id = p.clock.id();
                if held != p.held {
                    p.held = held;
                    tracing::debug!(worker, partition = %id, held, epoch = p.clock.epoch(), least_active = ?global_active, "read-ahead bound");
                    reader.hold(id, held);
                    if held {
                        holds += 1;
                        p.held_since = Some((Instant::now(), false));
                    } else if let Some((since, true)) = p.held_since.take() {
                        tracing::info!(worker, partition = %id, after = ?since.elapsed(), epoch = p.clock.epoch(), least_active = ?global_active, "read-ahead hold released");
                    }
                } else if let Some((since, reported @ false)) = p.held_since.as_mut()
                    && since.elapsed() >= HOLD_REPORTED_AFTER
                {
                    *reported = true;
                    tracing::info!(
                        worker,
                        partition = %id,
                        epoch = p.clock.epoch(),
                        least_active = ?global_active,
                        least_active_worker = ?least_active_worker,
                        bound = READ_AHEAD_EPOCHS,
                        holds_so_far = holds,
                        "read-ahead hold: this partition is more epochs ahead of the cluster's least active epoch than the bound; it is read again when that epoch advances"
                    );
                }
            }

            // The stall guard (see crate::source::stall).
            if !progress.is_empty() {
                let asked = |id: PartitionId| find(&id).is_some_and(|i| !parts[i].held && !parts[i].finished);
                match guard.check(Instant::now(), &progress, asked) {
                    Verdict::Fine => {}
                    Verdict::Recover(stalled) => {
                        let holding_back = parts.iter().filter(|p| p.held).count();
                        for s in &stalled {
                            let id = s.progress.id;
                            let epoch = find(&id).map(|i| parts[i].clock.epoch());
                            tracing::warn!(
                                worker,
                                partition = %id,
                                position = s.progress.position,
                                end = ?s.progress.end,
                                lag = s.progress.lag(),
                                starved = ?s.starved,
                                recoveries = s.recoveries,
                                held = false,
                                epoch = ?epoch,
                                least_active = ?global_active,
                                holding_back,
                                client = %reader.describe(id),
                                "partition stalled: the broker holds records beyond its position, none arrived; re-creating the Kafka client at its next offset"
                            );
                        }
                        if let Err(e) = reader.recover() {
                            tracing::warn!(worker, error = %e, "re-creating the Kafka client failed; trying again after the next stall timeout");
                        }
                    }
                    Verdict::GiveUp(s) => fail(&format!(
                        "worker {worker}: partition {} stalled: the broker holds {} records beyond offset {} and none arrived for {:?}, despite {} re-created clients (--stall-exit {:?}); \
                         stopping so that the cluster is restarted and resumes from the last manifest; client: {}",
                        s.progress.id,
                        s.progress.lag(),
                        s.progress.position,
                        s.starved,
                        s.recoveries,
                        stall.give_up,
                        reader.describe(s.progress.id)
                    )),
                }
            }

            // Announce before the capabilities may be dropped below: a worker whose partitions
            // all finished announces "nothing active, nothing idle" this way. Otherwise the others
            // keep its last announcement, whose least active epoch may be far behind, and hold
            // their partitions beyond the read-ahead bound of it forever (tests/faults.rs,
            // sigterm, hung once in CI).
            if last_announced != Some((local_active, local_idle))
                && let Some(ac) = announce_cap.as_ref()
            {
                announce_seq += 1;
                announce_out.activate().session(ac).give(Announce { worker, seq: announce_seq, active: local_active, idle: local_idle });
                last_announced = Some((local_active, local_idle));
            }

            // Advance the capability to the least epoch of the unfinished partitions.
            let all_finished = parts.iter().all(|p| p.finished);
            let new_cap =
                if all_finished { max_sent.max(cap) } else { parts.iter().filter(|p| !p.finished).map(|p| p.clock.epoch()).min().unwrap_or(cap).max(cap) };
            if new_cap > cap || all_finished {
                // Every row of the epochs the capability passes goes out first, at its epoch.
                if let Some(c) = data_cap.as_ref() {
                    let mut out = chunks_out.activate();
                    for (t, chunk) in batches.take_below((!all_finished).then_some(new_cap)) {
                        out.session(&c.delayed(&t)).give(chunk);
                    }
                }
                // States valid for committing through any epoch in [cap, new_cap - 1]: every
                // record read from now on gets an epoch ≥ new_cap (see PartitionClock).
                // A finished worker covers [cap, max_sent - 1] like any jump, then hands out its
                // final states from max_sent on: nothing it sent is later, so they resume at the
                // end of what was read.
                let final_from = new_cap.max(cap);
                let to = if all_finished { (final_from > cap).then(|| final_from - 1) } else { Some(new_cap - 1) };
                if let Some(hi) = to {
                    let states = parts.iter().map(|p| p.clock.resume_state_range(cap, Some(hi))).collect::<Vec<_>>();
                    for p in &mut parts {
                        p.clock.prune(hi);
                    }
                    if let Some(rc) = report_cap.as_ref() {
                        reports_out.activate().session(rc).give(Report::Resume { from: cap, to, states });
                    }
                }
                if all_finished && let Some(rc) = report_cap.as_ref() {
                    let states = parts.iter().map(|p| p.clock.resume_state_range(final_from, None)).collect::<Vec<_>>();
                    let at = rc.delayed(&final_from);
                    reports_out.activate().session(&at).give(Report::Resume { from: final_from, to: None, states });
                }
                if all_finished {
                    tracing::debug!(worker, epoch = cap, "all partitions finished");
                    data_cap = None;
                    report_cap = None;
                    announce_cap = None;
                    return;
                }
                for c in [&mut data_cap, &mut report_cap, &mut announce_cap].into_iter().flatten() {
                    c.downgrade(&new_cap);
                }
            }

            if read > 0 || started.elapsed() > Duration::from_millis(50) {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(20));
            }
        }
    });
    (chunks, reports, announced)
}

/// Microseconds since the Unix epoch, by the wall clock.
fn wall_clock_micros() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;

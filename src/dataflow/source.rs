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
use crate::source::{Event, Reader};

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
}

struct Part {
    clock: PartitionClock,
    stop: Option<i64>,
    caught_up: bool,
    finished: bool,
    /// Not read for now: too far ahead of the cluster's least active epoch.
    held: bool,
}

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
        let SourceSpec { worker, committed_below, partitions, mut reader, decode: mut decode_opts, max_future, shutdown, budget, mut batches } = spec;
        let mut announce_cap = caps.pop();
        let mut report_cap = caps.pop();
        let mut data_cap = caps.pop();
        for c in [&mut data_cap, &mut report_cap, &mut announce_cap].into_iter().flatten() {
            c.downgrade(&committed_below);
        }
        let mut parts: Vec<Part> =
            partitions.into_iter().map(|p| Part { clock: p.clock, stop: p.stop, caught_up: false, finished: false, held: false }).collect();
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
                                super::fatal(&format!("internal error: {id} offset {offset} classified at epoch {} below the capability {cap}", class.epoch()));
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
                    Err(e) => super::fatal(&format!("worker {worker}: reading failed: {e}")),
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
            for p in parts.iter_mut().filter(|p| !p.finished) {
                let held = global_active.is_some_and(|g| p.clock.epoch() > g.saturating_add(READ_AHEAD_EPOCHS));
                if held != p.held {
                    p.held = held;
                    tracing::debug!(worker, partition = %p.clock.id(), held, epoch = p.clock.epoch(), least_active = ?global_active, "read-ahead bound");
                    reader.hold(p.clock.id(), held);
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
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use timely::dataflow::operators::vec::Broadcast;
    use timely::dataflow::operators::{ConnectLoop, Feedback};

    use super::*;
    use crate::contract::timestamp::{MICROS_PER_SEC, format_naive};
    use crate::contract::{Micros, Stream as DataStream};
    use crate::epoch::EpochClock;
    use crate::source::Event;

    const WINDOW: Micros = 60 * MICROS_PER_SEC;
    const START: Micros = 1_740_823_200 * MICROS_PER_SEC; // 2025-03-01T10:00:00Z

    /// Two partitions read at the same pace in records: `sparse` advances one epoch per record,
    /// `dense` one epoch per 20 records. Holds back what the source asks to, and records the
    /// largest lead of `sparse` over `dense` in event time, in epochs, when it delivers.
    struct Uneven {
        next: [i64; 2],
        records: i64,
        held: [bool; 2],
        most_ahead: Rc<Cell<i64>>,
    }

    impl Uneven {
        fn id(i: usize) -> PartitionId {
            PartitionId { stream: DataStream::Gps, partition: i as i32 }
        }
        fn time(i: usize, offset: i64) -> Micros {
            START + offset * if i == 0 { WINDOW } else { WINDOW / 20 }
        }
        /// The GPS record at `offset` of partition `i`.
        fn value(i: usize, offset: i64) -> String {
            format!(
                r#"{{"id": "{i:08x}-0000-4000-8000-{offset:012x}", "deviceId": "v-{i}", "timestamp": "{}", "speed": 50.0, "direction": "North", "vehicleType": "private"}}"#,
                format_naive(Self::time(i, offset))
            )
        }
    }

    impl Reader for Uneven {
        fn poll(&mut self, _budget: usize, f: &mut dyn FnMut(Event<'_>)) -> Result<usize, crate::source::SourceError> {
            let mut n = 0;
            for i in 0..2 {
                let mut taken = 0;
                while !self.held[i] && taken < 64 && self.next[i] < self.records {
                    let offset = self.next[i];
                    f(Event::Record { id: Self::id(i), offset, payload: Self::value(i, offset).as_bytes() });
                    self.next[i] += 1;
                    taken += 1;
                }
                n += taken;
            }
            // While `dense` has records left (then `sparse` may run on alone).
            if self.next[1] < self.records {
                let lead = (Self::time(0, self.next[0] - 1) - Self::time(1, self.next[1] - 1)) / WINDOW;
                self.most_ahead.set(self.most_ahead.get().max(lead));
            }
            Ok(n)
        }

        fn pause(&mut self, _id: PartitionId) {}

        fn hold(&mut self, id: PartitionId, held: bool) {
            self.held[id.partition as usize] = held;
        }
    }

    /// A source for `worker` reading `parts` (each from offset 0 up to its stop offset).
    fn test_spec(worker: usize, clock: EpochClock, parts: Vec<(PartitionId, i64)>, reader: Box<dyn Reader>) -> SourceSpec {
        SourceSpec {
            worker,
            committed_below: 0,
            partitions: parts.into_iter().map(|(id, stop)| OwnedPartition { clock: PartitionClock::resume(id, clock, None, 0, 0), stop: Some(stop) }).collect(),
            reader,
            decode: DecodeOptions::default(),
            max_future: None,
            shutdown: Arc::new(AtomicBool::new(false)),
            budget: 4096,
            batches: EpochBatches::new(clock, 1024, ""),
        }
    }

    /// Runs the source alone, with its announcement loop, to the end, counting the rows it
    /// sends into `delivered`; fails if it has not finished within 60 s (a partition held forever).
    fn run_source(worker: &mut timely::worker::Worker, spec: SourceSpec, delivered: Arc<std::sync::atomic::AtomicUsize>) {
        worker.dataflow::<Epoch, _, _>(|scope| {
            let (handle, announcements) = scope.feedback::<Vec<Announce>>(1);
            let (chunks, _states, announced) = reclock_source(scope, spec, announcements);
            announced.broadcast().connect_loop(handle);
            use timely::dataflow::operators::Inspect;
            chunks.inspect(move |c: &Chunk| {
                delivered.fetch_add(c.batch.num_rows(), Ordering::Relaxed);
            });
        });
        let started = Instant::now();
        while worker.step_or_park(Some(Duration::from_millis(5))) {
            assert!(started.elapsed() < Duration::from_secs(60), "worker {} did not finish: a held partition was never released", worker.index());
        }
    }

    #[test]
    fn a_partition_far_ahead_in_event_time_is_held_back_and_every_record_still_arrives() {
        let records = 2000;
        let (most_ahead, delivered) = timely::execute_directly(move |worker| {
            let most_ahead = Rc::new(Cell::new(0));
            let delivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let clock = EpochClock::new(WINDOW, 2 * WINDOW);
            let reader = Uneven { next: [0, 0], records, held: [false; 2], most_ahead: most_ahead.clone() };
            let spec = test_spec(0, clock, (0..2).map(|i| (Uneven::id(i), records)).collect(), Box::new(reader));
            run_source(worker, spec, delivered.clone());
            (most_ahead.get(), delivered.load(Ordering::Relaxed))
        });
        assert_eq!(delivered, 2 * records as usize, "every record of both partitions arrives");
        // Without the bound the sparse partition runs ~1,900 epochs ahead of the dense one; with
        // it, at most the bound, one poll's worth (64 epochs) and the lateness.
        assert!(most_ahead <= READ_AHEAD_EPOCHS as i64 + 64 + 3, "the sparse partition ran {most_ahead} epochs ahead");
        assert!(most_ahead > READ_AHEAD_EPOCHS as i64, "the test must make one partition run ahead ({most_ahead})");
    }

    /// One partition of [`Uneven`]'s two, for a worker of its own.
    struct One {
        i: usize,
        next: i64,
        records: i64,
        held: bool,
    }

    impl Reader for One {
        fn poll(&mut self, _budget: usize, f: &mut dyn FnMut(Event<'_>)) -> Result<usize, crate::source::SourceError> {
            let mut taken = 0;
            while !self.held && taken < 64 && self.next < self.records {
                let (i, offset) = (self.i, self.next);
                f(Event::Record { id: Uneven::id(i), offset, payload: Uneven::value(i, offset).as_bytes() });
                self.next += 1;
                taken += 1;
            }
            Ok(taken)
        }

        fn pause(&mut self, _id: PartitionId) {}

        fn hold(&mut self, _id: PartitionId, held: bool) {
            self.held = held;
        }
    }

    #[test]
    fn a_worker_that_finishes_early_does_not_hold_back_the_others() {
        // Worker 0 reads 100 dense records (5 epochs) in two polls and finishes; worker 1's
        // sparse partition runs one epoch per record, far past the read-ahead bound of worker 0's
        // last active epoch. Worker 0 must say it holds nothing back any more, or worker 1's
        // partition stays held forever (it did: tests/faults.rs, sigterm, hung in CI).
        let records = [500i64, 100];
        let delivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let total = delivered.clone();
        timely::execute(timely::Config::process(2), move |worker| {
            let w = worker.index();
            let i = 1 - w;
            let clock = EpochClock::new(WINDOW, 2 * WINDOW);
            let spec = test_spec(w, clock, vec![(Uneven::id(i), records[i])], Box::new(One { i, next: 0, records: records[i], held: false }));
            run_source(worker, spec, total.clone());
        })
        .expect("timely runs")
        .join()
        .into_iter()
        .for_each(|r| r.expect("a worker failed"));
        assert_eq!(delivered.load(Ordering::Relaxed), 600, "every record of both workers arrives");
    }
}

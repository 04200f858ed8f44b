//! Unit tests of the source operator with scripted readers.

use std::cell::Cell;
use std::rc::Rc;

use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{ConnectLoop, Feedback};

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::contract::timestamp::{MICROS_PER_SEC, format_naive};
use crate::contract::{EventTime, Stream as DataStream};
use crate::epoch::EpochClock;
use crate::error::{ErrorClass, PipelineError};
use crate::ownership::Offset;
use crate::ownership::PartitionId;
use crate::source::{Event, Progress};

const WINDOW: i64 = 60 * MICROS_PER_SEC;
const START: EventTime = EventTime(1_740_823_200 * MICROS_PER_SEC); // 2025-03-01T10:00:00Z

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
    fn time(i: usize, offset: i64) -> EventTime {
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
                f(Event::Record { id: Self::id(i), offset: Offset(offset), payload: Self::value(i, offset).as_bytes() });
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
        committed_below: Epoch::ZERO,
        partitions: parts
            .into_iter()
            .map(|(id, stop)| OwnedPartition { clock: PartitionClock::resume(id, clock, None, Offset::ZERO, Epoch::ZERO), stop: Some(Offset(stop)) })
            .collect(),
        reader,
        decode: DecodeOptions::default(),
        max_future: None,
        shutdown: Arc::new(AtomicBool::new(false)),
        budget: 4096,
        batches: EpochBatches::new(clock, 1024, ""),
        stall: StallConfig::default(),
        backpressure: Backpressure::default(),
        failure: Failure::default(),
    }
}

/// Rows the sources of a test sent, over all workers.
#[derive(Default)]
struct Tally {
    rows: AtomicUsize,
    late: AtomicUsize,
    /// Set when `rows` reaches `stop_at` (a shutdown, for tests with live partitions).
    shutdown: Arc<AtomicBool>,
    stop_at: AtomicUsize,
}

impl Tally {
    fn rows(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }
    fn late(&self) -> usize {
        self.late.load(Ordering::Relaxed)
    }
}

/// Runs the source alone, with its announcement loop, to the end or to its first error, counting
/// the rows it sends into `tally`; fails if it has not finished within `limit` (a partition held
/// forever). Returns the error the source stopped with, if any.
fn run_source_for(worker: &mut timely::worker::Worker, spec: SourceSpec, tally: Arc<Tally>, limit: Duration) -> Option<PipelineError> {
    let failure = spec.failure.clone();
    worker.dataflow::<Epoch, _, _>(|scope| {
        let (handle, announcements) = scope.feedback::<Vec<Announce>>(1);
        let read = scope.reclock(spec, announcements);
        read.announcements.broadcast().connect_loop(handle);
        use timely::dataflow::operators::Inspect;
        read.chunks.inspect(move |c: &Chunk| {
            let rows = tally.rows.fetch_add(c.batch.num_rows(), Ordering::Relaxed) + c.batch.num_rows();
            if c.key.kind == crate::lake::FileKind::Late {
                tally.late.fetch_add(c.batch.num_rows(), Ordering::Relaxed);
            }
            let stop_at = tally.stop_at.load(Ordering::Relaxed);
            if stop_at > 0 && rows >= stop_at {
                tally.shutdown.store(true, Ordering::Relaxed);
            }
        });
    });
    let started = Instant::now();
    while !failure.is_set() && worker.step_or_park(Some(Duration::from_millis(5))) {
        assert!(started.elapsed() < limit, "worker {} did not finish within {limit:?}: a partition was held or stalled for good", worker.index());
    }
    crate::dataflow::step_until_done_or_failed(worker, &failure, Duration::from_millis(5), &crate::observe::health().heartbeat(worker.index()));
    failure.take()
}

/// [`run_source_for`] within 60 s, which must end without an error.
fn run_source(worker: &mut timely::worker::Worker, spec: SourceSpec, tally: Arc<Tally>) {
    if let Some(e) = run_source_for(worker, spec, tally, Duration::from_secs(60)) {
        panic!("the source failed: {}", e.chain());
    }
}

#[test]
fn a_partition_far_ahead_in_event_time_is_held_back_and_every_record_still_arrives() {
    let records = 2000;
    let (most_ahead, delivered) = timely::execute_directly(move |worker| {
        let most_ahead = Rc::new(Cell::new(0));
        let delivered = Arc::new(Tally::default());
        let clock = EpochClock::new(WINDOW, 2 * WINDOW);
        let reader = Uneven { next: [0, 0], records, held: [false; 2], most_ahead: most_ahead.clone() };
        let spec = test_spec(0, clock, (0..2).map(|i| (Uneven::id(i), records)).collect(), Box::new(reader));
        run_source(worker, spec, delivered.clone());
        (most_ahead.get(), delivered.rows())
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
            f(Event::Record { id: Uneven::id(i), offset: Offset(offset), payload: Uneven::value(i, offset).as_bytes() });
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
    // partition stays held forever.
    let records = [500i64, 100];
    let delivered = Arc::new(Tally::default());
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
    assert_eq!(delivered.rows(), 600, "every record of both workers arrives");
}

/// A GPS record of partition `partition` at `offset`, at event time `time`.
fn gps(partition: i32, offset: i64, time: EventTime) -> String {
    format!(
        r#"{{"id": "{partition:08x}-0000-4000-8000-{offset:012x}", "deviceId": "v-{partition}", "timestamp": "{}", "speed": 50.0, "direction": "North", "vehicleType": "private"}}"#,
        format_naive(time)
    )
}

fn gps_id(partition: i32) -> PartitionId {
    PartitionId { stream: DataStream::Gps, partition }
}

/// Twenty records an epoch.
fn dense(offset: i64) -> EventTime {
    START + offset * (WINDOW / 20)
}

/// One epoch a record.
fn sparse(offset: i64) -> EventTime {
    START + offset * WINDOW
}

/// One partition whose client stops fetching: the broker holds `silent_at` records; the client
/// delivers them and an end-of-partition event (`eof_before_silence`) or not; then the broker
/// receives the rest up to `records`, but the client delivers nothing more until it is
/// re-created (`recover`) or, like librdkafka at its next metadata refresh, heals by itself
/// after `heals_after` of silence. Reports its progress as the Kafka reader does.
struct Stalling {
    partition: i32,
    time: fn(i64) -> EventTime,
    next: i64,
    records: i64,
    silent_at: i64,
    eof_before_silence: bool,
    silent_since: Option<Instant>,
    heals_after: Duration,
    recoveries: Arc<AtomicUsize>,
}

impl Stalling {
    fn silent(&self) -> bool {
        self.next >= self.silent_at && self.recoveries.load(Ordering::Relaxed) == 0 && self.silent_since.is_none_or(|s| s.elapsed() < self.heals_after)
    }
}

impl Reader for Stalling {
    fn poll(&mut self, _budget: usize, f: &mut dyn FnMut(Event<'_>)) -> Result<usize, crate::source::SourceError> {
        if self.silent() {
            return Ok(0);
        }
        let id = gps_id(self.partition);
        let mut n = 0;
        while n < 64 && self.next < self.records {
            f(Event::Record { id, offset: Offset(self.next), payload: gps(self.partition, self.next, (self.time)(self.next)).as_bytes() });
            self.next += 1;
            n += 1;
            if self.next == self.silent_at {
                self.silent_since = Some(Instant::now());
                if self.eof_before_silence {
                    f(Event::Caught { id });
                }
                return Ok(n + 1);
            }
        }
        if self.next == self.records && n > 0 {
            f(Event::Caught { id });
        }
        Ok(n)
    }

    fn pause(&mut self, _id: PartitionId) {}

    fn progress(&mut self) -> Vec<Progress> {
        let end = if self.silent_since.is_some() { self.records } else { self.silent_at };
        vec![Progress { id: gps_id(self.partition), position: Offset(self.next), end: Some(Offset(end)), fresh: true }]
    }

    fn recover(&mut self) -> Result<(), crate::source::SourceError> {
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn describe(&self, _id: PartitionId) -> String {
        "fetch_state=validate-epoch-wait (scripted)".into()
    }
}

/// One partition read at a steady pace: up to 8 records every 5 ms, then its end.
struct Paced {
    partition: i32,
    time: fn(i64) -> EventTime,
    next: i64,
    records: i64,
    last: Instant,
}

impl Reader for Paced {
    fn poll(&mut self, _budget: usize, f: &mut dyn FnMut(Event<'_>)) -> Result<usize, crate::source::SourceError> {
        if self.next >= self.records || self.last.elapsed() < Duration::from_millis(5) {
            return Ok(0);
        }
        self.last = Instant::now();
        let id = gps_id(self.partition);
        let mut n = 0;
        while n < 8 && self.next < self.records {
            f(Event::Record { id, offset: Offset(self.next), payload: gps(self.partition, self.next, (self.time)(self.next)).as_bytes() });
            self.next += 1;
            n += 1;
        }
        if self.next == self.records {
            f(Event::Caught { id });
        }
        Ok(n)
    }

    fn pause(&mut self, _id: PartitionId) {}
}

/// The stall guard's settings in these tests.
const FAST_STALLS: StallConfig = StallConfig { timeout: Duration::from_millis(200), give_up: Duration::from_secs(30) };

/// Runs two workers, each reading the one partition `reader(worker)` gives (with its stop
/// offset), with fast stall settings, until `stop_at` rows have arrived (then a shutdown ends
/// any live partition); every worker must finish without an error. Returns the tally.
fn run_two(stop_at: usize, reader: impl Fn(usize) -> (Option<i64>, Box<dyn Reader>) + Send + Sync + 'static) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    tally.stop_at.store(stop_at, Ordering::Relaxed);
    let t = tally.clone();
    timely::execute(timely::Config::process(2), move |worker| {
        let w = worker.index();
        let (stop, reader) = reader(w);
        let mut spec = test_spec(w, EpochClock::new(WINDOW, 2 * WINDOW), vec![(gps_id(w as i32), 0)], reader);
        spec.partitions[0].stop = stop.map(Offset);
        spec.stall = FAST_STALLS;
        spec.shutdown = t.shutdown.clone();
        if let Some(e) = run_source_for(worker, spec, t.clone(), Duration::from_secs(30)) {
            panic!("worker {w} failed: {}", e.chain());
        }
    })
    .expect("timely runs")
    .join()
    .into_iter()
    .for_each(|r| r.expect("a worker failed"));
    tally
}

/// Twenty records an epoch, and a jump of five epochs at offset 100.
fn dense_then_jump(offset: i64) -> EventTime {
    dense(offset) + if offset >= 100 { 5 * WINDOW } else { 0 }
}

#[test]
fn a_partition_caught_up_then_silent_while_the_broker_holds_more_is_recovered_and_never_idled() {
    // Worker 0's client delivers the 100 records the broker holds and an end-of-partition
    // event; then 100 more arrive, at epochs 10-15, but the client does not fetch them (as
    // librdkafka did after a broker restart). Worker 1 reads 600 records over 30 epochs
    // meanwhile. Had partition 0 been treated as idle, it would have followed worker 1's epochs
    // up to ~28, and its records of epochs 10-15, read later, would have been turned late; had
    // nothing watched it, it would have stayed silent (here: for 3 s, then it heals itself).
    let recoveries = Arc::new(AtomicUsize::new(0));
    let r = recoveries.clone();
    // Partition 0 is live (no stop offset); the run ends with a shutdown once all arrived.
    let tally = run_two(800, move |w| {
        if w == 0 {
            let stalling = Stalling {
                partition: 0,
                time: dense_then_jump,
                next: 0,
                records: 200,
                silent_at: 100,
                eof_before_silence: true,
                silent_since: None,
                heals_after: Duration::from_secs(3),
                recoveries: r.clone(),
            };
            (None, Box::new(stalling))
        } else {
            (Some(600), Box::new(Paced { partition: 1, time: dense, next: 0, records: 600, last: Instant::now() }))
        }
    });
    assert_eq!(tally.rows(), 800, "every record of both partitions arrives");
    assert_eq!(tally.late(), 0, "no record was turned late: the silent partition was never treated as idle");
    assert!(recoveries.load(Ordering::Relaxed) >= 1, "the stall guard re-created the client");
}

#[test]
fn a_partition_silent_before_its_end_of_partition_event_does_not_hold_the_cluster_back() {
    // Worker 0's live partition delivers 50 records and then neither records nor the
    // end-of-partition event, although the broker holds nothing more: the broker's end says it
    // is caught up. Had it stayed active at its early epoch, worker 1's sparse partition (one
    // epoch a record) would have been held back by the read-ahead bound for good.
    let recoveries = Arc::new(AtomicUsize::new(0));
    let r = recoveries.clone();
    let tally = run_two(450, move |w| {
        if w == 0 {
            let stalling = Stalling {
                partition: 0,
                time: dense,
                next: 0,
                records: 50,
                silent_at: 50,
                eof_before_silence: false,
                silent_since: None,
                heals_after: Duration::MAX,
                recoveries: r.clone(),
            };
            (None, Box::new(stalling))
        } else {
            (Some(400), Box::new(Paced { partition: 1, time: sparse, next: 0, records: 400, last: Instant::now() }))
        }
    });
    assert_eq!(tally.rows(), 450, "every record of both partitions arrives");
    assert_eq!(recoveries.load(Ordering::Relaxed), 0, "nothing stalled: the partition was caught up");
}

#[test]
fn a_partition_that_stays_stalled_stops_the_pipeline_after_the_give_up_bound() {
    let error = timely::execute_directly(|worker| {
        let clock = EpochClock::new(WINDOW, 2 * WINDOW);
        // Silent after 10 of 100 records, for good: re-creating the client does not help.
        let stalling = Stalling {
            partition: 0,
            time: dense,
            next: 0,
            records: 100,
            silent_at: 10,
            eof_before_silence: true,
            silent_since: None,
            heals_after: Duration::MAX,
            recoveries: Arc::default(),
        };
        struct NeverRecovers(Stalling);
        impl Reader for NeverRecovers {
            fn poll(&mut self, budget: usize, f: &mut dyn FnMut(Event<'_>)) -> Result<usize, crate::source::SourceError> {
                self.0.poll(budget, f)
            }
            fn pause(&mut self, _id: PartitionId) {}
            fn progress(&mut self) -> Vec<Progress> {
                self.0.progress()
            }
        }
        let mut spec = test_spec(0, clock, vec![(gps_id(0), 0)], Box::new(NeverRecovers(stalling)));
        spec.partitions[0].stop = None;
        spec.stall = StallConfig { timeout: Duration::from_millis(100), give_up: Duration::from_millis(600) };
        run_source_for(worker, spec, Arc::new(Tally::default()), Duration::from_secs(30))
    })
    .expect("the source stops with an error");
    assert_eq!(error.class, ErrorClass::Transient, "a restart may help");
    assert!(error.message.contains("stalled: the broker holds 90 records beyond offset 10"), "{}", error.message);
}

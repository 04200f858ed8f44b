//! The dataflow, top to bottom ([`build`]; each stage is an operator in its own module):
//!
//! ```text
//!  Kafka partitions ─► reclock ───────chunks@epoch─► exchange(writer_of) ─► write_parquet ─files@epoch─┐
//!     (owned by        │     ▲                    (to a worker of the same process)                  │
//!      this worker)    │     └─ announcements (broadcast, feedback +1) ◄─┐                           ├─► exchange(0) ─► commit
//!                      ├─ resume states@epoch ───────────────────────────┼───────────────────────────┘      (manifests)
//!                      └─ announcements ─────────────────────────────────┘
//! ```
//!
//! The timely time is the epoch. A worker's source holds its capability at the least epoch of
//! its active partitions' watermarks, so the frontier at the committer is the cluster's
//! watermark, and "the frontier passed `e`" means: epoch `e` is sealed everywhere and its
//! objects are durable.
//!
//! The source decodes each value into a record that borrows its strings from the value and
//! appends it straight into the Arrow builders of its object ([`crate::source::batches`]); what travels to the
//! sink are Arrow batches, so no record is allocated, moved or copied field by field on the way.
//! The batches of one (stream, epoch) from all workers of a process go to one of them
//! ([`writer_of`]), which writes them into one object.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use timely::dataflow::Scope;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, ConnectLoop, Exchange, Feedback};

use arrow::record_batch::RecordBatch;

use crate::aggregate::AggSpec;
use crate::commit::cut::{CutCommits, CutRequest, CutSpec};
use crate::commit::manifest::FileEntry;
use crate::commit::operator::{Commit, CommitSpec};
use crate::contract::timestamp::HOUR;
use crate::contract::{EventTime, Stream};
use crate::epoch::Epoch;
use crate::error::Failure;
use crate::lake::FileKind;
use crate::reclock::ResumeState;
use crate::sink::operator::{SinkSpec, WriteParquet};
use crate::source::operator::{Reclock, SourceSpec};

/// Which object of an epoch rows belong to: one per (stream, kind, hour) per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct FileKey {
    /// The stream whose rows the object holds.
    pub stream: Stream,
    /// On-time data, late data or dead letters.
    pub kind: FileKind,
    /// Start of the hour that names the object: the epoch's hour, or for late rows their
    /// event time's hour.
    pub hour: EventTime,
}

/// Rows on their way to the lake: an Arrow batch of one object of one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The object the rows go into.
    pub key: FileKey,
    /// The epoch that commits the rows (also the chunk's timely time).
    pub epoch: Epoch,
    /// The rows, with provenance columns (data, late) or as dead letters.
    pub batch: RecordBatch,
    /// The Kafka partitions the rows came from, ascending.
    pub partitions: Vec<i32>,
}

// Chunks go to the worker of their own process that writes their object (see `build`), so they
// are moved, never serialised. A channel between workers still needs the type to be
// serialisable; it is, as a small uncompressed Parquet file, which keeps every type exactly.
impl serde::Serialize for Chunk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let parquet = crate::sink::encode::batch_to_parquet(&self.batch).map_err(serde::ser::Error::custom)?;
        (self.key, self.epoch, &self.partitions, parquet).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Chunk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (key, epoch, partitions, parquet): (FileKey, Epoch, Vec<i32>, Vec<u8>) = serde::Deserialize::deserialize(d)?;
        let batch = crate::sink::encode::batch_from_parquet(parquet).map_err(serde::de::Error::custom)?;
        Ok(Chunk { key, epoch, batch, partitions })
    }
}

/// Adds `partition` to the ascending list `partitions` unless it is there.
pub fn note_partition(partitions: &mut Vec<i32>, partition: i32) {
    if let Err(i) = partitions.binary_search(&partition) {
        partitions.insert(i, partition);
    }
}

/// The worker that writes the objects of `key` for the process of `worker`, when each process
/// runs `workers_per_process` workers (numbered process by process, as timely does): the
/// (stream, hour) pairs are dealt over the process's workers, turning with the hour, so that
/// each worker gets its share of the heavier streams. One writer per (stream, kind, hour) per
/// process means one object per (stream, kind, hour) per process and commit, whichever worker
/// read the rows.
pub fn writer_of(worker: usize, workers_per_process: usize, key: FileKey) -> usize {
    let w = workers_per_process.max(1) as u64;
    let first = worker - worker % w as usize;
    let hour = key.hour.micros().div_euclid(HOUR) as u64;
    first + ((key.stream.index() as u64).wrapping_add(hour) % w) as usize
}

/// What workers tell the committer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Report {
    /// A commit boundary: the next manifest ends at `upper` (sent by worker 0's cutter, at a
    /// time no later than `upper`).
    Cut {
        /// One past the last epoch of the commit.
        upper: Epoch,
    },
    /// The objects of one commit, durable, at the first epoch they hold.
    Files {
        /// Every object of the commit this sink wrote, each durable.
        files: Vec<FileEntry>,
        /// Aggregate files that `files` replace (paths under the output root); empty from the
        /// Parquet sink.
        removed: Vec<String>,
        /// Wall clock (µs since the Unix epoch) when the sink saw the frontier pass the first
        /// epoch.
        sealed_at_us: i64,
    },
    /// Resume states of one worker's partitions, valid for committing through any epoch in
    /// `[from, to]` (`to = None`: any epoch `≥ from`; the worker finished). Sent at `from`.
    Resume {
        /// First epoch the states are valid for.
        from: Epoch,
        /// Last epoch they are valid for.
        to: Option<Epoch>,
        /// One state per partition of the worker.
        states: Vec<ResumeState>,
    },
}

/// A worker's view of its partitions, for idle partitions elsewhere to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Announce {
    /// The announcing worker's index.
    pub worker: usize,
    /// Increases with every announcement of that worker.
    pub seq: u64,
    /// Least epoch among its active (not caught-up) partitions; `None`: it has none.
    pub active: Option<Epoch>,
    /// Greatest epoch among its caught-up partitions that have a watermark (have seen data).
    pub idle: Option<Epoch>,
}

/// The timestamp summary of the edge that carries the sinks' cut requests back to the cutter.
/// The cutter reads requests whatever their time, but the loop makes the boundaries' frontier
/// at a sink at most (the sink's request frontier + this): with `+1`, a sink holding a request
/// capability at its least unsealed epoch `p` could only ever seal `p` before the next round of
/// progress messages, one epoch per round — on input sparse in event time (tens of thousands of
/// epochs) that made sealing crawl. Far beyond any epoch the sources can be ahead, it never
/// constrains anything.
const REQUEST_DELAY: u64 = 1 << 40;

/// Builds the whole pipeline in `scope`, for a cluster of processes with `workers_per_process`
/// workers each: Kafka partitions are reclocked into epochs, written as Parquet objects by a
/// worker of the same process, and committed by worker 0.
pub fn build<'s>(
    scope: Scope<'s, Epoch>,
    workers_per_process: usize,
    source: SourceSpec,
    cut: CutSpec,
    sink: SinkSpec,
    committer: CommitSpec,
    aggregates: Option<AggSpec>,
) {
    let (loop_handle, announcements) = scope.feedback::<Vec<Announce>>(1);
    let (requests_handle, requests) = scope.feedback::<Vec<CutRequest>>(REQUEST_DELAY);
    let read = scope.reclock(source, announcements);
    read.announcements.clone().broadcast().connect_loop(loop_handle);
    let cuts = read.announcements.cut_commits(cut, requests);
    let me = scope.index();
    let summaries = aggregates.map(|spec| crate::aggregate::build(read.chunks.clone(), cuts.clone().broadcast(), spec));
    let written = read.chunks.exchange(move |c: &Chunk| writer_of(me, workers_per_process, c.key) as u64).write_parquet(cuts.clone().broadcast(), sink);
    written.requests.exchange(|_| 0).connect_loop(requests_handle);
    let boundaries = cuts.map(|upper| Report::Cut { upper });
    let mut reports = read.resume.concat(written.reports).concat(boundaries);
    if let Some(summaries) = summaries {
        reports = reports.concat(summaries);
    }
    reports.exchange(|_| 0).commit(committer);
}

/// Steps `worker` until its dataflows complete or `failure` is set, beating `heartbeat` after
/// every step (for `/healthz`); after a failure the dataflows are dropped (their operators, and
/// so their clients and open uploads, are dropped with them), because timely would otherwise
/// wait for them to complete when the worker returns.
pub fn step_until_done_or_failed(
    worker: &mut timely::worker::Worker,
    failure: &Failure,
    park: std::time::Duration,
    heartbeat: &crate::observe::health::Heartbeat,
) {
    while !failure.is_set() && worker.step_or_park(Some(park)) {
        heartbeat.beat();
    }
    heartbeat.finished();
    if failure.is_set() {
        for id in worker.installed_dataflows() {
            worker.drop_dataflow(id);
        }
    }
}

/// Whether the sinks of this process have more unfinished objects than they may (the store is
/// slow or down): the sources of the process stop reading meanwhile, so that memory and requests
/// stay bounded, without blocking any worker thread. Counts the sinks that are over budget.
#[derive(Debug, Clone, Default)]
pub struct Backpressure(Arc<AtomicUsize>);

impl Backpressure {
    /// A sink went over its budget.
    pub fn engage(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A sink that was over its budget is within it again.
    pub fn release(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether any sink of the process is over its budget.
    pub fn engaged(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::schema::{BatchBuilder, Provenance};
    use crate::contract::{DecodeOptions, decode};
    use crate::simulate::{Fleet, FleetConfig};

    #[test]
    fn each_object_has_one_writer_per_process_and_the_writers_take_turns() {
        let key = |stream, kind, h: i64| FileKey { stream, kind, hour: EventTime(1_740_823_200_000_000 + h * HOUR) };
        for processes in 1..=3 {
            for w in 1..=4 {
                for worker in 0..processes * w {
                    let first = worker / w * w;
                    for stream in Stream::ALL {
                        // Every worker of the process agrees on the writer, which is in the
                        // process, and the kinds of one (stream, hour) share it…
                        for h in 0..w as i64 {
                            let writer = writer_of(first, w, key(stream, FileKind::Data, h));
                            for kind in FileKind::ALL {
                                assert_eq!(writer_of(worker, w, key(stream, kind, h)), writer);
                            }
                        }
                        // …and over `w` hours each of them writes the stream once.
                        let writers: std::collections::BTreeSet<usize> = (0..w as i64).map(|h| writer_of(worker, w, key(stream, FileKind::Data, h))).collect();
                        assert_eq!(writers, (first..first + w).collect(), "processes={processes} w={w} worker={worker} {stream}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_chunk_survives_serialisation_exactly() {
        let mut fleet = Fleet::new(FleetConfig { vehicles: 5, ..FleetConfig::default() });
        let mut b = BatchBuilder::new(Stream::Emergency, true);
        for i in 0..40 {
            let rec = decode(Stream::Emergency, &fleet.step()[4].value, &DecodeOptions::default()).unwrap();
            b.append(&rec, Some(Provenance { partition: 3, offset: 1000 + i, late: i % 7 == 0 }));
        }
        let chunk = Chunk {
            key: FileKey { stream: Stream::Emergency, kind: FileKind::Late, hour: EventTime(1_740_823_200_000_000) },
            epoch: Epoch(29_013_720),
            batch: b.finish().unwrap(),
            partitions: vec![3, 5],
        };
        let bytes = bincode::serde::encode_to_vec(&chunk, bincode::config::standard()).unwrap();
        let (back, _): (Chunk, usize) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, chunk);
        assert_eq!(back.batch.schema(), crate::contract::schema::schema(Stream::Emergency, true), "the types come back exactly");
    }

    /// What crosses processes besides chunks — reports to the committer and the aggregate
    /// updates — in timely's encoding (bincode, which cannot skip a field: a
    /// `skip_serializing_if` on any of them made a 2-process cluster fail to decode).
    #[test]
    fn reports_and_aggregate_updates_survive_bincode() {
        use crate::aggregate::{AggTable, table};
        let entry = |aggregate: Option<AggTable>| FileEntry {
            path: "agg/weather_hourly/date=2025-03-01/hour=10/weather_hourly-e0029013720-ab01.parquet".into(),
            stream: Stream::Weather,
            kind: if aggregate.is_some() { FileKind::Aggregate } else { FileKind::Data },
            epoch: Epoch(29_013_720),
            last_epoch: Epoch(29_013_721),
            partitions: vec![],
            rows: 7,
            bytes: 900,
            stats: None,
            aggregate,
        };
        let report = Report::Files { files: vec![entry(None), entry(Some(AggTable::WeatherHourly))], removed: vec!["agg/x.parquet".into()], sealed_at_us: 5 };
        let bytes = bincode::serde::encode_to_vec(&report, bincode::config::legacy()).unwrap();
        let (back, _): (Report, usize) = bincode::serde::decode_from_slice(&bytes, bincode::config::legacy()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{report:?}"));
        let update = ((table::weather_key("Vehicle-1", EventTime(1_740_823_200_000_000)).owned(), ()), Epoch(3), table::weather_agg(12.5, 0.25, 7.0, 81, 30.0));
        let bytes = bincode::serde::encode_to_vec(&update, bincode::config::legacy()).unwrap();
        let (back, _): (crate::aggregate::updates::Update, usize) = bincode::serde::decode_from_slice(&bytes, bincode::config::legacy()).unwrap();
        assert_eq!(back, update);
    }
}

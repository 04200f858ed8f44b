//! The sink stage as a stream method, `chunks.write_parquet(cuts, spec)`: Arrow batches at their
//! epochs → Parquet objects, one per commit and hour.
//!
//! In: [`Chunk`]s of rows stamped with the epoch that commits them, built by the sources of
//! this process's workers and sent to the worker that writes their object
//! ([`crate::dataflow::writer_of`]); and the commit boundaries of the cluster
//! ([`crate::commit::cut`]), each known before the frontier passes it. Out: the objects of a
//! commit ([`Report::Files`]) at the first epoch they hold, sent once every one of them is
//! complete in the store; and requests for an early cut when an object is full.
//!
//! Guarantees: rows wait, as Arrow batches, until their epoch is sealed (the frontier passed
//! it); then they go into the open object of their (stream, kind, hour) for the commit being
//! filled. An object holds only epochs of one commit: when a boundary is reached, every object
//! is closed, and rows of later epochs start new ones. So there is one object per (stream,
//! kind, hour) per process per commit — a data or dead-letter object is closed as soon as the
//! sealed epochs move on to the next hour, and one that reaches `target_object_size` is closed
//! and continued in a new object of the same commit (and an early cut is asked for). Rows
//! stream out as row groups and upload parts while an object is open, so memory is bounded by
//! the rows of unsealed epochs (the sources' read-ahead bound) plus, per open object, the batch,
//! row-group and part sizes. The operator holds a capability at the commit's first epoch until
//! its objects are durable, so the committer's frontier passing `e` means "every object holding
//! rows of an epoch `≤ e` exists". When the store is slow or down, at most
//! `MAX_UNFINISHED_OBJECTS` / `MAX_UNFINISHED_BYTES` of closed objects wait for it: then the
//! process's sources stop reading ([`crate::dataflow::Backpressure`]) instead of anything
//! buffering without bound; no worker thread waits. Errors go to the process's [`Failure`],
//! never end the process here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};
use tokio::runtime::Handle;

use super::object::{OpenObject, Upload};
use crate::commit::cut::CutRequest;
use crate::commit::manifest::FileEntry;
use crate::contract::timestamp::HOUR;
use crate::dataflow::{Backpressure, Chunk, FileKey, Report};
use crate::epoch::{Epoch, EpochClock};
use crate::error::{ErrorClass, Failure, PipelineError};
use crate::lake::{FileKind, Lake, file_path};
use crate::sink::encode::EncodeOptions;

/// Everything the sink needs.
#[derive(Clone)]
pub struct SinkSpec {
    /// Where objects go.
    pub lake: Lake,
    /// Runs the uploads.
    pub rt: Handle,
    /// This process's run id, part of every object name.
    pub run: String,
    /// Epoch arithmetic (for paths and metadata).
    pub clock: EpochClock,
    /// Parquet settings.
    pub encode: EncodeOptions,
    /// Multipart part size (S3 needs ≥ 5 MiB).
    pub part_size: usize,
    /// A file starts encoding once this many rows have arrived for it; smaller files are
    /// encoded in one go when their epoch is sealed. An encoder holds compression state of
    /// ≈ 100 KiB per column (parquet's zstd codec has a compression and a decompression
    /// context per column chunk), so encoders are created late, and only files that are
    /// large enough stream out before the seal.
    pub encode_after_rows: usize,
    /// An object that reaches this many bytes is closed, continued in a new object of the same
    /// commit, and an early cut is asked for (`--target-object-size`).
    pub target_object_size: u64,
    /// Holds this process's sources back while too many objects are unfinished.
    pub backpressure: Backpressure,
    /// Where an error that stops the pipeline goes.
    pub failure: Failure,
}

/// The sink's outputs.
pub struct Written<'s> {
    /// The objects of each commit, at its first epoch, once all of them are durable.
    pub reports: Stream<'s, Epoch, Vec<Report>>,
    /// Requests for an early commit cut (an object reached its target size).
    pub requests: Stream<'s, Epoch, Vec<CutRequest>>,
}

/// The sink as a stream method: `chunks.write_parquet(cuts, spec)`.
pub trait WriteParquet<'s> {
    /// Writes the chunks into Parquet objects, one per commit and (stream, kind, hour); `cuts`
    /// are the commit boundaries ([`crate::commit::cut`]).
    fn write_parquet(self, cuts: Stream<'s, Epoch, Vec<Epoch>>, spec: SinkSpec) -> Written<'s>;
}

impl<'s> WriteParquet<'s> for Stream<'s, Epoch, Vec<Chunk>> {
    fn write_parquet(self, cuts: Stream<'s, Epoch, Vec<Epoch>>, spec: SinkSpec) -> Written<'s> {
        build_sink(self, cuts, spec)
    }
}

fn build_sink<'s>(chunks: Stream<'s, Epoch, Vec<Chunk>>, cuts: Stream<'s, Epoch, Vec<Epoch>>, spec: SinkSpec) -> Written<'s> {
    let scope: Scope<'s, Epoch> = chunks.scope();
    let mut builder = OperatorBuilder::new("ParquetSink".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address.clone());
    let mut input = builder.new_input(chunks, Pipeline);
    let mut boundaries = builder.new_input(cuts, Pipeline);
    let (output, reports) = builder.new_output();
    let (request_output, requests) = builder.new_output();
    let mut output: ReportOutput = OutputBuilder::from(output);
    let mut request_output: RequestOutput = OutputBuilder::from(request_output);

    builder.build_reschedule(move |_caps| {
        let mut state = SinkState::default();
        move |frontiers| {
            if spec.failure.is_set() {
                return false;
            }
            boundaries.for_each(|_, data| state.cuts.extend(data.drain(..)));
            let mut failed = None;
            input.for_each(|cap, data| {
                let Some(&t) = cap.least() else { return };
                let (_, _, chunks) =
                    state.pending.entry(t).or_insert_with(|| (cap.retain_least(0).expect("stamped"), cap.retain_least(1).expect("stamped"), Vec::new()));
                chunks.append(data);
            });
            state.note_pending();
            // An epoch is sealed once both the data and the boundaries have passed it.
            let sealed = |e: &Epoch| !frontiers[0].less_equal(e) && !frontiers[1].less_equal(e);
            let finished = frontiers[0].is_empty() && frontiers[1].is_empty();
            if let Err(e) = state.seal(&spec, sealed, finished) {
                failed.get_or_insert(e);
            }
            if let Some(e) = failed.or_else(|| state.report(&spec, &mut output).err()) {
                spec.failure.set(e);
                return false;
            }
            if let Some(at) = state.ask.take() {
                request_output.activate().session(&at).give(());
            }
            state.bound_unfinished(&spec);
            if !state.sealing.is_empty() {
                activator.activate_after(Duration::from_millis(2));
            }
            !state.sealing.is_empty()
        }
    });
    Written { reports, requests }
}

/// The objects of the commit being filled.
struct Filling {
    /// At the commit's first epoch in this sink: holds the committer back until reported.
    cap: Capability<Epoch>,
    first: Epoch,
    /// When the sink saw the frontier pass `first` (µs since the Unix epoch).
    sealed_at_us: i64,
    /// The open objects, with when each was last written (a count of writes).
    open: HashMap<FileKey, (OpenObject, u64)>,
    writes: u64,
    closed: Closed,
    /// Objects started per key in this commit (a full object is continued in a new one).
    started: HashMap<FileKey, u32>,
}

/// A commit's objects being finished: its capability, its objects, and when its first epoch
/// was sealed.
type Sealing = (Capability<Epoch>, Closed, i64);

/// Closed objects: those durable, with their sizes, and the uploads still running. Uploads are
/// settled as they finish, so the checks on every activation (back-pressure, "is the commit
/// durable") cost what is still running, not every object of a commit.
#[derive(Default)]
struct Closed {
    durable: Vec<FileEntry>,
    running: Vec<Upload>,
}

impl Closed {
    /// Moves the finished uploads to `durable`; an upload that failed is the pipeline's error.
    fn settle(&mut self, spec: &SinkSpec) -> Result<(), PipelineError> {
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].1.is_finished() {
                i += 1;
                continue;
            }
            let (mut entry, handle) = self.running.swap_remove(i);
            match spec.rt.block_on(handle) {
                Ok(Ok(bytes)) => {
                    entry.bytes = bytes;
                    crate::observe::metrics().object_written(entry.stream, bytes);
                }
                Ok(Err(err)) => {
                    let message = format!("writing {} failed after retries: {}", entry.path, spec.lake.gave_up());
                    return Err(PipelineError::caused(ErrorClass::Transient, message, err));
                }
                Err(err) => return Err(PipelineError::caused(ErrorClass::Definite, format!("the upload task for {} failed", entry.path), err)),
            }
            self.durable.push(entry);
        }
        Ok(())
    }
}

/// The rows of an unsealed epoch, with its capabilities for reports and for requests.
type Pending = (Capability<Epoch>, Capability<Epoch>, Vec<Chunk>);

/// The sink: rows of unsealed epochs, the commit being filled, and commits being finished.
#[derive(Default)]
struct SinkState {
    /// Rows of epochs not sealed yet, with the epoch's capabilities for reports and requests.
    /// (No request capability is held beyond its epoch's seal: requests loop back to the
    /// cutter, whose boundaries this sink waits for.)
    pending: BTreeMap<Epoch, Pending>,
    /// Commit boundaries not passed yet.
    cuts: BTreeSet<Epoch>,
    filling: Option<Filling>,
    sealing: BTreeMap<Epoch, Sealing>,
    /// Where to ask for an early cut: an object reached its target size.
    ask: Option<Capability<Epoch>>,
    most_pending: usize,
    /// Since when this sink holds the process's sources back, and when it last said so.
    holding: Option<(Instant, Instant)>,
}

impl SinkState {
    /// Logs when more epochs wait to be sealed than ever before (memory grows with them;
    /// tests/run_cluster.rs bounds them).
    fn note_pending(&mut self) {
        if self.pending.len() > self.most_pending {
            self.most_pending = self.pending.len();
            let rows: usize = self.pending.values().flat_map(|(_, _, c)| c).map(|c| c.batch.num_rows()).sum();
            tracing::debug!(epochs = self.most_pending, rows, "sink: most epochs open so far");
        }
    }

    /// Moves the rows of every sealed epoch into the objects of its commit, closing the commit
    /// at each boundary reached (and everything when `finished`).
    fn seal(&mut self, spec: &SinkSpec, sealed: impl Fn(&Epoch) -> bool, finished: bool) -> Result<(), PipelineError> {
        while let Some((&e, _)) = self.pending.first_key_value() {
            if !sealed(&e) {
                break;
            }
            // A boundary in (first, e] ends the commit being filled before e.
            if self.filling.as_ref().is_some_and(|f| self.cuts.range(f.first + 1..=e).next().is_some()) {
                self.close_commit(spec)?;
            }
            self.cuts = self.cuts.split_off(&(e + 1));
            let (cap, request_cap, chunks) = self.pending.remove(&e).expect("first key exists");
            let filling = self.filling.get_or_insert_with(|| Filling {
                cap,
                first: e,
                sealed_at_us: crate::clock::now_micros(),
                open: HashMap::new(),
                writes: 0,
                closed: Closed::default(),
                started: HashMap::new(),
            });
            for chunk in chunks {
                if filling.write(spec, chunk, e)? && self.ask.is_none() {
                    self.ask = Some(request_cap.clone());
                }
            }
            filling.close_past_hours(spec, e)?;
        }
        // A boundary whose epochs below are all sealed ends the commit.
        let reached = |b: &Epoch| sealed(&(*b - 1));
        if let Some(f) = &self.filling
            && (finished || self.cuts.range(f.first + 1..).next().is_some_and(reached))
        {
            self.close_commit(spec)?;
        }
        while self.cuts.first().is_some_and(|b| *b == Epoch::ZERO || reached(b)) && self.filling.is_none() {
            self.cuts.pop_first();
        }
        Ok(())
    }

    /// Closes every object of the commit being filled; they are finished in the background.
    fn close_commit(&mut self, spec: &SinkSpec) -> Result<(), PipelineError> {
        let Some(mut f) = self.filling.take() else { return Ok(()) };
        let mut open: Vec<(FileKey, (OpenObject, u64))> = f.open.drain().collect();
        open.sort_by_key(|(k, _)| *k);
        for (_, (object, _)) in open {
            f.closed.running.push(object.close(spec)?);
        }
        self.sealing.insert(f.first, (f.cap, f.closed, f.sealed_at_us));
        Ok(())
    }

    /// Reports the commits whose objects are all durable.
    fn report(&mut self, spec: &SinkSpec, output: &mut ReportOutput) -> Result<(), PipelineError> {
        if let Some(f) = self.filling.as_mut() {
            f.closed.settle(spec)?;
        }
        let mut done = Vec::new();
        for (e, (_, closed, _)) in self.sealing.iter_mut() {
            closed.settle(spec)?;
            if closed.running.is_empty() {
                done.push(*e);
            }
        }
        for e in done {
            let (cap, mut closed, sealed_at_us) = self.sealing.remove(&e).expect("listed above");
            // Listed by path, whatever order the uploads finished in.
            closed.durable.sort_by(|a, b| a.path.cmp(&b.path));
            output.activate().session(&cap).give(Report::Files { files: closed.durable, removed: Vec::new(), sealed_at_us });
        }
        Ok(())
    }

    /// Back-pressure: while too many objects are unfinished (the store is slow or down and its
    /// requests are being retried), the process's sources stop reading until the oldest are
    /// durable, so memory and concurrent requests stay bounded; the worker thread keeps running
    /// (and the upload errors out once the store's retry budget is spent).
    fn bound_unfinished(&mut self, spec: &SinkSpec) {
        let unfinished = self.sealing.values().flat_map(|(_, closed, _)| &closed.running).chain(self.filling.iter().flat_map(|f| &f.closed.running));
        match (over_budget(unfinished), self.holding.as_mut()) {
            (true, None) => {
                spec.backpressure.engage();
                self.holding = Some((Instant::now(), Instant::now()));
            }
            (true, Some((since, said))) => {
                if said.elapsed() >= STORE_WAIT_WARNING {
                    *said = Instant::now();
                    tracing::warn!(
                        output = %spec.lake.url,
                        waiting = ?Duration::from_secs(since.elapsed().as_secs()),
                        retry_budget = ?spec.lake.retry_timeout,
                        "the store is slow or unreachable: objects are being retried, reading waits for them"
                    );
                }
            }
            (false, Some(_)) => {
                spec.backpressure.release();
                self.holding = None;
            }
            (false, None) => {}
        }
    }
}

impl Filling {
    /// Writes `chunk` of epoch `e` into its object; returns whether that object reached its
    /// target size (it is then closed, and its key's next rows start a new object).
    fn write(&mut self, spec: &SinkSpec, chunk: Chunk, e: Epoch) -> Result<bool, PipelineError> {
        let key = chunk.key;
        self.writes += 1;
        let (object, last_write) = match self.open.get_mut(&key) {
            Some(open) => open,
            None => {
                self.close_least_recent(spec)?;
                let n = self.started.entry(key).or_insert(0);
                let path = file_path(key.stream, key.kind, e, &spec.run, key.hour, *n);
                *n += 1;
                let object = OpenObject::new(spec, path, &chunk, e);
                self.open.entry(key).or_insert((object, 0))
            }
        };
        *last_write = self.writes;
        object.write(spec, chunk, e)?;
        if object.size() < spec.target_object_size {
            return Ok(false);
        }
        self.close_object(spec, key)?;
        Ok(true)
    }

    /// Keeps at most [`MAX_OPEN_OBJECTS`] open: before another is opened, the one written least
    /// recently is closed (its key's next rows in this commit start a new object). Only late
    /// objects, named by their rows' event hours, can be that many: in a backlog sparse in event
    /// time, a commit spans hundreds of hours, with late rows now and then for each.
    fn close_least_recent(&mut self, spec: &SinkSpec) -> Result<(), PipelineError> {
        if self.open.len() < MAX_OPEN_OBJECTS {
            return Ok(());
        }
        match self.open.iter().min_by_key(|(_, (_, w))| *w).map(|(k, _)| *k) {
            Some(key) => self.close_object(spec, key),
            None => Ok(()),
        }
    }

    /// Closes the data and dead-letter objects of hours before epoch `e`'s: sealed epochs only
    /// move forward, so they get no more rows (late objects, named by their rows' event hour,
    /// stay open until the commit ends).
    fn close_past_hours(&mut self, spec: &SinkSpec, e: Epoch) -> Result<(), PipelineError> {
        let start = spec.clock.start_of(e);
        let hour = start.floor(HOUR);
        let mut past: Vec<FileKey> = self.open.keys().filter(|k| k.kind != FileKind::Late && k.hour < hour).copied().collect();
        past.sort();
        for key in past {
            self.close_object(spec, key)?;
        }
        Ok(())
    }

    /// Closes the open object of `key`; it is finished in the background.
    fn close_object(&mut self, spec: &SinkSpec, key: FileKey) -> Result<(), PipelineError> {
        if let Some((object, _)) = self.open.remove(&key) {
            self.closed.running.push(object.close(spec)?);
        }
        Ok(())
    }
}

/// The sink's output of reports.
type ReportOutput = OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Report>>>;

/// The sink's output of cut requests.
type RequestOutput = OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<CutRequest>>>;

/// Open objects one sink may have: the memory of an open object is its held rows, or once it has
/// 1,024 rows its encoder (≈ 100 KiB a column) and row group.
const MAX_OPEN_OBJECTS: usize = 64;

/// Unfinished objects (closed, not yet durable) one sink may have before it waits.
const MAX_UNFINISHED_OBJECTS: usize = 512;

/// Bytes of unfinished objects one sink may have before it waits.
const MAX_UNFINISHED_BYTES: u64 = 256 << 20;

/// How often a sink waiting for the store says so.
const STORE_WAIT_WARNING: Duration = Duration::from_secs(10);

/// Whether the running uploads exceed [`MAX_UNFINISHED_OBJECTS`] or [`MAX_UNFINISHED_BYTES`].
fn over_budget<'a>(uploads: impl Iterator<Item = &'a Upload>) -> bool {
    let (mut count, mut bytes) = (0, 0);
    for (entry, handle) in uploads {
        if !handle.is_finished() {
            count += 1;
            bytes += entry.bytes;
        }
    }
    count > MAX_UNFINISHED_OBJECTS || bytes > MAX_UNFINISHED_BYTES
}

#[cfg(test)]
mod tests;

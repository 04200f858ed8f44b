//! The writer, as a stream method: `rows.write_aggregates(cuts, spec)`: the consolidated updates
//! of the partitions this worker owns → one Parquet file per changed partition and commit.
//!
//! In: the consolidated updates — per key and epoch, the merged partial aggregate of its
//! records — and the cluster's commit boundaries. Out: the files of each commit
//! ([`Report::Files`], with the files they replace in `removed`) at the commit's first epoch,
//! once all are durable.
//!
//! The writer holds the only copy of the rows, per partition (a windowed table's hour, a day of
//! `vehicle_latest`), and decides which partitions are in memory:
//!
//! - **Start**: it reads the state of [`super::restore::initial`] — the rows of the partitions
//!   within the horizon (and all of `vehicle_latest`) from the committed tables, or the rows of
//!   a rebuilt table recomputed from the stream tables, which are changes — before it applies
//!   any update.
//! - **Apply**: updates wait until their epoch is sealed (both inputs' frontiers passed it), then
//!   each is added to its row: the row of a key is the sum of every update of it so far. A
//!   partition a record changed is *dirty*.
//! - **A partition not in memory** that has a file (it left memory, or lies beyond the horizon
//!   at start): its file is read as soon as an update for it arrives, and the epochs from the
//!   first that needs it wait until it is read. So a record far behind the watermark updates
//!   the committed row.
//! - **Commit**: when a boundary is reached, every dirty partition of the commit gets a new file
//!   holding all of its rows, named with the commit's first epoch, and the file it had is listed
//!   as removed — the manifest and the Delta commit carry both, so a reader sees the old rows or
//!   the new ones, never neither and never both. A partition left without rows (a
//!   `vehicle_latest` day whose vehicles all moved on) only loses its file. The writer holds a
//!   capability at the first epoch of the commit it fills, so the committer cannot commit past
//!   it before its files are durable.
//! - **Eviction**: a windowed partition whose hour ended `--aggregate-horizon` before the
//!   watermark (the start of the input frontier's epoch) leaves memory once its last change is
//!   durable in its file.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use object_store::ObjectStoreExt;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};
use tokio::task::JoinHandle;

use super::key::{Agg, AggKey};
use super::restore::{self, Initial};
use super::{AggSpec, AggTable, table};
use crate::commit::manifest::FileEntry;
use crate::contract::EventTime;
use crate::contract::timestamp::HOUR;
use crate::dataflow::Report;
use crate::epoch::Epoch;
use crate::error::{ErrorClass, PipelineError};
use crate::lake::FileKind;
use crate::sink::encode::ParquetEncoder;

/// An update of one row: its key, its epoch, the partial aggregate to add.
pub type RowChange = super::updates::Update;

/// A partition of an aggregate table: the table and the start of its hour (windowed tables) or
/// day (`vehicle_latest`).
pub type Part = (AggTable, EventTime);

/// The rows of one partition.
type Rows = foldhash::HashMap<AggKey, Agg>;

/// The stage as a stream method.
pub trait WriteAggregates<'s> {
    /// Writes the changed partitions of every commit; `cuts` are the commit boundaries.
    fn write_aggregates(self, cuts: Stream<'s, Epoch, Vec<Epoch>>, spec: AggSpec) -> Stream<'s, Epoch, Vec<Report>>;
}

type ReportOutput = OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Report>>>;

/// A file being uploaded: its entry, and the upload.
type Upload = (FileEntry, JoinHandle<Result<(), object_store::Error>>);

/// Reading one partition file's rows.
type Load = JoinHandle<Result<Vec<(AggKey, Agg)>, PipelineError>>;

/// A closed commit whose files are being made durable.
struct Sealing {
    cap: Capability<Epoch>,
    uploads: Vec<Upload>,
    removed: Vec<String>,
    parts: Vec<Part>,
    sealed_at_us: i64,
}

impl<'s> WriteAggregates<'s> for Stream<'s, Epoch, Vec<RowChange>> {
    fn write_aggregates(self, cuts: Stream<'s, Epoch, Vec<Epoch>>, spec: AggSpec) -> Stream<'s, Epoch, Vec<Report>> {
        let scope: Scope<'s, Epoch> = self.scope();
        let (index, peers) = (scope.index(), scope.peers());
        let mut builder = OperatorBuilder::new("WriteAggregates".to_owned(), scope);
        let activator = scope.activator_for(builder.operator_info().address.clone());
        let mut rows_in = builder.new_input(self, Pipeline);
        let mut cuts_in = builder.new_input(cuts, Pipeline);
        let (out, reports) = builder.new_output();
        let mut out: ReportOutput = OutputBuilder::from(out);

        builder.build(move |mut caps| {
            let mut held = caps.pop();
            if let Some(c) = held.as_mut() {
                c.downgrade(&spec.committed_below);
            }
            let task_spec = spec.clone();
            let init = spec.rt.spawn(async move { restore::initial(&task_spec, index, peers).await });
            let mut w = Writer {
                lower: spec.committed_below,
                spec,
                index,
                init: Some(init),
                pending: BTreeMap::new(),
                cuts: BTreeSet::new(),
                rows: Default::default(),
                files: BTreeMap::new(),
                latest_part: Default::default(),
                loading: BTreeMap::new(),
                dirty: BTreeSet::new(),
                rewrite: BTreeSet::new(),
                sealing: Vec::new(),
            };
            move |frontiers| {
                let failure = w.spec.failure.clone();
                if failure.is_set() {
                    return;
                }
                cuts_in.for_each(|_, data| w.cuts.extend(data.drain(..).filter(|b| *b > Epoch::ZERO)));
                // Differential's output batches carry updates of many times under a capability
                // at their lower bound: each change is filed under its own epoch.
                rows_in.for_each(|_, data| w.arrive(data.drain(..)));
                // Sealed: every epoch below `bound` (both inputs passed it).
                let bound = [frontiers[0].frontier().first(), frontiers[1].frontier().first()].into_iter().flatten().min().copied();
                if let Err(e) = w.step(&mut held, bound, &mut out) {
                    failure.set(e);
                    return;
                }
                if w.init.is_some() || !w.loading.is_empty() || !w.sealing.is_empty() {
                    activator.activate_after(Duration::from_millis(2));
                }
            }
        });
        reports
    }
}

/// The writer's state.
struct Writer {
    spec: AggSpec,
    /// This worker's index (for the logs).
    index: usize,
    /// Reading the initial state; `None` once it is applied.
    init: Option<JoinHandle<Result<Initial, PipelineError>>>,
    /// Row changes of epochs not applied yet.
    pending: BTreeMap<Epoch, Vec<RowChange>>,
    /// Commit boundaries not passed yet.
    cuts: BTreeSet<Epoch>,
    /// First epoch of the commit being filled.
    lower: Epoch,
    /// The rows of the partitions in memory.
    rows: foldhash::HashMap<Part, Rows>,
    /// The file that holds each owned partition's rows as last written (or as found at start):
    /// its path under the output root.
    files: BTreeMap<Part, String>,
    /// The partition (day of `last_seen`) that holds each `vehicle_latest` row.
    latest_part: foldhash::HashMap<AggKey, Part>,
    /// Partitions whose file is being read.
    loading: BTreeMap<Part, Load>,
    /// Partitions a record changed in the commit being filled. A partition that is dirty, or
    /// whose new file is still uploading ([`Writer::sealing`]), cannot leave memory.
    dirty: BTreeSet<Part>,
    /// Partitions that must be written (or, without rows, removed) at the first commit even
    /// without a change: those of a table rebuilt from the stream tables. Their old files are
    /// never read back.
    rewrite: BTreeSet<Part>,
    /// Closed commits whose files are not all durable yet.
    sealing: Vec<Sealing>,
}

impl Writer {
    /// Files arriving changes under their epochs, and starts reading the file of any partition
    /// they need that is not in memory.
    fn arrive(&mut self, changes: impl Iterator<Item = RowChange>) {
        let mut last = None;
        for change in changes {
            let part = (change.0.0.table, change.0.0.bucket);
            if self.init.is_none() && last != Some(part) {
                self.prefetch(part);
                last = Some(part);
            }
            self.pending.entry(change.1).or_default().push(change);
        }
    }

    /// Whether the rows of `part` must be read from its file before a change can be added.
    fn missing(&self, part: Part) -> bool {
        part.0.windowed() && !self.rows.contains_key(&part) && self.files.contains_key(&part) && !self.rewrite.contains(&part)
    }

    /// Starts reading `part`'s file if it is missing and not being read.
    fn prefetch(&mut self, part: Part) {
        if self.missing(part) && !self.loading.contains_key(&part) {
            let path = self.files[&part].clone();
            tracing::debug!(table = part.0.name(), partition = part.1.micros(), path, "loading an aggregate partition that is not in memory");
            let lake = self.spec.lake.clone();
            self.loading.insert(part, self.spec.rt.spawn(async move { restore::load_file(&lake, part.0, &path).await }));
        }
    }

    /// One activation: the initial state, finished reads, sealed epochs, durable commits,
    /// eviction.
    fn step(&mut self, held: &mut Option<Capability<Epoch>>, bound: Option<Epoch>, out: &mut ReportOutput) -> Result<(), PipelineError> {
        if let Some(task) = self.init.as_ref() {
            if !task.is_finished() {
                return Ok(());
            }
            let task = self.init.take().expect("checked above");
            let initial = self.spec.rt.block_on(task).map_err(|e| PipelineError::caused(ErrorClass::Definite, "the aggregate restore task failed", e))??;
            self.start(initial);
            let parts: BTreeSet<Part> = self.pending.values().flatten().map(|c| (c.0.0.table, c.0.0.bucket)).collect();
            for part in parts {
                self.prefetch(part);
            }
        }
        self.finish_loads()?;
        self.seal(held, bound)?;
        self.report(out)?;
        if let Some(b) = bound {
            self.evict(b);
        }
        Ok(())
    }

    /// Takes in the initial state.
    fn start(&mut self, initial: Initial) {
        let Initial { files, loaded, rebuilt, rewrite } = initial;
        self.files = files;
        self.rewrite = rewrite;
        let (n_loaded, n_rebuilt) = (loaded.len(), rebuilt.len());
        for (key, agg) in loaded {
            self.insert(key, agg, false);
        }
        for (key, agg) in rebuilt {
            self.insert(key, agg, true);
        }
        if n_loaded + n_rebuilt > 0 {
            tracing::info!(worker = self.index, loaded = n_loaded, rebuilt = n_rebuilt, epoch = self.lower.get(), "aggregate state restored");
        }
    }

    /// Puts a whole row into its partition; `changed`: it is a change of the table (a rebuilt
    /// row), not a row read back.
    fn insert(&mut self, key: AggKey, agg: Agg, changed: bool) {
        let part = (key.table, table::partition_of(&key, &agg));
        if changed {
            self.dirty.insert(part);
        }
        if !key.table.windowed() {
            self.latest_part.insert(key.clone(), part);
        }
        self.rows.entry(part).or_default().insert(key, agg);
    }

    /// Takes in the rows of every partition file that has been read.
    fn finish_loads(&mut self) -> Result<(), PipelineError> {
        let done: Vec<Part> = self.loading.iter().filter(|(_, h)| h.is_finished()).map(|(p, _)| *p).collect();
        for part in done {
            let handle = self.loading.remove(&part).expect("listed above");
            let rows = self.spec.rt.block_on(handle).map_err(|e| PipelineError::caused(ErrorClass::Definite, "an aggregate load task failed", e))??;
            tracing::debug!(table = part.0.name(), partition = part.1.micros(), rows = rows.len(), "aggregate partition loaded back");
            self.rows.insert(part, rows.into_iter().collect());
        }
        Ok(())
    }

    /// Applies every sealed epoch's changes whose partitions are in memory, closing the commit
    /// at each boundary reached (and everything once the input is done: `bound` is `None`).
    fn seal(&mut self, held: &mut Option<Capability<Epoch>>, bound: Option<Epoch>) -> Result<(), PipelineError> {
        let sealed = |e: Epoch| bound.is_none_or(|b| e < b);
        let mut waiting = false;
        while let Some((&e, _)) = self.pending.first_key_value() {
            if !sealed(e) {
                break;
            }
            while let Some(b) = self.cuts.iter().copied().find(|b| *b > self.lower && *b <= e) {
                self.close(held, Some(b))?;
            }
            // Every change that needs a partition's file started its read when it arrived, and no
            // partition with changes waiting leaves memory (`evict`): an epoch can only wait for
            // a read in flight.
            if !self.loading.is_empty() && self.pending[&e].iter().any(|c| self.loading.contains_key(&(c.0.0.table, c.0.0.bucket))) {
                waiting = true;
                break;
            }
            let changes = self.pending.remove(&e).expect("first key exists");
            self.apply(changes);
        }
        // Every boundary whose epochs below are all sealed and applied ends a commit.
        let first_pending = self.pending.first_key_value().map(|(p, _)| *p);
        let applied = |e: Epoch| sealed(e) && first_pending.is_none_or(|p| p > e);
        while let Some(b) = self.cuts.iter().copied().find(|b| *b > self.lower && applied(*b - 1)) {
            self.close(held, Some(b))?;
        }
        if bound.is_none() && !waiting && self.pending.is_empty() && held.is_some() {
            self.close(held, None)?;
        }
        self.cuts.retain(|b| *b > self.lower);
        Ok(())
    }

    /// Adds the changes of one epoch to their rows; each makes its partition dirty (both
    /// partitions when a `vehicle_latest` row moves to another day).
    fn apply(&mut self, changes: Vec<RowChange>) {
        use differential_dataflow::difference::Semigroup;
        let mut last = None;
        for ((key, ()), _, diff) in changes {
            if key.table.windowed() {
                let part = (key.table, key.bucket);
                if last != Some(part) {
                    self.dirty.insert(part);
                    last = Some(part);
                }
                let rows = self.rows.entry(part).or_default();
                match rows.get_mut(&key) {
                    Some(row) => row.plus_equals(&diff),
                    None => {
                        rows.insert(key, diff);
                    }
                }
                continue;
            }
            // vehicle_latest: the row lives in the day of its last_seen, which may move on, so it
            // is taken out of its day and put back into the day of the merged row.
            let old = self.latest_part.get(&key).copied();
            let mut row = Agg::ZERO;
            if let Some(p) = old
                && let Some(rows) = self.rows.get_mut(&p)
            {
                row = rows.remove(&key).unwrap_or(Agg::ZERO);
                if rows.is_empty() {
                    self.rows.remove(&p);
                }
                self.dirty.insert(p);
            }
            row.plus_equals(&diff);
            let part = (key.table, table::partition_of(&key, &row));
            self.dirty.insert(part);
            if old != Some(part) {
                self.latest_part.insert(key.clone(), part);
            }
            self.rows.entry(part).or_default().insert(key, row);
        }
    }

    /// Closes the commit `[lower, upper)` (`None`: the last one): a new file for every dirty
    /// partition (and every partition of a rebuilt table), the old ones removed.
    fn close(&mut self, held: &mut Option<Capability<Epoch>>, upper: Option<Epoch>) -> Result<(), PipelineError> {
        let Some(cap) = held.as_mut() else { return Ok(()) };
        let lower = self.lower;
        let mut parts: BTreeSet<Part> = std::mem::take(&mut self.dirty);
        parts.extend(std::mem::take(&mut self.rewrite));
        let mut uploads = Vec::new();
        let mut removed = Vec::new();
        for &part in &parts {
            if let Some(old) = self.files.remove(&part) {
                removed.push(old);
            }
            let Some(rows) = self.rows.get(&part) else { continue };
            let (entry, bytes) = encode(&self.spec, part, rows, lower)?;
            self.files.insert(part, entry.path.clone());
            let (store, path) = (self.spec.lake.store.clone(), object_store::path::Path::from(entry.path.as_str()));
            let handle = self.spec.rt.spawn(async move { store.put(&path, bytes.into()).await.map(|_| ()) });
            uploads.push((entry, handle));
        }
        if !uploads.is_empty() || !removed.is_empty() {
            tracing::debug!(lower = lower.get(), files = uploads.len(), removed = removed.len(), "aggregate commit closed");
            self.sealing.push(Sealing { cap: cap.clone(), uploads, removed, parts: parts.into_iter().collect(), sealed_at_us: crate::clock::now_micros() });
        }
        match upper {
            Some(b) => {
                self.lower = b;
                cap.downgrade(&b);
            }
            None => *held = None,
        }
        Ok(())
    }

    /// Reports every closed commit whose files are all durable.
    fn report(&mut self, out: &mut ReportOutput) -> Result<(), PipelineError> {
        let mut i = 0;
        while i < self.sealing.len() {
            if !self.sealing[i].uploads.iter().all(|(_, h)| h.is_finished()) {
                i += 1;
                continue;
            }
            let done = self.sealing.remove(i);
            let mut files = Vec::with_capacity(done.uploads.len());
            for (entry, handle) in done.uploads {
                match self.spec.rt.block_on(handle) {
                    Ok(Ok(())) => files.push(entry),
                    Ok(Err(e)) => {
                        return Err(PipelineError::caused(
                            ErrorClass::Transient,
                            format!("writing {} failed after retries: {}", entry.path, self.spec.lake.gave_up()),
                            e,
                        ));
                    }
                    Err(e) => return Err(PipelineError::caused(ErrorClass::Definite, format!("the upload task for {} failed", entry.path), e)),
                }
            }
            out.activate().session(&done.cap).give(Report::Files { files, removed: done.removed, sealed_at_us: done.sealed_at_us });
        }
        Ok(())
    }

    /// Takes the windowed partitions that are settled and past the horizon out of memory.
    fn evict(&mut self, frontier: Epoch) {
        let watermark = self.spec.clock.start_of(frontier).micros();
        let horizon = self.spec.horizon_us();
        let settled = |part: &Part| !self.dirty.contains(part) && !self.sealing.iter().any(|x| x.parts.contains(part));
        let mut due: Vec<Part> = self
            .rows
            .keys()
            .filter(|(t, hour)| t.windowed() && hour.micros().saturating_add(HOUR).saturating_add(horizon) <= watermark)
            .filter(|part| settled(part) && !self.rewrite.contains(part) && self.files.contains_key(part))
            .copied()
            .collect();
        if due.is_empty() {
            return;
        }
        // A partition with changes waiting stays: it was in memory when they arrived, so no read
        // of its file was started for them (see `seal`).
        let waiting: BTreeSet<Part> = self.pending.values().flatten().map(|c| (c.0.0.table, c.0.0.bucket)).collect();
        due.retain(|p| !waiting.contains(p));
        if due.is_empty() {
            return;
        }
        let rows: usize = due.iter().filter_map(|p| self.rows.remove(p)).map(|r| r.len()).sum();
        tracing::debug!(worker = self.index, partitions = due.len(), keys = rows, epoch = frontier.get(), "aggregate partitions left memory");
    }
}

/// One partition's rows, in key order, as a Parquet file named for the commit starting at
/// `lower`.
fn encode(spec: &AggSpec, (t, start): Part, rows: &Rows, lower: Epoch) -> Result<(FileEntry, Vec<u8>), PipelineError> {
    let path = table::file_path(t, start, lower, &spec.run);
    let fail = |e: &dyn std::fmt::Display| PipelineError::new(ErrorClass::Definite, format!("encoding {path}: {e}"));
    let mut sorted: Vec<(&AggKey, &Agg)> = rows.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let batch = table::to_batch(t, sorted.iter().copied()).map_err(|e| fail(&e))?;
    let mut encoder = ParquetEncoder::new(batch.schema(), &spec.encode).map_err(|e| fail(&e))?;
    encoder.write(&batch).map_err(|e| fail(&e))?;
    let metadata = vec![
        ("citystream.first_epoch".to_owned(), lower.to_string()),
        ("citystream.kind".to_owned(), FileKind::Aggregate.as_str().to_owned()),
        ("citystream.table".to_owned(), t.name().to_owned()),
    ];
    let (bytes, footer) = encoder.close(metadata).map_err(|e| fail(&e))?;
    let entry = FileEntry {
        path: path.to_string(),
        stream: t.stream(),
        kind: FileKind::Aggregate,
        epoch: lower,
        last_epoch: lower,
        partitions: Vec::new(),
        rows: rows.len() as u64,
        bytes: bytes.len() as u64,
        stats: Some(crate::delta::stats::stats_json(&batch.schema(), &footer)),
        aggregate: Some(t),
    };
    Ok((entry, bytes))
}

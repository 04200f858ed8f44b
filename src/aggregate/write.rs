//! The writer, as a stream method: `rows.write_aggregates(cuts, spec, shared)`: changed rows →
//! one Parquet file per changed partition and commit.
//!
//! In: the consolidated updates — per key and epoch, the merged partial aggregate of its
//! records (and the loader's loads and evictions) — and the cluster's commit boundaries. Out: the files of each commit ([`Report::Files`],
//! with the files they replace in `removed`) at the commit's first epoch, once all are durable.
//!
//! Updates wait until their epoch is sealed (both inputs' frontiers passed it), then the writer
//! adds them to the rows it keeps per partition: the row of a key is the sum of every update of
//! it so far, and a row whose count reaches zero (an eviction) leaves. A partition is *dirty* when a record changed
//! one of its rows (loads and evictions are quiet, see [`super::load`]). When a boundary is
//! reached, every dirty partition of the commit gets a new file holding all of its rows, named
//! with the commit's first epoch, and the file it had is listed as removed — the manifest and
//! the Delta commit carry both, so a reader sees the old rows or the new ones, never neither
//! and never both. A partition left without rows (a `vehicle_latest` day whose vehicles all moved
//! on) only loses its file. The writer holds a capability at the first epoch of the commit it
//! fills, so the committer cannot commit past it before its files are durable.

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
use super::shared::{Part, Shared};
use super::{AggSpec, table};
use crate::commit::manifest::FileEntry;
use crate::dataflow::Report;
use crate::epoch::Epoch;
use crate::error::{ErrorClass, PipelineError};
use crate::lake::FileKind;
use crate::sink::encode::ParquetEncoder;

/// An update of one row: its key, its epoch, the partial aggregate to add.
pub type RowChange = super::updates::Update;

/// The stage as a stream method.
pub trait WriteAggregates<'s> {
    /// Writes the changed partitions of every commit; `cuts` are the commit boundaries.
    fn write_aggregates(self, cuts: Stream<'s, Epoch, Vec<Epoch>>, spec: AggSpec, shared: Shared) -> Stream<'s, Epoch, Vec<Report>>;
}

type ReportOutput = OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Report>>>;

/// A file being uploaded: its entry, and the upload.
type Upload = (FileEntry, JoinHandle<Result<(), object_store::Error>>);

/// A closed commit whose files are being made durable.
struct Sealing {
    cap: Capability<Epoch>,
    uploads: Vec<Upload>,
    removed: Vec<String>,
    parts: Vec<Part>,
    sealed_at_us: i64,
}

impl<'s> WriteAggregates<'s> for Stream<'s, Epoch, Vec<RowChange>> {
    fn write_aggregates(self, cuts: Stream<'s, Epoch, Vec<Epoch>>, spec: AggSpec, shared: Shared) -> Stream<'s, Epoch, Vec<Report>> {
        let scope: Scope<'s, Epoch> = self.scope();
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
            let mut w = Writer { lower: spec.committed_below, ..Writer::default() };
            move |frontiers| {
                if spec.failure.is_set() {
                    return;
                }
                cuts_in.for_each(|_, data| w.cuts.extend(data.drain(..).filter(|b| *b > Epoch::ZERO)));
                // Differential's output batches carry updates of many times under a capability
                // at their lower bound: each change is filed under its own epoch.
                rows_in.for_each(|_, data| {
                    for change in data.drain(..) {
                        w.pending.entry(change.1).or_default().push(change);
                    }
                });
                // Sealed: every epoch below `bound` (both inputs passed it).
                let bound = [frontiers[0].frontier().first(), frontiers[1].frontier().first()].into_iter().flatten().min().copied();
                let finished = bound.is_none();
                let result = w.seal(&spec, &shared, &mut held, bound).and_then(|()| w.report(&spec, &shared, &mut out));
                if let Err(e) = result {
                    spec.failure.set(e);
                    return;
                }
                if finished && w.pending.is_empty() {
                    held = None;
                }
                if !w.sealing.is_empty() {
                    activator.activate_after(Duration::from_millis(2));
                }
            }
        });
        reports
    }
}

/// The writer's state.
#[derive(Default)]
struct Writer {
    /// Row changes of epochs not sealed yet.
    pending: BTreeMap<Epoch, Vec<RowChange>>,
    /// Commit boundaries not passed yet.
    cuts: BTreeSet<Epoch>,
    /// First epoch of the commit being filled.
    lower: Epoch,
    /// Partitions a record changed in the commit being filled.
    dirty: BTreeSet<Part>,
    /// Closed commits whose files are not all durable yet.
    sealing: Vec<Sealing>,
}

impl Writer {
    /// Applies every sealed epoch's changes, closing the commit at each boundary reached (and
    /// everything once the input is done: `bound` is `None`).
    fn seal(&mut self, spec: &AggSpec, shared: &Shared, held: &mut Option<Capability<Epoch>>, bound: Option<Epoch>) -> Result<(), PipelineError> {
        let sealed = |e: Epoch| bound.is_none_or(|b| e < b);
        while let Some((&e, _)) = self.pending.first_key_value() {
            if !sealed(e) {
                break;
            }
            while let Some(b) = self.cuts.iter().copied().find(|b| *b > self.lower && *b <= e) {
                self.close(spec, shared, held, Some(b))?;
            }
            let changes = self.pending.remove(&e).expect("first key exists");
            self.apply(shared, e, changes);
        }
        {
            let mut s = shared.0.borrow_mut();
            if let Some(b) = bound {
                s.applied = s.applied.max(b);
                s.quiet = s.quiet.split_off(&b);
            } else {
                s.applied = Epoch::MAX;
                s.quiet.clear();
            }
        }
        // Every boundary whose epochs below are all sealed ends a commit.
        while let Some(b) = self.cuts.iter().copied().find(|b| *b > self.lower && sealed(*b - 1)) {
            self.close(spec, shared, held, Some(b))?;
        }
        if bound.is_none() && held.is_some() {
            self.close(spec, shared, held, None)?;
        }
        self.cuts.retain(|b| *b > self.lower);
        Ok(())
    }

    /// Adds the updates of epoch `e` to the partitions' rows; an update that is not quiet makes
    /// its row's partition dirty (both partitions when a `vehicle_latest` row moves to another
    /// day).
    fn apply(&mut self, shared: &Shared, e: Epoch, changes: Vec<RowChange>) {
        use differential_dataflow::difference::{IsZero, Semigroup};
        let mut s = shared.0.borrow_mut();
        let quiet = s.quiet.remove(&e).unwrap_or_default();
        for ((key, ()), _, diff) in changes {
            let loud = !quiet.contains(&key);
            let old_part = if key.table.windowed() { Some((key.table, key.bucket)) } else { s.latest_part.get(&key).copied() };
            let mut row = Agg::ZERO;
            if let Some(part) = old_part
                && let Some(rows) = s.rows.get_mut(&part)
                && let Some(old) = rows.remove(&key)
            {
                row = old;
                if rows.is_empty() {
                    s.rows.remove(&part);
                }
                if loud {
                    self.dirty.insert(part);
                    s.unsettled.insert(part);
                }
            }
            row.plus_equals(&diff);
            if row.is_zero() {
                s.latest_part.remove(&key);
                continue;
            }
            let part = (key.table, table::partition_of(&key, &row));
            if loud {
                self.dirty.insert(part);
                s.unsettled.insert(part);
            }
            if !key.table.windowed() {
                s.latest_part.insert(key.clone(), part);
            }
            s.rows.entry(part).or_default().insert(key, row);
        }
    }

    /// Closes the commit `[lower, upper)` (`None`: the last one): a new file for every dirty
    /// partition (and every partition of a rebuilt table), the old ones removed.
    fn close(&mut self, spec: &AggSpec, shared: &Shared, held: &mut Option<Capability<Epoch>>, upper: Option<Epoch>) -> Result<(), PipelineError> {
        let Some(cap) = held.as_mut() else { return Ok(()) };
        let lower = self.lower;
        let mut s = shared.0.borrow_mut();
        let mut parts: BTreeSet<Part> = std::mem::take(&mut self.dirty);
        parts.extend(std::mem::take(&mut s.rewrite));
        let mut uploads = Vec::new();
        let mut removed = Vec::new();
        for &part in &parts {
            if let Some(old) = s.files.remove(&part) {
                removed.push(old);
            }
            let Some(rows) = s.rows.get(&part) else { continue };
            let (entry, bytes) = encode(spec, part, rows, lower)?;
            s.files.insert(part, entry.path.clone());
            let (store, path) = (spec.lake.store.clone(), object_store::path::Path::from(entry.path.as_str()));
            let handle = spec.rt.spawn(async move { store.put(&path, bytes.into()).await.map(|_| ()) });
            uploads.push((entry, handle));
        }
        if !uploads.is_empty() || !removed.is_empty() {
            tracing::debug!(lower = lower.get(), files = uploads.len(), removed = removed.len(), "aggregate commit closed");
            self.sealing.push(Sealing { cap: cap.clone(), uploads, removed, parts: parts.into_iter().collect(), sealed_at_us: crate::clock::now_micros() });
        } else {
            for part in &parts {
                s.unsettled.remove(part);
            }
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
    fn report(&mut self, spec: &AggSpec, shared: &Shared, out: &mut ReportOutput) -> Result<(), PipelineError> {
        let mut i = 0;
        while i < self.sealing.len() {
            if !self.sealing[i].uploads.iter().all(|(_, h)| h.is_finished()) {
                i += 1;
                continue;
            }
            let done = self.sealing.remove(i);
            let mut files = Vec::with_capacity(done.uploads.len());
            for (entry, handle) in done.uploads {
                match spec.rt.block_on(handle) {
                    Ok(Ok(())) => files.push(entry),
                    Ok(Err(e)) => {
                        return Err(PipelineError::caused(
                            ErrorClass::Transient,
                            format!("writing {} failed after retries: {}", entry.path, spec.lake.gave_up()),
                            e,
                        ));
                    }
                    Err(e) => return Err(PipelineError::caused(ErrorClass::Definite, format!("the upload task for {} failed", entry.path), e)),
                }
            }
            out.activate().session(&done.cap).give(Report::Files { files, removed: done.removed, sealed_at_us: done.sealed_at_us });
            // A partition stays unsettled while a later commit still has it dirty or uploading.
            let mut s = shared.0.borrow_mut();
            for part in done.parts {
                if !self.dirty.contains(&part) && !self.sealing.iter().any(|x| x.parts.contains(&part)) {
                    s.unsettled.remove(&part);
                }
            }
        }
        Ok(())
    }
}

/// One partition's rows as a Parquet file named for the commit starting at `lower`.
fn encode(spec: &AggSpec, (t, start): Part, rows: &BTreeMap<AggKey, Agg>, lower: Epoch) -> Result<(FileEntry, Vec<u8>), PipelineError> {
    let path = table::file_path(t, start, lower, &spec.run);
    let fail = |e: &dyn std::fmt::Display| PipelineError::new(ErrorClass::Definite, format!("encoding {path}: {e}"));
    let batch = table::to_batch(t, rows.iter()).map_err(|e| fail(&e))?;
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

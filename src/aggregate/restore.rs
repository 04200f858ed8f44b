//! The aggregate state a worker starts from, read from the committed tables, and the rows of one
//! partition file read back when a record arrives for a partition that is not in memory.
//!
//! A table the newest manifest lists as maintained (`aggregates`) is *loaded*: its Delta table,
//! once it holds that manifest (process 0's publisher may still be bringing it up), names one
//! file per partition; the worker keeps the file names of the partitions it owns and reads the
//! rows of those within the horizon (all of `vehicle_latest`). A table it does not list — a lake
//! written before the aggregates existed, or by runs with the table switched off — is *rebuilt*
//! from the stream table it summarises, read through Delta (committed rows only), and every file
//! the stale table had is replaced or removed at the first commit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use differential_dataflow::difference::Semigroup;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::key::{Agg, AggKey, owner};
use super::table::{self, partition_of_path};
use super::write::Part;
use super::{AggSpec, AggTable, Selection, updates};
use crate::commit::manifest::Manifest;
use crate::contract::EventTime;
use crate::contract::timestamp::HOUR;
use crate::delta::Table;
use crate::error::{ErrorClass, PipelineError};
use crate::lake::Lake;

/// What a worker starts from.
#[derive(Debug, Default)]
pub struct Initial {
    /// The file of every owned partition of every maintained table.
    pub files: BTreeMap<Part, String>,
    /// Rows read from the tables (partitions within the horizon): already committed, not
    /// changes.
    pub loaded: Vec<(AggKey, Agg)>,
    /// Rows recomputed from the stream tables for rebuilt tables: changes, written at the first
    /// commit.
    pub rebuilt: Vec<(AggKey, Agg)>,
    /// Partitions of rebuilt tables that had a file: rewritten or removed at the first commit.
    pub rewrite: BTreeSet<Part>,
}

/// Whether the newest manifest `previous` says `table` was maintained through it (a new lake:
/// trivially).
pub fn maintained(previous: Option<&Manifest>, table: AggTable) -> bool {
    previous.is_none_or(|m| m.aggregates.contains(&table))
}

/// The state worker `index` of `peers` starts from.
pub async fn initial(spec: &AggSpec, index: usize, peers: usize) -> Result<Initial, PipelineError> {
    let mut init = Initial::default();
    let Some(previous) = spec.previous.as_ref() else { return Ok(init) };
    let started = Instant::now();
    let watermark = spec.clock.start_of(spec.committed_below);
    let owned = |key: &AggKey| owner(key.table, key.bucket, peers) == index;
    for &t in spec.tables.tables() {
        let bucket_of = |part: EventTime| if t.windowed() { part } else { EventTime::UNIX_EPOCH };
        let snapshot =
            if maintained(Some(previous), t) { Some(current(&spec.lake, Table::Aggregate(t), previous.sequence).await?) } else { stale(&spec.lake, t).await? };
        for (path, _) in snapshot.unwrap_or_default() {
            let Some(part) = partition_of_path(&path) else { continue };
            if owner(t, bucket_of(part), peers) == index {
                init.files.insert((t, part), path);
            }
        }
        if maintained(Some(previous), t) {
            for ((table, part), path) in init.files.range((t, EventTime(i64::MIN))..=(t, EventTime::MAX)) {
                if !t.windowed() || part.micros() + HOUR + spec.horizon_us() > watermark.micros() {
                    init.loaded.extend(load_file(&spec.lake, *table, path).await?);
                }
            }
        } else {
            tracing::info!(table = t.name(), "the aggregate table was not maintained by every commit of this lake: rebuilding it from the committed rows");
            init.rewrite.extend(init.files.keys().filter(|(table, _)| *table == t).copied());
        }
    }
    let rebuilt: Vec<AggTable> = spec.tables.tables().iter().copied().filter(|t| !maintained(Some(previous), *t)).collect();
    if !rebuilt.is_empty() {
        init.rebuilt = rebuild(spec, previous, &rebuilt, index, peers).await?;
        init.rebuilt.retain(|(k, _)| owned(k));
    }
    tracing::info!(
        worker = index,
        partitions = init.files.len(),
        loaded_rows = init.loaded.len(),
        rebuilt_rows = init.rebuilt.len(),
        ms = started.elapsed().as_millis() as u64,
        "aggregate state read from the committed tables"
    );
    Ok(init)
}

/// The rows of one file of `table`.
pub async fn load_file(lake: &Lake, table: AggTable, path: &str) -> Result<Vec<(AggKey, Agg)>, PipelineError> {
    let mut rows = Vec::new();
    for batch in read_batches(lake, path, "reading the aggregate file").await? {
        rows.extend(table::from_batch(table, &batch).map_err(|e| PipelineError::caused(ErrorClass::Definite, format!("loading the rows of {path}"), e))?);
    }
    Ok(rows)
}

/// The record batches of the Parquet file at `path` (under the output root); `doing` names the
/// purpose in errors.
async fn read_batches(lake: &Lake, path: &str, doing: &str) -> Result<Vec<RecordBatch>, PipelineError> {
    let read = |e: object_store::Error| PipelineError::caused(ErrorClass::Transient, format!("{doing} {path}: {}", lake.gave_up()), e);
    let bytes = lake.store.get(&Path::from(path)).await.map_err(read)?.bytes().await.map_err(read)?;
    let decode = |e: parquet::errors::ParquetError| PipelineError::caused(ErrorClass::Definite, format!("{doing} {path}"), e);
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build()).map_err(decode)?;
    reader.map(|batch| batch.map_err(|e| PipelineError::caused(ErrorClass::Definite, format!("{doing} {path}"), e))).collect()
}

/// The active files (path under the output root, size) of an opened table's snapshot.
fn active_files(snapshot: &deltalake::table::state::DeltaTableState, table: Table) -> Vec<(String, i64)> {
    snapshot.log_data().iter().map(|f| (format!("{}/{}", table.dir(), f.path()), f.size())).collect()
}

/// The active files (path under the output root, size) of `table` once it holds manifest
/// `sequence`: waits, within the lake's retry budget, for process 0's publisher to bring it up.
async fn current(lake: &Lake, table: Table, sequence: u64) -> Result<Vec<(String, i64)>, PipelineError> {
    let started = Instant::now();
    let fail =
        |e: deltalake::DeltaTableError| PipelineError::caused(ErrorClass::Transient, format!("reading the Delta table {} to restore it", table.name()), e);
    loop {
        // The `txn` is read without the file list; the table is opened whole once it is current.
        if lake.delta().held_manifest(table).await.map_err(fail)?.is_some_and(|held| held >= sequence)
            && let Some(t) = lake.delta().open(table).await.map_err(fail)?
        {
            return Ok(active_files(t.snapshot().map_err(fail)?, table));
        }
        if started.elapsed() >= lake.retry_timeout {
            let message = format!(
                "the Delta table {} does not hold manifest {sequence} after {:?}: process 0 publishes it at start ({})",
                table.name(),
                lake.retry_timeout,
                lake.gave_up()
            );
            return Err(PipelineError::new(ErrorClass::Transient, message));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The active files of a stale aggregate table, if it exists (whatever manifest it holds).
async fn stale(lake: &Lake, t: AggTable) -> Result<Option<Vec<(String, i64)>>, PipelineError> {
    let table = Table::Aggregate(t);
    let fail = |e: deltalake::DeltaTableError| PipelineError::caused(ErrorClass::Transient, format!("reading the Delta table {}", table.name()), e);
    let Some(opened) = lake.delta().open(table).await.map_err(fail)? else { return Ok(None) };
    Ok(Some(active_files(opened.snapshot().map_err(fail)?, table)))
}

/// The rows of `tables` recomputed from the committed rows of their streams (as of manifest
/// `previous`), for the keys worker `index` of `peers` owns: each worker reads the files of the
/// hours whose buckets it owns (every file, where a window may cross an hour, and for
/// `vehicle_latest`'s owner).
async fn rebuild(spec: &AggSpec, previous: &Manifest, tables: &[AggTable], index: usize, peers: usize) -> Result<Vec<(AggKey, Agg)>, PipelineError> {
    let window_us = spec.clock.window_us;
    let mut merged: foldhash::HashMap<AggKey, Agg> = Default::default();
    let streams: BTreeSet<_> = tables.iter().map(|t| t.stream()).collect();
    for stream in streams {
        let of_stream: Vec<AggTable> = tables.iter().copied().filter(|t| t.stream() == stream).collect();
        let selection = Selection(of_stream.clone());
        let every_file = of_stream.iter().any(|t| !t.windowed() && owner(*t, EventTime::UNIX_EPOCH, peers) == index)
            || (of_stream.contains(&AggTable::SpeedMinute) && HOUR % window_us != 0);
        let files = current(&spec.lake, Table::Stream(stream), previous.sequence).await?;
        for (path, _) in files {
            let hour = partition_of_path(&path).unwrap_or(EventTime::UNIX_EPOCH);
            if !every_file && !of_stream.iter().any(|t| t.windowed() && owner(*t, hour, peers) == index) {
                continue;
            }
            for batch in read_batches(&spec.lake, &path, "reading, to rebuild the aggregates,").await? {
                let add = |key: AggKey, agg: Agg| merged.entry(key).or_insert(Agg::ZERO).plus_equals(&agg);
                updates::rows_of_batch(stream, &batch, &selection, window_us, add)
                    .map_err(|e| PipelineError::caused(ErrorClass::Definite, format!("rebuilding the aggregates from {path}"), e))?;
            }
            // Keep only the keys this worker owns as it goes, so that memory holds its share.
            merged.retain(|k, _| owner(k.table, k.bucket, peers) == index);
        }
    }
    Ok(merged.into_iter().collect())
}

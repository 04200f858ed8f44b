//! `citystream compact`: rewrites the small files of sealed hour partitions into files of a
//! target size, as one Delta commit per partition group of `remove` + `add` actions with
//! `dataChange = false`.
//!
//! Why it is safe while a cluster writes: the publisher only ever *adds* files, and a Delta
//! commit whose actions do not change data does not conflict with concurrent appends (the
//! conflict check only fails when two commits remove the same file — two compactions at once
//! — and then the loser's new file is deleted and nothing changed). Rows are copied, never
//! changed, so a query returns the same rows before and after; readers of an older version keep
//! finding the removed files until `citystream vacuum` deletes them after the retention period.
//! Hive-layout readers (those that list folders instead of reading the Delta log) see both the
//! old and the new files until then: they must read through Delta, or only after a vacuum.
//!
//! New files are named `<stream>-compacted-v<table version>-<uuid>.parquet`: no epoch in the
//! name, so the start-up garbage collection of uncommitted objects never mistakes them for
//! the objects of a crashed run.

use std::collections::BTreeMap;
use std::time::Duration;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, DeltaTableError};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::Table;
use crate::lake::Lake;
use crate::sink::encode::{EncodeOptions, ParquetEncoder};

/// Part size of the new file's multipart upload.
const UPLOAD_PART: usize = 8 << 20;

/// What to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Only hour partitions that ended at least this long ago (event time vs. wall clock).
    pub older_than: Duration,
    /// Size the new files aim for (bytes); files at least half of it are left alone.
    pub target_size: u64,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
}

/// What compaction did to one table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CompactReport {
    /// The table's path under the output (`<stream>` or `_dead_letter/<stream>`).
    pub table: String,
    /// Active files before.
    pub files_before: usize,
    /// Active files after.
    pub files_after: usize,
    /// Partitions rewritten.
    pub partitions: usize,
    /// Rows copied.
    pub rows: u64,
    /// Delta commits written.
    pub commits: usize,
}

/// Why compaction stopped.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// A Delta operation failed.
    #[error("compacting {table}: {source}")]
    Delta {
        /// The table's path under the output.
        table: &'static str,
        /// The Delta error.
        #[source]
        source: DeltaTableError,
    },
    /// Reading or writing a file failed.
    #[error("compacting {table}: {message}")]
    File {
        /// The table's path under the output.
        table: &'static str,
        /// What failed.
        message: String,
    },
}

/// One active file of a table.
#[derive(Debug, Clone)]
struct Active {
    path: String,
    size: u64,
    remove: deltalake::kernel::Remove,
}

/// Compacts every raw table of `lake` that exists. The aggregate tables are left alone: each of
/// their partitions is one file already, rewritten by the cluster whenever its rows change (a
/// compaction there would remove a file the cluster is about to replace).
pub async fn compact_lake(lake: &Lake, opts: &CompactOptions) -> Result<Vec<CompactReport>, CompactError> {
    let mut reports = Vec::new();
    for table in Table::raw() {
        let opened = lake.delta().open(table).await.map_err(|source| CompactError::Delta { table: table.name(), source })?;
        if let Some(t) = opened {
            reports.push(compact_table(lake, table, t, opts).await?);
        }
    }
    Ok(reports)
}

/// The end of the hour a partition holds, from its `date` and `hour`.
fn partition_end(values: &std::collections::HashMap<String, Option<String>>) -> Option<crate::contract::EventTime> {
    let date = values.get("date")?.as_deref()?;
    let hour: i64 = values.get("hour")?.as_deref()?.parse().ok()?;
    let start = crate::contract::timestamp::parse_timestamp(&format!("{date}T00:00:00Z"), 0).ok()?;
    Some(start + (hour + 1) * crate::contract::timestamp::HOUR)
}

/// Compacts one table: per sealed partition, its files under half the target size, packed
/// into groups of at most the target size, each group one new file; the groups' Remove + Add
/// actions are committed together, many partitions per commit (see `Pending`).
pub async fn compact_table(lake: &Lake, table: Table, mut t: DeltaTable, opts: &CompactOptions) -> Result<CompactReport, CompactError> {
    let name = table.name();
    let delta = |source| CompactError::Delta { table: name, source };
    let snapshot = t.snapshot().map_err(delta)?;
    let now = crate::clock::now_micros();
    let mut by_partition: BTreeMap<Vec<(String, Option<String>)>, Vec<Active>> = BTreeMap::new();
    let mut files_before = 0;
    for f in snapshot.log_data().iter() {
        files_before += 1;
        let values = f.partition_values_map();
        let sealed = partition_end(&values).is_some_and(|end| end + opts.older_than.as_micros() as i64 <= crate::contract::EventTime(now));
        if !sealed || f.size() as u64 >= opts.target_size / 2 {
            continue;
        }
        let mut key: Vec<(String, Option<String>)> = values.into_iter().collect();
        key.sort();
        by_partition.entry(key).or_default().push(Active { path: f.path().to_string(), size: f.size() as u64, remove: f.remove_action(false) });
    }
    let mut report = CompactReport { table: name.to_owned(), files_before, files_after: files_before, ..CompactReport::default() };
    let mut pending = Pending::default();
    for (_, mut files) in by_partition {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        // Greedy packing in name (epoch) order: a group closes when the next file would pass
        // the target.
        let mut groups: Vec<Vec<Active>> = vec![Vec::new()];
        for f in files {
            let size: u64 = groups.last().expect("one group").iter().map(|f| f.size).sum();
            if size + f.size > opts.target_size && !groups.last().expect("one group").is_empty() {
                groups.push(Vec::new());
            }
            groups.last_mut().expect("one group").push(f);
        }
        let mut touched = false;
        for group in groups.into_iter().filter(|g| g.len() >= 2) {
            touched = true;
            if opts.dry_run {
                report.files_after -= group.len() - 1;
                continue;
            }
            let (add, rows) = rewrite(lake, table, &t, &group).await?;
            pending.bytes += add.size as u64;
            pending.new_files.push(add.path.clone());
            pending.merged += group.len() - 1;
            pending.rows += rows;
            pending.actions.extend(group.iter().map(|f| Action::Remove(f.remove.clone())));
            pending.actions.push(Action::Add(add));
            pending.since.get_or_insert_with(std::time::Instant::now);
            if pending.due(opts.target_size) {
                pending.commit(lake, table, &mut t, opts, &mut report).await?;
            }
        }
        report.partitions += usize::from(touched);
    }
    pending.commit(lake, table, &mut t, opts, &mut report).await?;
    Ok(report)
}

/// Rewritten groups of one table not yet committed. Many partitions go into one Delta commit
/// (a lake of the original producer's time model has thousands of hour partitions: one commit
/// each would be thousands of table versions); a commit is cut at [`COMMIT_EVERY_FILES`] new
/// files, at the target size of new bytes, or after [`COMMIT_EVERY`], so that a crash loses
/// little work (its new files are orphans that `vacuum` deletes).
#[derive(Default)]
struct Pending {
    actions: Vec<Action>,
    new_files: Vec<String>,
    bytes: u64,
    merged: usize,
    rows: u64,
    since: Option<std::time::Instant>,
}

/// New files per compaction commit, at most.
const COMMIT_EVERY_FILES: usize = 1000;
/// Time between compaction commits, at most (while there is work).
const COMMIT_EVERY: Duration = Duration::from_secs(60);

impl Pending {
    fn due(&self, target_size: u64) -> bool {
        self.new_files.len() >= COMMIT_EVERY_FILES || self.bytes >= target_size || self.since.is_some_and(|s| s.elapsed() >= COMMIT_EVERY)
    }

    /// Commits what is pending as one Remove + Add commit (`dataChange = false`). On a
    /// conflict (another compaction removed one of these files first) nothing changed, the new
    /// files are deleted and the error returned.
    async fn commit(&mut self, lake: &Lake, table: Table, t: &mut DeltaTable, opts: &CompactOptions, report: &mut CompactReport) -> Result<(), CompactError> {
        if self.new_files.is_empty() {
            return Ok(());
        }
        let delta = |source| CompactError::Delta { table: table.name(), source };
        let done = std::mem::take(self);
        let properties = CommitProperties::default().with_create_checkpoint(false).with_cleanup_expired_logs(Some(false));
        let operation = DeltaOperation::Optimize { predicate: None, target_size: opts.target_size as i64 };
        let committed = match t.snapshot() {
            Ok(snapshot) => CommitBuilder::from(properties).with_actions(done.actions).build(Some(snapshot), t.log_store(), operation).await,
            Err(e) => Err(e),
        };
        match committed {
            Ok(finished) => {
                t.state = Some(finished.snapshot);
                report.files_after -= done.merged;
                report.rows += done.rows;
                report.commits += 1;
                Ok(())
            }
            Err(e) => {
                for path in &done.new_files {
                    let _ = lake.store.delete(&Path::from(format!("{}/{path}", table.dir()))).await;
                }
                Err(delta(e))
            }
        }
    }
}

/// Copies the rows of `group` (in order) into one new file in their partition's folder;
/// returns its `add` (`dataChange = false`, statistics from the new footer) and the row count.
///
/// Streams: one input file is in memory at a time (inputs are under half the target size), and
/// the new file goes out as a multipart upload in parts of [`UPLOAD_PART`] as it is encoded, so
/// memory stays near one input file plus one row group, whatever the target size.
async fn rewrite(lake: &Lake, table: Table, t: &DeltaTable, group: &[Active]) -> Result<(Add, u64), CompactError> {
    let name = table.name();
    let file_error = |message: String| CompactError::File { table: name, message };
    let folder = group[0].path.rsplit_once('/').map_or("", |(dir, _)| dir);
    let stream = match table {
        Table::Stream(s) => s.name(),
        Table::DeadLetter => "dead_letter",
        Table::Aggregate(a) => a.name(),
    };
    let version = t.version().unwrap_or(0);
    let file = format!("{folder}/{stream}-compacted-v{version}-{}.parquet", uuid_simple());
    let store: &dyn ObjectStore = lake.store.as_ref();
    let target = Path::from(format!("{}/{file}", table.dir()));
    let upload = store.put_multipart(&target).await.map_err(|e| file_error(format!("writing {file}: {e}")))?;
    let mut out = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART);
    let mut encoder: Option<ParquetEncoder> = None;
    let mut size = 0u64;
    let copied = async {
        for f in group {
            let path = Path::from(format!("{}/{}", table.dir(), f.path));
            let read_error = |e: &dyn std::fmt::Display| file_error(format!("reading {path}: {e}"));
            let bytes = lake.store.get(&path).await.map_err(|e| read_error(&e))?.bytes().await.map_err(|e| read_error(&e))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| read_error(&e))?;
            let enc = match encoder {
                Some(ref mut enc) => enc,
                None => encoder.insert(ParquetEncoder::new(builder.schema().clone(), &EncodeOptions::default()).map_err(|e| file_error(e.to_string()))?),
            };
            for batch in builder.build().map_err(|e| read_error(&e))? {
                enc.write(&batch.map_err(|e| read_error(&e))?).map_err(|e| file_error(e.to_string()))?;
                let encoded = enc.take_bytes();
                size += encoded.len() as u64;
                out.wait_for_capacity(2).await.map_err(|e| file_error(format!("writing {file}: {e}")))?;
                out.write(&encoded);
            }
        }
        Ok::<_, CompactError>(())
    }
    .await;
    let (Some(encoder), Ok(())) = (encoder, &copied) else {
        out.abort().await.ok();
        return Err(copied.err().unwrap_or_else(|| file_error("the files to compact hold no rows".into())));
    };
    let schema = encoder.schema();
    let rows = encoder.rows();
    let metadata = vec![("citystream.compacted_from".to_owned(), group.len().to_string()), ("citystream.table".to_owned(), name.to_owned())];
    let (tail, footer) = match encoder.close(metadata) {
        Ok(closed) => closed,
        Err(e) => {
            out.abort().await.ok();
            return Err(file_error(e.to_string()));
        }
    };
    size += tail.len() as u64;
    out.write(&tail);
    out.finish().await.map_err(|e| file_error(format!("writing {file}: {e}")))?;
    let add = Add {
        path: file,
        partition_values: group[0].remove.partition_values.clone().unwrap_or_default(),
        size: size as i64,
        modification_time: crate::clock::now_micros() / 1000,
        data_change: false,
        stats: Some(super::stats::stats_json(&schema, &footer)),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    };
    Ok((add, rows))
}

/// A random 128-bit hex name part (no dashes).
fn uuid_simple() -> String {
    format!("{:016x}{:016x}", crate::clock::random_u64(), crate::clock::random_u64())
}

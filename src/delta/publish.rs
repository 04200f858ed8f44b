//! Publishing durable manifests to the Delta tables: the second level of the commit.
//!
//! The committer writes manifest `n` (the cluster's commit point); then this module adds the
//! objects of `n` to every table in one Delta commit per table, with
//! `txn(appId = citystream/<table>, version = n)` and the manifest's sequence, epoch range and
//! resume offsets in `commitInfo`. Every table gets a commit for every manifest, with or
//! without objects for it, so that each table's `txn` version is the manifest it is current
//! with. Manifests that queue up while a commit is in flight go out together in the next one
//! (its `txn` version is the last of them).
//!
//! Idempotent by construction: before each commit the table's `txn` version says what it
//! already holds, and only newer manifests are added. A commit is written at the version after
//! the newest one the publisher knows, never rebased: if the log moved on — an ambiguous
//! earlier attempt that landed although its answer was lost, another publisher of the same
//! chain, a compaction — the write fails, the log is read again, and the `txn` version
//! decides: the manifests are in (nothing to do) or the commit is tried again at the new
//! version. So a retry never publishes twice (tested in `tests/delta.rs`). Publishing never deletes anything and
//! only ever reads manifests from the chain, so several publishers of one chain (a restarted
//! cluster and a zombie) cannot duplicate a row either.
//!
//! The publisher never holds a table's file list. It keeps what a blind append needs — the
//! log's version, protocol and properties, read through the Delta kernel — and writes each
//! commit itself, as one create-if-absent log entry of the table's log store (what delta-rs's
//! own commit does on these stores). delta-rs's `DeltaTable` would materialize every active
//! file and replay each new commit into that list after every publish: memory and time that
//! grow with the table (on the original producer's time model, tens of thousands of small
//! objects in one run) for a list this path never reads.
//!
//! Checkpoints (every [`CHECKPOINT_INTERVAL`] versions) and the log clean-up run in a
//! background task after the commit that crossed the interval, never in the way of the next
//! publish.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use delta_kernel::{Snapshot, SnapshotRef};
use deltalake::DeltaTableError;
use deltalake::kernel::transaction::CommitData;
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::logstore::{CommitOrBytes, LogStoreRef};
use deltalake::protocol::{DeltaOperation, OutputMode};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{CHECKPOINT_INTERVAL, Table, blocking, read_log, table_root};
use crate::commit::manifest::{self, FileEntry, Manifest};
use crate::lake::Lake;

/// Why publishing stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A Delta operation failed for longer than the lake's retry budget.
    #[error("publishing manifest {sequence} to the Delta table {table}: {source}")]
    Delta {
        /// The table's path under the output.
        table: &'static str,
        /// Sequence number of the manifest being published.
        sequence: u64,
        /// What failed last.
        #[source]
        source: DeltaTableError,
    },
    /// A manifest the table lacks could not be read from the chain.
    #[error("reading manifest {sequence} to republish it: {source}")]
    Manifest {
        /// Sequence number of the manifest that could not be read.
        sequence: u64,
        /// Why.
        #[source]
        source: manifest::ManifestError,
    },
}

/// What publishing did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PublishSummary {
    /// Delta commits written, over all tables.
    pub commits: u64,
    /// Objects added, over all tables.
    pub files: u64,
    /// The newest manifest every table holds.
    pub head: Option<u64>,
}

/// One open table: where its log stands and the manifest it is known to hold (read from its
/// log once, then kept), never its file list.
struct TableState {
    table: Table,
    log_store: LogStoreRef,
    /// The table as last read from its log: version, protocol, properties.
    snapshot: SnapshotRef,
    /// The newest version of the log this publisher knows: the snapshot's, or its own last
    /// commit (which changes neither protocol nor properties).
    version: u64,
    held: Option<u64>,
    /// `version / CHECKPOINT_INTERVAL` of the last checkpoint this publisher wrote (of the
    /// version it found at open, at first): a checkpoint is due when a commit of ours enters a
    /// later interval, also when another writer (a compaction) took the round version itself.
    checkpoint_round: u64,
}

impl TableState {
    /// Opens `table` of `lake`, creating it where missing.
    async fn open(lake: &Lake, table: Table) -> Result<TableState, DeltaTableError> {
        let log_store = lake.delta().create_if_missing(table).await?;
        let snapshot = read_log(&log_store, None).await?;
        let version = snapshot.version();
        Ok(TableState { table, log_store, snapshot, version, held: None, checkpoint_round: version / CHECKPOINT_INTERVAL })
    }

    /// Reads the log again, from where this publisher last read it; the held manifest is
    /// read again when next asked.
    async fn reload(&mut self) -> Result<(), DeltaTableError> {
        self.held = None;
        self.snapshot = read_log(&self.log_store, Some(self.snapshot.clone())).await?;
        self.version = self.snapshot.version();
        Ok(())
    }

    /// The manifest the table holds, by its `txn` (0: none), as of the snapshot.
    async fn read_held(&self) -> Result<u64, DeltaTableError> {
        super::held_manifest(&self.log_store, self.snapshot.clone(), self.table).await
    }

    /// The manifest the table holds: as last seen, or read from its log.
    async fn held(&mut self) -> Result<u64, DeltaTableError> {
        if let Some(v) = self.held {
            return Ok(v);
        }
        let v = self.read_held().await?;
        self.held = Some(v);
        Ok(v)
    }
}

/// The lake's tables, opened (created where missing), each with the manifest it is current
/// with.
pub struct Publisher {
    lake: Lake,
    run: String,
    tables: Vec<TableState>,
    summary: PublishSummary,
}

impl Publisher {
    /// Opens (or creates) `tables` of `lake`: the raw tables and the aggregates a run
    /// maintains ([`Table::maintained`]).
    pub async fn open(lake: &Lake, run: &str, tables: Vec<Table>) -> Result<Publisher, PublishError> {
        let opened = futures::future::join_all(tables.into_iter().map(|table| with_retries(lake, table, 0, move || TableState::open(lake, table)))).await;
        let tables = opened.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Publisher { lake: lake.clone(), run: run.to_owned(), tables, summary: PublishSummary::default() })
    }

    /// What was published so far.
    pub fn summary(&self) -> &PublishSummary {
        &self.summary
    }

    /// Brings every table up to manifest `head`, reading the manifests a table lacks from the
    /// chain (after a crash between a manifest and its publication, or on a lake written
    /// before the tables existed).
    pub async fn catch_up(&mut self, head: u64) -> Result<(), PublishError> {
        self.publish(&[], head).await
    }

    /// Publishes `manifests` (ascending) to every table that lacks them, the six tables at
    /// once; any older manifest a table lacks, up to `head` at least, is read from the chain
    /// first.
    pub async fn publish(&mut self, manifests: &[Manifest], head: u64) -> Result<(), PublishError> {
        let head = manifests.last().map_or(head, |m| m.sequence.max(head));
        let mut lowest = head;
        for t in &mut self.tables {
            let held = t.held().await.map_err(|source| PublishError::Delta { table: t.table.name(), sequence: head, source })?;
            lowest = lowest.min(held);
        }
        if lowest < head {
            let mut cache: BTreeMap<u64, Manifest> = manifests.iter().map(|m| (m.sequence, m.clone())).collect();
            for sequence in lowest + 1..=head {
                if let std::collections::btree_map::Entry::Vacant(slot) = cache.entry(sequence) {
                    let m = manifest::read(&self.lake, sequence).await.map_err(|source| PublishError::Manifest { sequence, source })?;
                    slot.insert(m);
                }
            }
            let (lake, run, cache) = (&self.lake, self.run.as_str(), &cache);
            let results = futures::future::join_all(self.tables.iter_mut().map(|t| bring_up(lake, run, t, cache, head))).await;
            for result in results {
                let (commits, files) = result?;
                self.summary.commits += commits;
                self.summary.files += files;
            }
        }
        self.summary.head = Some(head);
        Ok(())
    }
}

/// Brings one table up to `head` with the manifests of `cache`: one Delta commit adding the
/// objects of every manifest it lacks, with its `txn` at the last. Retried until the lake's
/// retry budget is spent; after a failure the log is read again and what the table lacks is
/// recomputed (an attempt whose answer was lost, or another publisher, may have added some or
/// all of it). Returns commits made and objects added.
async fn bring_up(lake: &Lake, run: &str, t: &mut TableState, cache: &BTreeMap<u64, Manifest>, head: u64) -> Result<(u64, u64), PublishError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut failed = false;
    loop {
        match attempt(run, t, cache, head, failed).await {
            Ok(done) => {
                if failed && done.0 == 0 {
                    tracing::info!(
                        table = t.table.name(),
                        manifest = head,
                        "the table already holds the manifest (an earlier attempt landed): nothing to publish"
                    );
                }
                return Ok(done);
            }
            Err(e) => {
                if started.elapsed() + pause >= lake.retry_timeout {
                    return Err(PublishError::Delta { table: t.table.name(), sequence: head, source: e });
                }
                tracing::warn!(table = t.table.name(), manifest = head, error = %e, "publishing to Delta failed; retrying in {pause:?}");
                failed = true;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One attempt of [`bring_up`]: reads the log again first if `reread` (the last attempt
/// failed), then commits what the table lacks at the version after the newest it knows. Any
/// newer version (another publisher, a compaction, an attempt of ours whose answer was lost)
/// fails the commit; the next attempt decides by the `txn` version it then reads.
async fn attempt(run: &str, t: &mut TableState, cache: &BTreeMap<u64, Manifest>, head: u64, reread: bool) -> Result<(u64, u64), DeltaTableError> {
    if reread {
        t.reload().await?;
    }
    let have = t.held().await?;
    if have >= head {
        return Ok((0, 0));
    }
    let table = t.table;
    let batch: Vec<&Manifest> = cache.range(have + 1..=head).map(|(_, m)| m).collect();
    let actions: Vec<Action> = table_changes(table, &batch);
    let files = actions.iter().filter(|a| matches!(a, Action::Add(_))).count() as u64;
    let txn = Transaction::new_with_last_update(table.app_id(), head as i64, Some(crate::clock::now_micros() / 1000));
    let operation = DeltaOperation::StreamingUpdate { output_mode: OutputMode::Append, query_id: format!("citystream-{run}"), epoch_id: head as i64 };
    let version = t.version + 1;
    write_commit(&t.log_store, version, CommitData::new(actions, operation, commit_info(&batch, run), vec![txn])).await?;
    t.version = version;
    t.held = Some(head);
    tracing::debug!(table = table.name(), version, manifest = head, files, "published to Delta");
    if version / CHECKPOINT_INTERVAL > t.checkpoint_round {
        t.checkpoint_round = version / CHECKPOINT_INTERVAL;
        maintain_in_background(t.log_store.clone(), t.snapshot.clone(), version);
    }
    Ok((1, files))
}

/// Retries an operation on `table` within the lake's retry budget.
async fn with_retries<T, F, Fut>(lake: &Lake, table: Table, sequence: u64, mut op: F) -> Result<T, PublishError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DeltaTableError>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() + pause < lake.retry_timeout => {
                tracing::warn!(table = table.name(), error = %e, "opening the Delta table failed; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(source) => return Err(PublishError::Delta { table: table.name(), sequence, source }),
        }
    }
}

/// The actions that bring `table` from before `batch` (ascending manifests) to after it: an
/// `add` for each of its objects, and for an aggregate table a `remove` for each file the
/// manifests replace. A file added and replaced within the batch appears in neither (Delta
/// forbids a path in two actions of one commit, and no reader could have seen it).
fn table_changes(table: Table, batch: &[&Manifest]) -> Vec<Action> {
    let files: Vec<&FileEntry> = batch.iter().flat_map(|m| m.files.iter()).filter(|f| Table::of(f) == table).collect();
    let removed: std::collections::HashSet<&str> =
        batch.iter().flat_map(|m| m.removed.iter()).map(String::as_str).filter(|p| Table::of_path(p) == Some(table)).collect();
    let added: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let mut actions: Vec<Action> = files.into_iter().filter(|f| !removed.contains(f.path.as_str())).filter_map(|f| add_action(table, f)).collect();
    let mut gone: Vec<&str> = removed.into_iter().filter(|p| !added.contains(p)).collect();
    gone.sort_unstable();
    actions.extend(gone.into_iter().filter_map(|p| remove_action(table, p)));
    actions
}

/// The `remove` of an aggregate file a newer file replaced: its path inside the table and
/// partition values, `dataChange = true` (its rows are superseded, not copied).
fn remove_action(table: Table, path: &str) -> Option<Action> {
    let (path, partition_values) = table.relative(path)?;
    Some(Action::Remove(deltalake::kernel::Remove {
        path,
        data_change: true,
        deletion_timestamp: Some(crate::clock::now_micros() / 1000),
        extended_file_metadata: Some(true),
        partition_values: Some(partition_values),
        size: None,
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    }))
}

/// The `add` of a committed object: its path inside the table, partition values from the
/// path, size, the writer's statistics, `dataChange = true`.
fn add_action(table: Table, f: &FileEntry) -> Option<Action> {
    let Some((path, partition_values)) = table.relative(&f.path) else {
        tracing::warn!(path = %f.path, table = table.name(), "object outside the table's layout (written by an older version): not published");
        return None;
    };
    let stats = f.stats.clone().or_else(|| Some(json!({ "numRecords": f.rows }).to_string()));
    Some(Action::Add(Add {
        path,
        partition_values,
        size: f.bytes as i64,
        modification_time: crate::clock::now_micros() / 1000,
        data_change: true,
        stats,
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }))
}

/// What `commitInfo` says about the manifests: sequence, epochs, run, and where every
/// partition resumes (the Kafka offsets this table version is consistent with).
fn commit_info(batch: &[&Manifest], run: &str) -> HashMap<String, Value> {
    let first = batch.first().expect("a batch holds a manifest");
    let last = batch.last().expect("a batch holds a manifest");
    let offsets: Vec<Value> =
        last.partitions.iter().map(|s| json!({ "stream": s.id.stream.name(), "partition": s.id.partition, "offset": s.position.offset })).collect();
    let citystream = json!({
        "manifests": [first.sequence, last.sequence],
        "epochs": [first.lower, last.upper],
        "run": last.run,
        "publisher": run,
        "offsets": offsets,
    });
    HashMap::from([("citystream".to_owned(), citystream)])
}

/// Writes `data` as version `version` of the log: one create-if-absent PUT (citystream's log
/// stores are all Delta's default one), which fails with `VersionAlreadyExists` if that
/// version exists. Whether the table accepts writes by this kernel was checked when its log
/// was read ([`read_log`]).
async fn write_commit(log_store: &LogStoreRef, version: u64, data: CommitData) -> Result<(), DeltaTableError> {
    let bytes = data.get_bytes()?;
    log_store.write_commit_entry(version, CommitOrBytes::LogBytes(bytes), uuid::Uuid::new_v4()).await.map_err(DeltaTableError::from)
}

/// Writes a checkpoint at `version` and deletes log entries older than the table's log
/// retention, in the background (a failure is logged: the next interval tries again).
/// `snapshot` is the newest one read (the log is read onward from it).
fn maintain_in_background(log_store: LogStoreRef, snapshot: SnapshotRef, version: u64) {
    tokio::spawn(async move {
        let url = table_root(&log_store);
        let engine = log_store.engine(None);
        let retention = snapshot.table_properties().log_retention_duration.unwrap_or(Duration::from_secs(30 * 24 * 3600));
        let checkpoint = blocking(move || {
            let at = Snapshot::builder_from(snapshot).at_version(version).build(engine.as_ref())?;
            at.checkpoint(engine.as_ref(), None).map(|_| ())
        });
        if let Err(e) = checkpoint.await {
            tracing::warn!(table = %url, version, error = %e, "writing a Delta checkpoint failed (the next interval tries again)");
            return;
        }
        let cutoff = crate::clock::now_micros() / 1000 - retention.as_millis() as i64;
        match deltalake::checkpoints::cleanup_expired_logs_for(version, log_store.as_ref(), cutoff, None).await {
            Ok(n) if n > 0 => tracing::info!(table = %url, deleted = n, "expired Delta log entries deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(table = %url, error = %e, "cleaning up the Delta log failed"),
        }
    });
}

/// Runs a publisher until `manifests` closes: first it brings every table up to `head` (the
/// cluster's claim), then publishes each durable manifest the committer sends, together with
/// any that queued up meanwhile.
pub async fn serve(lake: Lake, run: String, tables: Vec<Table>, head: u64, mut manifests: UnboundedReceiver<Manifest>) -> Result<PublishSummary, PublishError> {
    let mut publisher = Publisher::open(&lake, &run, tables).await?;
    publisher.catch_up(head).await?;
    let mut head = head;
    while let Some(first) = manifests.recv().await {
        let mut batch = vec![first];
        while let Ok(m) = manifests.try_recv() {
            batch.push(m);
        }
        head = head.max(batch.last().map_or(head, |m| m.sequence));
        publisher.publish(&batch, head).await?;
    }
    Ok(publisher.summary().clone())
}

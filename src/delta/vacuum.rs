//! `citystream vacuum`: deletes the files of a table folder that no table version needs any
//! more, after a retention period — the removed inputs of compactions, and orphans that crashed
//! or fenced writers left behind.
//!
//! A file is deleted only when all of these hold:
//! - the table's current version does not reference it;
//! - if it was removed by a commit (a tombstone), that was longer ago than the retention (a
//!   reader of an older version may still read it until then);
//! - it was written longer ago than the retention (a running compaction's new file is not yet
//!   committed);
//! - if its name carries a commit epoch (`<stream>-e<epoch>-…`), the epoch is below the end of
//!   the newest manifest the table holds: an object of a later epoch may belong to a commit in
//!   flight (the cluster is writing, or the publisher has not caught up), and the start-up
//!   garbage collection deals with those that no commit will ever list.
//!
//! The Delta log (`_delta_log/`) and anything not ending in `.parquet` are never touched, and a
//! table whose snapshot lists no active file is left alone entirely.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deltalake::DeltaTableError;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::Table;
use crate::commit::manifest;
use crate::epoch::Epoch;
use crate::lake::{Lake, epoch_of_file};

/// Retentions below this are refused unless explicitly allowed.
pub const MIN_SAFE_RETENTION: Duration = Duration::from_secs(3600);

/// What vacuum did to one table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VacuumReport {
    /// The table's path under the output (`<stream>` or `_dead_letter/<stream>`).
    pub table: String,
    /// Files deleted (or, with `--dry-run`, that would be).
    pub deleted: Vec<String>,
    /// Unreferenced files kept: younger than the retention, or of a commit in flight.
    pub kept: usize,
}

/// Why vacuum stopped.
#[derive(Debug, thiserror::Error)]
pub enum VacuumError {
    /// A Delta operation failed.
    #[error("vacuuming {table}: {source}")]
    Delta {
        /// The table's path under the output.
        table: &'static str,
        /// The Delta error.
        #[source]
        source: DeltaTableError,
    },
    /// The store failed.
    #[error("vacuuming {table}: {source}")]
    Store {
        /// The table's path under the output.
        table: &'static str,
        /// The store error.
        #[source]
        source: object_store::Error,
    },
}

/// Vacuums every table of `lake` that exists.
pub async fn vacuum_lake(lake: &Lake, retention: Duration, dry_run: bool) -> Result<Vec<VacuumReport>, VacuumError> {
    let mut reports = Vec::new();
    for table in Table::all() {
        if let Some(report) = vacuum_table(lake, table, retention, dry_run).await? {
            reports.push(report);
        }
    }
    Ok(reports)
}

/// Vacuums one table; `None` if it does not exist.
pub async fn vacuum_table(lake: &Lake, table: Table, retention: Duration, dry_run: bool) -> Result<Option<VacuumReport>, VacuumError> {
    let name = table.name();
    let delta = |source| VacuumError::Delta { table: name, source };
    let Some(t) = lake.delta().open(table).await.map_err(delta)? else { return Ok(None) };
    let snapshot = t.snapshot().map_err(delta)?;
    let active: HashSet<String> = snapshot.log_data().iter().map(|f| f.path().to_string()).collect();
    let log_store = t.log_store();
    let mut removed_at: HashMap<String, i64> = HashMap::new();
    let mut tombstones = snapshot.all_tombstones(log_store.as_ref());
    while let Some(tombstone) = tombstones.next().await {
        let tombstone = tombstone.map_err(delta)?;
        removed_at.insert(tombstone.path().to_string(), tombstone.deletion_timestamp().unwrap_or(i64::MAX));
    }
    drop(tombstones);
    // The end of the newest manifest the table holds: objects of later epochs may be in flight.
    let held = snapshot.transaction_version(log_store.as_ref(), table.app_id()).await.map_err(delta)?.unwrap_or(0);
    let published_upper = if held > 0 { manifest::read(lake, held as u64).await.map(|m| m.upper).unwrap_or(Epoch::ZERO) } else { Epoch::ZERO };

    let now_ms = crate::clock::now_micros() / 1000;
    let retention_ms = retention.as_millis() as i64;
    let prefix = Path::from(table.dir());
    let listed: Vec<_> = lake.store.list(Some(&prefix)).try_collect().await.map_err(|source| VacuumError::Store { table: name, source })?;
    let mut report = VacuumReport { table: name.to_owned(), ..VacuumReport::default() };
    if active.is_empty() && held > 0 {
        // A table that holds a manifest but whose snapshot lists no file: either nothing of it
        // was ever written, or the snapshot came without its file list (delta-rs can load one
        // lazily). Both ways nothing here is provably unreferenced: keep every file.
        tracing::warn!(table = name, held, "the table's snapshot lists no active file: vacuum keeps all of its files");
        report.kept = listed.iter().filter(|m| m.location.as_ref().ends_with(".parquet")).count();
        return Ok(Some(report));
    }
    for meta in listed {
        let Some(relative) = meta.location.as_ref().strip_prefix(table.dir()).and_then(|r| r.strip_prefix('/')) else { continue };
        if relative.starts_with("_delta_log/") || relative.split('/').any(|s| s.starts_with('.') || s.starts_with('_')) || !relative.ends_with(".parquet") {
            continue;
        }
        if active.contains(relative) {
            continue;
        }
        let written_ms = meta.last_modified.timestamp_millis();
        let since = removed_at.get(relative).copied().unwrap_or(i64::MIN).max(written_ms);
        let in_flight = epoch_of_file(&meta.location).is_some_and(|e| e >= published_upper);
        if in_flight || now_ms - since < retention_ms {
            report.kept += 1;
            continue;
        }
        if !dry_run {
            match lake.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(VacuumError::Store { table: name, source }),
            }
        }
        report.deleted.push(relative.to_owned());
    }
    Ok(Some(report))
}

//! Every stream, and the dead letters, as a Delta Lake table, so that *any* reader — Athena,
//! Spark, Trino, polars, Python `deltalake` — sees exactly the committed rows, once.
//!
//! The manifest chain stays the one atomic commit point of the whole cluster (all streams and
//! the Kafka offsets at once: Delta has no multi-table transaction). After a manifest is
//! durable, [`publish`] adds its objects to every table, one Delta commit per table, each
//! carrying an application transaction `txn(appId = citystream/<table>, version = manifest
//! sequence)`: a table's `txn` version says which manifests it holds, so publishing is
//! idempotent and a restart republishes exactly the manifests a table lacks.
//!
//! Tables live where the Hive layout always was (`<out>/<stream>/`, `<out>/_dead_letter/`) with
//! `_delta_log/` beside the `date=/hour=` folders. Protocol reader 1 / writer 2 (what Athena
//! and every other reader supports): `timestamp` columns (UTC, µs), partition columns only in
//! the path (`date` DATE, `hour` INT, and `stream` STRING for the dead letters), per-file
//! statistics in every `add`, `delta.appendOnly` on every table (compaction's `remove`s carry
//! `dataChange = false`, which append-only tables allow).

pub mod compact;
pub mod publish;
pub mod stats;
pub mod vacuum;

use std::collections::HashMap;
use std::sync::Arc;

use delta_kernel::committer::FileSystemCommitter;
use delta_kernel::{Snapshot, SnapshotRef};
use deltalake::kernel::{DataType as DeltaType, StructField};
use deltalake::logstore::{LogStore, LogStoreFactory, LogStoreRef, ObjectStoreRef, StorageConfig, default_logstore, logstore_factories};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use object_store::ObjectStore;
use url::Url;

use crate::aggregate::{AggTable, Selection};
use crate::commit::manifest::FileEntry;
use crate::contract::Stream;
use crate::contract::schema::{Column, DEAD_LETTER, Kind, PROVENANCE, columns};
use crate::lake::{FileKind, Lake};

/// How many table versions pass between two checkpoints (Delta's default).
pub const CHECKPOINT_INTERVAL: u64 = 100;

/// How long old log entries (and so time travel) are kept before the scheduled clean-up.
pub const LOG_RETENTION: &str = "interval 7 days";

/// One table of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// A stream's rows, on-time and late.
    Stream(Stream),
    /// Every stream's dead letters, partitioned by `stream`.
    DeadLetter,
    /// An aggregate table (`agg/<name>/`), rewritten partition by partition.
    Aggregate(AggTable),
}

impl Table {
    /// Every table: streams, dead letters, aggregates.
    pub fn all() -> Vec<Table> {
        Table::raw().into_iter().chain(AggTable::ALL.map(Table::Aggregate)).collect()
    }

    /// The tables of the records themselves: the streams, then the dead letters.
    pub fn raw() -> Vec<Table> {
        Stream::ALL.into_iter().map(Table::Stream).chain([Table::DeadLetter]).collect()
    }

    /// The tables a run with `aggregates` maintains: the raw tables and those aggregates.
    pub fn maintained(aggregates: &Selection) -> Vec<Table> {
        Table::raw().into_iter().chain(aggregates.tables().iter().copied().map(Table::Aggregate)).collect()
    }

    /// The table's folder under the output root.
    pub fn dir(self) -> &'static str {
        match self {
            Table::Stream(s) => s.name(),
            Table::DeadLetter => "_dead_letter",
            Table::Aggregate(a) => a.dir(),
        }
    }

    /// The table's name (the Athena table, the `txn` app id's suffix).
    pub fn name(self) -> &'static str {
        match self {
            Table::Stream(s) => s.name(),
            Table::DeadLetter => "dead_letter",
            Table::Aggregate(a) => a.name(),
        }
    }

    /// Whether files are only ever added (`delta.appendOnly`): every table but the aggregates,
    /// whose partitions are rewritten.
    pub fn append_only(self) -> bool {
        !matches!(self, Table::Aggregate(_))
    }

    /// The application id of citystream's `txn` actions in this table.
    pub fn app_id(self) -> String {
        format!("citystream/{}", self.name())
    }

    /// The table a committed object belongs to.
    pub fn of(entry: &FileEntry) -> Table {
        match (entry.kind, entry.aggregate) {
            (FileKind::Aggregate, Some(a)) => Table::Aggregate(a),
            (FileKind::Aggregate, None) => Table::of_path(&entry.path).unwrap_or(Table::DeadLetter),
            (FileKind::Data | FileKind::Late, _) => Table::Stream(entry.stream),
            (FileKind::DeadLetter, _) => Table::DeadLetter,
        }
    }

    /// The table whose folder holds `path` (relative to the output root).
    pub fn of_path(path: &str) -> Option<Table> {
        Table::all().into_iter().find(|t| path.strip_prefix(t.dir()).is_some_and(|rest| rest.starts_with('/')))
    }

    /// The partition columns, outermost first, as they appear in the path.
    pub fn partition_columns(self) -> &'static [&'static str] {
        match self {
            Table::Stream(_) => &["date", "hour"],
            Table::DeadLetter => &["stream", "date", "hour"],
            Table::Aggregate(a) => a.partition_columns(),
        }
    }

    /// The columns the Parquet files hold.
    pub fn file_columns(self) -> Vec<&'static Column> {
        match self {
            Table::Stream(s) => columns(s).iter().chain(PROVENANCE).collect(),
            Table::DeadLetter => DEAD_LETTER.iter().collect(),
            Table::Aggregate(a) => crate::aggregate::table::columns(a).iter().collect(),
        }
    }

    /// The Delta schema: the file columns (non-null, as written), then the partition columns.
    pub fn fields(self) -> Vec<StructField> {
        let mut fields: Vec<StructField> = self.file_columns().into_iter().map(|c| StructField::not_null(c.name, delta_type(c.kind))).collect();
        for p in self.partition_columns() {
            let t = match *p {
                "date" => DeltaType::DATE,
                "hour" => DeltaType::INTEGER,
                _ => DeltaType::STRING,
            };
            fields.push(StructField::nullable(*p, t));
        }
        fields
    }

    /// The path of `entry` inside the table, and its partition values, both from the
    /// object's path (`<dir>/[stream=<s>/]date=<d>/hour=<HH>/<name>`); `hour` as an integer.
    pub fn relative(self, path: &str) -> Option<(String, HashMap<String, Option<String>>)> {
        let rest = path.strip_prefix(self.dir())?.strip_prefix('/')?;
        let mut values = HashMap::new();
        for (segment, column) in rest.split('/').zip(self.partition_columns()) {
            let value = segment.strip_prefix(column)?.strip_prefix('=')?;
            let value = if *column == "hour" { value.parse::<u32>().ok()?.to_string() } else { value.to_owned() };
            values.insert((*column).to_owned(), Some(value));
        }
        (values.len() == self.partition_columns().len()).then(|| (rest.to_owned(), values))
    }
}

/// The Delta type of a column kind.
fn delta_type(kind: Kind) -> DeltaType {
    match kind {
        Kind::Str => DeltaType::STRING,
        Kind::F64 => DeltaType::DOUBLE,
        Kind::I32 => DeltaType::INTEGER,
        Kind::I64 => DeltaType::LONG,
        Kind::Bool => DeltaType::BOOLEAN,
        Kind::Ts => DeltaType::TIMESTAMP,
        Kind::Bytes => DeltaType::BINARY,
    }
}

/// The lake's store and URL as Delta sees them: the store rooted at the bucket (or the
/// filesystem root), tables addressed by URL below the output root.
#[derive(Clone)]
pub struct DeltaRoot {
    /// The unprefixed store (with the lake's retry policy).
    pub store: Arc<dyn ObjectStore>,
    /// The output root (`s3://bucket/prefix`, `file:///dir`, `memory:///`), without a slash.
    pub url: Url,
}

impl std::fmt::Debug for DeltaRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaRoot").field("url", &self.url.as_str()).finish()
    }
}

impl DeltaRoot {
    /// The URL of `table`.
    pub fn table_url(&self, table: Table) -> Url {
        let base = self.url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{}/", table.dir())).expect("a table URL is the root's plus a folder")
    }

    /// The log store of `table`, on the lake's own store (its retries and credentials).
    pub fn log_store(&self, table: Table) -> Result<LogStoreRef, DeltaTableError> {
        register_s3_log_stores();
        DeltaTableBuilder::from_url(self.table_url(table))?.with_storage_backend(self.store.clone(), self.table_url(table)).build_storage()
    }

    /// Creates `table` (version 0: schema, partitioning, properties) unless it exists, and
    /// returns its log store; nothing of the table is loaded. A creation race with another
    /// writer is harmless.
    pub async fn create_if_missing(&self, table: Table) -> Result<LogStoreRef, DeltaTableError> {
        let log_store = self.log_store(table)?;
        if DeltaTable::new(log_store.clone()).verify_deltatable_existence().await? {
            return Ok(log_store);
        }
        let created = CreateBuilder::new()
            .with_log_store(log_store.clone())
            .with_table_name(table.name())
            .with_comment(format!("citystream {} table", table.name()))
            .with_columns(table.fields())
            .with_partition_columns(table.partition_columns().iter().map(|c| c.to_string()))
            .with_configuration_property(TableProperty::AppendOnly, Some(if table.append_only() { "true" } else { "false" }))
            .with_configuration_property(TableProperty::CheckpointInterval, Some(CHECKPOINT_INTERVAL.to_string()))
            .with_configuration_property(TableProperty::LogRetentionDuration, Some(LOG_RETENTION))
            .with_save_mode(SaveMode::Ignore)
            .await;
        match created {
            Ok(_) => Ok(log_store),
            // Another writer may have created it first (version 0 exists).
            Err(_) if DeltaTable::new(log_store.clone()).verify_deltatable_existence().await? => Ok(log_store),
            Err(e) => Err(e),
        }
    }

    /// The manifest `table` holds by its `txn` (0: none), read from its log without its file
    /// list; `None` if the table does not exist.
    pub async fn held_manifest(&self, table: Table) -> Result<Option<u64>, DeltaTableError> {
        let log_store = self.log_store(table)?;
        if !DeltaTable::new(log_store.clone()).verify_deltatable_existence().await? {
            return Ok(None);
        }
        let snapshot = read_log(&log_store, None).await?;
        Ok(Some(held_manifest(&log_store, snapshot, table).await?))
    }

    /// Opens `table` at its newest version, or `None` if it does not exist.
    pub async fn open(&self, table: Table) -> Result<Option<DeltaTable>, DeltaTableError> {
        let mut t = DeltaTable::new(self.log_store(table)?);
        if !t.verify_deltatable_existence().await? {
            return Ok(None);
        }
        t.load().await?;
        Ok(Some(t))
    }
}

/// The manifest `table` holds by its `txn` (0: none), as of `snapshot`.
pub(crate) async fn held_manifest(log_store: &LogStoreRef, snapshot: SnapshotRef, table: Table) -> Result<u64, DeltaTableError> {
    let (engine, app_id) = (log_store.engine(None), table.app_id());
    let v = blocking(move || snapshot.get_app_id_version(&app_id, engine.as_ref())).await?;
    Ok(v.map_or(0, |v| v.max(0) as u64))
}

/// The log of the table behind `log_store`, read anew or onward from `from`: version,
/// protocol, metadata, properties; active files are not read. Fails if this kernel may not
/// write to the table (a protocol or feature it does not support).
pub(crate) async fn read_log(log_store: &LogStoreRef, from: Option<SnapshotRef>) -> Result<SnapshotRef, DeltaTableError> {
    let engine = log_store.engine(None);
    let root = table_root(log_store);
    blocking(move || {
        let snapshot = match from {
            Some(from) => Snapshot::builder_from(from),
            None => Snapshot::builder_for(root),
        }
        .build(engine.as_ref())?;
        snapshot.clone().transaction(Box::new(FileSystemCommitter::new()), engine.as_ref())?;
        Ok(snapshot)
    })
    .await
}

/// The table's root URL with the trailing slash the kernel joins paths to.
pub(crate) fn table_root(log_store: &LogStoreRef) -> url::Url {
    let mut url = log_store.root_url().clone();
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    url
}

/// Runs a blocking kernel call (it reads the log synchronously) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, delta_kernel::Error> + Send + 'static) -> Result<T, DeltaTableError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DeltaTableError::Generic(format!("a Delta log task failed: {e}")))?.map_err(DeltaTableError::from)
}

/// Delta's default log store (commits by create-if-absent PUT, `If-None-Match: *` on S3) for
/// `s3://` tables. delta-rs registers `s3://` only in its `deltalake-aws` crate, which would
/// bring the AWS SDK as a second S3 client; citystream hands delta-rs its own `object_store`
/// client instead (one S3 stack, one retry policy, one set of credentials), so it only needs
/// the scheme known.
struct S3LogStores;

impl LogStoreFactory for S3LogStores {
    fn with_options(&self, prefixed: ObjectStoreRef, root: ObjectStoreRef, location: &Url, options: &StorageConfig) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed, root, location, options))
    }
}

fn register_s3_log_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            logstore_factories().insert(Url::parse(scheme).expect("a valid URL"), Arc::new(S3LogStores));
        }
    });
}

impl Lake {
    /// The lake as Delta tables see it.
    pub fn delta(&self) -> &DeltaRoot {
        &self.delta
    }

    /// The lake with the store that Delta commits go through replaced by `wrap(store)`: how
    /// tests inject faults into the log (a commit whose answer is lost) without touching the
    /// data path.
    pub fn wrap_delta_store(mut self, wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>) -> Lake {
        self.delta.store = wrap(self.delta.store.clone());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_map_to_their_table_path_and_partition_values() {
        let (rel, values) = Table::Stream(Stream::Weather).relative("weather_data/date=2025-03-01/hour=07/weather_data-e0000000001-r.parquet").unwrap();
        assert_eq!(rel, "date=2025-03-01/hour=07/weather_data-e0000000001-r.parquet");
        assert_eq!(values["date"].as_deref(), Some("2025-03-01"));
        assert_eq!(values["hour"].as_deref(), Some("7"), "an INT partition value is canonical");
        let (rel, values) = Table::DeadLetter.relative("_dead_letter/stream=gps_data/date=2025-03-01/hour=23/x.parquet").unwrap();
        assert_eq!(rel, "stream=gps_data/date=2025-03-01/hour=23/x.parquet");
        assert_eq!(values["stream"].as_deref(), Some("gps_data"));
        assert_eq!(values["hour"].as_deref(), Some("23"));
        assert!(Table::Stream(Stream::Gps).relative("weather_data/date=2025-03-01/hour=07/x.parquet").is_none());
        assert!(Table::DeadLetter.relative("_dead_letter/gps_data/date=2025-03-01/hour=07/x.parquet").is_none(), "the old layout");
    }

    #[test]
    fn every_file_belongs_to_exactly_one_table_with_distinct_app_ids() {
        let ids: std::collections::BTreeSet<String> = Table::all().into_iter().map(Table::app_id).collect();
        assert_eq!(ids.len(), 10);
        for t in Table::all() {
            assert_eq!(Table::of_path(&format!("{}/date=2025-03-01/x.parquet", t.dir())), Some(t));
        }
        assert!(ids.contains("citystream/dead_letter") && ids.contains("citystream/vehicle_data"));
        for t in Table::all() {
            let fields = t.fields();
            assert_eq!(fields.len(), t.file_columns().len() + t.partition_columns().len());
        }
    }

    #[test]
    fn tables_are_created_once_at_reader_1_writer_2_append_only() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let lake = Lake::open("memory://").unwrap();
        rt.block_on(async {
            lake.delta().create_if_missing(Table::Stream(Stream::Vehicle)).await.unwrap();
            let t = lake.delta().open(Table::Stream(Stream::Vehicle)).await.unwrap().unwrap();
            assert_eq!(t.version(), Some(0));
            lake.delta().create_if_missing(Table::Stream(Stream::Vehicle)).await.unwrap();
            let again = lake.delta().open(Table::Stream(Stream::Vehicle)).await.unwrap().unwrap();
            assert_eq!(again.version(), Some(0), "opened, not created twice");
            let snap = again.snapshot().unwrap();
            assert_eq!(snap.protocol().min_reader_version(), 1);
            assert_eq!(snap.protocol().min_writer_version(), 2);
            assert!(snap.table_config().append_only == Some(true));
            assert_eq!(snap.metadata().partition_columns(), &vec!["date".to_string(), "hour".to_string()]);
            assert!(lake.delta().open(Table::DeadLetter).await.unwrap().is_none());
        });
    }
}

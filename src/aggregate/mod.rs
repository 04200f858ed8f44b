//! Live aggregate tables, maintained as differential collections inside the cluster's dataflow
//! and committed with the same manifests as the raw rows they summarise.
//!
//! ```text
//!  chunks@epoch ─► .aggregate_updates ─► exchange(bucket) ─► consolidate ─► .write_aggregates ─► reports@commit
//!  (every decodable  (key, epoch, Agg),     (owner of the      (per key     (rows += updates; partitions read
//!   record, on-time   merged per chunk)      row's partition)   and epoch)   back and evicted; one file per
//!   and late)                                                                changed partition, removes the
//!                                                                            file it replaces)
//! ```
//!
//! The four tables ([`AggTable`]) are `vehicle_speed_minute`, `weather_hourly`,
//! `emergency_hourly` and `vehicle_latest`. Every decodable record (on time or late) becomes an
//! update of its row's key at the epoch that commits the record, with a mergeable partial
//! aggregate as its difference ([`key::Agg`]): a differential collection whose accumulation, per
//! key, *is* the row. Updates are consolidated per key and epoch and the writer adds each to
//! the row it keeps, so at every epoch exactly the rows that changed are new. A late record
//! changes its window's row at the epoch it arrives in, so the commit of that epoch carries the
//! corrected row.
//!
//! The writer rewrites only the partitions (date/hour) whose rows changed in a commit: a new
//! file holding the partition's rows, and the file it replaces removed in the same manifest and
//! the same Delta table commit. State is bounded by `--aggregate-horizon`: the rows of a
//! partition whose hour ended that long before the watermark leave memory, and a record for it
//! later loads the partition's file back first. On restart, the same loading rebuilds the state
//! from the committed tables.

pub mod key;
pub mod restore;
pub mod table;
pub mod updates;
pub mod write;

use std::time::Duration;

use differential_dataflow::AsCollection;
use timely::dataflow::Stream;
use timely::dataflow::operators::Exchange;
use tokio::runtime::Handle;

use crate::commit::manifest::Manifest;
use crate::contract::Stream as Topic;
use crate::dataflow::{Chunk, Report};
use crate::epoch::{Epoch, EpochClock};
use crate::error::Failure;
use crate::lake::Lake;
use crate::sink::encode::EncodeOptions;

pub use key::{Agg, AggKey};

/// One of the aggregate tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggTable {
    /// `vehicle_speed_minute`: per device and `--window` of `vehicle_data`, count and speed
    /// minimum, maximum and mean.
    #[serde(rename = "vehicle_speed_minute")]
    SpeedMinute,
    /// `weather_hourly`: per device and hour of `weather_data`.
    #[serde(rename = "weather_hourly")]
    WeatherHourly,
    /// `emergency_hourly`: per incident, status and hour of `emergency_data`, a count.
    #[serde(rename = "emergency_hourly")]
    EmergencyHourly,
    /// `vehicle_latest`: per device of `vehicle_data`, its latest reading and its count.
    #[serde(rename = "vehicle_latest")]
    VehicleLatest,
}

impl AggTable {
    /// Every table, in the order the issue lists them.
    pub const ALL: [AggTable; 4] = [AggTable::SpeedMinute, AggTable::WeatherHourly, AggTable::EmergencyHourly, AggTable::VehicleLatest];

    /// The table's name (its folder under `agg/`, its Athena name, its `txn` app id's suffix).
    pub fn name(self) -> &'static str {
        match self {
            AggTable::SpeedMinute => "vehicle_speed_minute",
            AggTable::WeatherHourly => "weather_hourly",
            AggTable::EmergencyHourly => "emergency_hourly",
            AggTable::VehicleLatest => "vehicle_latest",
        }
    }

    /// The table's folder under the output root.
    pub fn dir(self) -> &'static str {
        match self {
            AggTable::SpeedMinute => "agg/vehicle_speed_minute",
            AggTable::WeatherHourly => "agg/weather_hourly",
            AggTable::EmergencyHourly => "agg/emergency_hourly",
            AggTable::VehicleLatest => "agg/vehicle_latest",
        }
    }

    /// The stream whose records it summarises.
    pub fn stream(self) -> Topic {
        match self {
            AggTable::SpeedMinute | AggTable::VehicleLatest => Topic::Vehicle,
            AggTable::WeatherHourly => Topic::Weather,
            AggTable::EmergencyHourly => Topic::Emergency,
        }
    }

    /// The partition columns, outermost first: `date`, `hour` for the windowed tables, `date`
    /// (of `last_seen`) for `vehicle_latest`.
    pub fn partition_columns(self) -> &'static [&'static str] {
        match self {
            AggTable::VehicleLatest => &["date"],
            _ => &["date", "hour"],
        }
    }

    /// Whether rows are grouped by a window of event time (all but `vehicle_latest`).
    pub fn windowed(self) -> bool {
        self != AggTable::VehicleLatest
    }

    /// The table named `name`.
    pub fn parse(name: &str) -> Option<AggTable> {
        AggTable::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl std::fmt::Display for AggTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which aggregate tables a run maintains (`--aggregates none|all|name,…`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection(Vec<AggTable>);

impl Selection {
    /// Every table.
    pub fn all() -> Selection {
        Selection(AggTable::ALL.to_vec())
    }

    /// No table.
    pub fn none() -> Selection {
        Selection(Vec::new())
    }

    /// `none`, `all`, or a comma-separated list of table names.
    pub fn parse(text: &str) -> Result<Selection, String> {
        match text.trim() {
            "all" => return Ok(Selection::all()),
            "none" | "" => return Ok(Selection::none()),
            _ => {}
        }
        let mut tables = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let t = AggTable::parse(name).ok_or_else(|| {
                let known: Vec<&str> = AggTable::ALL.iter().map(|t| t.name()).collect();
                format!("unknown aggregate table {name:?}; give none, all, or some of {}", known.join(", "))
            })?;
            if !tables.contains(&t) {
                tables.push(t);
            }
        }
        tables.sort();
        Ok(Selection(tables))
    }

    /// The tables, in [`AggTable::ALL`] order.
    pub fn tables(&self) -> &[AggTable] {
        &self.0
    }

    /// Whether no table is maintained.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `table` is maintained.
    pub fn contains(&self, table: AggTable) -> bool {
        self.0.contains(&table)
    }
}

/// Everything the aggregate stages need.
#[derive(Clone)]
pub struct AggSpec {
    /// The tables maintained.
    pub tables: Selection,
    /// Where the tables live.
    pub lake: Lake,
    /// Runs loads and uploads.
    pub rt: Handle,
    /// This worker's run id, part of every file name.
    pub run: String,
    /// Epochs and windows (`vehicle_speed_minute` windows are `--window` long).
    pub clock: EpochClock,
    /// Partitions whose hour ended this long (event time) before the watermark leave memory
    /// (`--aggregate-horizon`).
    pub horizon: Duration,
    /// Epochs below this are committed.
    pub committed_below: Epoch,
    /// The newest manifest at start (`None`: a new lake): the tables are loaded as of it.
    pub previous: Option<Manifest>,
    /// Parquet settings.
    pub encode: EncodeOptions,
    /// Where an error that stops the pipeline goes.
    pub failure: Failure,
}

impl AggSpec {
    /// The horizon in microseconds of event time.
    pub fn horizon_us(&self) -> i64 {
        self.horizon.as_micros().min(i64::MAX as u128) as i64
    }
}

/// Builds the aggregate stages over `chunks` (this worker's rows, at their epochs) with the
/// cluster's commit boundaries `cuts` (broadcast); returns the writer's reports for the
/// committer.
pub fn build<'s>(chunks: Stream<'s, Epoch, Vec<Chunk>>, cuts: Stream<'s, Epoch, Vec<Epoch>>, spec: AggSpec) -> Stream<'s, Epoch, Vec<Report>> {
    use updates::AggregateUpdates;
    use write::WriteAggregates;

    let updates = chunks.aggregate_updates(spec.tables.clone(), spec.clock.window_us);
    // By the bucket: the writer of one worker sees every update of the partitions that worker
    // owns, and nothing moves again.
    let owned = updates.exchange(|u: &((AggKey, ()), Epoch, Agg)| u.0.0.route());
    // The differences are already the partial aggregates: consolidating a batch merges the
    // updates of each key and epoch, and the writer adds them to the rows it keeps. No
    // arrangement holds the keys (a `reduce` kept two of every key: 3× the CPU of the records
    // and 0.8 GiB more at 5 M records).
    let merged = owned.as_collection().consolidate_stream();
    merged.inner.write_aggregates(cuts, spec)
}

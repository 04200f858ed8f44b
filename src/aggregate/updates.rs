//! Rows into aggregate updates, as a stream method: `chunks.aggregate_updates(tables, window)`.
//!
//! In: the sources' [`Chunk`]s, at the epoch that commits their rows. Out: one update
//! `((key, ()), epoch, Agg)` per row key of every maintained table, the rows of one chunk merged
//! per key first (a chunk holds up to 1,024 rows of one epoch: a weather station's or an
//! incident's readings of one hour mostly arrive together), so that what crosses the exchange
//! is a fraction of the rows. The merge looks keys up borrowed from the batch's columns, so a
//! row that merges into a key already seen allocates nothing.
//! On-time and late rows count alike; dead letters are not aggregated. The same function reads
//! a stream table's files when a table is rebuilt from the raw rows ([`rows_of_batch`]).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use differential_dataflow::difference::Semigroup;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{Scope, Stream};

use super::key::{Agg, AggKey, Latest};
use super::{AggTable, Selection, table};
use crate::contract::schema::{OFFSET_COLUMN, PARTITION_COLUMN};
use crate::contract::{EventTime, Stream as Topic};
use crate::dataflow::Chunk;
use crate::epoch::Epoch;
use crate::lake::FileKind;

/// An update of the aggregate collections: a key (with the unit value), its epoch, its partial
/// aggregate.
pub type Update = ((AggKey, ()), Epoch, Agg);

/// The stage as a stream method.
pub trait AggregateUpdates<'s> {
    /// The updates of `tables` that the chunks' rows make; `window_us` is `--window`
    /// (`vehicle_speed_minute`'s window).
    fn aggregate_updates(self, tables: Selection, window_us: i64) -> Stream<'s, Epoch, Vec<Update>>;
}

impl<'s> AggregateUpdates<'s> for Stream<'s, Epoch, Vec<Chunk>> {
    fn aggregate_updates(self, tables: Selection, window_us: i64) -> Stream<'s, Epoch, Vec<Update>> {
        let scope: Scope<'s, Epoch> = self.scope();
        let mut builder = OperatorBuilder::new("AggregateUpdates".to_owned(), scope);
        let mut input = builder.new_input(self, Pipeline);
        let (out, updates) = builder.new_output();
        let mut out: OutputBuilder<Epoch, timely::container::CapacityContainerBuilder<Vec<Update>>> = OutputBuilder::from(out);
        builder.build(move |_caps| {
            move |_frontiers| {
                let mut out = out.activate();
                input.for_each(|cap, chunks| {
                    let mut session = out.session(&cap);
                    for chunk in chunks.drain(..) {
                        if chunk.key.kind == FileKind::DeadLetter {
                            continue;
                        }
                        // A malformed batch would be the sources' bug, not bad input: the
                        // builders made it with the stream's own schema.
                        rows_of_batch(chunk.key.stream, &chunk.batch, &tables, window_us, |key, agg| session.give(((key, ()), chunk.epoch, agg)))
                            .expect("a chunk has its stream's columns, with provenance");
                    }
                });
            }
        });
        updates
    }
}

/// Why a batch could not be aggregated.
#[derive(Debug, thiserror::Error)]
#[error("a batch of {stream} lacks the column {column} (or it has another type)")]
pub struct MissingColumn {
    /// The stream of the batch.
    pub stream: Topic,
    /// The column that was looked for.
    pub column: &'static str,
}

/// Merges the partial aggregates of the rows of `batch` (rows of `stream` with provenance
/// columns) per key, for the tables of `tables` that summarise `stream`, and hands each key
/// with its merged aggregate to `emit`.
pub fn rows_of_batch(stream: Topic, batch: &RecordBatch, tables: &Selection, window_us: i64, mut emit: impl FnMut(AggKey, Agg)) -> Result<(), MissingColumn> {
    let wanted: Vec<AggTable> = tables.tables().iter().copied().filter(|t| t.stream() == stream).collect();
    if wanted.is_empty() || batch.num_rows() == 0 {
        return Ok(());
    }
    let missing = |column| MissingColumn { stream, column };
    let col = |name: &'static str| batch.column_by_name(name).ok_or(missing(name));
    let string = |name: &'static str| col(name).and_then(|c| c.as_string_opt::<i32>().ok_or(missing(name)));
    let float = |name: &'static str| col(name).and_then(|c| c.as_primitive_opt::<Float64Type>().ok_or(missing(name)));
    let times = col("timestamp")?.as_primitive_opt::<TimestampMicrosecondType>().ok_or(missing("timestamp"))?;
    let mut merged: foldhash::HashMap<table::KeyRef<'_>, Agg> = Default::default();
    let mut add = |key, agg: Agg| match merged.get_mut(&key) {
        Some(a) => a.plus_equals(&agg),
        None => {
            merged.insert(key, agg);
        }
    };
    let n = batch.num_rows();
    match stream {
        Topic::Vehicle => {
            let (device, speed) = (string("deviceId")?, float("speed")?);
            let (lat, lon) = (float("latitude")?, float("longitude")?);
            let partition = col(PARTITION_COLUMN)?.as_primitive_opt::<Int32Type>().ok_or(missing(PARTITION_COLUMN))?;
            let offset = col(OFFSET_COLUMN)?.as_primitive_opt::<Int64Type>().ok_or(missing(OFFSET_COLUMN))?;
            for i in 0..n {
                let at = EventTime(times.value(i));
                for t in &wanted {
                    match t {
                        AggTable::SpeedMinute => add(table::speed_key(device.value(i), at, window_us), table::speed_agg(speed.value(i))),
                        _ => add(
                            table::latest_key(device.value(i)),
                            table::latest_agg(Latest {
                                at,
                                partition: partition.value(i),
                                offset: offset.value(i),
                                latitude: lat.value(i),
                                longitude: lon.value(i),
                                speed: speed.value(i),
                            }),
                        ),
                    }
                }
            }
        }
        Topic::Weather => {
            let device = string("deviceId")?;
            let (temperature, precipitation, windspeed, aqi) = (float("temperature")?, float("precipitation")?, float("windspeed")?, float("airQualityIndex")?);
            let humidity = col("humidity")?.as_primitive_opt::<Int32Type>().ok_or(missing("humidity"))?;
            for i in 0..n {
                let agg = table::weather_agg(temperature.value(i), precipitation.value(i), windspeed.value(i), humidity.value(i), aqi.value(i));
                add(table::weather_key(device.value(i), EventTime(times.value(i))), agg);
            }
        }
        Topic::Emergency => {
            let (incident, status) = (string("incident")?, string("status")?);
            for i in 0..n {
                add(table::emergency_key(incident.value(i), status.value(i), EventTime(times.value(i))), Agg::one());
            }
        }
        Topic::Gps | Topic::Traffic => {}
    }
    debug_assert!(batch.columns().iter().all(|c| c.null_count() == 0));
    for (key, agg) in merged {
        emit(key.owned(), agg);
    }
    Ok(())
}

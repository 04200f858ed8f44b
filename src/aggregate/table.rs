//! The aggregate tables' columns, and their rows to and from Arrow: what a row's key and
//! [`Agg`] mean in each table, where its partition is, and how its file is named.
//!
//! Rows hold the mergeable partials (`speed_sum`, `temperature_sum`, `humidity_sum`, and the
//! latest reading's `last_partition` / `last_offset`) beside the columns the tables promise, so
//! that a file read back gives exactly the aggregate it was written from.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimestampMicrosecondType};
use arrow::error::ArrowError;
use object_store::path::Path;

use super::AggTable;
use super::key::{Agg, AggKey, Latest};
use crate::contract::EventTime;
use crate::contract::schema::{Column, Kind, Shape};
use crate::contract::timestamp::{HOUR, MICROS_PER_SEC, date_hour};
use crate::epoch::Epoch;

/// A day in microseconds.
pub const DAY: i64 = 24 * HOUR;

macro_rules! cols {
    ($($name:literal: $kind:ident, $shape:ident;)*) => {
        &[$(Column { name: $name, kind: Kind::$kind, shape: Shape::$shape },)*]
    };
}

const SPEED_MINUTE: &[Column] = cols! {
    "device_id": Str, Text;
    "window_start": Ts, Unique;
    "records": I64, Few;
    "speed_min": F64, Measure;
    "speed_max": F64, Measure;
    "speed_avg": F64, Measure;
    "speed_sum": F64, Measure;
};

const WEATHER_HOURLY: &[Column] = cols! {
    "device_id": Str, Text;
    "hour_start": Ts, Unique;
    "records": I64, Few;
    "temperature_min": F64, Measure;
    "temperature_max": F64, Measure;
    "temperature_avg": F64, Measure;
    "precipitation_sum": F64, Measure;
    "windspeed_max": F64, Measure;
    "humidity_avg": F64, Measure;
    "air_quality_index_max": F64, Measure;
    "temperature_sum": F64, Measure;
    "humidity_sum": F64, Measure;
};

const EMERGENCY_HOURLY: &[Column] = cols! {
    "incident": Str, Few;
    "status": Str, Few;
    "hour_start": Ts, Unique;
    "records": I64, Few;
};

const VEHICLE_LATEST: &[Column] = cols! {
    "device_id": Str, Text;
    "last_seen": Ts, Unique;
    "latitude": F64, Measure;
    "longitude": F64, Measure;
    "speed": F64, Measure;
    "records": I64, Few;
    "last_partition": I32, Few;
    "last_offset": I64, Unique;
};

/// The columns of `table`'s files, in order (the partition columns are in the path only).
pub fn columns(table: AggTable) -> &'static [Column] {
    match table {
        AggTable::SpeedMinute => SPEED_MINUTE,
        AggTable::WeatherHourly => WEATHER_HOURLY,
        AggTable::EmergencyHourly => EMERGENCY_HOURLY,
        AggTable::VehicleLatest => VEHICLE_LATEST,
    }
}

/// The Arrow schema of `table`'s files (every column non-null).
pub fn schema(table: AggTable) -> SchemaRef {
    Arc::new(Schema::new(columns(table).iter().map(|c| Field::new(c.name, c.kind.data_type(), false)).collect::<Vec<_>>()))
}

/// The start of the partition a row lives in: its bucket (the hour) for a windowed table, the
/// day of `last_seen` for `vehicle_latest`.
pub fn partition_of(key: &AggKey, agg: &Agg) -> EventTime {
    match key.table {
        AggTable::VehicleLatest => agg.latest.as_ref().map_or(EventTime::UNIX_EPOCH, |l| l.at).floor(DAY),
        _ => key.bucket,
    }
}

/// The start of the partition a file path names (`…/date=YYYY-MM-DD[/hour=HH]/name`).
pub fn partition_of_path(path: &str) -> Option<EventTime> {
    let mut date = None;
    let mut hour = 0;
    for segment in path.split('/') {
        if let Some(d) = segment.strip_prefix("date=") {
            let mut parts = d.split('-').map(|p| p.parse::<i64>().ok());
            let (y, m, day) = (parts.next()??, parts.next()??, parts.next()??);
            date = Some(crate::contract::timestamp::days_from_civil(y, m as u32, day as u32));
        } else if let Some(h) = segment.strip_prefix("hour=") {
            hour = h.parse::<i64>().ok()?;
        }
    }
    Some(EventTime(date? * DAY + hour * HOUR))
}

/// The folder of partition `start` of `table`, under the output root.
pub fn partition_dir(table: AggTable, start: EventTime) -> String {
    let (date, hour) = date_hour(start);
    match table {
        AggTable::VehicleLatest => format!("{}/date={date}", table.dir()),
        _ => format!("{}/date={date}/hour={hour:02}", table.dir()),
    }
}

/// The path of the file that holds partition `start` of `table` from the commit whose first
/// epoch is `epoch` on (the epoch tells, like a data object's, which commit wrote it), written
/// by the worker whose run id is `run`.
pub fn file_path(table: AggTable, start: EventTime, epoch: Epoch, run: &str) -> Path {
    Path::from(format!("{}/{}-e{epoch:010}-{run}.parquet", partition_dir(table, start), table.name()))
}

/// A row's key borrowed: its table, `window_start` / `hour_start` ([`EventTime::UNIX_EPOCH`]
/// for `vehicle_latest`), its name and its status (empty but for `emergency_hourly`). Rows of
/// a batch are merged under these before any key is owned ([`KeyRef::owned`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRef<'a> {
    /// The table.
    pub table: AggTable,
    /// The window's or hour's start.
    pub start: EventTime,
    /// `device_id` or `incident`.
    pub name: &'a str,
    /// `status`, or empty.
    pub status: &'a str,
}

impl KeyRef<'_> {
    /// The owned key, with the bucket its row lives in.
    pub fn owned(self) -> AggKey {
        let bucket = if self.table.windowed() { self.start.floor(HOUR) } else { EventTime::UNIX_EPOCH };
        AggKey { table: self.table, bucket, name: self.name.into(), status: self.status.into(), start: self.start }
    }
}

/// The key of a `vehicle_speed_minute` row: `device_id`, and the record's time floored to the
/// window.
pub fn speed_key(device: &str, at: EventTime, window_us: i64) -> KeyRef<'_> {
    KeyRef { table: AggTable::SpeedMinute, start: at.floor(window_us), name: device, status: "" }
}

/// The key of a `weather_hourly` row.
pub fn weather_key(device: &str, at: EventTime) -> KeyRef<'_> {
    KeyRef { table: AggTable::WeatherHourly, start: at.floor(HOUR), name: device, status: "" }
}

/// The key of an `emergency_hourly` row.
pub fn emergency_key<'a>(incident: &'a str, status: &'a str, at: EventTime) -> KeyRef<'a> {
    KeyRef { table: AggTable::EmergencyHourly, start: at.floor(HOUR), name: incident, status }
}

/// The key of a `vehicle_latest` row.
pub fn latest_key(device: &str) -> KeyRef<'_> {
    KeyRef { table: AggTable::VehicleLatest, start: EventTime::UNIX_EPOCH, name: device, status: "" }
}

/// One vehicle reading's speed as a partial aggregate (slot 0).
pub fn speed_agg(speed: f64) -> Agg {
    let mut a = Agg::one();
    a.sum[0] = speed;
    a.min = speed;
    a.max[0] = speed;
    a
}

/// One weather reading as a partial aggregate: sums of temperature, precipitation and
/// humidity; the minimum temperature; maxima of temperature, windspeed and air quality.
pub fn weather_agg(temperature: f64, precipitation: f64, windspeed: f64, humidity: i32, air_quality_index: f64) -> Agg {
    Agg { records: 1, sum: [temperature, precipitation, humidity as f64], min: temperature, max: [temperature, windspeed, air_quality_index], latest: None }
}

/// One vehicle reading as the latest one of its device.
pub fn latest_agg(latest: Latest) -> Agg {
    Agg { latest: Some(Box::new(latest)), ..Agg::one() }
}

/// The rows `(key, aggregate)` of `table`, in key order, as one batch of its files' schema.
pub fn to_batch<'a>(table: AggTable, rows: impl ExactSizeIterator<Item = (&'a AggKey, &'a Agg)> + Clone) -> Result<RecordBatch, ArrowError> {
    let strings = |f: fn(&AggKey) -> &str| -> ArrayRef { Arc::new(rows.clone().map(|(k, _)| Some(f(k))).collect::<StringArray>()) };
    let times = |f: fn(&AggKey, &Agg) -> i64| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(rows.clone().map(|(k, a)| f(k, a)).collect::<Vec<i64>>()).with_timezone("UTC"))
    };
    let floats = |f: fn(&Agg) -> f64| -> ArrayRef { Arc::new(rows.clone().map(|(_, a)| f(a)).collect::<Float64Array>()) };
    let records: ArrayRef = Arc::new(rows.clone().map(|(_, a)| a.records).collect::<Int64Array>());
    let latest = |a: &Agg| *a.latest.as_deref().expect("a vehicle_latest row has its latest reading");
    let columns: Vec<ArrayRef> = match table {
        AggTable::SpeedMinute => vec![
            strings(|k| k.name.as_str()),
            times(|k, _| k.start.micros()),
            records,
            floats(|a| a.min),
            floats(|a| a.max[0]),
            floats(|a| a.mean(0)),
            floats(|a| a.sum[0]),
        ],
        AggTable::WeatherHourly => vec![
            strings(|k| k.name.as_str()),
            times(|k, _| k.start.micros()),
            records,
            floats(|a| a.min),
            floats(|a| a.max[0]),
            floats(|a| a.mean(0)),
            floats(|a| a.sum[1]),
            floats(|a| a.max[1]),
            floats(|a| a.mean(2)),
            floats(|a| a.max[2]),
            floats(|a| a.sum[0]),
            floats(|a| a.sum[2]),
        ],
        AggTable::EmergencyHourly => vec![strings(|k| k.name.as_str()), strings(|k| k.status.as_str()), times(|k, _| k.start.micros()), records],
        AggTable::VehicleLatest => vec![
            strings(|k| k.name.as_str()),
            times(|_, a| a.latest.as_ref().expect("a vehicle_latest row has its latest reading").at.micros()),
            Arc::new(rows.clone().map(|(_, a)| latest(a).latitude).collect::<Float64Array>()),
            Arc::new(rows.clone().map(|(_, a)| latest(a).longitude).collect::<Float64Array>()),
            Arc::new(rows.clone().map(|(_, a)| latest(a).speed).collect::<Float64Array>()),
            records,
            Arc::new(rows.clone().map(|(_, a)| latest(a).partition).collect::<Int32Array>()),
            Arc::new(rows.clone().map(|(_, a)| latest(a).offset).collect::<Int64Array>()),
        ],
    };
    RecordBatch::try_new(schema(table), columns)
}

/// Why a file of an aggregate table could not be read back as rows.
#[derive(Debug, thiserror::Error)]
#[error("the aggregate file does not have the columns of {table}: {reason}")]
pub struct RowsError {
    /// The table whose columns were expected.
    pub table: AggTable,
    /// What is missing or mistyped.
    pub reason: String,
}

/// The rows of a batch of `table`'s files, as the keys and aggregates they were written from.
pub fn from_batch(table: AggTable, batch: &RecordBatch) -> Result<Vec<(AggKey, Agg)>, RowsError> {
    let fail = |reason: String| RowsError { table, reason };
    let col = |name: &str| -> Result<&ArrayRef, RowsError> { batch.column_by_name(name).ok_or_else(|| fail(format!("no column {name}"))) };
    let string = |name: &str| -> Result<&StringArray, RowsError> { col(name)?.as_string_opt::<i32>().ok_or_else(|| fail(format!("{name} is not a string"))) };
    let float = |name: &str| -> Result<&arrow::array::PrimitiveArray<Float64Type>, RowsError> {
        col(name)?.as_primitive_opt::<Float64Type>().ok_or_else(|| fail(format!("{name} is not a double")))
    };
    let time = |name: &str| -> Result<&arrow::array::PrimitiveArray<TimestampMicrosecondType>, RowsError> {
        col(name)?.as_primitive_opt::<TimestampMicrosecondType>().ok_or_else(|| fail(format!("{name} is not a timestamp in µs")))
    };
    let records = col("records")?.as_primitive_opt::<Int64Type>().ok_or_else(|| fail("records is not a bigint".into()))?;
    if batch.columns().iter().any(|c| c.null_count() > 0) {
        return Err(fail("a column holds nulls".into()));
    }
    let n = batch.num_rows();
    let mut rows = Vec::with_capacity(n);
    match table {
        AggTable::SpeedMinute => {
            let (device, start) = (string("device_id")?, time("window_start")?);
            let (min, max, sum) = (float("speed_min")?, float("speed_max")?, float("speed_sum")?);
            for i in 0..n {
                let mut a = speed_agg(0.0);
                a.records = records.value(i);
                (a.sum[0], a.min, a.max[0]) = (sum.value(i), min.value(i), max.value(i));
                rows.push((KeyRef { table, start: EventTime(start.value(i)), name: device.value(i), status: "" }.owned(), a));
            }
        }
        AggTable::WeatherHourly => {
            let (device, start) = (string("device_id")?, time("hour_start")?);
            let (t_sum, p_sum, h_sum) = (float("temperature_sum")?, float("precipitation_sum")?, float("humidity_sum")?);
            let (t_min, t_max, w_max, q_max) = (float("temperature_min")?, float("temperature_max")?, float("windspeed_max")?, float("air_quality_index_max")?);
            for i in 0..n {
                let a = Agg {
                    records: records.value(i),
                    sum: [t_sum.value(i), p_sum.value(i), h_sum.value(i)],
                    min: t_min.value(i),
                    max: [t_max.value(i), w_max.value(i), q_max.value(i)],
                    latest: None,
                };
                rows.push((KeyRef { table, start: EventTime(start.value(i)), name: device.value(i), status: "" }.owned(), a));
            }
        }
        AggTable::EmergencyHourly => {
            let (incident, status, start) = (string("incident")?, string("status")?, time("hour_start")?);
            for i in 0..n {
                let a = Agg { records: records.value(i), ..Agg::ZERO };
                rows.push((KeyRef { table, start: EventTime(start.value(i)), name: incident.value(i), status: status.value(i) }.owned(), a));
            }
        }
        AggTable::VehicleLatest => {
            let (device, seen) = (string("device_id")?, time("last_seen")?);
            let (lat, lon, speed) = (float("latitude")?, float("longitude")?, float("speed")?);
            let partition = col("last_partition")?.as_primitive_opt::<Int32Type>().ok_or_else(|| fail("last_partition is not an int".into()))?;
            let offset = col("last_offset")?.as_primitive_opt::<Int64Type>().ok_or_else(|| fail("last_offset is not a bigint".into()))?;
            for i in 0..n {
                let latest = Latest {
                    at: EventTime(seen.value(i)),
                    partition: partition.value(i),
                    offset: offset.value(i),
                    latitude: lat.value(i),
                    longitude: lon.value(i),
                    speed: speed.value(i),
                };
                let a = Agg { records: records.value(i), ..latest_agg(latest) };
                rows.push((latest_key(device.value(i)).owned(), a));
            }
        }
    }
    Ok(rows)
}

/// Seconds as microseconds (for tests and defaults).
pub const fn secs(s: i64) -> i64 {
    s * MICROS_PER_SEC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_round_trips_its_rows_through_arrow() {
        let t0 = EventTime(1_740_823_200_000_000); // 2025-03-01T10:00:00Z
        let mut speed = speed_agg(50.0);
        differential_dataflow::difference::Semigroup::plus_equals(&mut speed, &speed_agg(70.25));
        let latest = Latest { at: t0, partition: 3, offset: 99, latitude: 51.5, longitude: -0.12, speed: 42.0 };
        let cases = [
            (AggTable::SpeedMinute, speed_key("Vehicle-1", EventTime(t0.micros() + secs(75)), secs(60)).owned(), speed),
            (AggTable::WeatherHourly, weather_key("Vehicle-1", t0).owned(), weather_agg(12.5, 0.3, 7.0, 80, 33.0)),
            (AggTable::EmergencyHourly, emergency_key("Fire", "Active", t0).owned(), Agg::one()),
            (AggTable::VehicleLatest, latest_key("Vehicle-1").owned(), latest_agg(latest)),
        ];
        for (table, key, agg) in cases {
            let batch = to_batch(table, [(&key, &agg)].into_iter()).unwrap();
            assert_eq!(batch.schema(), schema(table));
            assert_eq!(from_batch(table, &batch).unwrap(), vec![(key.clone(), agg.clone())], "{table}");
        }
        let k = speed_key("Vehicle-1", EventTime(t0.micros() + secs(75)), secs(60)).owned();
        assert_eq!((k.start, k.bucket), (EventTime(t0.micros() + secs(60)), t0), "floored to the window; the bucket is the hour");
    }

    #[test]
    fn partitions_are_named_and_read_back_from_paths() {
        let t = EventTime(1_740_823_200_000_000 + 7 * HOUR); // 2025-03-01T17:00Z
        let p = file_path(AggTable::WeatherHourly, t, Epoch(29_013_735), "ab12cd34");
        assert_eq!(p.as_ref(), "agg/weather_hourly/date=2025-03-01/hour=17/weather_hourly-e0029013735-ab12cd34.parquet");
        assert_eq!(partition_of_path(p.as_ref()), Some(t));
        let l = file_path(AggTable::VehicleLatest, t.floor(DAY), Epoch(5), "r");
        assert_eq!(l.as_ref(), "agg/vehicle_latest/date=2025-03-01/vehicle_latest-e0000000005-r.parquet");
        assert_eq!(partition_of_path(l.as_ref()), Some(t.floor(DAY)));
        let latest = latest_agg(Latest { at: t, partition: 0, offset: 0, latitude: 0.0, longitude: 0.0, speed: 0.0 });
        assert_eq!(partition_of(&latest_key("v").owned(), &latest), t.floor(DAY), "vehicle_latest rows live in the day of last_seen");
    }
}

//! One Arrow schema per stream, and builders that turn records into `RecordBatch`es, both
//! derived from the column tables in `contract/columns.rs`.
//!
//! Columns are typed: `timestamp` is `Timestamp(Microsecond, "UTC")`, `location` becomes two
//! `Float64` columns `latitude` and `longitude`, every other field keeps its original name and
//! its natural type. Rows that came from Kafka carry provenance: `_partition` (Int32),
//! `_offset` (Int64) — which make the exactly-once invariant checkable by any reader — and
//! `_late` (Boolean), set on records that arrived behind the watermark.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

pub use super::columns::{Column, DEAD_LETTER, Kind, LATE_COLUMN, OFFSET_COLUMN, PARTITION_COLUMN, PROVENANCE, Shape, columns, shape, timestamp_type};
use super::columns::{DeadLetterColumns, EmergencyColumns, GpsColumns, ProvenanceColumns, TrafficColumns, VehicleColumns, WeatherColumns};
use super::{Record, Stream};

fn arrow_schema<'a>(cols: impl IntoIterator<Item = &'a Column>) -> SchemaRef {
    Arc::new(Schema::new(cols.into_iter().map(|c| Field::new(c.name, c.kind.data_type(), false)).collect::<Vec<_>>()))
}

/// The Arrow schema of a stream; with `provenance`, plus `_partition`, `_offset` and `_late`.
pub fn schema(stream: Stream, provenance: bool) -> SchemaRef {
    let extra: &[Column] = if provenance { PROVENANCE } else { &[] };
    arrow_schema(columns(stream).iter().chain(extra))
}

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provenance {
    /// Kafka partition the record was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Whether the record arrived behind its partition's watermark.
    pub late: bool,
}

/// The builders of one stream's contract columns.
enum Contract {
    Vehicle(VehicleColumns),
    Gps(GpsColumns),
    Traffic(TrafficColumns),
    Weather(WeatherColumns),
    Emergency(EmergencyColumns),
}

/// Appends records of one stream and finishes them into a `RecordBatch`.
pub struct BatchBuilder {
    stream: Stream,
    schema: SchemaRef,
    contract: Contract,
    provenance: Option<ProvenanceColumns>,
    rows: usize,
}

impl BatchBuilder {
    /// A builder for `stream`, with or without provenance columns.
    pub fn new(stream: Stream, provenance: bool) -> Self {
        let contract = match stream {
            Stream::Vehicle => Contract::Vehicle(VehicleColumns::default()),
            Stream::Gps => Contract::Gps(GpsColumns::default()),
            Stream::Traffic => Contract::Traffic(TrafficColumns::default()),
            Stream::Weather => Contract::Weather(WeatherColumns::default()),
            Stream::Emergency => Contract::Emergency(EmergencyColumns::default()),
        };
        let provenance = provenance.then(ProvenanceColumns::default);
        BatchBuilder { stream, schema: schema(stream, provenance.is_some()), contract, provenance, rows: 0 }
    }

    /// The schema of the batches this builder produces.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows appended since the last [`BatchBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no rows are pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one record. Panics if the record is of another stream, or if the builder has
    /// provenance columns and `provenance` is `None` (programming errors both).
    pub fn append<S: AsRef<str>>(&mut self, record: &Record<S>, provenance: Option<Provenance>) {
        match (&mut self.contract, record) {
            (Contract::Vehicle(c), Record::Vehicle(r)) => c.append(r),
            (Contract::Gps(c), Record::Gps(r)) => c.append(r),
            (Contract::Traffic(c), Record::Traffic(r)) => c.append(r),
            (Contract::Weather(c), Record::Weather(r)) => c.append(r),
            (Contract::Emergency(c), Record::Emergency(r)) => c.append(r),
            _ => panic!("record of {} appended to the {} builder", record.stream(), self.stream),
        }
        if let Some(cols) = &mut self.provenance {
            cols.append(&provenance.expect("a builder with provenance columns needs provenance for every row"));
        }
        self.rows += 1;
    }

    /// Finishes the pending rows into a batch and starts afresh.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut arrays: Vec<ArrayRef> = match &mut self.contract {
            Contract::Vehicle(c) => c.finish().collect(),
            Contract::Gps(c) => c.finish().collect(),
            Contract::Traffic(c) => c.finish().collect(),
            Contract::Weather(c) => c.finish().collect(),
            Contract::Emergency(c) => c.finish().collect(),
        };
        if let Some(cols) = &mut self.provenance {
            arrays.extend(cols.finish());
        }
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

/// The schema of dead-letter rows: where the record came from, why it was refused, its bytes.
pub fn dead_letter_schema() -> SchemaRef {
    arrow_schema(DEAD_LETTER)
}

/// A refused record, as written to the dead-letter output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow<'a> {
    /// The Kafka topic (with prefix).
    pub topic: &'a str,
    /// Kafka partition the record was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Stable class name (see [`super::ErrorClass::as_str`]).
    pub class: &'a str,
    /// Human-readable reason naming the field.
    pub reason: &'a str,
    /// The value exactly as read.
    pub raw: &'a [u8],
}

/// Builds dead-letter batches.
#[derive(Default)]
pub struct DeadLetterBuilder {
    cols: DeadLetterColumns,
    rows: usize,
}

impl DeadLetterBuilder {
    /// Appends one refused record.
    pub fn append(&mut self, row: &DeadLetterRow<'_>) {
        self.cols.append(row);
        self.rows += 1;
    }

    /// Rows appended since the last [`DeadLetterBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no rows are pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Finishes the pending rows into a batch and starts afresh.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        RecordBatch::try_new(dead_letter_schema(), self.cols.finish().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{DecodeOptions, decode};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};

    #[test]
    fn schemas_are_typed() {
        let s = schema(Stream::Weather, true);
        assert_eq!(s.field_with_name("timestamp").unwrap().data_type(), &timestamp_type());
        assert_eq!(s.field_with_name("temperature").unwrap().data_type(), &DataType::Float64);
        assert_eq!(s.field_with_name("humidity").unwrap().data_type(), &DataType::Int32);
        assert_eq!(s.field_with_name("latitude").unwrap().data_type(), &DataType::Float64);
        assert_eq!(s.field_with_name(OFFSET_COLUMN).unwrap().data_type(), &DataType::Int64);
        assert!(s.field_with_name("location").is_err());
        assert!(schema(Stream::Weather, false).field_with_name(PARTITION_COLUMN).is_err());
        for st in Stream::ALL {
            assert_eq!(schema(st, true).fields().len(), columns(st).len() + 3);
        }
    }

    #[test]
    fn builder_keeps_values() {
        let json = r#"{"id": "6f1c1a52-3b0e-4c5d-9f3a-2b7c8d9e0f11", "deviceId": "d", "location": [51.5, -0.12], "timestamp": "2025-03-01T10:15:42.123456", "temperature": 21.5, "weatherCondition": "sunny", "precipitation": 0.5, "windspeed": 10, "humidity": 40, "airQualityIndex": 33.3}"#;
        let rec = decode(Stream::Weather, json.as_bytes(), &DecodeOptions::default()).unwrap();
        let mut b = BatchBuilder::new(Stream::Weather, true);
        b.append(&rec, Some(Provenance { partition: 3, offset: 42, late: false }));
        b.append(&rec, Some(Provenance { partition: 3, offset: 43, late: true }));
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert!(b.is_empty());
        let ts = batch.column_by_name("timestamp").unwrap().as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_740_824_142_123_456);
        assert_eq!(batch.column_by_name("temperature").unwrap().as_primitive::<Float64Type>().value(0), 21.5);
        assert_eq!(batch.column_by_name("longitude").unwrap().as_primitive::<Float64Type>().value(1), -0.12);
        assert_eq!(batch.column_by_name(OFFSET_COLUMN).unwrap().as_primitive::<Int64Type>().value(1), 43);
        assert!(batch.column_by_name(LATE_COLUMN).unwrap().as_boolean().value(1));
        assert_eq!(batch.column_by_name("weatherCondition").unwrap().as_string::<i32>().value(0), "sunny");
        assert_eq!(batch.column(0).null_count(), 0);
    }

    #[test]
    fn every_column_has_the_shape_its_values_have() {
        // Guards the names in `shape` against renamed columns: a typo would silently store a
        // column the default way.
        let mut by_shape: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
        let schemas = Stream::ALL.iter().map(|s| schema(*s, true)).chain([dead_letter_schema()]);
        for sc in schemas {
            for f in sc.fields() {
                by_shape.entry(format!("{:?}", shape(f.name()))).or_default().insert(f.name().clone());
            }
        }
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<std::collections::BTreeSet<_>>();
        assert_eq!(by_shape["Measure"], set(&["airQualityIndex", "latitude", "longitude", "precipitation", "speed", "temperature", "windspeed"]));
        assert_eq!(by_shape["Unique"], set(&["_offset", "id", "incidentId", "timestamp"]));
        assert_eq!(by_shape["Text"], set(&["cameraId", "description", "deviceId", "raw", "reason", "snapshot"]));
        assert_eq!(
            by_shape["Few"],
            set(&[
                "_late",
                "_partition",
                "direction",
                "error_class",
                "fueltype",
                "humidity",
                "incident",
                "maker",
                "model",
                "status",
                "topic",
                "vehicleType",
                "weatherCondition",
                "year"
            ])
        );
    }

    #[test]
    fn every_accessor_writes_the_column_its_name_says() {
        // One record of each stream as the producer sends it, decoded the way the pipeline does
        // (strings borrowed from the value), appended, and every column of the batch compared
        // with the JSON field of its name. Values of one kind differ within a record, so an
        // accessor reading a neighbour's field shows.
        use crate::contract::decode_borrowed;
        use crate::contract::timestamp::{EventTime, format_naive};
        use serde_json::Value;
        let mut fleet = crate::simulate::Fleet::new(crate::simulate::FleetConfig::default());
        for msg in fleet.step() {
            let json: Value = serde_json::from_slice(&msg.value).unwrap();
            let field = |name: &str| match name {
                "latitude" => json["location"][0].clone(),
                "longitude" => json["location"][1].clone(),
                _ => json.get(name).unwrap_or_else(|| panic!("{}: no JSON field {name}", msg.stream)).clone(),
            };
            let rec = decode_borrowed(msg.stream, &msg.value, &DecodeOptions::default()).unwrap();
            let mut b = BatchBuilder::new(msg.stream, true);
            b.append(&rec, Some(Provenance { partition: 7, offset: 1_234_567_890_123, late: true }));
            let batch = b.finish().unwrap();
            let mut seen: std::collections::BTreeMap<String, String> = Default::default();
            for col in columns(msg.stream) {
                let array = batch.column_by_name(col.name).unwrap_or_else(|| panic!("{}: no column {}", msg.stream, col.name));
                let (got, want) = match col.kind {
                    Kind::Str => (Value::from(array.as_string::<i32>().value(0)), field(col.name)),
                    Kind::F64 => (Value::from(array.as_primitive::<Float64Type>().value(0)), Value::from(field(col.name).as_f64().unwrap())),
                    Kind::I32 => (Value::from(array.as_primitive::<Int32Type>().value(0)), field(col.name)),
                    Kind::Ts => (Value::from(format_naive(EventTime(array.as_primitive::<TimestampMicrosecondType>().value(0))).to_string()), field(col.name)),
                    other => panic!("{}: no contract column is {other:?}", col.name),
                };
                assert_eq!(got, want, "{}.{}", msg.stream, col.name);
                let previous = seen.insert(format!("{:?} {got}", col.kind), col.name.to_owned());
                assert!(previous.is_none(), "{}: {} and {previous:?} hold the same value, a swap would not show", msg.stream, col.name);
            }
            assert_eq!(batch.column_by_name(PARTITION_COLUMN).unwrap().as_primitive::<Int32Type>().value(0), 7);
            assert_eq!(batch.column_by_name(OFFSET_COLUMN).unwrap().as_primitive::<Int64Type>().value(0), 1_234_567_890_123);
            assert!(batch.column_by_name(LATE_COLUMN).unwrap().as_boolean().value(0));
        }
        let mut d = DeadLetterBuilder::default();
        d.append(&DeadLetterRow { topic: "city.gps_data", partition: 4, offset: 99, class: "bad_timestamp", reason: "timestamp: not a date", raw: b"{}" });
        let batch = d.finish().unwrap();
        assert_eq!(batch.schema(), dead_letter_schema());
        let text = |name: &str| batch.column_by_name(name).unwrap().as_string::<i32>().value(0).to_owned();
        assert_eq!(text("topic"), "city.gps_data");
        assert_eq!(text("error_class"), "bad_timestamp");
        assert_eq!(text("reason"), "timestamp: not a date");
        assert_eq!(batch.column_by_name(PARTITION_COLUMN).unwrap().as_primitive::<Int32Type>().value(0), 4);
        assert_eq!(batch.column_by_name(OFFSET_COLUMN).unwrap().as_primitive::<Int64Type>().value(0), 99);
        assert_eq!(batch.column_by_name("raw").unwrap().as_binary::<i32>().value(0), b"{}");
    }

    #[test]
    fn a_name_means_one_column_in_every_table() {
        // `shape` and the encoder look columns up by name alone.
        let mut by_name: std::collections::BTreeMap<&str, Column> = Default::default();
        for c in crate::contract::columns::all_columns() {
            let first = *by_name.entry(c.name).or_insert(*c);
            assert_eq!(first, *c, "{} is stated two ways", c.name);
        }
        for st in Stream::ALL {
            let names: std::collections::BTreeSet<_> = columns(st).iter().chain(PROVENANCE).map(|c| c.name).collect();
            assert_eq!(names.len(), columns(st).len() + PROVENANCE.len(), "{st}: a name twice");
        }
    }
}

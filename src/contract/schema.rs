//! One Arrow schema per stream, and builders that turn records into `RecordBatch`es.
//!
//! Columns are typed: `timestamp` is `Timestamp(Microsecond, "UTC")`, `location` becomes two
//! `Float64` columns `latitude` and `longitude`, every other field keeps its original name and
//! its natural type. Rows that came from Kafka carry provenance: `_partition` (Int32),
//! `_offset` (Int64) — which make the exactly-once invariant checkable by any reader — and
//! `_late` (Boolean), set on records that arrived behind the watermark.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::{Location, Record, Stream};

/// The type of one contract column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 string.
    Str,
    /// 64-bit float.
    F64,
    /// 32-bit integer.
    I32,
    /// Microseconds since the epoch, UTC.
    Ts,
}

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Kind::Str => DataType::Utf8,
            Kind::F64 => DataType::Float64,
            Kind::I32 => DataType::Int32,
            Kind::Ts => timestamp_type(),
        }
    }
}

/// `Timestamp(Microsecond, "UTC")`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

use Kind::{F64, I32, Str, Ts};

/// The contract columns of a stream, in output order.
pub fn columns(stream: Stream) -> &'static [(&'static str, Kind)] {
    match stream {
        Stream::Vehicle => &[
            ("id", Str),
            ("deviceId", Str),
            ("timestamp", Ts),
            ("latitude", F64),
            ("longitude", F64),
            ("speed", F64),
            ("direction", Str),
            ("maker", Str),
            ("model", Str),
            ("year", I32),
            ("fueltype", Str),
        ],
        Stream::Gps => &[("id", Str), ("deviceId", Str), ("timestamp", Ts), ("speed", F64), ("direction", Str), ("vehicleType", Str)],
        Stream::Traffic => &[("id", Str), ("deviceId", Str), ("cameraId", Str), ("latitude", F64), ("longitude", F64), ("timestamp", Ts), ("snapshot", Str)],
        Stream::Weather => &[
            ("id", Str),
            ("deviceId", Str),
            ("latitude", F64),
            ("longitude", F64),
            ("timestamp", Ts),
            ("temperature", F64),
            ("weatherCondition", Str),
            ("precipitation", F64),
            ("windspeed", F64),
            ("humidity", I32),
            ("airQualityIndex", F64),
        ],
        Stream::Emergency => &[
            ("id", Str),
            ("deviceId", Str),
            ("incidentId", Str),
            ("incident", Str),
            ("timestamp", Ts),
            ("latitude", F64),
            ("longitude", F64),
            ("status", Str),
            ("description", Str),
        ],
    }
}

/// How a column's values are distributed, which decides how it is stored (see
/// `sink::encode::writer_properties`). Measured on the original producer's data in 330-row
/// objects: stored this way, Parquet encoding costs 40 % less CPU and the files are 8 % smaller
/// than with a dictionary and zstd everywhere (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Few distinct values (enums of the contract, compass points, makes and models, years,
    /// percentages; `_partition`, `_late`): dictionary-encoded and not compressed. Their pages
    /// are a short dictionary and bit-packed indices, which zstd makes *larger* (1.05–1.46 ×).
    Few,
    /// Nearly every value distinct (record and incident ids, `_offset`, `timestamp`): no
    /// dictionary (it would repeat every value, plus an index each), compressed: hex digits and
    /// shared high-order bytes halve.
    Unique,
    /// Measurements, floats whose low-order bits are random (positions, speeds, weather): plain
    /// and not compressed. A dictionary repeats them and zstd saves 3–14 % of them at the cost
    /// of a compression context per column chunk; plain and raw is both smaller and cheaper.
    Measure,
    /// Anything else (device ids, free text, images): a dictionary while it pays, compressed.
    Text,
}

/// The [`Shape`] of a column of any stream's (or the dead-letter) schema, by name: the same
/// name means the same thing in every stream.
pub fn shape(column: &str) -> Shape {
    match column {
        "_partition" | "_late" | "direction" | "vehicleType" | "maker" | "model" | "fueltype" | "year" | "weatherCondition" | "incident" | "status"
        | "humidity" | "topic" | "error_class" => Shape::Few,
        "id" | "incidentId" | "_offset" | "timestamp" => Shape::Unique,
        "latitude" | "longitude" | "speed" | "temperature" | "precipitation" | "windspeed" | "airQualityIndex" => Shape::Measure,
        _ => Shape::Text,
    }
}

/// Name of the Kafka partition column.
pub const PARTITION_COLUMN: &str = "_partition";
/// Name of the Kafka offset column.
pub const OFFSET_COLUMN: &str = "_offset";
/// Name of the late-arrival flag column.
pub const LATE_COLUMN: &str = "_late";

/// The Arrow schema of a stream; with `provenance`, plus `_partition`, `_offset` and `_late`.
pub fn schema(stream: Stream, provenance: bool) -> SchemaRef {
    let mut fields: Vec<Field> = columns(stream).iter().map(|(name, kind)| Field::new(*name, kind.data_type(), false)).collect();
    if provenance {
        fields.push(Field::new(PARTITION_COLUMN, DataType::Int32, false));
        fields.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
        fields.push(Field::new(LATE_COLUMN, DataType::Boolean, false));
    }
    Arc::new(Schema::new(fields))
}

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provenance {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Whether the record arrived behind its partition's watermark.
    pub late: bool,
}

enum Col {
    Str(StringBuilder),
    F64(Float64Builder),
    I32(Int32Builder),
    Ts(TimestampMicrosecondBuilder),
}

/// Appends records of one stream and finishes them into a `RecordBatch`.
pub struct BatchBuilder {
    stream: Stream,
    schema: SchemaRef,
    cols: Vec<Col>,
    provenance: Option<(Int32Builder, Int64Builder, BooleanBuilder)>,
    rows: usize,
}

struct Cursor<'a>(std::slice::IterMut<'a, Col>);

impl Cursor<'_> {
    fn s(&mut self, v: &str) {
        if let Some(Col::Str(b)) = self.0.next() { b.append_value(v) } else { unreachable!("column layout mismatch") }
    }
    fn f(&mut self, v: f64) {
        if let Some(Col::F64(b)) = self.0.next() { b.append_value(v) } else { unreachable!("column layout mismatch") }
    }
    fn i(&mut self, v: i32) {
        if let Some(Col::I32(b)) = self.0.next() { b.append_value(v) } else { unreachable!("column layout mismatch") }
    }
    fn t(&mut self, v: i64) {
        if let Some(Col::Ts(b)) = self.0.next() { b.append_value(v) } else { unreachable!("column layout mismatch") }
    }
    fn loc(&mut self, l: &Location) {
        self.f(l.latitude);
        self.f(l.longitude);
    }
}

impl BatchBuilder {
    /// A builder for `stream`, with or without provenance columns.
    pub fn new(stream: Stream, provenance: bool) -> Self {
        let cols = columns(stream)
            .iter()
            .map(|(_, kind)| match kind {
                Kind::Str => Col::Str(StringBuilder::new()),
                Kind::F64 => Col::F64(Float64Builder::new()),
                Kind::I32 => Col::I32(Int32Builder::new()),
                Kind::Ts => Col::Ts(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            })
            .collect();
        let provenance = provenance.then(|| (Int32Builder::new(), Int64Builder::new(), BooleanBuilder::new()));
        BatchBuilder { stream, schema: schema(stream, provenance.is_some()), cols, provenance, rows: 0 }
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

    /// Appends one record. Panics if the record is of another stream (a programming error).
    pub fn append<S: AsRef<str>>(&mut self, record: &Record<S>, provenance: Option<Provenance>) {
        assert_eq!(record.stream(), self.stream, "record appended to another stream's builder");
        let mut c = Cursor(self.cols.iter_mut());
        match record {
            Record::Vehicle(r) => {
                c.s(r.id.as_ref());
                c.s(r.device_id.as_ref());
                c.t(r.timestamp);
                c.loc(&r.location);
                c.f(r.speed);
                c.s(r.direction.as_ref());
                c.s(r.maker.as_ref());
                c.s(r.model.as_ref());
                c.i(r.year);
                c.s(r.fueltype.as_ref());
            }
            Record::Gps(r) => {
                c.s(r.id.as_ref());
                c.s(r.device_id.as_ref());
                c.t(r.timestamp);
                c.f(r.speed);
                c.s(r.direction.as_ref());
                c.s(r.vehicle_type.as_ref());
            }
            Record::Traffic(r) => {
                c.s(r.id.as_ref());
                c.s(r.device_id.as_ref());
                c.s(r.camera_id.as_ref());
                c.loc(&r.location);
                c.t(r.timestamp);
                c.s(r.snapshot.as_ref());
            }
            Record::Weather(r) => {
                c.s(r.id.as_ref());
                c.s(r.device_id.as_ref());
                c.loc(&r.location);
                c.t(r.timestamp);
                c.f(r.temperature);
                c.s(r.weather_condition.as_ref());
                c.f(r.precipitation);
                c.f(r.windspeed);
                c.i(r.humidity);
                c.f(r.air_quality_index);
            }
            Record::Emergency(r) => {
                c.s(r.id.as_ref());
                c.s(r.device_id.as_ref());
                c.s(r.incident_id.as_ref());
                c.s(r.incident.as_ref());
                c.t(r.timestamp);
                c.loc(&r.location);
                c.s(r.status.as_ref());
                c.s(r.description.as_ref());
            }
        }
        if let Some((part, off, late)) = &mut self.provenance {
            let p = provenance.expect("a builder with provenance columns needs provenance for every row");
            part.append_value(p.partition);
            off.append_value(p.offset);
            late.append_value(p.late);
        }
        self.rows += 1;
    }

    /// Finishes the pending rows into a batch and starts afresh.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut arrays: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Col::Str(b) => Arc::new(b.finish()),
                    Col::F64(b) => Arc::new(b.finish()),
                    Col::I32(b) => Arc::new(b.finish()),
                    Col::Ts(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        if let Some((part, off, late)) = &mut self.provenance {
            arrays.push(Arc::new(part.finish()));
            arrays.push(Arc::new(off.finish()));
            arrays.push(Arc::new(late.finish()));
        }
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

/// The schema of dead-letter rows: where the record came from, why it was refused, its bytes.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new("error_class", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
    ]))
}

/// A refused record, as written to the dead-letter output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow<'a> {
    /// The Kafka topic (with prefix).
    pub topic: &'a str,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Stable class name (see [`super::ErrorClass::as_str`]).
    pub class: &'a str,
    /// Human-readable reason naming the field.
    pub reason: &'a str,
    /// The value exactly as read.
    pub raw: &'a [u8],
}

/// Builds dead-letter batches.
pub struct DeadLetterBuilder {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    class: StringBuilder,
    reason: StringBuilder,
    raw: BinaryBuilder,
    rows: usize,
}

impl Default for DeadLetterBuilder {
    fn default() -> Self {
        DeadLetterBuilder {
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            class: StringBuilder::new(),
            reason: StringBuilder::new(),
            raw: BinaryBuilder::new(),
            rows: 0,
        }
    }
}

impl DeadLetterBuilder {
    /// Appends one refused record.
    pub fn append(&mut self, row: &DeadLetterRow<'_>) {
        self.topic.append_value(row.topic);
        self.partition.append_value(row.partition);
        self.offset.append_value(row.offset);
        self.class.append_value(row.class);
        self.reason.append_value(row.reason);
        self.raw.append_value(row.raw);
        self.rows += 1;
    }

    /// Rows pending.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no rows are pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Finishes the pending rows into a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        RecordBatch::try_new(
            dead_letter_schema(),
            vec![
                Arc::new(self.topic.finish()),
                Arc::new(self.partition.finish()),
                Arc::new(self.offset.finish()),
                Arc::new(self.class.finish()),
                Arc::new(self.reason.finish()),
                Arc::new(self.raw.finish()),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{DecodeOptions, decode};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

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
}

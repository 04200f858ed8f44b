//! The column tables: one per stream, plus the provenance and dead-letter columns. They are
//! the single statement of the output layout; the Arrow schemas, the builders, the Parquet
//! encodings and the Athena DDL are all derived from them.
//!
//! A row is `name: Kind, Shape, |record| value;`. The name is the column name (and the JSON
//! field name where the record has one), the kind its type, the shape how it is stored (see
//! [`Shape`]), and the accessor reads the column's value from a record. Each table expands
//! into a struct holding one typed Arrow builder per row, whose `append` calls every accessor
//! directly: no per-row dispatch, nothing allocated, and an accessor whose value does not fit
//! its kind's builder is a compile error rather than a wrong column at run time.

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, TimeUnit};

use super::schema::{DeadLetterRow, Provenance};
use super::{EmergencyRecord, GpsRecord, Stream, TrafficRecord, VehicleRecord, WeatherRecord};

/// The type of an output column; it decides both the Arrow type ([`Kind::data_type`]) and the
/// Athena type of the column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 string (Arrow `Utf8`).
    Str,
    /// 64-bit float (Arrow `Float64`).
    F64,
    /// 32-bit integer (Arrow `Int32`).
    I32,
    /// 64-bit integer (Arrow `Int64`).
    I64,
    /// Boolean (Arrow `Boolean`).
    Bool,
    /// Microseconds since the epoch, UTC (see [`timestamp_type`]).
    Ts,
    /// Raw bytes (Arrow `Binary`).
    Bytes,
}

impl Kind {
    /// The Arrow type of a column of this kind. Every column is non-nullable.
    pub fn data_type(self) -> DataType {
        match self {
            Kind::Str => DataType::Utf8,
            Kind::F64 => DataType::Float64,
            Kind::I32 => DataType::Int32,
            Kind::I64 => DataType::Int64,
            Kind::Bool => DataType::Boolean,
            Kind::Ts => timestamp_type(),
            Kind::Bytes => DataType::Binary,
        }
    }
}

/// `Timestamp(Microsecond, "UTC")`: event time is stored as an instant, whatever zone the
/// producer's naive timestamps were read in.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
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

/// One row of a column table without its accessor: what the schema, the encoder and the DDL
/// need to know about a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The column name in Parquet and Athena; for contract columns also the JSON field name
    /// (`latitude` and `longitude` come from the `location` pair).
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// How its values are stored.
    pub shape: Shape,
}

/// A kind as a type, so that a table row's builder type follows from its kind.
trait Typed {
    const KIND: Kind;
    type Builder: ArrayBuilder;
    fn builder() -> Self::Builder;
}

/// The marker types of [`Typed`], named like the [`Kind`] variants they stand for.
mod typed {
    use super::*;

    macro_rules! typed {
        ($($kind:ident => $builder:ty = $new:expr;)*) => {$(
            pub struct $kind;
            impl Typed for $kind {
                const KIND: Kind = Kind::$kind;
                type Builder = $builder;
                fn builder() -> $builder {
                    $new
                }
            }
        )*};
    }

    // Builders start empty and grow by doubling. Arrow's `new()` reserves 1,024 rows a column
    // (≈ 100 KiB for a stream's builder), and the finished arrays keep that capacity: on the
    // original producer's time model most builders get a few rows (an epoch of one partition,
    // or a late record's hour), and thousands of them at once held 485 MiB of a 550 MiB heap.
    typed! {
        Str => StringBuilder = StringBuilder::with_capacity(0, 0);
        F64 => Float64Builder = Float64Builder::with_capacity(0);
        I32 => Int32Builder = Int32Builder::with_capacity(0);
        I64 => Int64Builder = Int64Builder::with_capacity(0);
        Bool => BooleanBuilder = BooleanBuilder::with_capacity(0);
        Ts => TimestampMicrosecondBuilder = TimestampMicrosecondBuilder::with_capacity(0).with_timezone("UTC");
        Bytes => BinaryBuilder = BinaryBuilder::with_capacity(0, 0);
    }
}

// Expands a table into `struct $builders`, one builder field per row (named by the row, which
// is why column names are identifiers), with `COLUMNS` (the rows in order), `append` (every
// accessor, in order) and `finish` (the arrays, in the same order).
macro_rules! table {
    ($(#[$meta:meta])* $builders:ident for [$($gen:tt)*] $record:ty {
        $($name:ident: $kind:ident, $shape:ident, |$r:ident| $get:expr;)*
    }) => {
        $(#[$meta])*
        #[allow(non_snake_case)]
        pub(super) struct $builders {
            $($name: <typed::$kind as Typed>::Builder,)*
        }

        impl Default for $builders {
            fn default() -> Self {
                $builders { $($name: <typed::$kind as Typed>::builder(),)* }
            }
        }

        impl $builders {
            /// The table's columns, in output order.
            pub(super) const COLUMNS: &'static [Column] =
                &[$(Column { name: stringify!($name), kind: <typed::$kind as Typed>::KIND, shape: Shape::$shape },)*];

            /// Appends one row: every column's value, read by its accessor.
            #[inline]
            pub(super) fn append<$($gen)*>(&mut self, record: &$record) {
                $({
                    let $r = record;
                    self.$name.append_value($get);
                })*
            }

            /// The rows appended since the last call, one array per column in table order.
            pub(super) fn finish(&mut self) -> impl Iterator<Item = ArrayRef> {
                [$(ArrayBuilder::finish(&mut self.$name),)*].into_iter()
            }
        }
    };
}

table! {
    /// `vehicle_data`.
    VehicleColumns for [S: AsRef<str>] VehicleRecord<S> {
        id: Str, Unique, |r| r.id.as_ref();
        deviceId: Str, Text, |r| r.device_id.as_ref();
        timestamp: Ts, Unique, |r| r.timestamp.micros();
        latitude: F64, Measure, |r| r.location.latitude;
        longitude: F64, Measure, |r| r.location.longitude;
        speed: F64, Measure, |r| r.speed;
        direction: Str, Few, |r| r.direction.as_ref();
        maker: Str, Few, |r| r.maker.as_ref();
        model: Str, Few, |r| r.model.as_ref();
        year: I32, Few, |r| r.year;
        fueltype: Str, Few, |r| r.fueltype.as_ref();
    }
}

table! {
    /// `gps_data`.
    GpsColumns for [S: AsRef<str>] GpsRecord<S> {
        id: Str, Unique, |r| r.id.as_ref();
        deviceId: Str, Text, |r| r.device_id.as_ref();
        timestamp: Ts, Unique, |r| r.timestamp.micros();
        speed: F64, Measure, |r| r.speed;
        direction: Str, Few, |r| r.direction.as_ref();
        vehicleType: Str, Few, |r| r.vehicle_type.as_ref();
    }
}

table! {
    /// `traffic_data`.
    TrafficColumns for [S: AsRef<str>] TrafficRecord<S> {
        id: Str, Unique, |r| r.id.as_ref();
        deviceId: Str, Text, |r| r.device_id.as_ref();
        cameraId: Str, Text, |r| r.camera_id.as_ref();
        latitude: F64, Measure, |r| r.location.latitude;
        longitude: F64, Measure, |r| r.location.longitude;
        timestamp: Ts, Unique, |r| r.timestamp.micros();
        snapshot: Str, Text, |r| r.snapshot.as_ref();
    }
}

table! {
    /// `weather_data`.
    WeatherColumns for [S: AsRef<str>] WeatherRecord<S> {
        id: Str, Unique, |r| r.id.as_ref();
        deviceId: Str, Text, |r| r.device_id.as_ref();
        latitude: F64, Measure, |r| r.location.latitude;
        longitude: F64, Measure, |r| r.location.longitude;
        timestamp: Ts, Unique, |r| r.timestamp.micros();
        temperature: F64, Measure, |r| r.temperature;
        weatherCondition: Str, Few, |r| r.weather_condition.as_ref();
        precipitation: F64, Measure, |r| r.precipitation;
        windspeed: F64, Measure, |r| r.windspeed;
        humidity: I32, Few, |r| r.humidity;
        airQualityIndex: F64, Measure, |r| r.air_quality_index;
    }
}

table! {
    /// `emergency_data`.
    EmergencyColumns for [S: AsRef<str>] EmergencyRecord<S> {
        id: Str, Unique, |r| r.id.as_ref();
        deviceId: Str, Text, |r| r.device_id.as_ref();
        incidentId: Str, Unique, |r| r.incident_id.as_ref();
        incident: Str, Few, |r| r.incident.as_ref();
        timestamp: Ts, Unique, |r| r.timestamp.micros();
        latitude: F64, Measure, |r| r.location.latitude;
        longitude: F64, Measure, |r| r.location.longitude;
        status: Str, Few, |r| r.status.as_ref();
        description: Str, Text, |r| r.description.as_ref();
    }
}

table! {
    /// Where a row came from, after the contract columns of rows read from Kafka.
    ProvenanceColumns for [] Provenance {
        _partition: I32, Few, |p| p.partition;
        _offset: I64, Unique, |p| p.offset;
        _late: Bool, Few, |p| p.late;
    }
}

table! {
    /// A refused record. `_partition` and `_offset` mean what they mean in [`PROVENANCE`].
    DeadLetterColumns for ['a] DeadLetterRow<'a> {
        topic: Str, Few, |d| d.topic;
        _partition: I32, Few, |d| d.partition;
        _offset: I64, Unique, |d| d.offset;
        error_class: Str, Few, |d| d.class;
        reason: Str, Text, |d| d.reason;
        raw: Bytes, Text, |d| d.raw;
    }
}

/// The contract columns of a stream, in output order.
pub fn columns(stream: Stream) -> &'static [Column] {
    match stream {
        Stream::Vehicle => VehicleColumns::COLUMNS,
        Stream::Gps => GpsColumns::COLUMNS,
        Stream::Traffic => TrafficColumns::COLUMNS,
        Stream::Weather => WeatherColumns::COLUMNS,
        Stream::Emergency => EmergencyColumns::COLUMNS,
    }
}

/// The provenance columns `_partition`, `_offset` and `_late` that follow the contract columns
/// of every row read from Kafka; the first two make the exactly-once invariant checkable by
/// any reader.
pub const PROVENANCE: &[Column] = ProvenanceColumns::COLUMNS;

/// The columns of the dead-letter output: where the record came from, why it was refused, and
/// its bytes.
pub const DEAD_LETTER: &[Column] = DeadLetterColumns::COLUMNS;

/// Name of the Kafka partition column.
pub const PARTITION_COLUMN: &str = PROVENANCE[0].name;
/// Name of the Kafka offset column.
pub const OFFSET_COLUMN: &str = PROVENANCE[1].name;
/// Name of the late-arrival flag column: set on records that arrived behind the watermark.
pub const LATE_COLUMN: &str = PROVENANCE[2].name;

/// Every row of every table (a name may repeat: `id` is in every stream).
pub fn all_columns() -> impl Iterator<Item = &'static Column> {
    Stream::ALL.into_iter().flat_map(columns).chain(PROVENANCE).chain(DEAD_LETTER)
}

/// The [`Shape`] of a column of any stream's (or the dead-letter) output, by name, as its table
/// states it; a name in no table is [`Shape::Text`], the default storage. A name means the same
/// column in every table (a test holds the tables to it), so the name alone decides.
pub fn shape(column: &str) -> Shape {
    all_columns().find(|c| c.name == column).map_or(Shape::Text, |c| c.shape)
}

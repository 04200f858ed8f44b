//! Per-file statistics for Delta `add` actions, from the Parquet footer the sink just wrote.
//!
//! Readers skip files by these (`numRecords`, `minValues`, `maxValues`, `nullCount`), so a
//! bound must never be tighter than the data: a wrong bound makes a query silently miss rows.
//! Hence, where the Delta encoding loses precision, the bound is widened, never narrowed:
//! - timestamps are written with millisecond precision: the minimum is rounded down and the
//!   maximum *up* to the millisecond (delta-rs and Spark truncate both);
//! - strings longer than [`MAX_STRING_STAT`] characters keep a truncated minimum (a prefix is
//!   never greater) and no maximum (a truncated prefix would be smaller than the value);
//! - booleans and binary columns get null counts only, as Spark writes them;
//! - a float bound that is not finite is left out (JSON has no NaN or infinity).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use arrow::datatypes::{DataType, Schema};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;
use serde_json::{Map, Value};

/// Longest string bound written, in characters (Spark's default prefix length).
pub const MAX_STRING_STAT: usize = 32;

/// The Delta statistics JSON of one Parquet file whose columns are the top-level fields of
/// `schema` (citystream's tables are flat), or `None` when the footer has no row groups' worth
/// of statistics at all (then only `numRecords` would be known, which the Add carries anyway).
pub fn stats_json(schema: &Schema, metadata: &ParquetMetaData) -> String {
    let rows = metadata.file_metadata().num_rows();
    let mut min = Map::new();
    let mut max = Map::new();
    let mut nulls = Map::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let Some(column) = ColumnStats::of(metadata, i) else { continue };
        nulls.insert(field.name().clone(), Value::from(column.nulls));
        let (lo, hi) = bounds(field.data_type(), &column);
        if let Some(lo) = lo {
            min.insert(field.name().clone(), lo);
        }
        if let Some(hi) = hi {
            max.insert(field.name().clone(), hi);
        }
    }
    let mut stats = BTreeMap::new();
    stats.insert("numRecords", Value::from(rows));
    stats.insert("minValues", Value::Object(min));
    stats.insert("maxValues", Value::Object(max));
    stats.insert("nullCount", Value::Object(nulls));
    serde_json::to_string(&stats).expect("statistics serialise")
}

/// One column's statistics over all row groups; `None` if any row group lacks them.
struct ColumnStats {
    nulls: u64,
    min: Option<Scalar>,
    max: Option<Scalar>,
}

/// A bound as Parquet stores it, by physical type.
#[derive(Clone, PartialEq, PartialOrd)]
enum Scalar {
    I32(i32),
    I64(i64),
    F64(f64),
    Bytes(Vec<u8>),
}

impl ColumnStats {
    fn of(metadata: &ParquetMetaData, column: usize) -> Option<ColumnStats> {
        let mut out = ColumnStats { nulls: 0, min: None, max: None };
        for rg in metadata.row_groups() {
            if rg.num_rows() == 0 {
                continue;
            }
            let stats = rg.column(column).statistics()?;
            out.nulls += stats.null_count_opt()?;
            let (lo, hi) = match stats {
                Statistics::Int32(s) => (s.min_opt().map(|v| Scalar::I32(*v)), s.max_opt().map(|v| Scalar::I32(*v))),
                Statistics::Int64(s) => (s.min_opt().map(|v| Scalar::I64(*v)), s.max_opt().map(|v| Scalar::I64(*v))),
                Statistics::Double(s) => (s.min_opt().map(|v| Scalar::F64(*v)), s.max_opt().map(|v| Scalar::F64(*v))),
                Statistics::ByteArray(s) => (s.min_opt().map(|v| Scalar::Bytes(v.data().to_vec())), s.max_opt().map(|v| Scalar::Bytes(v.data().to_vec()))),
                // Booleans and the rest: null counts only.
                _ => (None, None),
            };
            // All-null row groups have no bounds and do not narrow them.
            if let Some(lo) = lo {
                out.min = Some(match out.min.take() {
                    Some(m) if m <= lo => m,
                    _ => lo,
                });
            }
            if let Some(hi) = hi {
                out.max = Some(match out.max.take() {
                    Some(m) if m >= hi => m,
                    _ => hi,
                });
            }
        }
        Some(out)
    }
}

/// The JSON bounds of a column of type `data_type`, widened where the encoding loses precision.
fn bounds(data_type: &DataType, column: &ColumnStats) -> (Option<Value>, Option<Value>) {
    match data_type {
        DataType::Int32 | DataType::Int64 | DataType::Float64 => (column.min.as_ref().and_then(number), column.max.as_ref().and_then(number)),
        DataType::Timestamp(_, _) => {
            let micros = |s: &Scalar| match s {
                Scalar::I64(v) => Some(*v),
                _ => None,
            };
            let lo = column.min.as_ref().and_then(micros).map(|us| timestamp_millis(us.div_euclid(1000)));
            let hi = column.max.as_ref().and_then(micros).map(|us| timestamp_millis((us + 999).div_euclid(1000)));
            (lo, hi)
        }
        DataType::Utf8 => {
            let text = |s: &Scalar| match s {
                Scalar::Bytes(b) => String::from_utf8(b.clone()).ok(),
                _ => None,
            };
            let lo = column.min.as_ref().and_then(text).map(|s| Value::from(s.chars().take(MAX_STRING_STAT).collect::<String>()));
            let hi = column.max.as_ref().and_then(text).filter(|s| s.chars().count() <= MAX_STRING_STAT).map(Value::from);
            (lo, hi)
        }
        _ => (None, None),
    }
}

fn number(s: &Scalar) -> Option<Value> {
    match s {
        Scalar::I32(v) => Some(Value::from(*v)),
        Scalar::I64(v) => Some(Value::from(*v)),
        Scalar::F64(v) if v.is_finite() => Some(Value::from(*v)),
        _ => None,
    }
}

/// `2025-03-01T10:15:42.123Z`, the form Delta readers parse timestamp bounds in.
fn timestamp_millis(ms: i64) -> Value {
    let time = if ms >= 0 { UNIX_EPOCH + Duration::from_millis(ms as u64) } else { UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs()) };
    Value::from(humantime::format_rfc3339_millis(time).to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int32Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, TimeUnit};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;

    fn file(batches: &[RecordBatch]) -> ParquetMetaData {
        let props = WriterProperties::builder().set_max_row_group_row_count(Some(2)).build();
        let mut w = ArrowWriter::try_new(Vec::new(), batches[0].schema(), Some(props)).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.close().unwrap()
    }

    #[test]
    fn bounds_cover_every_row_group_and_are_widened_never_narrowed() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new("speed", DataType::Float64, false),
            Field::new("humidity", DataType::Int32, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("_late", DataType::Boolean, false),
        ]));
        let long = "x".repeat(40);
        let cols: Vec<ArrayRef> = vec![
            // 2025-03-01T10:15:42.123456Z and .000001 later values, across two row groups.
            Arc::new(TimestampMicrosecondArray::from(vec![1_740_824_142_123_456, 1_740_824_142_000_001, 1_740_824_150_999_001]).with_timezone("UTC")),
            Arc::new(Float64Array::from(vec![3.5, -1.25, 80.0])),
            Arc::new(Int32Array::from(vec![40, 7, 99])),
            Arc::new(StringArray::from(vec!["b", long.as_str(), "a"])),
            Arc::new(BooleanArray::from(vec![true, false, false])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let md = file(&[batch]);
        assert_eq!(md.num_row_groups(), 2);
        let stats: Value = serde_json::from_str(&stats_json(&schema, &md)).unwrap();
        assert_eq!(stats["numRecords"], 3);
        // Rounded down and up to the millisecond.
        assert_eq!(stats["minValues"]["ts"], "2025-03-01T10:15:42.000Z");
        assert_eq!(stats["maxValues"]["ts"], "2025-03-01T10:15:51.000Z");
        assert_eq!(stats["minValues"]["speed"], -1.25);
        assert_eq!(stats["maxValues"]["speed"], 80.0);
        assert_eq!(stats["minValues"]["humidity"], 7);
        assert_eq!(stats["maxValues"]["humidity"], 99);
        assert_eq!(stats["minValues"]["id"], "a");
        // The maximum is the 40-character string: too long to state, so not stated.
        assert!(stats["maxValues"].get("id").is_none(), "{stats}");
        assert!(stats["minValues"].get("_late").is_none());
        for c in ["ts", "speed", "humidity", "id", "_late"] {
            assert_eq!(stats["nullCount"][c], 0, "{c}");
        }
    }
}

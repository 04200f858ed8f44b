//! `citystream ddl`: Athena / Glue `CREATE EXTERNAL TABLE` statements for the lake's layout.
//!
//! One table per stream plus one for dead letters, partitioned by `date` and `hour` as the
//! folders are, with partition projection so that new hours are queryable without
//! `MSCK REPAIR TABLE`. Readers that want strict exactly-once while a run is in progress can
//! restrict themselves to the objects listed in `_manifests/`; after a run (or a recovery)
//! has finished, listing the folders gives the same rows.

use crate::contract::Stream;
use crate::contract::schema::{Column, DEAD_LETTER, Kind, PROVENANCE, columns};

/// The Athena (Hive) type that reads back what Parquet holds for a column of `kind`.
fn athena_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "string",
        Kind::F64 => "double",
        Kind::I32 => "int",
        Kind::I64 => "bigint",
        Kind::Bool => "boolean",
        Kind::Ts => "timestamp",
        Kind::Bytes => "binary",
    }
}

fn table<'a>(database: &str, name: &str, location: &str, cols: impl IntoIterator<Item = &'a Column>) -> String {
    let body: Vec<String> = cols.into_iter().map(|c| format!("  `{}` {}", c.name, athena_type(c.kind))).collect();
    format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`{name}` (\n{}\n)\nPARTITIONED BY (`date` string, `hour` string)\nSTORED AS PARQUET\nLOCATION '{location}/'\nTBLPROPERTIES (\n  'parquet.compression'='ZSTD',\n  'projection.enabled'='true',\n  'projection.date.type'='date',\n  'projection.date.format'='yyyy-MM-dd',\n  'projection.date.range'='2000-01-01,NOW',\n  'projection.hour.type'='integer',\n  'projection.hour.range'='0,23',\n  'projection.hour.digits'='2',\n  'storage.location.template'='{location}/date=${{date}}/hour=${{hour}}/'\n);\n",
        body.join(",\n")
    )
}

/// The statements for a lake at `output` (an `s3://bucket/prefix` URL) in `database`: a table
/// per stream (its contract columns, then the provenance columns) and a dead-letter table per
/// stream, each typed as the Parquet files are.
pub fn statements(output: &str, database: &str) -> String {
    let root = output.trim_end_matches('/');
    let mut out = format!("-- citystream tables for {root}\nCREATE DATABASE IF NOT EXISTS `{database}`;\n\n");
    for s in Stream::ALL {
        out.push_str(&table(database, s.name(), &format!("{root}/{}", s.name()), columns(s).iter().chain(PROVENANCE)));
        out.push('\n');
    }
    for s in Stream::ALL {
        out.push_str(&table(database, &format!("dead_letter_{}", s.name()), &format!("{root}/_dead_letter/{}", s.name()), DEAD_LETTER));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_gets_a_typed_partitioned_table() {
        let ddl = statements("s3://lake/city/", "smartcity");
        assert_eq!(ddl.matches("CREATE EXTERNAL TABLE").count(), 10);
        assert!(ddl.contains("`smartcity`.`weather_data`"));
        assert!(ddl.contains("  `temperature` double"));
        assert!(ddl.contains("  `humidity` int"));
        assert!(ddl.contains("  `timestamp` timestamp"));
        assert!(ddl.contains("LOCATION 's3://lake/city/weather_data/'"));
        assert!(ddl.contains("'storage.location.template'='s3://lake/city/gps_data/date=${date}/hour=${hour}/'"));
        assert!(ddl.contains("LOCATION 's3://lake/city/_dead_letter/gps_data/'"));
        assert!(!ddl.contains("`location`"), "location is two doubles");
    }
}

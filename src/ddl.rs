//! `citystream ddl`: Athena / Glue `CREATE EXTERNAL TABLE` statements for the lake.
//!
//! By default, the Delta tables (`'table_type'='DELTA'`): Athena reads the schema and the
//! committed files from each table's `_delta_log`, so a query sees exactly the committed rows,
//! once, while a cluster writes, crashes or compacts. With `--hive`, Hive-layout tables with
//! partition projection instead (new hours queryable without `MSCK REPAIR TABLE`); those list
//! folders, so they also see objects of commits in flight, objects a crash left until the next
//! start deletes them, and a compaction's inputs until `vacuum` deletes them.

use crate::contract::Stream;
use crate::contract::schema::{Column, DEAD_LETTER, Kind, PROVENANCE, columns};
use crate::delta::Table;

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

fn table<'a>(database: &str, name: &str, location: &str, cols: impl IntoIterator<Item = &'a Column>, by_stream: bool) -> String {
    let body: Vec<String> = cols.into_iter().map(|c| format!("  `{}` {}", c.name, athena_type(c.kind))).collect();
    let (stream_col, stream_projection, stream_path) = if by_stream {
        let names: Vec<&str> = Stream::ALL.iter().map(|s| s.name()).collect();
        ("`stream` string, ", format!("  'projection.stream.type'='enum',\n  'projection.stream.values'='{}',\n", names.join(",")), "stream=${stream}/")
    } else {
        ("", String::new(), "")
    };
    format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`{name}` (\n{}\n)\nPARTITIONED BY ({stream_col}`date` string, `hour` string)\nSTORED AS PARQUET\nLOCATION '{location}/'\nTBLPROPERTIES (\n  'parquet.compression'='ZSTD',\n  'projection.enabled'='true',\n{stream_projection}  'projection.date.type'='date',\n  'projection.date.format'='yyyy-MM-dd',\n  'projection.date.range'='2000-01-01,NOW',\n  'projection.hour.type'='integer',\n  'projection.hour.range'='0,23',\n  'projection.hour.digits'='2',\n  'storage.location.template'='{location}/{stream_path}date=${{date}}/hour=${{hour}}/'\n);\n",
        body.join(",\n")
    )
}

/// The Delta statements for a lake at `output` (an `s3://bucket/prefix` URL) in `database`:
/// one table per stream, one for the dead letters and one per aggregate table (`agg/<name>/`), read
/// through their Delta logs. The aggregate tables exist only as Delta tables: their partitions are
/// rewritten, so a reader that lists folders would see a replaced file beside its replacement.
pub fn statements(output: &str, database: &str) -> String {
    let root = output.trim_end_matches('/');
    let mut out = format!(
        "-- citystream Delta tables for {root} (Athena engine v3 reads the schema and the committed files from each _delta_log)\nCREATE DATABASE IF NOT EXISTS `{database}`;\n\n"
    );
    for t in Table::all() {
        out.push_str(&format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`{}`\nLOCATION '{root}/{}/'\nTBLPROPERTIES ('table_type'='DELTA');\n\n",
            t.name(),
            t.dir()
        ));
    }
    out
}

/// The Hive-layout statements (`--hive`) for a lake at `output` in `database`: a table per
/// stream (its contract columns, then the provenance columns) and one dead-letter table
/// partitioned by stream, each typed as the Parquet files are, with partition projection.
pub fn hive_statements(output: &str, database: &str) -> String {
    let root = output.trim_end_matches('/');
    let mut out =
        format!("-- citystream Hive-layout tables for {root} (they list folders: prefer the Delta tables)\nCREATE DATABASE IF NOT EXISTS `{database}`;\n\n");
    for s in Stream::ALL {
        out.push_str(&table(database, s.name(), &format!("{root}/{}", s.name()), columns(s).iter().chain(PROVENANCE), false));
        out.push('\n');
    }
    out.push_str(&table(database, "dead_letter", &format!("{root}/_dead_letter"), DEAD_LETTER, true));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_a_delta_table() {
        let ddl = statements("s3://lake/city/", "smartcity");
        assert_eq!(ddl.matches("CREATE EXTERNAL TABLE").count(), 10);
        assert_eq!(ddl.matches("TBLPROPERTIES ('table_type'='DELTA');").count(), 10);
        assert!(ddl.contains("`smartcity`.`vehicle_speed_minute`\nLOCATION 's3://lake/city/agg/vehicle_speed_minute/'"));
        assert!(ddl.contains("`smartcity`.`vehicle_latest`\nLOCATION 's3://lake/city/agg/vehicle_latest/'"));
        assert!(ddl.contains("`smartcity`.`weather_data`\nLOCATION 's3://lake/city/weather_data/'"));
        assert!(ddl.contains("`smartcity`.`dead_letter`\nLOCATION 's3://lake/city/_dead_letter/'"));
    }

    #[test]
    fn every_stream_gets_a_typed_partitioned_hive_table() {
        let ddl = hive_statements("s3://lake/city/", "smartcity");
        assert_eq!(ddl.matches("CREATE EXTERNAL TABLE").count(), 6);
        assert!(ddl.contains("`smartcity`.`weather_data`"));
        assert!(ddl.contains("  `temperature` double"));
        assert!(ddl.contains("  `humidity` int"));
        assert!(ddl.contains("  `timestamp` timestamp"));
        assert!(ddl.contains("LOCATION 's3://lake/city/weather_data/'"));
        assert!(ddl.contains("'storage.location.template'='s3://lake/city/gps_data/date=${date}/hour=${hour}/'"));
        assert!(ddl.contains("LOCATION 's3://lake/city/_dead_letter/'"));
        assert!(ddl.contains("PARTITIONED BY (`stream` string, `date` string, `hour` string)"));
        assert!(ddl.contains("'storage.location.template'='s3://lake/city/_dead_letter/stream=${stream}/date=${date}/hour=${hour}/'"));
        assert!(!ddl.contains("`location`"), "location is two doubles");
    }
}

#!/usr/bin/env python3
"""Spark with delta-spark reads every Delta table of a finished citystream lake.

Usage (the interpreter of scripts/spark.sh's venv; `scripts/spark.sh check LAKE_DIR` does it):
    spark_delta_check.py LAKE_DIR [--jars J1,J2,…] [--deltalake-python PY]

Finds every Delta table under LAKE_DIR (each folder holding `_delta_log/`: the five streams,
`_dead_letter`, the four aggregate tables under `agg/`, and any other), starts a local[2] SparkSession with the Delta extension and
catalog and the jars of `--jars` (default: $CITYSTREAM_SPARK_JARS, as scripts/spark.sh prints
it; given through `spark.jars`, so no Ivy and no network at run time), and for every table:

- reads it with `spark.read.format("delta")` and counts its rows, once through `count()` and
  once by scanning the key columns;
- checks that no (topic, _partition, _offset) occurs twice (`topic` only in the dead-letter
  table: a stream table holds one topic), and in an aggregate table no key (e.g. device_id,
  window_start);
- checks the types Spark sees: `timestamp` TimestampType (UTC instants, not TimestampNTZ),
  `date` DateType, `hour` IntegerType, `stream` StringType, `_partition` IntegerType,
  `_offset` LongType, and that `date` and `hour` are partition columns;
- compares with an independent read by Python `deltalake` (delta-rs), run in the project's
  venv (`--deltalake-python`, default $CITYSTREAM_PYTHON or <repo>/.venv/bin/python, since the
  Spark venv is a separate one): rows, table version, active files, rows per partition
  (date, hour, stream) and, per column, non-null count and a value aggregate (sum of numbers,
  of string lengths in characters, of binary lengths, true count; min, max and a hash-like sum
  of timestamps in µs) — so Spark decoded every value as delta-rs did;
- compares the rows with the manifests' totals (`_manifests/*.json`: rows of every committed
  object whose path lies in the table's folder; for an aggregate table, of its current files).

Prints one line per table (table, Spark rows, deltalake rows, manifest rows, versions) and a
JSON summary as the last line of stdout; exits 1 with `PROBLEM:` lines on stderr on any
mismatch, 2 on a usage error.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import lakeio

# Per column, the aggregates compared between Spark and deltalake; timestamps as µs since the
# epoch, each taken modulo this prime before summing (the plain sum of 50k timestamps overflows
# a long).
MOD = 1_000_000_007
STREAMS = ["vehicle_data", "gps_data", "traffic_data", "weather_data", "emergency_data"]
DEAD_LETTER = "_dead_letter"
KEY_COLUMNS = ["topic", "_partition", "_offset"]
PARTITION_COLUMNS = ["stream", "date", "hour"]
# The aggregate tables (`agg/<name>`, rewritten partition by partition): their key columns.
AGGREGATE_KEYS = {
    "agg/vehicle_speed_minute": ["device_id", "window_start"],
    "agg/weather_hourly": ["device_id", "hour_start"],
    "agg/emergency_hourly": ["incident", "status", "hour_start"],
    "agg/vehicle_latest": ["device_id"],
}


def key_columns(name):
    """The columns that identify a row of table `name`."""
    return AGGREGATE_KEYS.get(name, KEY_COLUMNS)


def find_tables(lake):
    """Every folder under `lake` holding a `_delta_log/`, relative to it, sorted (not nested)."""
    tables = []
    for dirpath, dirnames, _ in os.walk(lake):
        if "_delta_log" in dirnames:
            tables.append(os.path.relpath(dirpath, lake))
            dirnames[:] = []  # a table's partition folders hold no other table
            continue
        dirnames[:] = sorted(d for d in dirnames if d != "_manifests")
    return sorted(tables)


def manifest_rows(lake):
    """Rows per table folder that the manifests committed: per top-level folder for the objects of
    the stream and dead-letter tables; per `agg/<name>` the rows of the aggregate files that are
    current (added, and not removed by a later manifest)."""
    rows = {}
    current = {}
    folder = os.path.join(lake, "_manifests")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name)) as f:
            m = json.load(f)
        for entry in m.get("files", []):
            if entry["kind"] == "aggregate":
                current[entry["path"]] = int(entry["rows"])
                continue
            top = entry["path"].split("/", 1)[0]
            rows[top] = rows.get(top, 0) + int(entry["rows"])
        for path in m.get("removed", []):
            current.pop(path, None)
    for path, n in current.items():
        table = "/".join(path.split("/", 2)[:2])
        rows[table] = rows.get(table, 0) + n
    return rows


def last_checkpoint(lake, name):
    """The version of the table's newest checkpoint (`_delta_log/_last_checkpoint`), or None."""
    try:
        with open(os.path.join(lake, name, "_delta_log", "_last_checkpoint")) as f:
            return json.load(f)["version"]
    except FileNotFoundError:
        return None


def partition_key(values):
    return "/".join(f"{c}={values[c]}" for c in PARTITION_COLUMNS if c in values)


# ---------------------------------------------------------------- deltalake (project venv)

def deltalake_summary(lake, tables):
    """What Python `deltalake` reads from each table; runs in the project's venv."""
    import deltalake
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    for name in tables:
        dt_ = deltalake.DeltaTable(os.path.join(lake, name))
        table = dt_.to_pyarrow_table()
        files = pa.table(dt_.get_add_actions(flatten=True)).num_rows
        keys = [c for c in key_columns(name) if c in table.column_names]
        duplicates = 0
        if keys and table.num_rows:
            grouped = table.group_by(keys).aggregate([([], "count_all")])
            duplicates = pc.sum(pc.greater(grouped["count_all"], 1)).as_py() or 0
        parts = [c for c in PARTITION_COLUMNS if c in table.column_names]
        partitions = {}
        if parts and table.num_rows:
            for row in table.group_by(parts).aggregate([([], "count_all")]).to_pylist():
                partitions[partition_key({c: row[c].isoformat() if c == "date" else row[c] for c in parts})] = row["count_all"]
        columns = {}
        for field in table.schema:
            if field.name in PARTITION_COLUMNS:
                continue
            col = table.column(field.name)
            agg = {"non_null": len(col) - col.null_count}
            t = field.type
            if pa.types.is_timestamp(t):
                micros = [v for v in col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist() if v is not None]
                agg.update(min=min(micros, default=None), max=max(micros, default=None), sum_mod=sum(v % MOD for v in micros))
            elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
                agg["sum"] = pc.sum(pc.utf8_length(col)).as_py() or 0
            elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
                agg["sum"] = pc.sum(pc.binary_length(col)).as_py() or 0
            elif pa.types.is_boolean(t):
                agg["sum"] = pc.sum(col.cast(pa.int64())).as_py() or 0
            elif pa.types.is_integer(t) or pa.types.is_floating(t):
                agg["sum"] = pc.sum(col).as_py() or 0
            columns[field.name] = agg
        out[name] = {"rows": table.num_rows, "version": dt_.version(), "files": files, "duplicates": duplicates,
                     "partitions": partitions, "columns": columns}
    return out


def run_deltalake(python, lake, tables):
    """Runs `deltalake_summary` in the interpreter `python` (the project's venv)."""
    cmd = [python, os.path.abspath(__file__), "--deltalake-summary", lake, *tables]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the deltalake read ({' '.join(cmd[:3])} …) failed with exit code {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- Spark

def spark_session(jars):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("citystream-spark-delta-check")
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.session.timeZone", "UTC")
        # Small tables on 2 cores: Delta's log replay defaults to 50 shuffle partitions, which
        # made a check of 6 small tables take minutes.
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        # A short-lived JVM: the C1 compiler only, which shortens the warm-up of the first
        # queries (what dominated the check) at no cost to tables this small.
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def spark_summary(spark, lake, name, problems):
    """What Spark with delta-spark reads from one table; type problems go to `problems`."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    path = os.path.abspath(os.path.join(lake, name))
    started = time.monotonic()
    df = spark.read.format("delta").load(path)
    fields = {f.name: f.dataType for f in df.schema.fields}
    expected = {"timestamp": T.TimestampType(), "date": T.DateType(), "hour": T.IntegerType(), "stream": T.StringType(),
                "_partition": T.IntegerType(), "_offset": T.LongType()}
    for col, want in expected.items():
        if col in fields and fields[col] != want:
            problems.append(f"{name}: Spark sees column {col} as {fields[col].simpleString()}, expected {want.simpleString()}")
    is_stream = name in STREAMS
    hourly = name != "agg/vehicle_latest"
    if name in AGGREGATE_KEYS:
        required = ["date"] + (["hour"] if hourly else []) + AGGREGATE_KEYS[name] + ["records"]
    else:
        required = ["date", "hour", "_partition", "_offset"] + (["timestamp"] if is_stream else []) + (["stream", "topic"] if name == DEAD_LETTER else [])
    for col in required:
        if col not in fields:
            problems.append(f"{name}: Spark sees no column {col} (columns: {sorted(fields)})")
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").collect()[0].asDict()
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").collect()[0].asDict()
    for col in ("date", "hour") if hourly else ("date",):
        if col not in detail["partitionColumns"]:
            problems.append(f"{name}: {col} is not a partition column for Spark (partition columns: {detail['partitionColumns']})")

    timings = {"log": time.monotonic() - started}
    t0 = time.monotonic()
    rows = df.count()
    timings["count"] = time.monotonic() - t0
    t0 = time.monotonic()
    keys = [c for c in key_columns(name) if c in fields]
    by_key = df.groupBy(*keys).count()
    key_stats = by_key.agg(F.coalesce(F.sum("count"), F.lit(0)).alias("rows"), F.count_if(F.col("count") > 1).alias("duplicates")).collect()[0]
    timings["keys"] = time.monotonic() - t0

    # One scan: per partition (date, hour[, stream]) its rows and every column's aggregates,
    # combined here into the table's.
    t0 = time.monotonic()
    aggs, how = [F.count(F.lit(1)).alias("#rows")], {}
    for field in df.schema.fields:
        c, t = field.name, field.dataType
        if c in PARTITION_COLUMNS:
            continue
        col = F.col(f"`{c}`")
        aggs.append(F.count(col).alias(f"{c}#non_null"))
        if isinstance(t, T.TimestampType):
            micros = F.unix_micros(col)
            aggs += [F.min(micros).alias(f"{c}#min"), F.max(micros).alias(f"{c}#max"),
                     F.coalesce(F.sum(F.pmod(micros, F.lit(MOD))), F.lit(0)).alias(f"{c}#sum_mod")]
            how[c] = ["min", "max", "sum_mod"]
        elif isinstance(t, (T.StringType, T.BinaryType)):
            aggs.append(F.coalesce(F.sum(F.length(col)), F.lit(0)).alias(f"{c}#sum"))
            how[c] = ["sum"]
        elif isinstance(t, T.BooleanType):
            aggs.append(F.coalesce(F.sum(col.cast("long")), F.lit(0)).alias(f"{c}#sum"))
            how[c] = ["sum"]
        elif isinstance(t, (T.IntegerType, T.LongType, T.ShortType, T.ByteType, T.DoubleType, T.FloatType)):
            aggs.append(F.coalesce(F.sum(col), F.lit(0)).alias(f"{c}#sum"))
            how[c] = ["sum"]
        else:
            how[c] = []
    parts = [c for c in PARTITION_COLUMNS if c in fields]
    partitions = {}
    columns = {c: {"non_null": 0, **{k: None for k in ks}} for c, ks in how.items()}
    for row in df.groupBy(*parts).agg(*aggs).collect():
        values = row.asDict()
        partitions[partition_key({c: values[c].isoformat() if c == "date" else values[c] for c in parts})] = values["#rows"]
        for c, ks in how.items():
            agg = columns[c]
            agg["non_null"] += values[f"{c}#non_null"]
            for k in ks:
                v, have = values[f"{c}#{k}"], agg[k]
                if v is None:
                    continue
                agg[k] = v if have is None else min(have, v) if k == "min" else max(have, v) if k == "max" else have + v
    for c, ks in how.items():
        for k in ks:
            if k not in ("min", "max") and columns[c][k] is None:
                columns[c][k] = 0
    timings["partitions_and_columns"] = time.monotonic() - t0
    if sum(partitions.values()) != rows:
        problems.append(f"{name}: Spark's rows per partition add up to {sum(partitions.values())}, its count() is {rows}")
    return {"rows": rows, "scanned_rows": key_stats["rows"], "duplicates": key_stats["duplicates"], "version": history["version"],
            "files": detail["numFiles"], "partition_columns": list(detail["partitionColumns"]),
            "protocol": [detail.get("minReaderVersion"), detail.get("minWriterVersion")], "partitions": partitions,
            "columns": columns, "types": {c: t.simpleString() for c, t in fields.items()},
            "seconds": {k: round(v, 1) for k, v in timings.items()}}


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return a == b


def compare(name, s, d, manifest, problems):
    if s["rows"] != d["rows"]:
        problems.append(f"{name}: Spark counts {s['rows']} rows, deltalake {d['rows']}")
    if s["scanned_rows"] != s["rows"]:
        problems.append(f"{name}: Spark's count() is {s['rows']} but a scan of the key columns finds {s['scanned_rows']} rows")
    if manifest is not None and s["rows"] != manifest:
        problems.append(f"{name}: Spark counts {s['rows']} rows, the manifests committed {manifest}")
    if s["duplicates"]:
        problems.append(f"{name}: Spark sees {s['duplicates']} ({', '.join(key_columns(name))}) keys more than once")
    if d["duplicates"]:
        problems.append(f"{name}: deltalake sees {d['duplicates']} keys more than once")
    if s["version"] != d["version"]:
        problems.append(f"{name}: Spark reads version {s['version']}, deltalake {d['version']}")
    if s["files"] != d["files"]:
        problems.append(f"{name}: Spark sees {s['files']} active files, deltalake {d['files']}")
    if s["protocol"] != [1, 2]:
        problems.append(f"{name}: protocol {s['protocol']}, expected reader 1 / writer 2")
    if s["partitions"] != d["partitions"]:
        diff = sorted(k for k in set(s["partitions"]) | set(d["partitions"]) if s["partitions"].get(k) != d["partitions"].get(k))
        problems.append(f"{name}: rows per partition differ in {len(diff)} partitions, e.g. "
                        + ", ".join(f"{k}: Spark {s['partitions'].get(k)} / deltalake {d['partitions'].get(k)}" for k in diff[:3]))
    if set(s["columns"]) != set(d["columns"]):
        problems.append(f"{name}: columns differ: Spark {sorted(s['columns'])}, deltalake {sorted(d['columns'])}")
    for c in sorted(set(s["columns"]) & set(d["columns"])):
        for k, v in s["columns"][c].items():
            if k in d["columns"][c] and not same(v, d["columns"][c][k]):
                problems.append(f"{name}: column {c} {k}: Spark {v!r}, deltalake {d['columns'][c][k]!r}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--deltalake-summary":
        print(json.dumps(deltalake_summary(sys.argv[2], sys.argv[3:])))
        return
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lake", help="a local lake directory (citystream run --output)")
    ap.add_argument("--jars", default=os.environ.get("CITYSTREAM_SPARK_JARS", ""),
                    help="comma-separated jars for spark.jars (default: $CITYSTREAM_SPARK_JARS; see scripts/spark.sh)")
    ap.add_argument("--deltalake-python", default=os.environ.get("CITYSTREAM_PYTHON", os.path.join(repo, ".venv", "bin", "python")),
                    help="interpreter with the deltalake package (default: $CITYSTREAM_PYTHON or <repo>/.venv/bin/python)")
    args = ap.parse_args()
    jars = [j for j in args.jars.split(",") if j]
    if not jars:
        ap.error("no jars: pass --jars or set CITYSTREAM_SPARK_JARS (run scripts/spark.sh, or scripts/spark.sh check LAKE_DIR)")
    if not any("delta-spark" in os.path.basename(j) for j in jars):
        ap.error(f"no delta-spark jar among --jars: {jars}")
    for j in jars:
        if not os.path.isfile(j):
            ap.error(f"jar {j} does not exist (run scripts/spark.sh)")
    lake = os.path.abspath(args.lake)
    if not os.path.isdir(lake):
        ap.error(f"{lake} is not a directory")

    problems = []
    tables = find_tables(lake)
    for want in STREAMS + [DEAD_LETTER] + list(AGGREGATE_KEYS):
        if want not in tables:
            problems.append(f"{want} is not a Delta table in {lake} (found: {tables})")
    manifests = manifest_rows(lake)
    started = time.monotonic()
    d_all = run_deltalake(args.deltalake_python, lake, tables)
    deltalake_s = time.monotonic() - started

    import pyspark

    started = time.monotonic()
    spark = spark_session(jars)
    startup_s = time.monotonic() - started
    delta_jar = next(os.path.basename(j) for j in jars if "delta-spark" in os.path.basename(j))
    print(f"Spark {spark.version} (pyspark {pyspark.__version__}) with {delta_jar}: {len(tables)} Delta tables in {lake} (session up in {startup_s:.1f} s)")
    summary = {"spark": spark.version, "delta_jar": delta_jar, "tables": {}}
    started = time.monotonic()
    for name in tables:
        d = d_all[name]
        t0 = time.monotonic()
        try:
            s = spark_summary(spark, lake, name, problems)
        except Exception as e:  # noqa: BLE001 — any reader error is a finding, the others still run
            problems.append(f"{name}: Spark could not read the table: {type(e).__name__}: {str(e).splitlines()[0][:500]}")
            print(f"{name}: Spark FAILED, deltalake {d['rows']} rows, version {d['version']}")
            continue
        # The manifests' totals: citystream's six tables always; another table only if some
        # manifest names objects in its folder.
        manifest = manifests.get(name, 0) if name in STREAMS + [DEAD_LETTER] + list(AGGREGATE_KEYS) else manifests.get(name)
        compare(name, s, d, manifest, problems)
        checkpoint = last_checkpoint(lake, name)
        print(f"{name}: spark {s['rows']} rows, deltalake {d['rows']} rows, manifests {manifest} rows; "
              f"version spark {s['version']} / deltalake {d['version']} (checkpoint {checkpoint}); {s['files']} files, {len(s['partitions'])} partitions "
              f"{s['partition_columns']}, {len(s['columns'])} columns compared; {time.monotonic() - t0:.1f} s {s['seconds']}")
        summary["tables"][name] = {"spark_rows": s["rows"], "deltalake_rows": d["rows"], "manifest_rows": manifest,
                                   "spark_version": s["version"], "deltalake_version": d["version"], "checkpoint": checkpoint, "files": s["files"],
                                   "partitions": len(s["partitions"]), "duplicates": s["duplicates"], "types": s["types"]}
    spark.stop()
    summary.update(spark_startup_s=round(startup_s, 1), spark_read_s=round(time.monotonic() - started, 1), deltalake_s=round(deltalake_s, 1),
                   problems=len(problems))
    lakeio.report(summary, problems)


if __name__ == "__main__":
    # py4j's threads, like pyarrow's, can abort at interpreter shutdown: see lakeio.run.
    lakeio.run(main)

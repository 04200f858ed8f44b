#!/usr/bin/env python3
"""Independent check of a citystream lake against the Kafka topics it was built from.

Reads every record of the five topics with confluent-kafka, lists the output the way Athena
would (every *.parquet under each stream's folder and under _dead_letter/) and reads it with
pyarrow, then asserts the exactly-once invariant: every (topic, partition, offset) in Kafka
appears exactly once across data, late and dead-letter files, nothing else appears, values
and types equal the produced JSON, and the manifests account for exactly the listed files, each
object in one manifest only and holding only epochs of that manifest's commit.

Then the same through Delta Lake, with the Python `deltalake` package (delta-rs's own reader,
independent of citystream's writer): every table (one per stream, `_dead_letter/`) read from its
`_delta_log` holds every (topic, partition, offset) of its records exactly once with the values
Kafka holds, its files are exactly the committed ones (unless --compacted: then only the rows are
compared), and its `txn` version for `citystream/<table>` equals the newest manifest.

Then the aggregate tables (`agg/<name>/`, read through Delta): each one the newest manifest lists
as maintained equals the SQL of its definition, computed by duckdb over the committed stream
tables (counts exact, floats within 1e-9 relative); its active files are exactly those the
manifests added and did not remove since, one per partition, each row in the partition of its key.

Prints a JSON summary on stdout; exits 1 with the problems on stderr if anything is wrong.
"""
import argparse
import datetime as dt
import json
import os
import time

import deltalake
import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

import lakeio

STREAMS = ["vehicle_data", "gps_data", "traffic_data", "weather_data", "emergency_data"]
FIELDS = {
    "vehicle_data": ["id", "deviceId", "timestamp", "location", "speed", "direction", "maker", "model", "year", "fueltype"],
    "gps_data": ["id", "deviceId", "timestamp", "speed", "direction", "vehicleType"],
    "traffic_data": ["id", "deviceId", "cameraId", "location", "timestamp", "snapshot"],
    "weather_data": ["id", "deviceId", "location", "timestamp", "temperature", "weatherCondition", "precipitation", "windspeed", "humidity", "airQualityIndex"],
    "emergency_data": ["id", "deviceId", "incidentId", "incident", "timestamp", "location", "status", "description"],
}
INT_FIELDS = {"year", "humidity"}
STR_FIELDS = {"id", "deviceId", "direction", "maker", "model", "fueltype", "vehicleType", "cameraId", "snapshot", "weatherCondition", "incidentId", "incident", "status", "description"}


# What a broker answers while it is starting or taking back the leadership of its partitions
# (the fault suite restarts it just before checking): worth asking again.
TRANSIENT = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
             KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN}


def watermarks(c, tp, timeout_s=120):
    """The partition's (low, high) offsets, asking again while the broker's answer is transient."""
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            return c.get_watermark_offsets(tp, timeout=30)
        except KafkaException as e:
            if e.args[0].code() not in TRANSIENT or time.monotonic() > give_up:
                raise
            time.sleep(0.5)


def read_kafka(brokers, prefix, timeout_s=120):
    """Every record of the five topics, keyed by (topic, partition, offset); all partitions at once."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "lake-check", "enable.auto.commit": False, "enable.partition.eof": False,
                  "fetch.queue.backoff.ms": 1})
    records = {}
    try:
        ends = {}
        assign = []
        for s in STREAMS:
            topic = prefix + s
            md = c.list_topics(topic, timeout=30)
            for p in md.topics[topic].partitions:
                low, high = watermarks(c, TopicPartition(topic, p))
                if high > low:
                    ends[(topic, p)] = high
                    assign.append(TopicPartition(topic, p, low))
        if not assign:
            return records
        c.assign(assign)
        deadline = dt.datetime.now() + dt.timedelta(seconds=timeout_s)
        while ends:
            batch = c.consume(num_messages=10000, timeout=1.0)
            if not batch and dt.datetime.now() > deadline:
                raise SystemExit(f"timeout reading {sorted(ends)[:5]} ...")
            for m in batch:
                if m.error():
                    if m.error().code() in TRANSIENT:
                        continue  # the client retries by itself; the deadline above bounds it
                    raise SystemExit(f"kafka error on {m.topic()}/{m.partition()}: {m.error()}")
                records[(m.topic(), m.partition(), m.offset())] = m.value() or b""
                key = (m.topic(), m.partition())
                if key in ends and m.offset() >= ends[key] - 1:
                    del ends[key]
    finally:
        c.close()
    return records


def list_files(fs, root, sub):
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{root}/{sub}", recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return []
    # Data files only: not the Delta log's checkpoints (`_delta_log/…checkpoint.parquet`).
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet") and "/_delta_log/" not in i.path)


def parse_ts(text):
    t = dt.datetime.fromisoformat(text.replace(" ", "T"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t


def check_values(stream, key, row, kafka, where, problems):
    """The row's fields equal the produced JSON record's."""
    raw = kafka.get(key)
    if raw is None:
        problems.append(f"{key} in {where} is not in Kafka")
        return
    src = json.loads(raw)
    for f in FIELDS[stream]:
        if f == "location":
            got, want = [row["latitude"], row["longitude"]], [float(x) for x in src[f]]
        elif f == "timestamp":
            got, want = row["timestamp"], parse_ts(src[f])
        elif f in INT_FIELDS:
            got, want = row[f], int(src[f])
        elif f in STR_FIELDS:
            got, want = row[f], src[f]
        else:
            got, want = row[f], float(src[f])
        if got != want:
            problems.append(f"{key} field {f}: {where} {got!r} != kafka {want!r}")
            return


def check_delta(output, prefix, kafka, committed, head, compacted, problems):
    """Reads every table through its Delta log; returns rows seen per table."""
    root, opts = lakeio.delta_location(output)
    rows_seen = {}
    counts = {"data": 0, "late": 0, "dead": 0}
    tables = [(s, s, s) for s in STREAMS] + [("dead_letter", "_dead_letter", None)]
    for name, folder, stream in tables:
        uri = f"{root}/{folder}"
        if not deltalake.DeltaTable.is_deltatable(uri, storage_options=opts):
            if head:
                problems.append(f"delta: {uri} is not a Delta table")
            continue
        dt_ = deltalake.DeltaTable(uri, storage_options=opts)
        proto = dt_.protocol()
        if (proto.min_reader_version, proto.min_writer_version) != (1, 2):
            problems.append(f"delta {name}: protocol {proto.min_reader_version}/{proto.min_writer_version}, expected 1/2")
        version = dt_.transaction_version(f"citystream/{name}")
        if head is not None and version != head:
            problems.append(f"delta {name}: txn version {version}, newest manifest {head}")
        files = {f"{folder}/{p}" for p in pa.table(dt_.get_add_actions(flatten=True)).column("path").to_pylist()}
        want = {p for p in committed if p.startswith(folder + "/")}
        if not compacted and files != want:
            problems.append(f"delta {name}: files not committed {sorted(files - want)[:3]}; committed, not in the table {sorted(want - files)[:3]}")
        table = dt_.to_pyarrow_table()
        if stream is not None and table.num_rows and table.schema.field("timestamp").type != pa.timestamp("us", tz="UTC"):
            problems.append(f"delta {name}: timestamp is {table.schema.field('timestamp').type}")
        seen = set()
        for row in table.to_pylist():
            topic = row["topic"] if stream is None else prefix + stream
            key = (topic, row["_partition"], row["_offset"])
            if key in seen:
                problems.append(f"delta {name}: duplicate {key}")
                continue
            seen.add(key)
            counts["dead" if stream is None else "late" if row["_late"] else "data"] += 1
            if stream is None:
                if kafka.get(key) != row["raw"]:
                    problems.append(f"delta dead letter {key}: raw bytes differ from Kafka")
            else:
                check_values(stream, key, row, kafka, f"delta {name}", problems)
        rows_seen[name] = seen
    everything = set().union(*rows_seen.values()) if rows_seen else set()
    if sum(len(v) for v in rows_seen.values()) != len(everything):
        problems.append("delta: a record is in two tables")
    missing = [k for k in kafka if k not in everything]
    if missing:
        problems.append(f"delta: {len(missing)} Kafka records are in no Delta table, e.g. {missing[:5]}")
    return counts


AGGREGATES = ["vehicle_speed_minute", "weather_hourly", "emergency_hourly", "vehicle_latest"]

# Each aggregate table's definition (issue 15) over the committed stream tables, as duckdb SQL:
# its key columns (times as µs since the Unix epoch), then its value columns. `{w}` is --window.
AGGREGATE_SQL = {
    "vehicle_speed_minute": ("""
        SELECT deviceId AS device_id, epoch_us("timestamp") - ((epoch_us("timestamp") % {w}) + {w}) % {w} AS window_start,
               count(*) AS records, min(speed) AS speed_min, max(speed) AS speed_max, avg(speed) AS speed_avg
        FROM vehicle_data GROUP BY ALL""", 2),
    "weather_hourly": ("""
        SELECT deviceId AS device_id, epoch_us(date_trunc('hour', "timestamp")) AS hour_start, count(*) AS records,
               min(temperature) AS temperature_min, max(temperature) AS temperature_max, avg(temperature) AS temperature_avg,
               sum(precipitation) AS precipitation_sum, max(windspeed) AS windspeed_max, avg(humidity) AS humidity_avg,
               max(airQualityIndex) AS air_quality_index_max
        FROM weather_data GROUP BY ALL""", 2),
    "emergency_hourly": ("""
        SELECT incident, status, epoch_us(date_trunc('hour', "timestamp")) AS hour_start, count(*) AS records
        FROM emergency_data GROUP BY ALL""", 3),
    "vehicle_latest": ("""
        SELECT device_id, last_seen, latitude, longitude, speed, records FROM (
          SELECT deviceId AS device_id, epoch_us("timestamp") AS last_seen, latitude, longitude, speed,
                 count(*) OVER (PARTITION BY deviceId) AS records,
                 row_number() OVER (PARTITION BY deviceId ORDER BY "timestamp" DESC, _partition DESC, _offset DESC) AS n
          FROM vehicle_data) WHERE n = 1""", 1),
}
STREAM_OF = {"vehicle_speed_minute": "vehicle_data", "weather_hourly": "weather_data", "emergency_hourly": "emergency_data", "vehicle_latest": "vehicle_data"}


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b


def check_aggregates(output, manifests, live, expected_tables, problems):
    """Every aggregate table the newest manifest maintains equals its SQL over the committed stream
    tables; returns {table: rows}."""
    if not manifests:
        return {}
    newest = manifests[-1]
    maintained = newest.get("aggregates", [])
    if expected_tables is not None and sorted(maintained) != sorted(expected_tables):
        problems.append(f"aggregates: the newest manifest maintains {maintained}, expected {expected_tables}")
    window = newest["clock"]["window_us"]
    root, opts = lakeio.delta_location(output)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    registered = set()
    rows = {}
    for name in maintained:
        stream = STREAM_OF[name]
        if stream not in registered:
            uri = f"{root}/{stream}"
            source = deltalake.DeltaTable(uri, storage_options=opts).to_pyarrow_table() if deltalake.DeltaTable.is_deltatable(uri, storage_options=opts) else None
            if source is None:
                problems.append(f"aggregate {name}: the stream table {stream} is not a Delta table")
                continue
            con.register(stream, source)
            registered.add(stream)
        uri = f"{root}/agg/{name}"
        if not deltalake.DeltaTable.is_deltatable(uri, storage_options=opts):
            problems.append(f"aggregate {name}: {uri} is not a Delta table")
            continue
        dt_ = deltalake.DeltaTable(uri, storage_options=opts)
        version = dt_.transaction_version(f"citystream/{name}")
        if version != newest["sequence"]:
            problems.append(f"aggregate {name}: txn version {version}, newest manifest {newest['sequence']}")
        files = {f"agg/{name}/{p}" for p in pa.table(dt_.get_add_actions(flatten=True)).column("path").to_pylist()}
        want = {p for p in live if p.startswith(f"agg/{name}/")}
        if files != want:
            problems.append(f"aggregate {name}: active files not committed {sorted(files - want)[:3]}; committed, not active {sorted(want - files)[:3]}")
        folders = [f.rsplit("/", 1)[0] for f in files]
        if len(folders) != len(set(folders)):
            problems.append(f"aggregate {name}: a partition has {max(folders.count(f) for f in folders)} active files, expected one")
        actual = dt_.to_pyarrow_table()
        con.register("actual", actual)
        sql, keys = AGGREGATE_SQL[name]
        expected = con.execute(sql.format(w=window)).fetchall()
        columns = [d[0] for d in con.execute(sql.format(w=window)).description]
        time_cols = {"window_start", "hour_start", "last_seen"}
        part_col = {"vehicle_speed_minute": "window_start", "weather_hourly": "hour_start", "emergency_hourly": "hour_start", "vehicle_latest": "last_seen"}[name]
        select = ", ".join(f'epoch_us("{c}")' if c in time_cols else f'"{c}"' for c in columns)
        got = con.execute(f'SELECT {select}, CAST("date" AS VARCHAR), "hour" FROM actual' if name != "vehicle_latest" else f'SELECT {select}, CAST("date" AS VARCHAR), NULL FROM actual').fetchall()
        want_rows = {tuple(r[:keys]): r[keys:] for r in expected}
        got_rows = {}
        for r in got:
            key, values, (date, hour) = tuple(r[:keys]), r[keys:len(columns)], r[len(columns):]
            if key in got_rows:
                problems.append(f"aggregate {name}: key {key} has two rows")
            got_rows[key] = values
            at = dt.datetime.fromtimestamp(r[columns.index(part_col)] / 1e6, tz=dt.timezone.utc)
            if date != at.date().isoformat() or (hour is not None and int(hour) != at.hour):
                problems.append(f"aggregate {name}: row {key} is in partition date={date}/hour={hour}, its {part_col} is {at.isoformat()}")
        if set(got_rows) != set(want_rows):
            missing, extra = sorted(set(want_rows) - set(got_rows)), sorted(set(got_rows) - set(want_rows))
            problems.append(f"aggregate {name}: {len(missing)} rows missing (e.g. {missing[:3]}), {len(extra)} rows too many (e.g. {extra[:3]})")
        for key in set(got_rows) & set(want_rows):
            for col, a, b in zip(columns[keys:], got_rows[key], want_rows[key]):
                if not close(a, b):
                    problems.append(f"aggregate {name}: row {key} has {col}={a}, the SQL gives {b}")
                    break
        rows[name] = len(got_rows)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", required=True)
    ap.add_argument("--brokers", default=os.environ.get("CITYSTREAM_BROKERS", "127.0.0.1:9092"))
    ap.add_argument("--prefix", default="")
    ap.add_argument("--expect-records", type=int)
    ap.add_argument("--expect-group", help="consumer group whose committed offsets must equal the end of every partition")
    ap.add_argument("--aggregates", default="all", help="the aggregate tables the newest manifest must maintain: all, none, or names")
    ap.add_argument("--compacted", action="store_true", help="the lake was compacted: the Hive listing holds removed files until a vacuum, so compare rows through Delta only")
    args = ap.parse_args()

    problems = []
    kafka = read_kafka(args.brokers, args.prefix)
    fs, root = lakeio.filesystem(args.output)

    seen = {}
    counts = {"data": 0, "late": 0, "dead": 0}
    files = []
    footers = {}  # path relative to the root -> the Parquet footer's key-value metadata
    expected_types = {"timestamp": pa.timestamp("us", tz="UTC"), "latitude": pa.float64(), "longitude": pa.float64(), "year": pa.int32(), "humidity": pa.int32(), "temperature": pa.float64(), "_partition": pa.int32(), "_offset": pa.int64(), "_late": pa.bool_()}
    for s in STREAMS:
        topic = args.prefix + s
        for path in [] if args.compacted else list_files(fs, root, s):
            files.append(path)
            table = pq.read_table(path, filesystem=fs)
            footers[path[len(root) + 1:]] = table.schema.metadata or {}
            for name, typ in expected_types.items():
                if name in table.schema.names and table.schema.field(name).type != typ:
                    problems.append(f"{path}: column {name} is {table.schema.field(name).type}, expected {typ}")
            for row in table.to_pylist():
                key = (topic, row["_partition"], row["_offset"])
                if key in seen:
                    problems.append(f"duplicate {key} in {path} and {seen[key]}")
                    continue
                seen[key] = path
                counts["late" if row["_late"] else "data"] += 1
                check_values(s, key, row, kafka, path, problems)
    for path in [] if args.compacted else list_files(fs, root, "_dead_letter"):
        files.append(path)
        table = pq.read_table(path, filesystem=fs)
        footers[path[len(root) + 1:]] = table.schema.metadata or {}
        for row in table.to_pylist():
            key = (row["topic"], row["_partition"], row["_offset"])
            if key in seen:
                problems.append(f"duplicate {key} in {path} and {seen[key]}")
                continue
            seen[key] = path
            counts["dead"] += 1
            if kafka.get(key) != row["raw"]:
                problems.append(f"dead letter {key}: raw bytes differ from Kafka")
            if not row["reason"] or not row["error_class"]:
                problems.append(f"dead letter {key} has no reason")

    missing = [k for k in kafka if k not in seen]
    if missing and not args.compacted:
        problems.append(f"{len(missing)} Kafka records are in no output, e.g. {missing[:5]}")
    if args.expect_records is not None and len(kafka) != args.expect_records:
        problems.append(f"Kafka holds {len(kafka)} records, expected {args.expect_records}")

    # Manifests: every listed file is committed, every committed file is listed.
    manifests = []
    for info in fs.get_file_info(pafs.FileSelector(f"{root}/_manifests", allow_not_found=True)):
        if info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as f:
                manifests.append(json.loads(f.read()))
    manifests.sort(key=lambda m: m["sequence"])
    committed = {}
    live_aggregates = set()  # aggregate files added and not removed since
    upper = None
    for m in manifests:
        if upper is not None and m["lower"] != upper:
            problems.append(f"manifest {m['sequence']} starts at {m['lower']}, previous ended at {upper}")
        upper = m["upper"]
        # A manifest's aggregate files replace those it lists as removed (a file may be both
        # when the manifest holds several commits of the writer: it was current in between).
        for f in m["files"]:
            if f["kind"] == "aggregate":
                if f["path"] in live_aggregates:
                    problems.append(f"{f['path']} committed twice")
                live_aggregates.add(f["path"])
        for path in m.get("removed", []):
            if path not in live_aggregates:
                problems.append(f"manifest {m['sequence']} removes {path}, which is not a current aggregate file")
            live_aggregates.discard(path)
        for f in m["files"]:
            if f["kind"] == "aggregate":
                continue
            if f["path"] in committed:
                problems.append(f"{f['path']} committed twice")
            committed[f["path"]] = f["rows"]
            # An object holds the rows of one commit: every epoch it holds lies in its manifest's
            # [lower, upper), by the manifest entry and by the object's own footer.
            first, last = f["epoch"], max(f.get("last_epoch", 0), f["epoch"])
            if not (m["lower"] <= first <= last < m["upper"]):
                problems.append(f"{f['path']}: epochs {first}..={last} outside its commit [{m['lower']}, {m['upper']})")
            footer = footers.get(f["path"])
            if footer is not None and b"citystream.first_epoch" in footer:
                got = (int(footer[b"citystream.first_epoch"]), int(footer[b"citystream.last_epoch"]))
                if got != (first, last):
                    problems.append(f"{f['path']}: footer says epochs {got}, manifest {first}..={last}")
    listed = {p[len(root) + 1:] for p in files}
    head = manifests[-1]["sequence"] if manifests else None
    delta_counts = check_delta(args.output, args.prefix, kafka, committed, head, args.compacted, problems)
    delta_rows = sum(delta_counts.values())
    if args.compacted:
        # The Hive listing also holds compaction inputs until a vacuum: the counts are Delta's.
        counts = delta_counts
    elif set(committed) != listed:
        problems.append(f"files not committed: {sorted(listed - set(committed))[:5]}; committed but absent: {sorted(set(committed) - listed)[:5]}")
    if not args.compacted and sum(committed.values()) != len(seen):
        problems.append(f"manifests count {sum(committed.values())} rows, files hold {len(seen)}")

    if args.expect_group:
        c = Consumer({"bootstrap.servers": args.brokers, "group.id": args.expect_group, "enable.auto.commit": False})
        try:
            for s_ in STREAMS:
                topic = args.prefix + s_
                parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=30).topics[topic].partitions]
                for tp in c.committed(parts, timeout=30):
                    _, high = watermarks(c, TopicPartition(tp.topic, tp.partition))
                    if high > 0 and tp.offset != high:
                        problems.append(f"group {args.expect_group}: committed offset of {tp.topic}/{tp.partition} is {tp.offset}, end is {high}")
        finally:
            c.close()

    expected_tables = None if args.aggregates == "any" else [] if args.aggregates == "none" else AGGREGATES if args.aggregates == "all" else args.aggregates.split(",")
    aggregate_rows = check_aggregates(args.output, manifests, live_aggregates, expected_tables, problems)

    summary = {"kafka_records": len(kafka), "data_rows": counts["data"], "late_rows": counts["late"], "dead_letters": counts["dead"], "files": len(files), "manifests": len(manifests), "delta_rows": delta_rows, "aggregate_rows": aggregate_rows, "problems": len(problems)}
    lakeio.report(summary, problems)


if __name__ == "__main__":
    lakeio.run(main)

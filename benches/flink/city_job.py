"""The original Spark job's shape in Apache Flink: a second peer next to benches/spark/city_job.py.

Five INSERT statements in one Flink SQL job (one StatementSet), one per topic: a Kafka source
table (earliest offsets, JSON format with the original job's schema, a 2-minute watermark on
`timestamp`) → INSERT INTO a filesystem table in Parquet (a streaming file sink: files are
committed at checkpoints; exactly-once checkpoints every 10 s, into <output>/checkpoints).
Pure SQL through PyFlink's Table API, no Python functions: everything runs in the JVM, in the
local mini-cluster that apache-flink ships, in streaming mode at parallelism 2 (the machine's
two cores, as Spark's local[2]).

Differences from the original (and from the Spark peer), all for measuring:
- 'scan.bounded.mode'='latest-offset': each source reads what is in its topic when the job
  starts and finishes (Spark's trigger(availableNow=True)); the job ends after a final
  checkpoint, which commits the last Parquet files;
- JSON with 'json.ignore-parse-errors': a record is dropped when its value does not parse as a
  JSON object (truncated, not JSON, empty) or when its `timestamp` is not a valid date-time
  ("2025-02-30T25:61:00"); a missing field is null, a number where a string is declared
  (deviceId 12345) becomes its text, an array declared STRING (`location`, also a one-element
  one) its JSON text. Spark's from_json keeps every record (nulls where it cannot parse);
- `timestamp` is declared TIMESTAMP(3) (a Flink rowtime attribute has at most millisecond
  precision), parsed as ISO-8601 local time as the producer sends it
  ("2025-03-01T08:00:39.182067"); the values written keep the microseconds;
- `temperature` is INT as in the original, but Flink's JSON format converts the producer's
  float to an integer (truncating) where Spark's from_json yields null;
- the 2-minute watermark drops nothing here (no window or aggregation), as in the original;
- output to a local directory or to S3 (s3://bucket/prefix or s3a://…, through Flink's S3
  file system plugin, flink-s3-fs-hadoop; endpoint and credentials from AWS_ENDPOINT_URL,
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION; FLINK_PLUGINS_DIR must name a
  directory holding s3-fs-hadoop/flink-s3-fs-hadoop-*.jar; the job then sets FLINK_HOME to
  apache-flink's directory, or PyFlink would replace FLINK_PLUGINS_DIR with its own, and loads
  the plugin into the mini-cluster's JVM itself; the keys go only into that plugin's
  configuration, never into the job's, which Flink logs). The checkpoints go where the data go.
The query time includes planning the five statements and starting the local mini-cluster (at
the statement set's submission), and the wait for the final checkpoint (up to one interval).

Usage (benches/flink/setup.sh's flink_setup provides the venv, the jars and the plugins):
  FLINK_PLUGINS_DIR=DIR python city_job.py --brokers HOST:PORT --topic-prefix P \\
      --output DIR|s3://BUCKET/PREFIX --jars a.jar,b.jar [--parallelism 2] [--log-dir DIR]

Prints, as its last stdout line, one JSON object: the Flink version, the parallelism, the time
until the TableEnvironment is ready (session_start_s), the time to declare the tables and
statements (define_s: the planner loads then), the query wall time (from submitting the
statement set to the job's end: query_s), and the rows written per topic (read back with pyarrow
after the timing, finished Parquet files only).
"""
import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from urllib.parse import urlparse

TOPICS = ["vehicle_data", "gps_data", "traffic_data", "weather_data", "emergency_data"]

# The original job's schemas (benches/spark/city_job.py: the same field names and types, in
# the same order). `id` is NOT NULL there; here it is nullable, as from_json makes every field
# nullable anyway and a missing id must not fail the job.
SCHEMAS = {
    "vehicle_data": [
        ("id", "STRING"),
        ("deviceId", "STRING"),
        ("timestamp", "TIMESTAMP(3)"),
        ("location", "STRING"),
        ("speed", "DOUBLE"),
        ("direction", "STRING"),
        ("maker", "STRING"),
        ("model", "STRING"),
        ("year", "INT"),
        ("fueltype", "STRING"),
    ],
    "gps_data": [
        ("id", "STRING"),
        ("deviceId", "STRING"),
        ("timestamp", "TIMESTAMP(3)"),
        ("speed", "DOUBLE"),
        ("direction", "STRING"),
        ("vehicleType", "STRING"),
    ],
    "traffic_data": [
        ("id", "STRING"),
        ("deviceId", "STRING"),
        ("cameraId", "STRING"),
        ("location", "STRING"),
        ("timestamp", "TIMESTAMP(3)"),
        ("snapshot", "STRING"),
    ],
    "weather_data": [
        ("id", "STRING"),
        ("deviceId", "STRING"),
        ("location", "STRING"),
        ("timestamp", "TIMESTAMP(3)"),
        ("temperature", "INT"),
        ("weatherCondition", "STRING"),
        ("precipitation", "DOUBLE"),
        ("windspeed", "DOUBLE"),
        ("humidity", "INT"),
        ("airQualityIndex", "DOUBLE"),
    ],
    "emergency_data": [
        ("id", "STRING"),
        ("deviceId", "STRING"),
        ("incidentId", "STRING"),
        ("incident", "STRING"),
        ("timestamp", "TIMESTAMP(3)"),
        ("location", "STRING"),
        ("status", "STRING"),
        ("description", "STRING"),
    ],
}


def sql_str(s):
    return "'" + str(s).replace("'", "''") + "'"


def with_clause(options):
    return ",\n  ".join(f"{sql_str(k)} = {sql_str(v)}" for k, v in options.items())


def columns(schema):
    return ",\n  ".join(f"`{name}` {typ}" for name, typ in schema)


def s3_settings():
    """Flink's S3 options (s3.* is passed on to Hadoop's S3A as fs.s3a.*) from the AWS_* variables."""
    env = os.environ
    opts = {"s3.path.style.access": "true"}
    for var, key in [("AWS_ENDPOINT_URL", "s3.endpoint"), ("AWS_ACCESS_KEY_ID", "s3.access-key"),
                     ("AWS_SECRET_ACCESS_KEY", "s3.secret-key"), ("AWS_REGION", "s3.endpoint.region")]:
        if env.get(var):
            opts[key] = env[var]
    if env.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        opts["s3.connection.ssl.enabled"] = "false"
    return opts


def init_s3_plugin():
    """Loads the file system plugins (FLINK_PLUGINS_DIR) into the gateway JVM, which runs the
    local mini-cluster, with the S3 options. Flink's CLI and TaskManagers do this at start-up;
    PyFlink's local execution does not (without it: "Could not find a file system implementation
    for scheme 's3'"). The options go only here, not into the job's configuration, which Flink
    logs."""
    plugins = os.environ.get("FLINK_PLUGINS_DIR", "")
    if not plugins or not os.path.isdir(os.path.join(plugins, "s3-fs-hadoop")):
        raise SystemExit("s3:// output needs FLINK_PLUGINS_DIR with s3-fs-hadoop/flink-s3-fs-hadoop-*.jar "
                         "(benches/flink/setup.sh's FLINK_PLUGINS)")
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    opts = jvm.java.util.HashMap()
    for k, v in s3_settings().items():
        opts.put(k, v)
    jconf = jvm.org.apache.flink.configuration.Configuration.fromMap(opts)
    jvm.org.apache.flink.core.fs.FileSystem.initialize(
        jconf, jvm.org.apache.flink.core.plugin.PluginUtils.createPluginManagerFromRootFolder(jconf))


def count_rows(output, topic):
    """Rows in the finished Parquet files of one topic's output (Flink's in-progress files are
    hidden: names starting with '.'; pyarrow skips those and '_'-files by default)."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    if output.startswith(("s3://", "s3a://")):
        u = urlparse(output)
        endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"]) if os.environ.get("AWS_ENDPOINT_URL") else None
        fs = pafs.S3FileSystem(
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            region=os.environ.get("AWS_REGION") or "us-east-1",
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
            force_virtual_addressing=False,
        )
        path = f"{u.netloc}{u.path.rstrip('/')}/data/{topic}"
    else:
        fs, path = pafs.LocalFileSystem(), f"{output}/data/{topic}"
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return 0
    dataset = ds.dataset(path, format="parquet", filesystem=fs, ignore_prefixes=[".", "_"])
    return dataset.count_rows()


def main():
    ap = argparse.ArgumentParser(description="The original Spark job's shape in Flink SQL, for benchmarks")
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic-prefix", default="")
    ap.add_argument("--output", required=True,
                    help="local directory or s3://bucket/prefix (s3a:// too): <output>/data/<topic>, <output>/checkpoints")
    ap.add_argument("--jars", required=True,
                    help="comma-separated jars: the Kafka connector, the Parquet format, Hadoop's client")
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--group", default=None, help="Kafka consumer group id (default: one per run)")
    ap.add_argument("--checkpoint-interval", default="10 s")
    ap.add_argument("--log-dir", default=None,
                    help="directory of Flink's log (default: $FLINK_LOG_DIR, else <output>/log for a local output, "
                         "else a new temporary directory)")
    a = ap.parse_args()

    s3 = a.output.startswith(("s3://", "s3a://"))
    out = a.output.rstrip("/") if s3 else os.path.abspath(a.output)
    group = a.group or f"citystream-flink-{os.getpid()}-{int(time.time())}"
    if not s3:
        os.makedirs(out, exist_ok=True)
    # The gateway JVM's log file (log4j-cli.properties: the mini-cluster's log) goes to
    # FLINK_LOG_DIR, by default into the venv: put it where asked, or next to a local output.
    log_dir = a.log_dir or os.environ.get("FLINK_LOG_DIR") or (
        os.path.join(out, "log") if not s3 else tempfile.mkdtemp(prefix="flink-log-"))
    os.makedirs(log_dir, exist_ok=True)
    os.environ["FLINK_LOG_DIR"] = os.path.abspath(log_dir)
    print(f"city_job.py: Flink's log in {os.environ['FLINK_LOG_DIR']}", file=sys.stderr, flush=True)

    # PyFlink sets FLINK_PLUGINS_DIR to its own plugins/ unless FLINK_HOME is set: set it (to
    # apache-flink's directory, what PyFlink would find) so that the gateway JVM gets ours.
    if os.environ.get("FLINK_PLUGINS_DIR") and "FLINK_HOME" not in os.environ:
        os.environ["FLINK_HOME"] = importlib.util.find_spec("pyflink").submodule_search_locations[0]
    from pyflink.table import EnvironmentSettings, TableEnvironment
    from pyflink.version import __version__ as flink_version

    t0 = time.monotonic()
    conf = {
        "parallelism.default": str(a.parallelism),
        "pipeline.name": "SmartCityStreaming",
        "pipeline.jars": ";".join("file://" + os.path.abspath(j) for j in a.jars.split(",") if j),
        "execution.checkpointing.interval": a.checkpoint_interval,
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": (out if s3 else "file://" + out) + "/checkpoints",
        "table.local-time-zone": "UTC",
    }
    settings = EnvironmentSettings.new_instance().in_streaming_mode().build()
    t_env = TableEnvironment.create(settings)
    for k, v in conf.items():
        t_env.get_config().set(k, v)
    if s3:
        init_s3_plugin()
    t_session = time.monotonic()

    stmts = t_env.create_statement_set()
    for topic in TOPICS:
        schema = SCHEMAS[topic]
        t_env.execute_sql(f"""CREATE TEMPORARY TABLE `src_{topic}` (
  {columns(schema)},
  WATERMARK FOR `timestamp` AS `timestamp` - INTERVAL '2' MINUTE
) WITH (
  {with_clause({
            "connector": "kafka",
            "topic": a.topic_prefix + topic,
            "properties.bootstrap.servers": a.brokers,
            "properties.group.id": group,
            "scan.startup.mode": "earliest-offset",
            "scan.bounded.mode": "latest-offset",
            "format": "json",
            "json.ignore-parse-errors": "true",
            "json.timestamp-format.standard": "ISO-8601",
        })}
)""")
        t_env.execute_sql(f"""CREATE TEMPORARY TABLE `sink_{topic}` (
  {columns(schema)}
) WITH (
  {with_clause({
            "connector": "filesystem",
            "path": f"{out}/data/{topic}",
            "format": "parquet",
        })}
)""")
        stmts.add_insert_sql(f"INSERT INTO `sink_{topic}` SELECT * FROM `src_{topic}`")

    t_submit = time.monotonic()
    stmts.execute().wait()
    t_done = time.monotonic()

    # Outside the timing: how many rows each statement wrote.
    rows = {topic: count_rows(out, topic) for topic in TOPICS}
    print("\n" + json.dumps({
        "flink_version": flink_version,
        "parallelism": a.parallelism,
        "output": "s3" if s3 else "local",
        "session_start_s": t_session - t0,
        "define_s": t_submit - t_session,
        "query_s": t_done - t_submit,
        "rows": rows,
        "rows_total": sum(rows.values()),
    }), flush=True)


if __name__ == "__main__":
    main()

"""The original Spark Structured Streaming job's shape, as the baseline citystream replaces.

Five streaming queries in one SparkSession, one per topic: Kafka source (startingOffsets
earliest) → CAST(value AS STRING) → from_json with the original job's StructType schema →
data.* → withWatermark("timestamp", "2 minutes") → Parquet sink with a checkpoint location,
outputMode append. Differences from the original, all for measuring: a local master
(`local[2]` by default, the machine's two cores) instead of a standalone cluster, a local
output directory (or, with an s3a:// output, the S3 server of scripts/services.sh through
hadoop-aws, as the original writes to S3), trigger(availableNow=True) so that each query reads
what is in the topics and stops, and field names as the producer sends them (see below).

For an s3a:// output the endpoint, region and credentials come from the environment
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: the AWS SDK's
environment credentials provider reads the keys; they are never put in Spark's configuration),
path-style addressing; the checkpoints go to the same bucket, as in the original.

Usage (benches/e2e.sh runs it; the Kafka jars come from --jars):
  python city_job.py --brokers HOST:PORT --topic-prefix P --output DIR --jars a.jar,b.jar

Prints one JSON object on stdout: the query wall time (from the first query's start to the
last query's end), rows written (read back after the timing), and the Spark version.
"""
import argparse
import json
import os
import time

from pyspark.sql import SparkSession
from pyspark.sql.functions import col, from_json
from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType, TimestampType

# The original job's schemas. As there, `location` is a string (the producer sends an array;
# from_json keeps its JSON text) and `temperature` an integer (the producer sends a float, so
# from_json yields null: the original's bug, kept so the work is the same). Field names follow
# what the producer sends (the data contract in docs/), so every field is really parsed.
SCHEMAS = {
    "vehicle_data": StructType([
        StructField("id", StringType(), False),
        StructField("deviceId", StringType(), True),
        StructField("timestamp", TimestampType(), True),
        StructField("location", StringType(), True),
        StructField("speed", DoubleType(), True),
        StructField("direction", StringType(), True),
        StructField("maker", StringType(), True),
        StructField("model", StringType(), True),
        StructField("year", IntegerType(), True),
        StructField("fueltype", StringType(), True),
    ]),
    "gps_data": StructType([
        StructField("id", StringType(), False),
        StructField("deviceId", StringType(), True),
        StructField("timestamp", TimestampType(), True),
        StructField("speed", DoubleType(), True),
        StructField("direction", StringType(), True),
        StructField("vehicleType", StringType(), True),
    ]),
    "traffic_data": StructType([
        StructField("id", StringType(), False),
        StructField("deviceId", StringType(), True),
        StructField("cameraId", StringType(), True),
        StructField("location", StringType(), True),
        StructField("timestamp", TimestampType(), True),
        StructField("snapshot", StringType(), True),
    ]),
    "weather_data": StructType([
        StructField("id", StringType(), False),
        StructField("deviceId", StringType(), True),
        StructField("location", StringType(), True),
        StructField("timestamp", TimestampType(), True),
        StructField("temperature", IntegerType(), True),
        StructField("weatherCondition", StringType(), True),
        StructField("precipitation", DoubleType(), True),
        StructField("windspeed", DoubleType(), True),
        StructField("humidity", IntegerType(), True),
        StructField("airQualityIndex", DoubleType(), True),
    ]),
    "emergency_data": StructType([
        StructField("id", StringType(), False),
        StructField("deviceId", StringType(), True),
        StructField("incidentId", StringType(), True),
        StructField("incident", StringType(), True),
        StructField("timestamp", TimestampType(), True),
        StructField("location", StringType(), True),
        StructField("status", StringType(), True),
        StructField("description", StringType(), True),
    ]),
}


def main():
    ap = argparse.ArgumentParser(description="The original Spark job's shape, for benchmarks")
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic-prefix", default="")
    ap.add_argument("--output", required=True,
                    help="local directory or s3a://bucket/prefix: <output>/data/<topic>, <output>/checkpoints/<topic>")
    ap.add_argument("--jars", required=True, help="comma-separated jars of the Kafka source")
    ap.add_argument("--master", default="local[2]")
    a = ap.parse_args()

    s3 = a.output.startswith("s3a://")
    t0 = time.monotonic()
    builder = (
        SparkSession.builder.appName("SmartCityStreaming")
        .master(a.master)
        .config("spark.jars", a.jars)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if s3:
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint:
            raise SystemExit("city_job.py: an s3a:// output needs AWS_ENDPOINT_URL (and the AWS_* credentials) in the environment")
        builder = (
            builder.config("spark.hadoop.fs.s3a.endpoint", endpoint)
            .config("spark.hadoop.fs.s3a.endpoint.region", os.environ.get("AWS_REGION", "us-east-1"))
            .config("spark.hadoop.fs.s3a.path.style.access", "true")
            .config("spark.hadoop.fs.s3a.connection.ssl.enabled", str(endpoint.startswith("https://")).lower())
            .config("spark.hadoop.fs.s3a.aws.credentials.provider",
                    "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider")
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    t_session = time.monotonic()

    def read_kafka_topic(topic, schema):
        return (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", a.brokers)
            .option("subscribe", a.topic_prefix + topic)
            .option("startingOffsets", "earliest")
            .load()
            .selectExpr("CAST(value AS STRING)")
            .select(from_json(col("value"), schema).alias("data"))
            .select("data.*")
            .withWatermark("timestamp", "2 minutes")
        )

    def stream_writer(df, checkpoint, output):
        return (
            df.writeStream.format("parquet")
            .option("checkpointLocation", checkpoint)
            .option("path", output)
            .outputMode("append")
            .trigger(availableNow=True)
            .start()
        )

    out = a.output.rstrip("/") if s3 else os.path.abspath(a.output)
    queries = [stream_writer(read_kafka_topic(t, s), f"{out}/checkpoints/{t}", f"{out}/data/{t}") for t, s in SCHEMAS.items()]
    for q in queries:
        q.awaitTermination()
    t_done = time.monotonic()

    # Outside the timing: how many rows each query wrote.
    rows = {t: spark.read.schema(s).parquet(f"{out}/data/{t}").count() for t, s in SCHEMAS.items()}
    print("\n" + json.dumps({
        "spark_version": spark.version,
        "master": a.master,
        "output": "s3a" if s3 else "local",
        "session_start_s": t_session - t0,
        "query_s": t_done - t_session,
        "rows": rows,
        "rows_total": sum(rows.values()),
    }))
    spark.stop()


if __name__ == "__main__":
    main()

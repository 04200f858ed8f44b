#!/usr/bin/env bash
# End-to-end benchmark: citystream against the original Spark job and the raw-consume ceiling,
# on the same Kafka topics, one after another, in one run.
#
# Usage: benches/e2e.sh [--quick] [--records N] [--no-spark] [--keep-topics]
#   --quick        1,000,000 records instead of 5,000,000
#   --records N    any other count
#   --no-spark     skip the Spark baseline (no ratio to Spark then)
#   --keep-topics  leave the preloaded topics on the broker (default: deleted at the end)
#
# What it does:
#   1. builds citystream (release) and the raw_consume bench; starts the local Kafka broker
#      (scripts/services.sh; stopped at the end if this script started it);
#   2. preloads N records of `citystream simulate` (1,000 vehicles, 0.1 % late, 0.1 %
#      malformed) into 5 fresh topics × 6 partitions;
#   3. measures, one after another, each reading every record of those topics:
#      - raw-consume: benches/raw_consume.rs, 2 threads, no parsing, citystream's consumer
#        settings; and again with librdkafka's fetch back-off lifted (the ceiling is the faster);
#      - citystream run --until-caught-up at -w 1, at -w 2, and as -n 2 × -w 1 (two processes,
#        hostfile), each into a fresh local directory; and -w 2 with the fetch back-off lifted
#        (information for tuning src/, not counted as a configuration);
#      - spark: benches/spark/city_job.py (pyspark from PyPI, the spark-sql-kafka-0-10 jars
#        from Maven Central, local[2], from_json with the original schemas, 2-minute watermark,
#        Parquet sink, trigger availableNow) into a local directory;
#   4. prints a table (records/s, MB/s of JSON values, peak RSS, output bytes) and the line
#      `ratio citystream/spark=<x> citystream/raw-consume=<y>` (citystream = its best
#      configuration), and writes everything to target/bench-e2e.json.
# Rates are over each command's whole wall time (start-up included), so they compare what a
# user waits for. Peak RSS is sampled from /proc over the whole process tree (benches/measure.py):
# for the 2-process cluster the per-process peak is the larger of the two.
#
# First run on a fresh machine downloads Kafka (scripts/services.sh), pyspark into
# target/bench-venv (≈ 450 MB) and the Kafka source jars into $CITYSTREAM_CACHE/spark-kafka-*.
# Needs: cargo, java 17+, mvn, python3 (with venv). Respects CITYSTREAM_PORT_OFFSET /
# CITYSTREAM_STATE / CITYSTREAM_CACHE like scripts/services.sh.
# Environment: CITYSTREAM_BENCH_KAFKA_OPTIONS ("k=v,k=v": librdkafka settings applied to the raw
# consumer and to citystream alike, to try consumer tunings).
# Exit status non-zero if anything fails or a consumer did not see every record.
set -euo pipefail

RECORDS=5000000
SPARK=1
KEEP_TOPICS=0
while (($#)); do
    case "$1" in
        --quick) RECORDS=1000000; shift ;;
        --records) RECORDS=$2; shift 2 ;;
        --no-spark) SPARK=0; shift ;;
        --keep-topics) KEEP_TOPICS=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "e2e.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $RECORDS =~ ^[1-9][0-9]*$ ]] || { echo "e2e.sh: --records must be a positive integer, got $RECORDS" >&2; exit 2; }

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
CACHE=${CITYSTREAM_CACHE:-${HOME:-/root}/.cache/citystream}
SPARK_VERSION=$(sed -n 's/^pyspark==//p' benches/spark/requirements.txt)
BENCH_VENV=$TARGET/bench-venv
RUN_ID=$(date -u +%Y%m%dT%H%M%S)-$$
WORK=$TARGET/e2e/$RUN_ID
PREFIX="e2e-$RUN_ID."
VEHICLES=1000
PARTITIONS=6
mkdir -p "$WORK"

trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

KAFKA_OPTS=()
IFS=',' read -r -a kvs <<<"${CITYSTREAM_BENCH_KAFKA_OPTIONS:-}"
for kv in "${kvs[@]}"; do [[ -n $kv ]] && KAFKA_OPTS+=(--kafka-option "$kv"); done

# ---------------------------------------------------------------- build and services
command -v java >/dev/null || die "java not found (Kafka and Spark need Java 17+)"
log "building citystream (release) and the raw_consume bench"
cargo build --release --bin citystream >&2
RAW_BIN=$(cargo bench --bench raw_consume --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1)
[[ -x $REPO/$RAW_BIN ]] && RAW_BIN=$REPO/$RAW_BIN
[[ -x $RAW_BIN ]] || die "could not find the raw_consume bench executable (cargo bench --bench raw_consume --no-run)"
BIN=$TARGET/release/citystream

STARTED_KAFKA=0
cleanup() {
    local rc=$?
    if ((KEEP_TOPICS == 0)) && [[ -n ${CITYSTREAM_BROKERS:-} ]]; then
        "$RAW_BIN" --bench --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --delete-topics >/dev/null 2>&1 || true
    fi
    rm -rf -- "$WORK/out" 2>/dev/null || true
    if ((STARTED_KAFKA)); then
        log "stopping the Kafka broker this run started"
        scripts/services.sh down kafka >&2 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
if ! scripts/services.sh status kafka >/dev/null 2>&1; then
    STARTED_KAFKA=1
    scripts/services.sh up kafka >&2
fi
eval "$(scripts/services.sh env)"
log "Kafka at $CITYSTREAM_BROKERS"

# ---------------------------------------------------------------- Spark set-up (before timing)
spark_setup() {
    local stamp=$BENCH_VENV/.requirements.sha256 want
    want=$(sha256sum <benches/spark/requirements.txt | cut -d' ' -f1)
    if [[ ! -x $BENCH_VENV/bin/python || ! -f $stamp || $(<"$stamp") != "$want" ]]; then
        log "installing pyspark $SPARK_VERSION into $BENCH_VENV (first run only, ≈ 450 MB)"
        python3 -m venv "$BENCH_VENV"
        "$BENCH_VENV/bin/pip" install -q --disable-pip-version-check -r benches/spark/requirements.txt >&2
        printf '%s' "$want" >"$stamp"
    fi
    local jars_dir=$CACHE/spark-kafka-$SPARK_VERSION
    if [[ ! -f $jars_dir/.complete ]]; then
        command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Spark Kafka source jars)"
        log "fetching spark-sql-kafka-0-10_2.13:$SPARK_VERSION and its dependencies from Maven Central into $jars_dir"
        mkdir -p "$jars_dir"
        cat >"$jars_dir/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by citystream benches/e2e.sh: the Kafka source of Spark $SPARK_VERSION. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.citystream</groupId>
  <artifactId>spark-kafka-runtime</artifactId>
  <version>$SPARK_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.spark</groupId><artifactId>spark-sql-kafka-0-10_2.13</artifactId><version>$SPARK_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
        <configuration>
          <outputDirectory>\${project.basedir}/libs.partial</outputDirectory>
          <includeScope>runtime</includeScope>
        </configuration>
      </plugin>
    </plugins>
  </build>
</project>
EOF
        rm -rf -- "$jars_dir/libs.partial"
        mvn -B -q -f "$jars_dir/pom.xml" -Dmaven.repo.local="$CACHE/m2" dependency:copy-dependencies >"$WORK/spark-jars-mvn.log" 2>&1 ||
            { tail -n 30 "$WORK/spark-jars-mvn.log" >&2; die "Maven could not fetch the Spark Kafka jars (log: $WORK/spark-jars-mvn.log)"; }
        rm -rf -- "$jars_dir/libs" && mv -- "$jars_dir/libs.partial" "$jars_dir/libs" && touch -- "$jars_dir/.complete"
    fi
    # Only the jars pyspark does not ship already (same artifact in another version would clash).
    local pyspark_jars jar base
    pyspark_jars=$("$BENCH_VENV/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')
    SPARK_JARS=""
    for jar in "$jars_dir"/libs/*.jar; do
        base=$(basename "$jar" .jar)
        base=${base%-[0-9]*}
        compgen -G "$pyspark_jars/$base-[0-9]*.jar" >/dev/null && continue
        SPARK_JARS+=${SPARK_JARS:+,}$jar
    done
    [[ $SPARK_JARS == *spark-sql-kafka-0-10* ]] || die "spark-sql-kafka-0-10 jar missing in $jars_dir/libs"
    log "Spark $SPARK_VERSION ready; extra jars: $(tr ',' '\n' <<<"$SPARK_JARS" | xargs -n1 basename | tr '\n' ' ')"
}
if ((SPARK)); then spark_setup; fi

# ---------------------------------------------------------------- preload
log "preloading $RECORDS records into ${PREFIX}{vehicle,gps,traffic,weather,emergency}_data × $PARTITIONS partitions"
"$BIN" simulate --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --vehicles "$VEHICLES" --events "$RECORDS" \
    --partitions "$PARTITIONS" --seed 5 --late-fraction 0.001 --malformed-fraction 0.001 >"$WORK/simulate.log" 2>&1 ||
    { tail -n 20 "$WORK/simulate.log" >&2; die "simulate failed (log: $WORK/simulate.log)"; }

# ---------------------------------------------------------------- measurements
measure() { # NAME COMMAND...: runs it under benches/measure.py; results in $WORK/NAME.{json,log}
    local name=$1
    shift
    log "measuring $name"
    sync
    python3 benches/measure.py --json "$WORK/$name.measure.json" --log "$WORK/$name.log" -- "$@" ||
        { tail -n 30 "$WORK/$name.log" >&2; die "$name failed (log: $WORK/$name.log)"; }
}
mkdir -p "$WORK/out"

measure raw-consume "$RAW_BIN" --bench --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --threads 2 "${KAFKA_OPTS[@]}"
tail -n 1 "$WORK/raw-consume.log" >"$WORK/raw-consume.result.json"
# The same with the consumer's fetch back-off lifted: librdkafka waits fetch.queue.backoff.ms
# (default 1 s) before fetching again for a partition whose local queue is full, and
# citystream's 1 MiB per-partition queue is full after every fetch. The ceiling is the faster.
TUNED=(--kafka-option fetch.queue.backoff.ms=1)
# The raw consumer may also prefetch more (4 MiB per partition): the ceiling, not a budget.
RAW_TUNED=("${TUNED[@]}" --kafka-option queued.max.messages.kbytes=4096)
measure raw-consume-tuned "$RAW_BIN" --bench --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --threads 2 "${KAFKA_OPTS[@]}" "${RAW_TUNED[@]}"
tail -n 1 "$WORK/raw-consume-tuned.log" >"$WORK/raw-consume-tuned.result.json"

citystream_args() { # OUTPUT GROUP
    printf '%s\n' --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --group "$2" --output "$1" --until-caught-up "${KAFKA_OPTS[@]}"
}
mapfile -t A <<<"$(citystream_args "$WORK/out/w1" "e2e-$RUN_ID-w1")"
measure citystream-w1 "$BIN" run -w 1 "${A[@]}"
mapfile -t A <<<"$(citystream_args "$WORK/out/w2" "e2e-$RUN_ID-w2")"
measure citystream-w2 "$BIN" run -w 2 "${A[@]}"
mapfile -t A <<<"$(citystream_args "$WORK/out/w2tuned" "e2e-$RUN_ID-w2tuned")"
measure citystream-w2-tuned "$BIN" run -w 2 "${A[@]}" "${TUNED[@]}"
mapfile -t A <<<"$(citystream_args "$WORK/out/n2w1" "e2e-$RUN_ID-n2w1")"
HOSTS=$WORK/hosts
python3 -c 'import socket
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print("127.0.0.1:%d" % s.getsockname()[1]); s.close()' >"$HOSTS"
# Both processes under one measurement; each process's log separately.
# shellcheck disable=SC2016  # expanded by the inner bash
measure citystream-n2w1 bash -c '
    bin=$1 hosts=$2 logs=$3; shift 3
    "$bin" run -n 2 -p 0 -h "$hosts" -w 1 "$@" >"$logs.p0.log" 2>&1 & p0=$!
    "$bin" run -n 2 -p 1 -h "$hosts" -w 1 "$@" >"$logs.p1.log" 2>&1 & p1=$!
    rc=0; wait $p0 || rc=$?; wait $p1 || rc=$?; exit $rc' _ "$BIN" "$HOSTS" "$WORK/citystream-n2w1" "${A[@]}"
cat "$WORK/citystream-n2w1.p0.log" "$WORK/citystream-n2w1.p1.log" >>"$WORK/citystream-n2w1.log"

if ((SPARK)); then
    measure spark "$BENCH_VENV/bin/python" benches/spark/city_job.py --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" \
        --output "$WORK/out/spark" --jars "$SPARK_JARS"
    grep -o '{"spark_version.*' "$WORK/spark.log" | tail -n 1 >"$WORK/spark.result.json" ||
        die "the Spark job printed no result line (log: $WORK/spark.log)"
fi

# Output sizes (the lake or Spark's data directory, not its checkpoints) before cleanup.
for d in w1 w2 w2-tuned n2w1; do du -sb "$WORK/out/${d/-/}" | cut -f1 >"$WORK/citystream-$d.output_bytes"; done
if ((SPARK)); then du -sb "$WORK/out/spark/data" | cut -f1 >"$WORK/spark.output_bytes"; fi

# ---------------------------------------------------------------- report
python3 - "$WORK" "$RECORDS" "$SPARK" "$TARGET/bench-e2e.json" "$SPARK_VERSION" <<'PY'
import json, os, platform, re, subprocess, sys
work, records, spark, out_path, spark_version = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]

def load(name):
    with open(os.path.join(work, name)) as f:
        return json.load(f) if name.endswith(".json") else f.read()

raw = load("raw-consume.result.json")
value_bytes = raw["value_bytes"]
if raw["records"] != records:
    sys.exit(f"raw consumer read {raw['records']} records, expected {records}")
rows = []
def row(name, label, seen):
    m = load(f"{name}.measure.json")
    r = {
        "name": name, "label": label, "records": seen, "wall_s": m["wall_s"],
        "records_per_s": records / m["wall_s"], "mb_per_s": value_bytes / m["wall_s"] / 1e6,
        "peak_rss_process_mib": m["peak_rss_process_mib"], "peak_rss_tree_mib": m["peak_rss_tree_mib"],
        "cpu_s": m["cpu_s"],
        "output_bytes": int(load(f"{name}.output_bytes")) if os.path.exists(os.path.join(work, f"{name}.output_bytes")) else 0,
    }
    rows.append(r)
    return r

row("raw-consume", "raw consume (rdkafka, 2 threads, no parsing)", raw["records"])["inner_s"] = raw["seconds"]
tuned = load("raw-consume-tuned.result.json")
row("raw-consume-tuned", "raw consume, fetch back-off lifted", tuned["records"])["inner_s"] = tuned["seconds"]
OFFICIAL = ["citystream-w1", "citystream-w2", "citystream-n2w1"]
for name, label in [("citystream-w1", "citystream -w 1"), ("citystream-w2", "citystream -w 2"), ("citystream-n2w1", "citystream -n 2 × -w 1"),
                    ("citystream-w2-tuned", "citystream -w 2, fetch back-off lifted")]:
    text = load(f"{name}.log")
    committed = [int(x) for x in re.findall(r"records committed:\s+(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", text))]
    seen = max(committed, default=0)  # a cluster's process 0 reports what the cluster committed
    if seen != records:
        sys.exit(f"{name}: committed {seen} records (from its summary), expected {records}; log: {work}/{name}.log")
    row(name, label, seen)
if spark:
    s = load("spark.result.json")
    r = row("spark", f"Spark {s['spark_version']} Structured Streaming, {s['master']}", s["rows_total"])
    r["query_s"], r["session_start_s"] = s["query_s"], s["session_start_s"]
    if s["rows_total"] != records:
        sys.exit(f"spark wrote {s['rows_total']} rows, expected {records}")

# citystream's best of the three configurations the issue names (the tuned row is a hint for
# src/, not a configuration a user gets); the ceiling is the faster raw consumer.
best = max((r for r in rows if r["name"] in OFFICIAL), key=lambda r: r["records_per_s"])
by = {r["name"]: r for r in rows}
ceiling = max((by["raw-consume"], by["raw-consume-tuned"]), key=lambda r: r["records_per_s"])
ratio_raw = best["records_per_s"] / ceiling["records_per_s"]
ratio_spark = best["records_per_s"] / by["spark"]["records_per_s"] if spark else None

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0) / 2**20
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
report = {
    "benchmark": "e2e", "records": records, "value_bytes": value_bytes, "topics": 5, "partitions_per_topic": 6,
    "machine": {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem, 1), "kernel": platform.release(),
                "load_avg_at_end": os.getloadavg()},
    "commit": commit, "best_citystream": best["name"], "raw_ceiling": ceiling["name"], "results": rows,
    "ratio_citystream_over_spark": ratio_spark, "ratio_citystream_over_raw_consume": ratio_raw,
    "work_dir": work,
}
with open(out_path, "w") as f:
    json.dump(report, f, indent=2)
print(f"\n{records:,} records, {value_bytes / 1e6:,.1f} MB of JSON values, 5 topics × 6 partitions; "
      f"{os.cpu_count()} cores ({cpu}), {mem:.1f} GiB; load average at the end {os.getloadavg()[0]:.2f}\n")
print(f"| {'run':<48} | {'wall s':>7} | {'records/s':>10} | {'MB/s':>6} | {'peak RSS MiB':>12} | {'CPU s':>6} | {'output MB':>9} |")
print(f"|{'-' * 50}|{'-' * 9}:|{'-' * 11}:|{'-' * 7}:|{'-' * 13}:|{'-' * 7}:|{'-' * 10}:|")
for r in rows:
    rss = f"{r['peak_rss_process_mib']:.0f}" + (f" ({r['peak_rss_tree_mib']:.0f} all)" if r["peak_rss_tree_mib"] > r["peak_rss_process_mib"] * 1.05 else "")
    print(f"| {r['label']:<48} | {r['wall_s']:>7.2f} | {r['records_per_s']:>10,.0f} | {r['mb_per_s']:>6.1f} | {rss:>12} | {r['cpu_s']:>6.1f} | {r['output_bytes'] / 1e6:>9.1f} |")
print(f"\nbest citystream: {best['label']}; raw-consume ceiling: {ceiling['label']}")
print(f"wrote {out_path}")
print(f"ratio citystream/spark={ratio_spark:.2f} citystream/raw-consume={ratio_raw:.2f}" if spark
      else f"ratio citystream/spark=n/a citystream/raw-consume={ratio_raw:.2f}")
PY

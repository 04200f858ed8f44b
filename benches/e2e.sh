#!/usr/bin/env bash
# End-to-end benchmark: citystream against the original Spark job, the same job in Apache Flink
# and the raw-consume ceiling, on the same Kafka topics, one after another, in one run (with --s3
# also into the S3 server); the objects citystream writes for both time models of the simulator,
# optionally next to an older citystream binary; and (--sizes) how the cost grows with the work.
#
# Usage: benches/e2e.sh [--quick] [--records N] [--no-spark] [--no-flink] [--s3] [--sizes LIST] [--keep-topics]
#                       [--models-only] [--peers-only] [--agg-pairs N] [--baseline-bin PATH] [--json PATH]
#   --quick              1,000,000 records instead of 5,000,000 (with --sizes: sizes above 5M left out)
#   --records N          any other count
#   --no-spark           skip the Spark baseline (no ratio to Spark then)
#   --no-flink           skip the Flink peer (no ratio to Flink then)
#   --s3                 also measure the S3 path: citystream -w 2 into s3://, Spark into s3a://
#                        (hadoop-aws), Flink into s3:// (its flink-s3-fs-hadoop plugin), all on the
#                        S3 server of scripts/services.sh (started if it is not running)
#   --sizes LIST         cost as the work grows: for each size of LIST (e.g. 1M,5M,20M; k and M
#                        suffixes), fresh topics and the --peers-only runs; then a table and a plot
#                        of records/s, CPU-µs per record, peak RSS and objects written per size
#                        (target/bench-e2e-sizes.{json,png})
#   --peers-only         only raw consume, citystream -w 2 (fleet model) and the peers (Spark,
#                        Flink; with --s3 their S3 runs too): what --sizes runs per size
#   --json PATH          write the report here instead of target/bench-e2e.json
#   --keep-topics        leave the preloaded topics on the broker (default: deleted at the end)
#   --agg-pairs N        run the aggregate tables' on/off pair N times per time model, alternating
#                        (default 1); their cost is then the ratio of the medians, and every
#                        pair's ratio is listed (a 2-vCPU VM varies ±20 % from run to run)
#   --models-only        only the per-model runs (citystream -w 2 over each time model, and the
#                        baseline's): no raw consume, no Spark, no -w 1, -n 2 or tuned runs
#   --baseline-bin PATH  also run the two per-model -w 2 measurements with this citystream
#                        binary (e.g. a release build of an older commit), for before/after
#
# What it does:
#   1. builds citystream (release) and the raw_consume bench (it also deletes the topics at the
#      end); starts the local Kafka broker (scripts/services.sh; stopped at the end if this
#      script started it);
#   2. preloads N records of `citystream simulate` for each time model (seed 5, 0.1 % late,
#      0.1 % malformed), each into 5 fresh topics of its own prefix:
#      - fleet (the default model): 1,000 vehicles, key = device id, 6 partitions;
#      - original (the original producer's: one clock per device, 30–60 s per step shared by the
#        step's 5 records): `--time-model original`, 3 vehicles, key = record id, 4 partitions;
#   3. measures, one after another, each reading every record of its topics (the fleet model's
#      unless named otherwise):
#      - raw-consume: benches/raw_consume.rs, 2 threads, no parsing, citystream's consumer
#        settings; and again with librdkafka's fetch back-off lifted (the ceiling is the faster);
#      - citystream run --until-caught-up at -w 1, at -w 2, and as -n 2 × -w 1 (two processes,
#        hostfile), each into a fresh local directory; and -w 2 with the fetch back-off lifted
#        (information for tuning src/, not counted as a configuration);
#      - citystream run -w 2 --until-caught-up over the original model's topics;
#      - for both models, -w 2 again with --aggregates none: what the aggregate tables cost;
#      - with --baseline-bin: the baseline binary's -w 2 over each model's topics, right after
#        the current binary's run over the same topics;
#      - spark: benches/spark/city_job.py (pyspark from PyPI, the spark-sql-kafka-0-10 jars
#        from Maven Central, local[2], from_json with the original schemas, 2-minute watermark,
#        Parquet sink, trigger availableNow) into a local directory; its row count must be N;
#      - flink: benches/flink/city_job.py (apache-flink from PyPI, the Kafka SQL connector, the
#        Parquet format and Hadoop's client from Maven Central, see benches/flink/setup.sh): the
#        same job in Flink SQL on a local mini-cluster, parallelism 2, exactly-once checkpoints
#        every 10 s, bounded Kafka sources, JSON format with the typed schemas, the 2-minute
#        watermark, a Parquet filesystem sink; its row count must be N minus the records its
#        JSON format drops (counted by class among citystream's dead letters of the same topics);
#      - with --s3: citystream -w 2 into s3://, Spark into s3a:// (hadoop-aws of pyspark's Hadoop
#        version and the AWS SDK, from Maven Central), Flink into s3:// (flink-s3-fs-hadoop); the
#        run's objects on the S3 server are deleted at the end;
#   4. prints a table (records/s, MB/s of JSON values, peak RSS, CPU seconds and CPU-µs per
#      record, output bytes), the objects the peers wrote, with --s3 the line
#      `ratio (into S3) citystream/spark=<x> citystream/flink=<y>`, and the line
#      `ratio citystream/spark=<x> citystream/flink=<y> citystream/raw-consume=<z>` (citystream =
#      its best configuration; n/a without a peer or raw consume); then, for every citystream run
#      (baseline first, then current, per model), an objects table: objects written (from the
#      run's _manifests/*.json), objects per 1,000 records, mean object size (bytes), bytes on
#      disk (allocated blocks of the lake), records/s, peak RSS; and writes everything to
#      target/bench-e2e.json (rows in "results"; the objects table in "per_model").
# Rates are over each command's whole wall time (start-up included), so they compare what a
# user waits for. Peak RSS is sampled from /proc over the whole process tree (benches/measure.py):
# for the 2-process cluster the per-process peak is the larger of the two.
#
# First run on a fresh machine downloads Kafka (scripts/services.sh), pyspark, pyarrow and
# matplotlib into target/bench-venv (≈ 600 MB), apache-flink into target/flink-venv (≈ 850 MB),
# and the jars into $CITYSTREAM_CACHE (spark-kafka-*, flink-*-jars, flink-*-s3; with --s3
# spark-hadoop-aws-*, ≈ 650 MB).
# Needs: cargo, java 17+, mvn, python3 (with venv). Respects CITYSTREAM_PORT_OFFSET /
# CITYSTREAM_STATE / CITYSTREAM_CACHE like scripts/services.sh.
# Environment: CITYSTREAM_BENCH_KAFKA_OPTIONS ("k=v,k=v": librdkafka settings applied to the raw
# consumer and to citystream alike, to try consumer tunings).
# Exit status non-zero if anything fails or a consumer did not see every record.
set -euo pipefail

RECORDS=5000000
QUICK=0
SPARK=1
FLINK=1
S3=0
SIZES=
PEERS_ONLY=0
JSON_OUT=
KEEP_TOPICS=0
MODELS_ONLY=0
AGG_PAIRS=1
BASELINE_BIN=
while (($#)); do
    case "$1" in
        --quick) RECORDS=1000000; QUICK=1; shift ;;
        --records) RECORDS=${2:-}; (($# >= 2)) || { echo "e2e.sh: --records needs a count" >&2; exit 2; }; shift 2 ;;
        --no-spark) SPARK=0; shift ;;
        --no-flink) FLINK=0; shift ;;
        --s3) S3=1; shift ;;
        --sizes) SIZES=${2:-}; (($# >= 2)) || { echo "e2e.sh: --sizes needs a list, e.g. 1M,5M,20M" >&2; exit 2; }; shift 2 ;;
        --peers-only) PEERS_ONLY=1; shift ;;
        --json) JSON_OUT=${2:-}; (($# >= 2)) || { echo "e2e.sh: --json needs a path" >&2; exit 2; }; shift 2 ;;
        --keep-topics) KEEP_TOPICS=1; shift ;;
        --models-only) MODELS_ONLY=1; shift ;;
        --agg-pairs) AGG_PAIRS=${2:-}; (($# >= 2)) || { echo "e2e.sh: --agg-pairs needs a count" >&2; exit 2; }; shift 2 ;;
        --baseline-bin) BASELINE_BIN=${2:-}; (($# >= 2)) || { echo "e2e.sh: --baseline-bin needs a path" >&2; exit 2; }; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "e2e.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $RECORDS =~ ^[1-9][0-9]*$ ]] || { echo "e2e.sh: --records must be a positive integer, got $RECORDS" >&2; exit 2; }
[[ $AGG_PAIRS =~ ^[1-9][0-9]*$ ]] || { echo "e2e.sh: --agg-pairs must be a positive integer, got $AGG_PAIRS" >&2; exit 2; }
if [[ -n $BASELINE_BIN ]]; then
    [[ -f $BASELINE_BIN && -x $BASELINE_BIN ]] || { echo "e2e.sh: --baseline-bin $BASELINE_BIN is not an executable file" >&2; exit 2; }
    BASELINE_BIN=$(realpath -- "$BASELINE_BIN")
fi
if ((MODELS_ONLY)); then
    ((PEERS_ONLY == 0)) || { echo "e2e.sh: --models-only and --peers-only exclude each other" >&2; exit 2; }
    SPARK=0 FLINK=0 S3=0
fi
# Sizes: "1M,5M,20M" → 1000000 5000000 20000000 (with --quick, sizes above 5M are left out).
SIZE_LIST=()
if [[ -n $SIZES ]]; then
    ((MODELS_ONLY == 0)) || { echo "e2e.sh: --sizes runs the peers; it excludes --models-only" >&2; exit 2; }
    IFS=',' read -r -a size_words <<<"$SIZES"
    for w in "${size_words[@]}"; do
        [[ $w =~ ^([1-9][0-9]*)([kKmM]?)$ ]] || { echo "e2e.sh: --sizes: $w is not a size (a count with an optional k or M suffix)" >&2; exit 2; }
        n=${BASH_REMATCH[1]}
        case ${BASH_REMATCH[2]} in k | K) n=$((n * 1000)) ;; m | M) n=$((n * 1000000)) ;; esac
        if ((QUICK && n > 5000000)); then
            echo "e2e.sh: --quick leaves out the size $w" >&2
            continue
        fi
        SIZE_LIST+=("$n")
    done
    ((${#SIZE_LIST[@]})) || { echo "e2e.sh: --sizes $SIZES leaves no size to measure" >&2; exit 2; }
fi

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
# shellcheck source=scripts/lib/maven.sh
source scripts/lib/maven.sh
# shellcheck source=scripts/lib/pyvenv.sh
source scripts/lib/pyvenv.sh
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
CACHE=${CITYSTREAM_CACHE:-${HOME:-/root}/.cache/citystream}
SPARK_VERSION=$(sed -n 's/^pyspark==//p' benches/spark/requirements.txt)
BENCH_VENV=$TARGET/bench-venv
RUN_ID=$(date -u +%Y%m%dT%H%M%S)-$$
WORK=$TARGET/e2e/$RUN_ID
PREFIX="e2e-$RUN_ID."
VEHICLES=1000
PARTITIONS=6
# The original producer's workload: its time model, a few devices, keys = record ids.
ORIG_PREFIX="e2e-$RUN_ID-original."
ORIG_VEHICLES=3
ORIG_PARTITIONS=4
mkdir -p "$WORK"

trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

KAFKA_OPTS=()
IFS=',' read -r -a kvs <<<"${CITYSTREAM_BENCH_KAFKA_OPTIONS:-}"
for kv in "${kvs[@]}"; do [[ -n $kv ]] && KAFKA_OPTS+=(--kafka-option "$kv"); done

# ---------------------------------------------------------------- build and services
command -v java >/dev/null || die "java not found (Kafka and Spark need Java 17+)"
# The raw_consume bench is built only when it runs or deletes the topics: building it (a bench,
# with the dev-dependencies' features) recompiles much of the release tree, ≈ 30 min on 2 cores.
RAW_BIN=
if ((MODELS_ONLY == 0 || KEEP_TOPICS == 0)); then
    log "building the raw_consume bench"
    RAW_BIN=$(cargo bench --bench raw_consume --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1)
    [[ -x $REPO/$RAW_BIN ]] && RAW_BIN=$REPO/$RAW_BIN
    [[ -x $RAW_BIN ]] || die "could not find the raw_consume bench executable (cargo bench --bench raw_consume --no-run)"
fi
# After the bench: building it may leave the bench profile's citystream at target/release/.
log "building citystream (release)"
cargo build --release --bin citystream >&2
BIN=$TARGET/release/citystream
BASELINE_VERSION=
if [[ -n $BASELINE_BIN ]]; then
    BASELINE_VERSION=$("$BASELINE_BIN" --version 2>&1) || die "--baseline-bin $BASELINE_BIN --version failed: $BASELINE_VERSION"
    log "baseline: $BASELINE_BIN ($BASELINE_VERSION)"
fi

STARTED_KAFKA=0
STARTED_S3=0
S3_ROOT=
cleanup() {
    local rc=$?
    if [[ -n $S3_ROOT && -n ${REPORT_PY:-} ]]; then # this run's objects on the S3 server
        "$REPORT_PY" -c 'import os, sys
from pyarrow import fs
scheme, host = os.environ["AWS_ENDPOINT_URL"].split("://", 1)
fs.S3FileSystem(endpoint_override=host, scheme=scheme, region=os.environ.get("AWS_REGION", "us-east-1")).delete_dir(sys.argv[1])' \
            "$S3_ROOT" 2>/dev/null || log "warning: could not delete s3://$S3_ROOT"
    fi
    if ((KEEP_TOPICS == 0)) && [[ -n ${CITYSTREAM_BROKERS:-} && -n $RAW_BIN ]]; then
        local p
        for p in "$PREFIX" "$ORIG_PREFIX"; do
            "$RAW_BIN" --bench --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$p" --delete-topics >/dev/null 2>&1 || true
        done
    fi
    rm -rf -- "$WORK/out" 2>/dev/null || true
    if ((STARTED_KAFKA)); then
        log "stopping the Kafka broker this run started"
        scripts/services.sh down kafka >&2 || true
    fi
    if ((STARTED_S3)); then
        log "stopping the S3 server this run started"
        scripts/services.sh down s3 >&2 || true
    fi
    exit "$rc"
}
trap cleanup EXIT
if ! scripts/services.sh status kafka >/dev/null 2>&1; then
    STARTED_KAFKA=1
    scripts/services.sh up kafka >&2
fi
if ((S3)) && ! scripts/services.sh status s3 >/dev/null 2>&1; then
    STARTED_S3=1
    scripts/services.sh up s3 >&2
fi
eval "$(scripts/services.sh env)"
log "Kafka at $CITYSTREAM_BROKERS"
((S3)) && log "S3 at $AWS_ENDPOINT_URL, bucket $CITYSTREAM_S3_BUCKET"

# ---------------------------------------------------------------- bench venv (report, Spark)
REPORT_PY=python3
if ((MODELS_ONLY == 0)); then
    pyvenv_sync "$BENCH_VENV" benches/spark/requirements.txt "$(grep -v '^#' benches/spark/requirements.txt | tr '\n' ' ')(≈ 600 MB)" ||
        die "pip could not install benches/spark/requirements.txt into $BENCH_VENV"
    REPORT_PY=$BENCH_VENV/bin/python
fi

# ---------------------------------------------------------------- --sizes: one --peers-only run per size
if ((${#SIZE_LIST[@]})); then
    child_flags=(--peers-only)
    ((SPARK)) || child_flags+=(--no-spark)
    ((FLINK)) || child_flags+=(--no-flink)
    ((S3)) && child_flags+=(--s3)
    ((KEEP_TOPICS)) && child_flags+=(--keep-topics)
    size_reports=()
    for n in "${SIZE_LIST[@]}"; do
        log "size $n: benches/e2e.sh --records $n ${child_flags[*]}"
        "$REPO/benches/e2e.sh" --records "$n" "${child_flags[@]}" --json "$WORK/size-$n.json" ||
            die "the run of size $n failed (its log is above)"
        size_reports+=("$WORK/size-$n.json")
    done
    "$REPORT_PY" benches/sizes_report.py --json "${JSON_OUT:-$TARGET/bench-e2e-sizes.json}" \
        --png "$(dirname -- "${JSON_OUT:-$TARGET/bench-e2e-sizes.json}")/$(basename -- "${JSON_OUT:-$TARGET/bench-e2e-sizes.json}" .json).png" \
        "${size_reports[@]}"
    exit 0
fi

# ---------------------------------------------------------------- Spark set-up (before timing)
spark_setup() {
    local jars_dir=$CACHE/spark-kafka-$SPARK_VERSION
    if [[ ! -f $jars_dir/.complete ]]; then
        log "fetching spark-sql-kafka-0-10_2.13:$SPARK_VERSION and its dependencies from Maven Central into $jars_dir"
        maven_fetch "$jars_dir" "the Kafka source of Spark $SPARK_VERSION" "$CACHE/m2" "$WORK/spark-jars-mvn.log" \
            "<dependency><groupId>org.apache.spark</groupId><artifactId>spark-sql-kafka-0-10_2.13</artifactId><version>$SPARK_VERSION</version></dependency>" ||
            die "Maven could not fetch the Spark Kafka jars (log: $WORK/spark-jars-mvn.log)"
    fi
    local pyspark_jars
    pyspark_jars=$("$BENCH_VENV/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')
    jars_not_in "$jars_dir/libs" "$pyspark_jars"
    SPARK_JARS=$JARS_KEPT
    [[ $SPARK_JARS == *spark-sql-kafka-0-10* ]] || die "spark-sql-kafka-0-10 jar missing in $jars_dir/libs"
    log "Spark $SPARK_VERSION ready; extra jars: $(tr ',' '\n' <<<"$SPARK_JARS" | xargs -n1 basename | tr '\n' ' ')"
    if ((S3)); then
        # s3a: hadoop-aws of the Hadoop version pyspark ships, with the AWS SDK it names.
        local hadoop_jar hadoop_version aws_dir
        hadoop_jar=$(compgen -G "$pyspark_jars/hadoop-client-api-[0-9]*.jar" | head -n 1) || die "pyspark ships no hadoop-client-api jar ($pyspark_jars)"
        hadoop_version=$(basename "$hadoop_jar" .jar)
        hadoop_version=${hadoop_version#hadoop-client-api-}
        aws_dir=$CACHE/spark-hadoop-aws-$hadoop_version
        if [[ ! -f $aws_dir/.complete ]]; then
            log "fetching hadoop-aws:$hadoop_version and the AWS SDK it uses from Maven Central into $aws_dir (≈ 650 MB)"
            maven_fetch "$aws_dir" "hadoop-aws $hadoop_version for Spark's s3a" "$CACHE/m2" "$WORK/spark-s3-jars-mvn.log" \
                "<dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-aws</artifactId><version>$hadoop_version</version></dependency>" ||
                die "Maven could not fetch hadoop-aws (log: $WORK/spark-s3-jars-mvn.log)"
        fi
        jars_not_in "$aws_dir/libs" "$pyspark_jars"
        SPARK_S3_JARS=$SPARK_JARS,$JARS_KEPT
        [[ $SPARK_S3_JARS == *hadoop-aws-* ]] || die "hadoop-aws jar missing in $aws_dir/libs"
    fi
}
if ((SPARK)); then spark_setup; fi
# shellcheck source=benches/flink/setup.sh
source benches/flink/setup.sh
if ((FLINK)); then flink_setup; fi

# ---------------------------------------------------------------- preload
log "preloading $RECORDS records (fleet model) into ${PREFIX}{vehicle,gps,traffic,weather,emergency}_data × $PARTITIONS partitions"
"$BIN" simulate --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --vehicles "$VEHICLES" --events "$RECORDS" \
    --partitions "$PARTITIONS" --seed 5 --late-fraction 0.001 --malformed-fraction 0.001 >"$WORK/simulate.log" 2>&1 ||
    { tail -n 20 "$WORK/simulate.log" >&2; die "simulate failed (log: $WORK/simulate.log)"; }
if ((PEERS_ONLY == 0)); then
    log "preloading $RECORDS records (original model) into ${ORIG_PREFIX}{vehicle,gps,traffic,weather,emergency}_data × $ORIG_PARTITIONS partitions"
    "$BIN" simulate --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$ORIG_PREFIX" --time-model original --vehicles "$ORIG_VEHICLES" \
        --key id --events "$RECORDS" --partitions "$ORIG_PARTITIONS" --seed 5 --late-fraction 0.001 --malformed-fraction 0.001 \
        >"$WORK/simulate-original.log" 2>&1 ||
        { tail -n 20 "$WORK/simulate-original.log" >&2; die "simulate --time-model original failed (log: $WORK/simulate-original.log)"; }
fi

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

if ((MODELS_ONLY == 0)); then
    measure raw-consume "$RAW_BIN" --bench --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --threads 2 "${KAFKA_OPTS[@]}"
    tail -n 1 "$WORK/raw-consume.log" >"$WORK/raw-consume.result.json"
fi
# The same with the consumer's fetch back-off lifted: librdkafka waits fetch.queue.backoff.ms
# (default 1 s) before fetching again for a partition whose local queue is full, and
# citystream's 1 MiB per-partition queue is full after every fetch. The ceiling is the faster.
TUNED=(--kafka-option fetch.queue.backoff.ms=1)
# The raw consumer may also prefetch more (4 MiB per partition): the ceiling, not a budget.
RAW_TUNED=("${TUNED[@]}" --kafka-option queued.max.messages.kbytes=4096)
if ((MODELS_ONLY == 0)); then
    measure raw-consume-tuned "$RAW_BIN" --bench --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --threads 2 "${KAFKA_OPTS[@]}" "${RAW_TUNED[@]}"
    tail -n 1 "$WORK/raw-consume-tuned.log" >"$WORK/raw-consume-tuned.result.json"
fi

citystream_args() { # OUTPUT GROUP PREFIX
    printf '%s\n' --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$3" --group "$2" --output "$1" --until-caught-up "${KAFKA_OPTS[@]}"
}
measure_run() { # NAME BINARY PREFIX RUN-FLAGS...: `BINARY run RUN-FLAGS…` over PREFIX's topics into $WORK/out/NAME
    local name=$1 bin=$2 prefix=$3
    shift 3
    local args
    mapfile -t args <<<"$(citystream_args "$WORK/out/$name" "e2e-$RUN_ID-$name" "$prefix")"
    measure "$name" "$bin" run "$@" "${args[@]}"
}
# Per time model: the current binary's -w 2 (aggregate tables on, the default), the same with
# --aggregates none (their cost, in the same run), then the baseline's over the same topics.
per_model() { # NAME-SUFFIX PREFIX
    measure_run "citystream-w2$1" "$BIN" "$2" -w 2
    measure_run "citystream-w2-noagg$1" "$BIN" "$2" -w 2 --aggregates none
    local k
    for ((k = 2; k <= AGG_PAIRS; k++)); do
        measure_run "citystream-w2$1-pair$k" "$BIN" "$2" -w 2
        measure_run "citystream-w2-noagg$1-pair$k" "$BIN" "$2" -w 2 --aggregates none
    done
    if [[ -n $BASELINE_BIN ]]; then measure_run "baseline-w2$1" "$BASELINE_BIN" "$2" -w 2; fi
}
FULL=$((MODELS_ONLY == 0 && PEERS_ONLY == 0))
if ((FULL)); then measure_run citystream-w1 "$BIN" "$PREFIX" -w 1; fi
if ((PEERS_ONLY)); then measure_run citystream-w2 "$BIN" "$PREFIX" -w 2; else per_model "" "$PREFIX"; fi
if ((FULL)); then
    measure_run citystream-w2-tuned "$BIN" "$PREFIX" -w 2 "${TUNED[@]}"
    mapfile -t A <<<"$(citystream_args "$WORK/out/citystream-n2w1" "e2e-$RUN_ID-n2w1" "$PREFIX")"
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
fi
((PEERS_ONLY)) || per_model -original "$ORIG_PREFIX"
# The S3 path: the same -w 2 run into the S3 server (a prefix of its own per run, deleted at the end).
if ((S3)); then
    S3_ROOT=$CITYSTREAM_S3_BUCKET/e2e/$RUN_ID
    mapfile -t A <<<"$(citystream_args "s3://$S3_ROOT/citystream-w2-s3" "e2e-$RUN_ID-w2-s3" "$PREFIX")"
    measure citystream-w2-s3 "$BIN" run -w 2 "${A[@]}"
fi

spark_run() { # NAME OUTPUT JARS
    measure "$1" "$BENCH_VENV/bin/python" benches/spark/city_job.py --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" \
        --output "$2" --jars "$3"
    grep -o '{"spark_version.*' "$WORK/$1.log" | tail -n 1 >"$WORK/$1.result.json" ||
        die "the Spark job printed no result line (log: $WORK/$1.log)"
}
if ((SPARK)); then
    spark_run spark "$WORK/out/spark" "$SPARK_JARS"
    ((S3)) && spark_run spark-s3 "s3a://$S3_ROOT/spark" "$SPARK_S3_JARS"
fi
flink_run() { # NAME OUTPUT
    measure "$1" env FLINK_PLUGINS_DIR="$FLINK_PLUGINS" "$FLINK_PYTHON" benches/flink/city_job.py \
        --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --output "$2" --jars "$FLINK_JARS" --log-dir "$WORK/$1-flink-log"
    grep -o '{"flink_version.*' "$WORK/$1.log" | tail -n 1 >"$WORK/$1.result.json" ||
        die "the Flink job printed no result line (log: $WORK/$1.log)"
}
if ((FLINK)); then
    flink_run flink "$WORK/out/flink"
    ((S3)) && flink_run flink-s3 "s3://$S3_ROOT/flink"
fi

# ---------------------------------------------------------------- report
"$REPORT_PY" - "$WORK" "$RECORDS" "$SPARK" "${JSON_OUT:-$TARGET/bench-e2e.json}" "$SPARK_VERSION" "$MODELS_ONLY" "$BASELINE_BIN" "$BASELINE_VERSION" \
    "$PREFIX" "$VEHICLES" "$PARTITIONS" "$ORIG_PREFIX" "$ORIG_VEHICLES" "$ORIG_PARTITIONS" "$FLINK" "$S3_ROOT" "$PEERS_ONLY" <<'PY'
import glob, json, os, platform, re, statistics, subprocess, sys
work, records, spark, out_path, spark_version = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
models_only, baseline_bin, baseline_version = sys.argv[6] == "1", sys.argv[7] or None, sys.argv[8] or None
MODELS = {
    "fleet": {"topic_prefix": sys.argv[9], "vehicles": int(sys.argv[10]), "partitions_per_topic": int(sys.argv[11]), "key": "device"},
    "original": {"topic_prefix": sys.argv[12], "vehicles": int(sys.argv[13]), "partitions_per_topic": int(sys.argv[14]), "key": "id"},
}
flink, s3_root, peers_only = sys.argv[15] == "1", sys.argv[16] or None, sys.argv[17] == "1"
if peers_only:
    del MODELS["original"]
# What Flink's JSON format drops with 'json.ignore-parse-errors': a value that is no JSON object
# at all, and a timestamp it cannot parse (the whole row goes); the other malformed classes
# become rows with null or converted fields.
FLINK_DROPS = {"empty", "syntax", "truncated", "bad_timestamp"}

def s3fs():
    from pyarrow import fs
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    return fs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[1], scheme=endpoint.split("://", 1)[0],
                           region=os.environ.get("AWS_REGION", "us-east-1"), access_key=os.environ["AWS_ACCESS_KEY_ID"],
                           secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])

def files_under(path):
    """(path, size) of every file under a local directory or an s3://bucket/prefix (S3 server of services.sh)."""
    if path.startswith(("s3://", "s3a://")):
        from pyarrow import fs
        infos = s3fs().get_file_info(fs.FileSelector(path.split("://", 1)[1], recursive=True, allow_not_found=True))
        return [(i.path, i.size) for i in infos if i.type == fs.FileType.File]
    return [(os.path.join(root, f), os.path.getsize(os.path.join(root, f))) for root, _, files in os.walk(path) for f in files]

def data_files(path):
    """Finished data files a peer wrote under `path`: none in a hidden or metadata folder (Spark's
    _spark_metadata), none hidden or in progress (Flink's .part-…inprogress), no checksums."""
    root = path.split("://", 1)[-1].rstrip("/") + "/"
    def kept(p):
        rel = p.split(root, 1)[-1]
        return not any(part.startswith((".", "_")) for part in rel.split("/")) and not p.endswith((".crc", ".inprogress"))
    return [(p, n) for p, n in files_under(path) if kept(p)]

def load(name):
    with open(os.path.join(work, name)) as f:
        return json.load(f) if name.endswith(".json") else f.read()

def tree_bytes(d):
    """(apparent bytes, allocated bytes) of every file under d: `du -sb` and `du -sB1`."""
    apparent = allocated = 0
    for root, _, files in os.walk(d):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated

def lake_objects(d):
    """Objects (data, late and dead-letter Parquet files) and their bytes, from the manifests."""
    objects = object_bytes = manifests = 0
    aggregate_files = 0
    s3 = d.startswith("s3://")
    if s3:
        fs = s3fs()
        paths = [p for p, _ in files_under(d.rstrip("/") + "/_manifests") if p.endswith(".json")]
    else:
        paths = glob.glob(os.path.join(d, "_manifests", "*.json"))
    for path in paths:
        if s3:
            with fs.open_input_stream(path) as f:
                m = json.loads(f.read())
        else:
            with open(path) as f:
                m = json.load(f)
        manifests += 1
        for entry in m.get("files", []):
            if entry["kind"] == "aggregate":
                aggregate_files += 1
                continue
            objects += 1
            object_bytes += entry["bytes"]
    parquet = sum(1 for p, _ in files_under(d) if "/_delta_log/" not in p and "/agg/" not in p and p.endswith(".parquet"))
    if parquet != objects:
        print(f"warning: {d} holds {parquet} Parquet files but its manifests name {objects}", file=sys.stderr)
    return {"manifests": manifests, "objects": objects, "object_bytes": object_bytes, "parquet_files": parquet, "aggregate_files_written": aggregate_files}

raw = load("raw-consume.result.json") if not models_only else None
value_bytes = raw["value_bytes"] if raw else None  # of the fleet model's topics
if raw and raw["records"] != records:
    sys.exit(f"raw consumer read {raw['records']} records, expected {records}")
rows = []
def row(name, label, seen, model="fleet", output_dir=None):
    m = load(f"{name}.measure.json")
    mb = value_bytes if model == "fleet" else None
    r = {
        "name": name, "label": label, "model": model, "records": seen, "wall_s": m["wall_s"],
        "records_per_s": records / m["wall_s"], "mb_per_s": mb / m["wall_s"] / 1e6 if mb else None,
        "peak_rss_process_mib": m["peak_rss_process_mib"], "peak_rss_tree_mib": m["peak_rss_tree_mib"],
        "cpu_s": m["cpu_s"], "output_bytes": 0,
    }
    r["cpu_us_per_record"] = m["cpu_s"] * 1e6 / records
    if output_dir is not None and output_dir.startswith(("s3://", "s3a://")):
        r["output_bytes"] = sum(n for _, n in files_under(output_dir))
        r["disk_bytes"] = None  # the S3 server's own storage: not a file system of ours
    elif output_dir is not None:
        r["output_bytes"], r["disk_bytes"] = tree_bytes(output_dir)
    rows.append(r)
    return r

if raw:
    row("raw-consume", "raw consume (rdkafka, 2 threads, no parsing)", raw["records"])["inner_s"] = raw["seconds"]
    tuned = load("raw-consume-tuned.result.json")
    row("raw-consume-tuned", "raw consume, fetch back-off lifted", tuned["records"])["inner_s"] = tuned["seconds"]
OFFICIAL = ["citystream-w1", "citystream-w2", "citystream-n2w1"]
CITYSTREAM = [
    ("citystream-w1", "citystream -w 1", "fleet", "current"),
    ("baseline-w2", "baseline -w 2", "fleet", "baseline"),
    ("citystream-w2", "citystream -w 2", "fleet", "current"),
    ("citystream-n2w1", "citystream -n 2 × -w 1", "fleet", "current"),
    ("citystream-w2-tuned", "citystream -w 2, fetch back-off lifted", "fleet", "current"),
    ("citystream-w2-noagg", "citystream -w 2, --aggregates none", "fleet", "current"),
    ("citystream-w2-s3", "citystream -w 2, into S3", "fleet", "current"),
    ("baseline-w2-original", "baseline -w 2, original model", "original", "baseline"),
    ("citystream-w2-original", "citystream -w 2, original model", "original", "current"),
    ("citystream-w2-noagg-original", "citystream -w 2, original model, --aggregates none", "original", "current"),
]
def committed(name):  # what run `name` committed, from its summary; exits unless every record
    text = re.sub(r"\x1b\[[0-9;]*m", "", load(f"{name}.log"))
    seen = max((int(x) for x in re.findall(r"records committed:\s+(\d+)", text)), default=0)  # process 0 reports the cluster's
    if seen != records:
        sys.exit(f"{name}: committed {seen} records (from its summary), expected {records}; log: {work}/{name}.log")
    return seen
for name, label, model, binary in CITYSTREAM:
    if not os.path.exists(os.path.join(work, f"{name}.measure.json")):
        continue
    seen = committed(name)
    out_dir = f"s3://{s3_root}/{name}" if name.endswith("-s3") else os.path.join(work, "out", name)
    r = row(name, label, seen, model, out_dir)
    r["binary"] = binary
    r.update(lake_objects(out_dir))
    r["objects_per_1k_records"] = r["objects"] * 1000 / records
    r["mean_object_bytes"] = r["object_bytes"] / r["objects"] if r["objects"] else 0
def peer(name, label, result, output, expected):
    """A peer's row: its own count of the rows it wrote must be `expected`; its data files are its objects."""
    r = row(name, label, result["rows_total"], output_dir=output)
    r["query_s"], r["session_start_s"] = result["query_s"], result["session_start_s"]
    files = data_files(output + "/data")
    r["objects"], r["object_bytes"] = len(files), sum(n for _, n in files)
    r["objects_per_1k_records"] = r["objects"] * 1000 / records
    r["mean_object_bytes"] = r["object_bytes"] / r["objects"] if r["objects"] else 0
    if result["rows_total"] != expected:
        sys.exit(f"{name} wrote {result['rows_total']} rows, expected {expected} (log: {work}/{name}.log)")
    return r
for name, output in (("spark", os.path.join(work, "out", "spark")), ("spark-s3", f"s3a://{s3_root}/spark")):
    if spark and os.path.exists(os.path.join(work, f"{name}.result.json")):
        s = load(f"{name}.result.json")
        where = ", into S3 (s3a)" if name.endswith("-s3") else ""
        peer(name, f"Spark {s['spark_version']} Structured Streaming, {s['master']}{where}", s, output, records)
if flink:
    # Flink keeps every record but those its JSON format cannot parse at all: count those among
    # the dead letters of citystream's own -w 2 run over the same topics (each with its class).
    import pyarrow.dataset as ds
    dead_dir = os.path.join(work, "out", "citystream-w2", "_dead_letter")
    classes = []
    if os.path.isdir(dead_dir):  # none when no record was malformed
        dead = ds.dataset(dead_dir, format="parquet", partitioning="hive")  # skips _delta_log
        classes = dead.to_table(columns=["error_class"]).column("error_class").to_pylist()
    flink_dropped = sum(1 for c in classes if c in FLINK_DROPS)
    for name, output in (("flink", os.path.join(work, "out", "flink")), ("flink-s3", f"s3://{s3_root}/flink")):
        if os.path.exists(os.path.join(work, f"{name}.result.json")):
            f_ = load(f"{name}.result.json")
            where = ", into S3" if name.endswith("-s3") else ""
            r = peer(name, f"Flink {f_['flink_version']} SQL, mini-cluster, parallelism {f_['parallelism']}{where}", f_, output,
                     records - flink_dropped)
            r["unparseable_skipped"] = flink_dropped

# citystream's best of the three configurations the issue names (the tuned row is a hint for
# src/, not a configuration a user gets); the ceiling is the faster raw consumer.
best = max((r for r in rows if r["name"] in OFFICIAL), key=lambda r: r["records_per_s"])
by = {r["name"]: r for r in rows}
ceiling = max((by["raw-consume"], by["raw-consume-tuned"]), key=lambda r: r["records_per_s"]) if raw else None
ratio_raw = best["records_per_s"] / ceiling["records_per_s"] if ceiling else None
ratio_spark = best["records_per_s"] / by["spark"]["records_per_s"] if "spark" in by else None
ratio_flink = best["records_per_s"] / by["flink"]["records_per_s"] if "flink" in by else None
s3_ratios = {}
if "citystream-w2-s3" in by:
    for p in ("spark-s3", "flink-s3"):
        if p in by:
            s3_ratios[p.removesuffix("-s3")] = by["citystream-w2-s3"]["records_per_s"] / by[p]["records_per_s"]
# What the aggregate tables cost: the same -w 2 run with them (the default) over without, as the
# ratio of the medians over the --agg-pairs alternating pairs (each pair's ratio listed too).
def pair_runs(name, suffix):  # the measurements of `name` and its repeats, each checked complete
    runs, k = [], 1
    while True:
        n = name + suffix if k == 1 else f"{name}{suffix}-pair{k}"
        if not os.path.exists(os.path.join(work, f"{n}.measure.json")):
            return runs
        committed(n)
        m = load(f"{n}.measure.json")
        runs.append({"records_per_s": records / m["wall_s"], "cpu_s": m["cpu_s"], "peak_rss_mib": m["peak_rss_process_mib"]})
        k += 1
aggregates_cost = {}
for model, suffix in (("fleet", ""), ("original", "-original")):
    on, off = pair_runs("citystream-w2", suffix), pair_runs("citystream-w2-noagg", suffix)
    if not on or not off:
        continue
    med = lambda runs, k: statistics.median(r[k] for r in runs)
    aggregates_cost[model] = {
        "pairs": min(len(on), len(off)),
        "records_per_s_ratio_on_over_off": med(on, "records_per_s") / med(off, "records_per_s"),
        "per_pair_ratios": [a["records_per_s"] / b["records_per_s"] for a, b in zip(on, off)],
        "records_per_s_on": med(on, "records_per_s"), "records_per_s_off": med(off, "records_per_s"),
        "cpu_s_on": med(on, "cpu_s"), "cpu_s_off": med(off, "cpu_s"),
        "peak_rss_mib_on": max(r["peak_rss_mib"] for r in on), "peak_rss_mib_off": max(r["peak_rss_mib"] for r in off),
    }

# The objects table: every citystream run, per model, baseline (before) then current (after).
PER_MODEL_KEYS = ["objects", "objects_per_1k_records", "mean_object_bytes", "object_bytes", "disk_bytes", "output_bytes",
                  "manifests", "records_per_s", "wall_s", "peak_rss_process_mib", "peak_rss_tree_mib", "cpu_s"]
per_model = [{"model": r["model"], "binary": r["binary"], "name": r["name"], **{k: r[k] for k in PER_MODEL_KEYS}}
             for model in MODELS for binary in ("baseline", "current") for r in rows
             if r.get("binary") == binary and r["model"] == model]

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0) / 2**20
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
report = {
    "benchmark": "e2e", "records": records, "value_bytes": value_bytes, "topics": 5, "partitions_per_topic": 6,
    "time_models": MODELS, "models_only": models_only, "baseline_bin": baseline_bin, "baseline_version": baseline_version,
    "machine": {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem, 1), "kernel": platform.release(),
                "load_avg_at_end": os.getloadavg()},
    "commit": commit, "best_citystream": best["name"], "raw_ceiling": ceiling["name"] if ceiling else None, "results": rows,
    "per_model": per_model,
    "ratio_citystream_over_spark": ratio_spark, "ratio_citystream_over_flink": ratio_flink,
    "ratio_citystream_over_raw_consume": ratio_raw, "s3_ratios_citystream_over": s3_ratios, "s3_root": s3_root,
    "peers_only": peers_only,
    "aggregates_cost": aggregates_cost,
    "work_dir": work,
}
with open(out_path, "w") as f:
    json.dump(report, f, indent=2)
volume = f"{value_bytes / 1e6:,.1f} MB of JSON values (fleet model), " if value_bytes else ""
print(f"\n{records:,} records per time model, {volume}5 topics × 6 partitions (fleet) and × 4 (original); "
      f"{os.cpu_count()} cores ({cpu}), {mem:.1f} GiB; load average at the end {os.getloadavg()[0]:.2f}\n")
print(f"| {'run':<56} | {'wall s':>7} | {'records/s':>10} | {'MB/s':>6} | {'peak RSS MiB':>12} | {'CPU s':>6} | {'CPU µs/rec':>10} | {'output MB':>9} |")
print(f"|{'-' * 58}|{'-' * 9}:|{'-' * 11}:|{'-' * 7}:|{'-' * 13}:|{'-' * 7}:|{'-' * 11}:|{'-' * 10}:|")
for r in rows:
    rss = f"{r['peak_rss_process_mib']:.0f}" + (f" ({r['peak_rss_tree_mib']:.0f} all)" if r["peak_rss_tree_mib"] > r["peak_rss_process_mib"] * 1.05 else "")
    mbs = f"{r['mb_per_s']:.1f}" if r["mb_per_s"] is not None else "n/a"
    print(f"| {r['label']:<56} | {r['wall_s']:>7.2f} | {r['records_per_s']:>10,.0f} | {mbs:>6} | {rss:>12} | {r['cpu_s']:>6.1f} "
          f"| {r['cpu_us_per_record']:>10.2f} | {r['output_bytes'] / 1e6:>9.1f} |")
print(f"\nobjects per time model (baseline: {baseline_bin or 'none'}{f', {baseline_version}' if baseline_version else ''}):\n")
print(f"| {'model':<8} | {'binary':<8} | {'run':<22} | {'objects':>9} | {'objects/1k records':>18} | {'mean object B':>13} "
      f"| {'on disk MB':>10} | {'records/s':>10} | {'peak RSS MiB':>12} |")
print(f"|{'-' * 10}|{'-' * 10}|{'-' * 24}|{'-' * 10}:|{'-' * 19}:|{'-' * 14}:|{'-' * 11}:|{'-' * 11}:|{'-' * 13}:|")
for r in per_model:
    disk = f"{r['disk_bytes'] / 1e6:>10.1f}" if r["disk_bytes"] is not None else f"{'(S3)':>10}"
    print(f"| {r['model']:<8} | {r['binary']:<8} | {r['name']:<22} | {r['objects']:>9,} | {r['objects_per_1k_records']:>18,.1f} "
          f"| {r['mean_object_bytes']:>13,.0f} | {disk} | {r['records_per_s']:>10,.0f} | {r['peak_rss_process_mib']:>12.0f} |")
for model, c in aggregates_cost.items():
    pairs = ", ".join(f"{x:.2f}" for x in c["per_pair_ratios"])
    print(f"aggregate tables, {model} model ({c['pairs']} pair(s), medians): records/s on/off = {c['records_per_s_ratio_on_over_off']:.2f} "
          f"(each pair: {pairs}), CPU s {c['cpu_s_on']:.1f} on / {c['cpu_s_off']:.1f} off, "
          f"peak RSS (greatest) {c['peak_rss_mib_on']:.0f} / {c['peak_rss_mib_off']:.0f} MiB")
print(f"\nbest citystream: {best['label']}; raw-consume ceiling: {ceiling['label'] if ceiling else 'n/a (--models-only)'}")
print(f"wrote {out_path}")
fmt = lambda x: f"{x:.2f}" if x is not None else "n/a"
peers = [r for r in rows if r["name"].startswith(("spark", "flink"))]
if peers:
    print("\nobjects the peers wrote (their finished data files):\n")
    for r in peers:
        print(f"  {r['label']}: {r['objects']:,} objects, {r['objects_per_1k_records']:.1f} per 1,000 records, mean {r['mean_object_bytes']:,.0f} B")
if s3_ratios:
    print("ratio (into S3) " + " ".join(f"citystream/{p}={x:.2f}" for p, x in s3_ratios.items()))
print(f"ratio citystream/spark={fmt(ratio_spark)} citystream/flink={fmt(ratio_flink)} citystream/raw-consume={fmt(ratio_raw)}")
PY

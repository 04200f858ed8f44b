#!/usr/bin/env bash
# The per-record floor, in instructions: what citystream executes per record against the raw
# consumer (benches/raw_consume.rs) on the same topics. Instruction counts repeat within a few
# percent from run to run (here: the raw consumer 0.2 %, citystream 4 %, whose commits and
# librdkafka statistics run per second of wall time) where wall-clock rates on a shared 2-vCPU
# VM vary by ±20 %, so they are the primary measure of the per-record cost; benches/e2e.sh
# measures the rates.
#
# Usage: benches/instructions.sh [--records N] [--keep-topics] [--top K] [--bin PATH] [--raw-bin PATH]
#   --records N       records of the smaller topic set (default 200,000; the larger has 2 N)
#   --keep-topics     leave the preloaded topics on the broker
#   --top K           functions listed in citystream's profile (default 30)
#   --bin PATH        measure this citystream binary instead of building one (e.g. an older commit)
#   --raw-bin PATH    this raw_consume bench executable instead of building it
#
# What it does:
#   1. builds citystream (release) and the raw_consume bench; starts the local Kafka broker
#      (scripts/services.sh) unless it runs;
#   2. preloads the fleet model (1,000 vehicles, seed 5, 6 partitions, 0.1 % late and 0.1 %
#      malformed, as benches/e2e.sh) twice: N records and 2 N records, each into topics of its own;
#   3. counts the instructions of the raw consumer (2 threads) and of `citystream run -w 2
#      --until-caught-up` (local output directory, aggregate tables on: the default) over each
#      topic set, every thread of the process: with `perf stat -e instructions:u` where the CPU's
#      counters are exposed, otherwise under `valgrind --tool=callgrind` (≈ 50 × slower);
#   4. reports per engine the instructions per record at 2 N (whole run / records) and the
#      marginal instructions per record ((I(2 N) − I(N)) / N: start-up, connection and the last
#      commit cancel out), the ratio citystream/raw-consume of both, and — under callgrind — the
#      functions with the largest own (exclusive) share of citystream's 2 N run; writes
#      target/bench-instructions.json and prints `ratio instructions citystream/raw-consume=<x>`
#      (marginal).
# Respects CITYSTREAM_PORT_OFFSET / CITYSTREAM_STATE / CITYSTREAM_CACHE like scripts/services.sh.
set -euo pipefail

RECORDS=200000
KEEP_TOPICS=0
TOP=30
BIN=
RAW_BIN=
while (($#)); do
    case "$1" in
        --records) RECORDS=${2:-}; (($# >= 2)) || { echo "instructions.sh: --records needs a count" >&2; exit 2; }; shift 2 ;;
        --keep-topics) KEEP_TOPICS=1; shift ;;
        --top) TOP=${2:-}; (($# >= 2)) || { echo "instructions.sh: --top needs a count" >&2; exit 2; }; shift 2 ;;
        --bin) BIN=${2:-}; (($# >= 2)) || { echo "instructions.sh: --bin needs a path" >&2; exit 2; }; shift 2 ;;
        --raw-bin) RAW_BIN=${2:-}; (($# >= 2)) || { echo "instructions.sh: --raw-bin needs a path" >&2; exit 2; }; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "instructions.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $RECORDS =~ ^[1-9][0-9]*$ ]] || { echo "instructions.sh: --records must be a positive integer, got $RECORDS" >&2; exit 2; }
[[ $TOP =~ ^[1-9][0-9]*$ ]] || { echo "instructions.sh: --top must be a positive integer, got $TOP" >&2; exit 2; }
for b in "$BIN" "$RAW_BIN"; do
    [[ -z $b || (-f $b && -x $b) ]] || { echo "instructions.sh: $b is not an executable file" >&2; exit 2; }
done

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
RUN_ID=$(date -u +%Y%m%dT%H%M%S)-$$
WORK=$TARGET/instructions/$RUN_ID
mkdir -p "$WORK"
log() { printf '[instructions %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR

# ---------------------------------------------------------------- the counter
COUNTER=
if command -v perf >/dev/null && perf stat -x, -e instructions:u true 2>&1 >/dev/null | grep -q '^[0-9]'; then
    COUNTER=perf
elif command -v valgrind >/dev/null; then
    COUNTER=callgrind
else
    die "neither perf (with the instructions counter) nor valgrind is available (Debian: apt-get install valgrind)"
fi
log "counting instructions with $COUNTER"

# ---------------------------------------------------------------- build and services
if [[ -z $RAW_BIN ]]; then
    log "building the raw_consume bench"
    RAW_BIN=$(cargo bench --bench raw_consume --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n 1)
    [[ -x $REPO/$RAW_BIN ]] && RAW_BIN=$REPO/$RAW_BIN
    [[ -x $RAW_BIN ]] || die "could not find the raw_consume bench executable (cargo bench --bench raw_consume --no-run)"
fi
if [[ -z $BIN ]]; then
    log "building citystream (release)"
    cargo build --release --bin citystream >&2
    BIN=$TARGET/release/citystream
fi
STARTED_KAFKA=0
SMALL="ins-$RUN_ID-small."
LARGE="ins-$RUN_ID-large."
cleanup() {
    local rc=$? p
    if ((KEEP_TOPICS == 0)) && [[ -n ${CITYSTREAM_BROKERS:-} ]]; then
        for p in "$SMALL" "$LARGE"; do "$RAW_BIN" --bench --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$p" --delete-topics >/dev/null 2>&1 || true; done
    fi
    rm -rf -- "$WORK/out" 2>/dev/null || true
    ((STARTED_KAFKA)) && { log "stopping the Kafka broker this run started"; scripts/services.sh down kafka >&2 || true; }
    exit "$rc"
}
trap cleanup EXIT
if ! scripts/services.sh status kafka >/dev/null 2>&1; then
    STARTED_KAFKA=1
    scripts/services.sh up kafka >&2
fi
eval "$(scripts/services.sh env)"

for spec in "$SMALL:$RECORDS" "$LARGE:$((2 * RECORDS))"; do
    prefix=${spec%:*} n=${spec##*:}
    log "preloading $n records (fleet model) into ${prefix}*"
    "$BIN" simulate --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$prefix" --vehicles 1000 --events "$n" --partitions 6 --seed 5 \
        --late-fraction 0.001 --malformed-fraction 0.001 >"$WORK/simulate-$n.log" 2>&1 ||
        { tail -n 20 "$WORK/simulate-$n.log" >&2; die "simulate failed (log: $WORK/simulate-$n.log)"; }
done

count() { # NAME COMMAND...: the instructions of COMMAND (every thread) into $WORK/NAME.instructions
    local name=$1
    shift
    log "counting $name"
    if [[ $COUNTER == perf ]]; then
        perf stat -x, -e instructions:u -o "$WORK/$name.perf" -- "$@" >"$WORK/$name.log" 2>&1 ||
            { tail -n 20 "$WORK/$name.log" >&2; die "$name failed (log: $WORK/$name.log)"; }
        awk -F, '$3 ~ /^instructions/ {print $1}' "$WORK/$name.perf" >"$WORK/$name.instructions"
    else
        valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.callgrind" "$@" >"$WORK/$name.log" 2>&1 ||
            { tail -n 20 "$WORK/$name.log" >&2; die "$name failed (log: $WORK/$name.log)"; }
        sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$WORK/$name.callgrind" | head -n 1 >"$WORK/$name.instructions"
    fi
    [[ -s $WORK/$name.instructions ]] || die "no instruction count for $name ($WORK)"
}
for size in small large; do
    prefix=$SMALL
    [[ $size == large ]] && prefix=$LARGE
    count "raw-$size" "$RAW_BIN" --bench --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$prefix" --threads 2
    grep -o '^{.*"records".*}' "$WORK/raw-$size.log" | tail -n 1 >"$WORK/raw-$size.result.json" || die "no result line in $WORK/raw-$size.log"
    count "citystream-$size" "$BIN" run -w 2 --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$prefix" --group "ins-$RUN_ID-$size" \
        --output "$WORK/out/$size" --until-caught-up
done
if [[ $COUNTER == callgrind ]]; then
    callgrind_annotate --inclusive=no --threshold=100 "$WORK/citystream-large.callgrind" >"$WORK/citystream-large.annotate" 2>/dev/null ||
        die "callgrind_annotate failed on $WORK/citystream-large.callgrind"
    callgrind_annotate --inclusive=no --threshold=100 "$WORK/raw-large.callgrind" >"$WORK/raw-large.annotate" 2>/dev/null ||
        die "callgrind_annotate failed on $WORK/raw-large.callgrind"
fi

python3 - "$WORK" "$RECORDS" "$COUNTER" "$TOP" "$TARGET/bench-instructions.json" "$BIN" <<'PY'
import json, os, platform, re, subprocess, sys
work, n, counter, top, out_path, bin_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
def instructions(name):
    with open(os.path.join(work, f"{name}.instructions")) as f:
        return int(f.read().strip().replace(",", ""))
def committed(name, expected):
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(os.path.join(work, f"{name}.log")).read())
    seen = max((int(x) for x in re.findall(r"records committed:\s+(\d+)", text)), default=0)
    if seen != expected:
        sys.exit(f"{name}: committed {seen} records, expected {expected} (log: {work}/{name}.log)")
for size, expected in (("small", n), ("large", 2 * n)):
    raw = json.load(open(os.path.join(work, f"raw-{size}.result.json")))
    if raw["records"] != expected:
        sys.exit(f"raw consumer read {raw['records']} records of the {size} set, expected {expected}")
    committed(f"citystream-{size}", expected)
def profile(name):  # [(function, own instructions, share)] from callgrind_annotate --inclusive=no
    path = os.path.join(work, f"{name}.annotate")
    if not os.path.exists(path):
        return []
    rows, total = [], None
    for line in open(path):
        m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*?)\s*$", line)
        if m and total is None and "PROGRAM TOTALS" in m.group(3):
            total = int(m.group(1).replace(",", ""))
            continue
        if m and total is not None:
            rows.append({"function": m.group(3), "instructions": int(m.group(1).replace(",", "")), "share": float(m.group(2)) / 100})
    return rows[:top]
engines = {}
for engine in ("raw", "citystream"):
    small, large = instructions(f"{engine}-small"), instructions(f"{engine}-large")
    engines[engine] = {"small": small, "large": large, "per_record_whole_run": large / (2 * n), "per_record_marginal": (large - small) / n}
ratio_marginal = engines["citystream"]["per_record_marginal"] / engines["raw"]["per_record_marginal"]
ratio_whole = engines["citystream"]["per_record_whole_run"] / engines["raw"]["per_record_whole_run"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
report = {
    "benchmark": "instructions", "counter": counter, "records_small": n, "records_large": 2 * n,
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "citystream_bin": bin_path,
    "machine": {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release()},
    "engines": engines, "ratio_marginal": ratio_marginal, "ratio_whole_run": ratio_whole,
    "citystream_profile": profile("citystream-large"), "raw_profile": profile("raw-large"), "work_dir": work,
}
with open(out_path, "w") as f:
    json.dump(report, f, indent=2)
print(f"\ninstructions ({counter}), fleet model, {n:,} and {2 * n:,} records; {os.cpu_count()} cores ({cpu})\n")
print(f"| {'engine':<26} | {'at N':>16} | {'at 2 N':>16} | {'per record (2 N run)':>20} | {'marginal per record':>19} |")
print(f"|{'-' * 28}|{'-' * 17}:|{'-' * 17}:|{'-' * 21}:|{'-' * 20}:|")
for engine, label in (("raw", "raw consume (2 threads)"), ("citystream", "citystream run -w 2")):
    e = engines[engine]
    print(f"| {label:<26} | {e['small']:>16,} | {e['large']:>16,} | {e['per_record_whole_run']:>20,.0f} | {e['per_record_marginal']:>19,.0f} |")
for name, rows in (("citystream", report["citystream_profile"]), ("raw consume", report["raw_profile"])):
    if rows:
        print(f"\n{name}: own instructions by function ({2 * n:,} records), top {len(rows)}\n")
        for r in rows:
            print(f"  {r['share'] * 100:5.1f} %  {r['instructions']:>15,}  {r['function'][:150]}")
print(f"\nwrote {out_path}")
print(f"ratio instructions citystream/raw-consume={ratio_marginal:.2f} (whole runs: {ratio_whole:.2f})")
PY

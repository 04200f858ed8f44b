#!/usr/bin/env bash
# Restart after a crash, with the aggregate tables: how long a restarted run takes to read its
# aggregate state back from the committed tables (not from Kafka), on a lake of N records.
#
# Usage: benches/restart.sh [--records N] [--time-model fleet|original] [--bin PATH]
#   --records N       records preloaded (default 1,000,000)
#   --time-model M    the simulator's time model (default fleet)
#   --bin PATH        the citystream binary (default: a release build of this checkout)
#
# What it does: preloads N records into 5 fresh topics (3 partitions each, 0.1 % late); starts
# `citystream run -w 2 --commit-interval 2s` (aggregates on), kills it with SIGKILL once half of
# the records are committed, then restarts it with --until-caught-up and reports, from the
# restarted run's log: the time to read the aggregate state (per worker: partitions, rows
# loaded, ms), the time from start to the first commit, and the whole restart; then checks the
# lake with tests/python/lake_check.py (each aggregate table equals its SQL over the raw tables).
# Needs the local Kafka and the venv of scripts/services.sh (started if not running). Writes
# target/bench-restart.json.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=1000000
MODEL=fleet
BIN=
while (($#)); do
    case "$1" in
        --records) RECORDS=${2:?--records needs a count}; shift 2 ;;
        --time-model) MODEL=${2:?--time-model needs fleet or original}; shift 2 ;;
        --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
        *) echo "restart.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
log() { printf '[restart %s] %s\n' "$(date +%T)" "$*" >&2; }
if [[ -z $BIN ]]; then
    cargo build --release --bin citystream >&2
    BIN=${CARGO_TARGET_DIR:-target}/release/citystream
fi
scripts/services.sh up >&2
eval "$(scripts/services.sh env)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/citystream-restart.XXXXXX")
PREFIX="restart-$(date +%s)-$RANDOM."
OUT=$WORK/lake
EXTRA=()
[[ $MODEL == original ]] && EXTRA=(--time-model original --vehicles 3 --key id)
[[ $MODEL == fleet ]] && EXTRA=(--vehicles 1000)
log "preloading $RECORDS records ($MODEL model) into ${PREFIX}*"
"$BIN" simulate --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --events "$RECORDS" --partitions 3 --seed 7 \
    --late-fraction 0.001 --malformed-fraction 0.001 "${EXTRA[@]}" >"$WORK/simulate.log" 2>&1
ARGS=(run -w 2 --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --group "$PREFIX" --output "$OUT" --commit-interval 2s)
committed() { python3 -c '
import glob, json, sys
print(sum(f["rows"] for p in glob.glob(sys.argv[1] + "/_manifests/*.json") for f in json.load(open(p))["files"] if f["kind"] != "aggregate"))' "$OUT"; }
log "first run, killed with SIGKILL once $((RECORDS / 2)) records are committed"
"$BIN" "${ARGS[@]}" >"$WORK/first.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null && (($(committed) < RECORDS / 2)); do sleep 0.5; done
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
before=$(committed)
log "killed with $before records committed; restarting with --until-caught-up"
start=$(date +%s.%N)
RUST_LOG=info,rdkafka=warn,deltalake_core=warn "$BIN" "${ARGS[@]}" --until-caught-up >"$WORK/restart.log" 2>&1
end=$(date +%s.%N)
log "checking the lake (every aggregate table against duckdb SQL over the raw tables)"
.venv/bin/python tests/python/lake_check.py --output "$OUT" --brokers "$CITYSTREAM_BROKERS" --prefix "$PREFIX" --expect-records "$RECORDS" >"$WORK/check.json"
python3 - "$WORK" "$RECORDS" "$MODEL" "$before" "$start" "$end" <<'PY'
import json, re, sys, datetime as dt
work, records, model, before, start, end = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
text = re.sub(r"\x1b\[[0-9;]*m", "", open(f"{work}/restart.log").read())
restores = [dict(re.findall(r"(\w+)=(\d+)", l)) for l in text.splitlines() if "aggregate state read from the committed tables" in l]
stamp = lambda l: dt.datetime.fromisoformat(l.split()[0].replace("Z", "+00:00")).timestamp()
lines = text.splitlines()
first_commit = next((stamp(l) - stamp(lines[0]) for l in lines if "manifest committed" in l and "objects=0" not in l), None)
check = json.loads(open(f"{work}/check.json").read().strip().splitlines()[-1])
report = {"benchmark": "restart", "records": records, "model": model, "committed_before_kill": before,
          "restore": [{k: int(v) for k, v in r.items()} for r in restores],
          "restore_ms_max": max((int(r["ms"]) for r in restores), default=None),
          "first_commit_s_after_start": first_commit, "restart_total_s": end - start, "lake_check": check, "work_dir": work}
json.dump(report, open("target/bench-restart.json", "w"), indent=2)
print(json.dumps(report, indent=2))
PY

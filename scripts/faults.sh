#!/usr/bin/env bash
# The fault suite (tests/faults.rs) at a chosen size, with a results table.
#
# Usage: scripts/faults.sh [--scale small|large] [--seed N] [--results FILE]
#   --scale    large (default here): the documented size (docs/operations.md); small: what CI runs
#              as part of `cargo test --all-targets` (scripts/test.sh)
#   --seed N   replay the kill moments, victims and records of an earlier run
#   --results  JSON lines of the results (default: target/faults-results-<time>.jsonl)
#
# Runs `cargo test --test faults -- --nocapture --test-threads=1` under scripts/with-services.sh
# (real Kafka and S3; stopped again afterwards unless CITYSTREAM_KEEP_SERVICES=1), then prints
# one row per test: faults injected, records produced and checked, lost, duplicated. Any
# CITYSTREAM_FAULTS_<KNOB> of tests/faults.rs overrides one size; CITYSTREAM_PORT_OFFSET /
# CITYSTREAM_STATE select the service set as for scripts/services.sh.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO_ROOT"

SCALE=large
SEED=${CITYSTREAM_FAULTS_SEED:-}
RESULTS=
while (($#)); do
    case "$1" in
        --scale) SCALE=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --results) RESULTS=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "faults.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $SCALE == small || $SCALE == large ]] || { echo "faults.sh: --scale must be small or large" >&2; exit 2; }
[[ -z $SEED || $SEED =~ ^[0-9]+$ ]] || { echo "faults.sh: --seed must be an unsigned integer" >&2; exit 2; }
SEED=${SEED:-$((EPOCHSECONDS % 1000000007))}
mkdir -p target
RESULTS=${RESULTS:-target/faults-results-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
: >"$RESULTS"

echo "faults.sh: scale $SCALE, seed $SEED (replay: scripts/faults.sh --scale $SCALE --seed $SEED), results in $RESULTS" >&2
start=$EPOCHSECONDS
rc=0
CITYSTREAM_FAULTS_SCALE=$SCALE CITYSTREAM_FAULTS_SEED=$SEED CITYSTREAM_FAULTS_RESULTS=$(realpath "$RESULTS") \
    "$REPO_ROOT/scripts/with-services.sh" cargo test --test faults -- --nocapture --test-threads=1 || rc=$?

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def faults(r):
    t = r["test"]
    if t == "kill_9":
        return f'{r["kills"]} × kill -9 ({r["kills_after_a_commit"]} after a commit, {r["survivors_waiting_for_peer"]} in start-up)'
    if t == "kafka_outage":
        return f'Kafka down {r["outage_seconds"]:.0f} s'
    if t == "s3_outage":
        return f'S3 down {r["outage_seconds"]:.0f} s ({r["store_retries_logged"]} retries logged)'
    if t == "sigterm":
        return f'{r["sigterms"]} × SIGTERM'
    if t == "live_outages":
        return (f'Kafka down {r["kafka_outage_seconds"]:.0f} s, S3 down {r["s3_outage_seconds"]:.0f} s, then SIGTERM; '
                f'{r["stalls_detected"]} stalls detected, {r["clients_recreated"]} clients re-created')
    return "?"
print("| test | scale | seed | faults | records | checked | data / late / dead letters | files | manifests | lost | doubled | s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f'| {r["test"]} | {r["scale"]} | {r["seed"]} | {faults(r)} | {r["records"]} | {r["records_checked"]} | '
          f'{r["data_rows"]} / {r["late_rows"]} / {r["dead_letters"]} | {r["files"]} | {r["manifests"]} | {r["lost"]} | {r["duplicated"]} | {r["seconds"]} |')
PY
echo "faults.sh: finished in $((EPOCHSECONDS - start)) s with exit code $rc" >&2
exit "$rc"

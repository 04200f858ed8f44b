#!/usr/bin/env bash
# What scraping /metrics costs a run under load: citystream throughput with and without a
# 1-second scrape loop, alternating in one sitting over the same topics.
#
# Usage: benches/scrape_overhead.sh [--records N] [--pairs P]
#   --records N  records to preload (default 3,000,000; the fleet time model, 6 partitions)
#   --pairs P    how many (without, with) pairs to run, alternating (default 3)
#
# Each run is `citystream run -w 2 --until-caught-up --metrics-addr 127.0.0.1:PORT` (release
# build) into a fresh local directory, reading every preloaded record. The endpoint is on in
# both arms; the only difference is a loop that GETs /metrics every second (and /healthz and
# /readyz, as a Kubernetes probe would) for the whole run. Rates are records over the run's
# whole wall time (start-up included). Prints one line per run and the median of each arm, and
# the overhead = 1 − median(with) / median(without). Needs the services of scripts/services.sh
# (CITYSTREAM_PORT_OFFSET / CITYSTREAM_STATE respected) and curl.
set -euo pipefail

RECORDS=3000000
PAIRS=3
while [[ $# -gt 0 ]]; do
    case $1 in
        --records) RECORDS=$2; shift 2 ;;
        --pairs) PAIRS=$2; shift 2 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
cargo build --release --bin citystream >&2
BIN=${CARGO_TARGET_DIR:-target}/release/citystream
eval "$(bash scripts/services.sh env)"
WORK=$(mktemp -d -t citystream-scrape-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PREFIX="scrape$(date +%s)."
"$BIN" simulate --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --vehicles 1000 --events "$RECORDS" \
    --partitions 6 --late-fraction 0.001 --malformed-fraction 0.001 --seed 5 >&2

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

one() { # ARM (without|with) RUN#
    local arm=$1 n=$2 addr out scrapes=0 start end pid
    addr="127.0.0.1:$(port)"
    out="$WORK/lake-$arm-$n"
    start=$(date +%s.%N)
    "$BIN" run -w 2 --brokers "$CITYSTREAM_BROKERS" --topic-prefix "$PREFIX" --group "$PREFIX$arm$n" \
        --output "$out" --until-caught-up --metrics-addr "$addr" >"$WORK/$arm-$n.log" 2>&1 &
    pid=$!
    if [[ $arm == with ]]; then
        while kill -0 "$pid" 2>/dev/null; do
            if curl -sf "http://$addr/metrics" -o /dev/null; then scrapes=$((scrapes + 1)); fi
            curl -s "http://$addr/healthz" -o /dev/null || true
            curl -s "http://$addr/readyz" -o /dev/null || true
            sleep 1
        done
    fi
    wait "$pid"
    end=$(date +%s.%N)
    grep -q "records committed: $RECORDS " "$WORK/$arm-$n.log" || { cat "$WORK/$arm-$n.log" >&2; echo "run $arm $n did not commit every record" >&2; exit 1; }
    python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'{sys.argv[3]} {sys.argv[4]} {s:.2f} s {int(sys.argv[5])/s:.0f} records/s scrapes={sys.argv[6]}')" \
        "$start" "$end" "$arm" "$n" "$RECORDS" "$scrapes"
}

: >"$WORK/results"
for n in $(seq 1 "$PAIRS"); do
    one without "$n" | tee -a "$WORK/results"
    one with "$n" | tee -a "$WORK/results"
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rates = {"without": [], "with": []}
for line in open(sys.argv[1]):
    f = line.split()
    rates[f[0]].append(float(f[4]))
a, b = statistics.median(rates["without"]), statistics.median(rates["with"])
print(f"median without scraping: {a:.0f} records/s; with a 1 s scrape loop: {b:.0f} records/s; overhead {100 * (1 - b / a):+.2f} %")
print(f"all runs without: {sorted(round(x) for x in rates['without'])}; with: {sorted(round(x) for x in rates['with'])}")
PY

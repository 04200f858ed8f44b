#!/usr/bin/env bash
# Launch an N-process citystream cluster on this machine, and restart the whole cluster when
# any process dies — what a Kubernetes StatefulSet does for the pods of a cluster.
#
# Usage: workers/launch.sh [-n PROCESSES] [-w THREADS] [--max-restarts K] [--bin PATH] -- RUN-ARGS...
#   e.g. workers/launch.sh -n 2 -w 2 -- --brokers 127.0.0.1:9092 --output s3://citystream/lake
#
# Every process gets `run -n N -p I -h HOSTFILE -w W RUN-ARGS`; the hostfile lists N free ports
# on 127.0.0.1 and is made anew for each attempt. Timely has no partial-failure recovery: when
# one process exits non-zero the others are stopped (SIGTERM, then SIGKILL) and the cluster is
# started again, resuming exactly from the last manifest. When all exit 0 (e.g. with
# --until-caught-up), the launcher exits 0. SIGTERM/SIGINT to the launcher are passed on to
# every process (clean shutdown: seal, commit, exit) and the launcher exits with their status.
# Logs: one file per process and attempt under $CITYSTREAM_LAUNCH_LOGS (default ./launch-logs).
set -euo pipefail

PROCESSES=2
THREADS=1
MAX_RESTARTS=20
BIN=${CITYSTREAM_BIN:-}
while (($#)); do
    case "$1" in
        -n) PROCESSES=$2; shift 2 ;;
        -w) THREADS=$2; shift 2 ;;
        --max-restarts) MAX_RESTARTS=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "launch.sh: unknown option $1 (put citystream's own flags after --)" >&2; exit 2 ;;
    esac
done
[[ $PROCESSES =~ ^[1-9][0-9]*$ ]] || { echo "launch.sh: -n must be a positive integer, got $PROCESSES" >&2; exit 2; }
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || { echo "launch.sh: -w must be a positive integer, got $THREADS" >&2; exit 2; }
if [[ -z $BIN ]]; then
    BIN=$(command -v citystream || true)
    repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
    for candidate in "$repo/target/release/citystream" "$repo/target/debug/citystream"; do
        [[ -z $BIN && -x $candidate ]] && BIN=$candidate
    done
fi
[[ -n $BIN && -x $BIN ]] || { echo "launch.sh: no citystream binary found (build it, or pass --bin PATH)" >&2; exit 2; }

LOGS=${CITYSTREAM_LAUNCH_LOGS:-./launch-logs}
mkdir -p "$LOGS"
HOSTFILE=$(mktemp "${TMPDIR:-/tmp}/citystream-hosts.XXXXXX")
PIDS=()
STOPPING=0

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

stop_all() {
    local sig=$1
    for pid in "${PIDS[@]}"; do kill "-$sig" "$pid" 2>/dev/null || true; done
}

# shellcheck disable=SC2317  # invoked through traps
on_signal() {
    STOPPING=1
    echo "launch.sh: stopping the cluster (clean shutdown)" >&2
    stop_all TERM
}
trap on_signal TERM INT
trap 'rm -f "$HOSTFILE"' EXIT

attempt=0
while :; do
    : >"$HOSTFILE"
    for ((i = 0; i < PROCESSES; i++)); do echo "127.0.0.1:$(free_port)" >>"$HOSTFILE"; done
    PIDS=()
    for ((i = 0; i < PROCESSES; i++)); do
        "$BIN" run -n "$PROCESSES" -p "$i" -h "$HOSTFILE" -w "$THREADS" "$@" >"$LOGS/process-$i.attempt-$attempt.log" 2>&1 &
        PIDS+=($!)
    done
    echo "launch.sh: attempt $attempt: ${PROCESSES} processes × ${THREADS} threads (pids ${PIDS[*]}), logs in $LOGS" >&2

    # Wait until every process has exited; as soon as one fails, stop the rest.
    failed=0
    remaining=${#PIDS[@]}
    declare -A done_pids=()
    while ((remaining > 0)); do
        for pid in "${PIDS[@]}"; do
            [[ -n ${done_pids[$pid]:-} ]] && continue
            if ! kill -0 "$pid" 2>/dev/null; then
                status=0
                wait "$pid" || status=$?
                done_pids[$pid]=$status
                remaining=$((remaining - 1))
                if ((status != 0 && failed == 0)); then
                    failed=1
                    echo "launch.sh: process pid $pid exited with $status; stopping the cluster" >&2
                    stop_all TERM
                    ( sleep 20; stop_all KILL ) &
                fi
            fi
        done
        sleep 0.2
    done
    unset done_pids
    if ((failed == 0)); then
        echo "launch.sh: cluster finished" >&2
        exit 0
    fi
    if ((STOPPING)); then
        echo "launch.sh: cluster stopped on request, with a failure" >&2
        exit 1
    fi
    attempt=$((attempt + 1))
    if ((attempt > MAX_RESTARTS)); then
        echo "launch.sh: giving up after $MAX_RESTARTS restarts (see $LOGS)" >&2
        exit 1
    fi
    backoff=$((attempt < 5 ? attempt * 2 : 10))
    echo "launch.sh: restarting the whole cluster from the last manifest in ${backoff}s" >&2
    sleep "$backoff"
done

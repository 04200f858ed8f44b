#!/usr/bin/env bash
# Container entrypoint: turn the pod's identity into timely's cluster flags, then exec
# `citystream run "$@"`. The same script serves a Kubernetes StatefulSet (k8s/) and the
# services worker-0, worker-1, … of docker-compose.yaml.
#
#   -p  CITYSTREAM_PROCESS if set, else the ordinal at the end of the pod's name: POD_NAME (the
#       downward API), else HOSTNAME, else `hostname` (citystream-2 → 2; compose: worker-1 → 1).
#   -n  CITYSTREAM_PROCESSES (default 1); the StatefulSet copies spec.replicas into it.
#   -w  CITYSTREAM_THREADS (default 1), from the ConfigMap.
#   -h  CITYSTREAM_HOSTFILE if that file exists; otherwise one is written (to $TMPDIR or /tmp)
#       with one line per process i:
#         CITYSTREAM_PEER_PATTERN with {i} replaced, if set; else
#         <set>-<i>.<CITYSTREAM_HEADLESS_SERVICE>.<POD_NAMESPACE>.svc.<CITYSTREAM_CLUSTER_DOMAIN>:<port>
#           when CITYSTREAM_HEADLESS_SERVICE and POD_NAMESPACE are set (Kubernetes: the
#           headless Service's per-pod DNS names; cluster domain default cluster.local); else
#         <set>-<i>:<port> (compose: the service names),
#       where <set> is the pod's name without its ordinal and <port> CITYSTREAM_PEER_PORT (2101).
# CITYSTREAM_METRICS_ADDR defaults to 0.0.0.0:9100 (the metrics and health endpoint, read by
# citystream itself). Everything else (brokers, output, window, …) comes from CITYSTREAM_*
# variables or the arguments given to the container. Credentials come from the environment or
# the platform (IRSA / workload identity / instance profile), never from files in the image.
set -euo pipefail

die() { echo "entrypoint: $*" >&2; exit 2; }

processes=${CITYSTREAM_PROCESSES:-1}
threads=${CITYSTREAM_THREADS:-1}
[[ $processes =~ ^[1-9][0-9]*$ ]] || die "CITYSTREAM_PROCESSES must be a positive integer, got '$processes'"
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "CITYSTREAM_THREADS must be a positive integer, got '$threads'"

name=${POD_NAME:-${HOSTNAME:-$(hostname)}}
set_name=$name
if [[ $name =~ ^(.+)-([0-9]+)$ ]]; then
    set_name=${BASH_REMATCH[1]}
    ordinal=$((10#${BASH_REMATCH[2]}))
fi
if [[ -n ${CITYSTREAM_PROCESS:-} ]]; then
    [[ $CITYSTREAM_PROCESS =~ ^[0-9]+$ ]] || die "CITYSTREAM_PROCESS must be a number, got '$CITYSTREAM_PROCESS'"
    process=$((10#$CITYSTREAM_PROCESS))
elif [[ -n ${ordinal:-} ]]; then
    process=$ordinal
elif ((processes == 1)); then
    process=0
else
    die "cannot tell this process's index: set CITYSTREAM_PROCESS or use a pod/host name ending in -<ordinal> (got '$name')"
fi
((process < processes)) ||
    die "process index $process is not below CITYSTREAM_PROCESSES=$processes (the StatefulSet's replicas and CITYSTREAM_PROCESSES must change together: k8s/README.md)"

args=(run -n "$processes" -p "$process" -w "$threads")
if ((processes > 1)); then
    hostfile=${CITYSTREAM_HOSTFILE:-}
    if [[ -z $hostfile || ! -f $hostfile ]]; then
        hostfile=${TMPDIR:-/tmp}/citystream-hosts
        port=${CITYSTREAM_PEER_PORT:-2101}
        if [[ -n ${CITYSTREAM_PEER_PATTERN:-} ]]; then
            pattern=$CITYSTREAM_PEER_PATTERN
        elif [[ -n ${CITYSTREAM_HEADLESS_SERVICE:-} && -n ${POD_NAMESPACE:-} ]]; then
            pattern="$set_name-{i}.$CITYSTREAM_HEADLESS_SERVICE.$POD_NAMESPACE.svc.${CITYSTREAM_CLUSTER_DOMAIN:-cluster.local}:$port"
        else
            pattern="$set_name-{i}:$port"
        fi
        : >"$hostfile"
        for ((i = 0; i < processes; i++)); do echo "${pattern//\{i\}/$i}" >>"$hostfile"; done
    fi
    args+=(-h "$hostfile")
    echo "entrypoint: process $process of $processes ($threads threads), peers: $(paste -sd' ' "$hostfile")" >&2
else
    echo "entrypoint: a single process ($threads threads)" >&2
fi
# citystream would also read these; the flags above are the single source.
unset CITYSTREAM_PROCESS CITYSTREAM_PROCESSES CITYSTREAM_THREADS CITYSTREAM_HOSTFILE
export CITYSTREAM_METRICS_ADDR=${CITYSTREAM_METRICS_ADDR:-0.0.0.0:9100}
exec citystream "${args[@]}" "$@"

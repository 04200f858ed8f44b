#!/usr/bin/env bash
# Container entrypoint: turn the pod's identity into timely's cluster flags, then exec
# `citystream run`.
#
#   -p  CITYSTREAM_PROCESS, else the ordinal at the end of the hostname (citystream-2 → 2),
#       which is what a Kubernetes StatefulSet gives each pod.
#   -n  CITYSTREAM_PROCESSES (default 1).
#   -w  CITYSTREAM_THREADS (read by citystream itself; default 1).
#   -h  CITYSTREAM_HOSTFILE if that file exists; otherwise one is written with one line per
#       process from CITYSTREAM_PEER_PATTERN, where {i} is the process index, e.g.
#       citystream-{i}.citystream.default.svc.cluster.local:2101 (the StatefulSet's pods behind
#       its headless service). Default pattern: citystream-{i}.citystream:2101.
# Everything else (brokers, output, window, …) comes from CITYSTREAM_* variables or the
# arguments given to the container. Credentials come from the environment or the platform
# (IRSA / instance profile), never from files in the image.
set -euo pipefail

processes=${CITYSTREAM_PROCESSES:-1}
if [[ -n ${CITYSTREAM_PROCESS:-} ]]; then
    process=$CITYSTREAM_PROCESS
else
    host=${HOSTNAME:-$(hostname)}
    if [[ $host =~ -([0-9]+)$ ]]; then
        process=${BASH_REMATCH[1]}
    elif ((processes == 1)); then
        process=0
    else
        echo "entrypoint: cannot tell this process's index: set CITYSTREAM_PROCESS or use a hostname ending in -<ordinal> (got $host)" >&2
        exit 2
    fi
fi
if ((process >= processes)); then
    echo "entrypoint: process index $process is not below CITYSTREAM_PROCESSES=$processes (scale the StatefulSet and CITYSTREAM_PROCESSES together)" >&2
    exit 2
fi
unset CITYSTREAM_PROCESS CITYSTREAM_PROCESSES

args=(run -n "$processes" -p "$process")
if ((processes > 1)); then
    hostfile=${CITYSTREAM_HOSTFILE:-}
    if [[ -z $hostfile || ! -f $hostfile ]]; then
        hostfile=/tmp/citystream-hosts
        default_pattern='citystream-{i}.citystream:2101'
        pattern=${CITYSTREAM_PEER_PATTERN:-$default_pattern}
        : >"$hostfile"
        for ((i = 0; i < processes; i++)); do echo "${pattern//\{i\}/$i}" >>"$hostfile"; done
    fi
    unset CITYSTREAM_HOSTFILE
    args+=(-h "$hostfile")
fi
exec citystream "${args[@]}" "$@"

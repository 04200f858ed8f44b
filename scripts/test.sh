#!/usr/bin/env bash
# citystream's test command: everything CI checks, in one go, on a fresh machine.
#
# Usage: scripts/test.sh            (from anywhere; CI runs it through .ci/run)
#
# Steps, stopping at the first failure:
#   1. toolchain  cargo from rustup; adds the rustfmt and clippy components if missing
#   2. fmt        cargo fmt --check
#   3. build      cargo build --all-targets (once; the test step reuses it)
#   4. clippy     cargo clippy --all-targets -- -D warnings
#   5. tests      under scripts/with-services.sh (starts the real Kafka broker and S3 server,
#                 installing them on first use, and always stops them again):
#                 cargo test --all-targets, cargo test --doc
#
# Environment: anything cargo reads (CARGO_TARGET_DIR, ...) and the CITYSTREAM_* variables of
# scripts/services.sh. CITYSTREAM_KEEP_SERVICES=1 leaves the services running afterwards.
set -euo pipefail

SCRIPT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/$(basename -- "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd -- "$(dirname -- "$SCRIPT")/.." && pwd -P)
cd "$REPO_ROOT"

# Section headers show seconds since the start (kept across the re-run under with-services).
export CITYSTREAM_TEST_T0=${CITYSTREAM_TEST_T0:-$EPOCHREALTIME}
T0=$CITYSTREAM_TEST_T0
section() { printf '\n==> %s  [%s s]\n' "$*" "$(awk -v s="$T0" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.0f", e - s }')"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

# The steps that need Kafka and S3; run inside scripts/with-services.sh (see the end).
if [[ ${1:-} == --with-services ]]; then
    [[ -n ${CITYSTREAM_BROKERS:-} ]] || die "CITYSTREAM_BROKERS is not set: run scripts/test.sh, not this step alone"
    section "tests: cargo test --all-targets (Kafka at $CITYSTREAM_BROKERS, S3 at ${AWS_ENDPOINT_URL:-?})"
    cargo test --all-targets
    section "tests: cargo test --doc"
    cargo test --doc
    exit 0
fi
(($# == 0)) || die "unexpected arguments: $* (usage: scripts/test.sh)"

section "toolchain"
if ! command -v cargo >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
if command -v rustup >/dev/null 2>&1; then
    installed=$(rustup component list --installed)
    for component in rustfmt clippy; do
        if ! grep -q "^$component" <<<"$installed"; then
            echo "adding rustup component $component"
            rustup component add "$component"
        fi
    done
fi
cargo fmt --version >/dev/null 2>&1 || die "cargo fmt is missing (rustup component add rustfmt)"
cargo clippy --version >/dev/null 2>&1 || die "cargo clippy is missing (rustup component add clippy)"
cargo --version
rustc --version

section "fmt: cargo fmt --check"
cargo fmt --check || die "formatting differs: run 'cargo fmt' and commit the result"

section "build: cargo build --all-targets"
cargo build --all-targets

section "clippy: cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

section "services: scripts/with-services.sh (Kafka + S3 up, run the tests, down)"
"$REPO_ROOT/scripts/with-services.sh" "$SCRIPT" --with-services

section "all checks passed"

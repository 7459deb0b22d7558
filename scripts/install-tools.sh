#!/usr/bin/env bash
# Installs the CLI tools the deploy tests need, idempotently:
#   promtool  from Debian's `prometheus` package
#   helm (v3) built with the machine's Go from the Go module proxy
#
# Cache: ${PURGER_TOOLS_HOME:-$HOME/.cache/purger-tools}/bin/helm (outside the repository);
# it is rebuilt only when the wanted version changes.
# Quiet when everything is already installed; prints where the tools are at the end.
#
# Env:
#   PURGER_TOOLS_HOME   cache dir (default $HOME/.cache/purger-tools)
#   PURGER_HELM_VERSION helm version to build (default v3.19.0; v3.22.0 is tried once on failure)
set -euo pipefail

TOOLS_HOME="${PURGER_TOOLS_HOME:-$HOME/.cache/purger-tools}"
BIN_DIR="$TOOLS_HOME/bin"
LOG_DIR="$TOOLS_HOME/logs"
HELM_VERSION="${PURGER_HELM_VERSION:-v3.19.0}"
HELM_FALLBACK_VERSION="v3.22.0"

mkdir -p "$BIN_DIR" "$LOG_DIR"

LOG_TAG=install-tools
APT_LOG_DIR="$LOG_DIR"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# One run at a time (make test runs it while builds go on in the background): a second run
# waits, then finds the tools installed.
exec 9>"$TOOLS_HOME/.lock"
flock 9

# ---------------------------------------------------------------- promtool
find_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        command -v promtool
        return 0
    fi
    return 1
}

if ! PROMTOOL="$(find_promtool)"; then
    # Snapshot running prometheus processes so we only stop one the package started.
    before_pids="$(pgrep -x prometheus || true)"
    apt_install prometheus
    PROMTOOL="$(find_promtool)" || fail "promtool not on PATH after installing prometheus" "$LOG_DIR/apt.log"
    # Without systemd the package normally does not start the server; if an init script did,
    # stop it (only the instance(s) that appeared during this install).
    for pid in $(pgrep -x prometheus || true); do
        if ! grep -qx "$pid" <<<"$before_pids"; then
            log "stopping prometheus server (pid $pid) started by the package install"
            kill "$pid" 2>/dev/null || true
        fi
    done
fi
"$PROMTOOL" --version >/dev/null 2>&1 || fail "promtool --version ($PROMTOOL)"

# ---------------------------------------------------------------- helm
# Built like helm's own Makefile does: a plain `go install` leaves the version at "v3.19" and the
# default Kubernetes version that `helm template` / `helm lint` assume at v1.20.0
# (.Capabilities.KubeVersion), which breaks charts with a kubeVersion constraint. The ldflags
# below set the release version and a Kubernetes version derived from the k8s.io/client-go that
# helm's go.mod pins (client-go v0.34.x -> Kubernetes 1.34), exactly as the Makefile does.
HELM="$BIN_DIR/helm"

helm_version_of() {
    [[ -x "$HELM" ]] && "$HELM" version --template '{{.Version}}' 2>/dev/null
}

helm_ok() {
    # Accept the wanted version or the fallback one (a previous run may have needed it).
    local v
    v="$(helm_version_of)" || return 1
    [[ "$v" == "$HELM_VERSION" || "$v" == "$HELM_FALLBACK_VERSION" ]]
}

build_helm() {
    local version="$1" logfile="$LOG_DIR/helm-build-$1.log"
    command -v go >/dev/null 2>&1 || fail "go is not installed (needed to build helm)"
    log "building helm $version with $(go version | awk '{print $3}') (several minutes on 2 cores; log: $logfile)"
    local start=$SECONDS gomod client_go k8s_major k8s_minor ldflags
    : >"$logfile"
    # Fetch the module first to read which client-go it pins.
    if ! gomod="$(cd "$TOOLS_HOME" && go mod download -json "helm.sh/helm/v3@$version" 2>>"$logfile" \
            | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')" || [[ -z "$gomod" || ! -f "$gomod" ]]; then
        log "go mod download helm.sh/helm/v3@$version failed (log: $logfile); last 30 lines:"
        tail -n 30 "$logfile" >&2 || true
        return 1
    fi
    client_go="$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")"
    if [[ "$client_go" =~ ^v0\.([0-9]+)\. ]]; then
        k8s_major=1
        k8s_minor="${BASH_REMATCH[1]}"
    else
        log "could not read the k8s.io/client-go version from $gomod; helm keeps its built-in default"
        k8s_major="" k8s_minor=""
    fi
    ldflags="-w -s -X helm.sh/helm/v3/internal/version.version=$version"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    if [[ -n "$k8s_major" ]]; then
        for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
            ldflags+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
        done
    fi
    if (cd "$TOOLS_HOME" && GOBIN="$BIN_DIR" GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 \
        go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version") >>"$logfile" 2>&1; then
        log "built helm $version (Kubernetes ${k8s_major:-?}.${k8s_minor:-?} capabilities) in $((SECONDS - start)) s"
        return 0
    fi
    log "go install helm $version failed after $((SECONDS - start)) s (log: $logfile); last 30 lines:"
    tail -n 30 "$logfile" >&2 || true
    return 1
}

if ! helm_ok; then
    rm -f "$HELM"
    if ! build_helm "$HELM_VERSION"; then
        if [[ "$HELM_VERSION" != "$HELM_FALLBACK_VERSION" ]]; then
            build_helm "$HELM_FALLBACK_VERSION" \
                || fail "go install helm ($HELM_VERSION and $HELM_FALLBACK_VERSION)" \
                    "$LOG_DIR/helm-build-$HELM_FALLBACK_VERSION.log"
        else
            fail "go install helm $HELM_VERSION" "$LOG_DIR/helm-build-$HELM_VERSION.log"
        fi
    fi
    helm_ok || fail "$HELM version does not report $HELM_VERSION after the build"
fi

echo "helm: $HELM ($(helm_version_of))"
echo "promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n 1))"

# Shared by scripts/cluster.sh, scripts/image.sh, scripts/install-tools.sh and scripts/e2e/run.sh
# (sourced, not run). The sourcing script sets LOG_TAG (the prefix of its log lines) and
# APT_LOG_DIR (where apt's output goes) first.

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }

fail() {
    # fail <step> [log files...]: name the failed step, show the end of each log, exit 1.
    local step="$1"
    shift
    log "FAILED: $step"
    local f
    for f in "$@"; do
        if [[ -f "$f" ]]; then
            log "---- last 40 lines of $f ----"
            tail -n 40 "$f" >&2 || true
        fi
    done
    exit 1
}

SUDO=""
if [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# The scripts run side by side (scripts/e2e/run.sh builds in the background): apt and dpkg,
# which refuse to run twice at once, go through one lock.
APT_LOCK="${PURGER_APT_LOCK:-/tmp/purger-apt.lock}"
APT_UPDATED=0
apt_install() {
    # apt_install <package...>: install the missing ones (apt-get update once per run).
    local missing=() p logfile="$APT_LOG_DIR/apt.log"
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    mkdir -p "$APT_LOG_DIR"
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        log "apt-get update (log: $logfile)"
        $SUDO flock "$APT_LOCK" apt-get update >>"$logfile" 2>&1 || fail "apt-get update" "$logfile"
        APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]} (log: $logfile)"
    DEBIAN_FRONTEND=noninteractive $SUDO flock "$APT_LOCK" \
        apt-get install -y --no-install-recommends "${missing[@]}" \
        >>"$logfile" 2>&1 || fail "apt-get install ${missing[*]}" "$logfile"
}

# key_of <input...>: a short hash of the inputs of a cached build (version strings, flags,
# file hashes): the cache entry is reused only while the key is the same.
key_of() { printf '%s\0' "$@" | sha256sum | cut -c1-16; }

# tree_hash <dir>: a hash of the names and contents of the files under <dir>.
tree_hash() {
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum) | sha256sum | cut -c1-16
}

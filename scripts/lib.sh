# Shared by scripts/cluster.sh and scripts/image.sh (sourced, not run). The sourcing script sets
# LOG_TAG (the prefix of its log lines) and APT_LOG_DIR (where apt's output goes) first.

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
        $SUDO apt-get update >>"$logfile" 2>&1 || fail "apt-get update" "$logfile"
        APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]} (log: $logfile)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}" \
        >>"$logfile" 2>&1 || fail "apt-get install ${missing[*]}" "$logfile"
}

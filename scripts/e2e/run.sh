#!/usr/bin/env bash
# The end-to-end suite with everything it needs, for `make test` and `make e2e`:
#
#   scripts/e2e/run.sh [--label TEXT] [-- COMMAND...]
#
# 1. Starts the slow builds in the background, each in a process group of its own, at low CPU
#    priority (and I/O priority, where the I/O scheduler honours it), with its output in a log: first the cluster's Go binaries (Kubernetes and
#    etcd from the Go module proxy: `scripts/cluster.sh binaries`, which needs only Go); then,
#    once PostgreSQL and Kafka of scripts/services.sh are up and the Debian packages installed,
#    the images (`scripts/image.sh build`, `smoke`, `services`, and their archives for the node).
#    All of them are cached (~/.cache/purger-*), keyed on their inputs: a warm run rebuilds only
#    the purger image, and only when its build context changed.
# 2. Meanwhile runs helm's and promtool's install (scripts/install-tools.sh) and COMMAND in the
#    foreground (`make test`: lint and the unit, integration and deploy tests).
# 3. Waits for the builds, then runs the end-to-end suite (pytest tests/e2e: it starts the
#    cluster, loads the images, installs the chart, and tears the cluster down at the end).
# 4. Tears the cluster down again whatever happened (a trap, also on Ctrl-C and TERM), stops
#    builds still running, and prints what each part took and the end-to-end suite's share.
#
# The first failure stops the run with a non-zero status, naming the step and showing the end
# of its log; nothing is skipped. Env: PURGER_E2E_PYTEST (pytest to run, default .venv/bin/pytest),
# PURGER_E2E_NICE (niceness of the builds, default 10), PURGER_E2E_KEEP=1 (leave the cluster up
# for debugging; never in CI).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPTS="$(cd "$SCRIPT_DIR/.." && pwd)"
REPO="$(cd "$SCRIPTS/.." && pwd)"
PYTEST="${PURGER_E2E_PYTEST:-$REPO/.venv/bin/pytest}"
NICE="${PURGER_E2E_NICE:-10}"
RUN_LOGS="${PURGER_CLUSTER_HOME:-$HOME/.cache/purger-cluster}/logs"
LABEL="the other tests"
while (($#)); do
    case "$1" in
        --label) LABEL="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "usage: $0 [--label TEXT] [-- COMMAND...]" >&2; exit 2 ;;
    esac
done
COMMAND=("$@")

LOG_TAG=$( ((${#COMMAND[@]})) && echo "make test" || echo "make e2e")
APT_LOG_DIR="$RUN_LOGS"
# shellcheck source=scripts/lib.sh
source "$SCRIPTS/lib.sh"
mkdir -p "$RUN_LOGS"
cd "$REPO"

T0=$(date +%s)
declare -A JOB_PID=() JOB_START=() JOB_LOG=()
JOBS=()
TIMES=()        # "label|seconds" lines of the summary, in order
STEP=""         # the step running now (named when it fails)
E2E_SECONDS=""
E2E_START=""
CLUSTER_USED=0
FG_PID=""       # the process group of the foreground step
FG_LABEL=""     # and what it is

now() { date +%s; }

in_group() {
    # in_group <command...>: run it in a process group of its own and wait for it, so that a
    # signal to this script (Ctrl-C, a cancelled CI job) stops it and all it started at once,
    # then tears down: bash would run the traps only after a foreground command ends.
    setsid "$@" </dev/null &
    FG_PID=$!
    local status=0
    wait "$FG_PID" || status=$?
    FG_PID=""
    return "$status"
}

timed() {
    # timed <label> <command...>: run it (in_group), record how long it took.
    local label="$1" start
    shift
    STEP="$label"
    FG_LABEL="$label"
    start=$(now)
    in_group "$@"
    TIMES+=("$label|$(($(now) - start))")
}

start_job() {
    # start_job <name> <command...>: in the background, in its own session and process group
    # (so that it can be stopped as a whole), niced, output to a log; the log's last line
    # records when it ended. A failure signals this script (USR1) at once: the run stops then,
    # not after the foreground tests.
    local name="$1" log="$RUN_LOGS/background-$1.log"
    shift
    : >"$log"
    JOB_LOG[$name]="$log"
    JOB_START[$name]=$(now)
    # In a script (no job control) a background child is no group leader: setsid needs no fork,
    # so $! is the new session's and process group's id.
    # shellcheck disable=SC2016 # expanded by the inner shell
    RUN_PID=$$ setsid nice -n "$NICE" ionice -c 2 -n 7 bash -c '"$@"; status=$?
        echo "ended $(date +%s) status $status"
        ((status == 0)) || kill -USR1 "$RUN_PID" 2>/dev/null
        exit $status' _ "$@" >"$log" 2>&1 </dev/null &
    JOB_PID[$name]=$!
    JOBS+=("$name")
    log "started in the background: $name (log: $log)"
}

job_failed() {
    # USR1 from a background build that failed: which one, its log, stop.
    local name
    for name in "${JOBS[@]}"; do
        if grep -Eq '^ended [0-9]+ status [1-9]' "${JOB_LOG[$name]}"; then
            STEP="background build: $name"
            sed -e '/^ended [0-9]* status [0-9]*$/d' -e 's/^/    /' "${JOB_LOG[$name]}" >&2
            log "background build $name FAILED; its log: ${JOB_LOG[$name]}"
        fi
    done
    exit 1
}

stop_jobs() {
    local name pid
    for name in "${JOBS[@]}"; do
        pid="${JOB_PID[$name]}"
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping the background build $name (process group $pid)"
            kill -TERM -- "-$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}

wait_job() {
    # wait_job <name>: wait for it; print its log; fail loudly when it failed.
    local name="$1" status=0 start ended took
    start=$(now)
    STEP="background build: $name"
    wait "${JOB_PID[$name]}" || status=$?
    ended="$(awk '$1 == "ended" {print $2}' "${JOB_LOG[$name]}" | tail -n 1)"
    took=$((${ended:-$(now)} - ${JOB_START[$name]}))
    sed -e '/^ended [0-9]* status [0-9]*$/d' -e 's/^/    /' "${JOB_LOG[$name]}" >&2
    if ((status != 0)); then
        log "background build $name FAILED (exit $status) after $took s; its log: ${JOB_LOG[$name]}"
        exit "$status"
    fi
    TIMES+=("waiting for the background build of the $name (which took $took s)|$(($(now) - start))")
}

summary() {
    local status="$1" total line label secs
    total=$(($(now) - T0))
    log "------------------------------------------------------------------------------"
    if ((status == 0)); then
        log "PASSED in $total s ($((total / 60)) min $((total % 60)) s):"
    else
        log "FAILED (exit $status) in $total s, at: $STEP"
    fi
    for line in "${TIMES[@]}"; do
        label="${line%|*}"
        secs="${line##*|}"
        log "$(printf '  %5d s  %s' "$secs" "$label")"
    done
    if [[ -n "$E2E_SECONDS" ]]; then
        log "$(printf 'end-to-end suite (tests/e2e, with cluster start and teardown): %d s = %d%% of %d s' \
            "$E2E_SECONDS" $((100 * E2E_SECONDS / (total > 0 ? total : 1))) "$total")"
    elif [[ -n "$E2E_START" ]]; then
        log "end-to-end suite: stopped after $(($(now) - E2E_START)) s"
    else
        log "end-to-end suite: not run"
    fi
}

finish() {
    local status=$?
    trap - EXIT INT TERM USR1
    if [[ -n "$FG_PID" ]] && kill -0 "$FG_PID" 2>/dev/null; then
        log "stopping: $FG_LABEL (process group $FG_PID)"
        kill -TERM -- "-$FG_PID" 2>/dev/null || true
        wait "$FG_PID" 2>/dev/null || true
    fi
    stop_jobs
    if ((CLUSTER_USED)) && [[ "${PURGER_E2E_KEEP:-0}" != 1 ]]; then
        # The suite's fixture tears down too; this catches a killed pytest. Idempotent.
        "$SCRIPTS/cluster.sh" down || { log "cluster teardown FAILED: something is left behind"; ((status)) || status=1; }
    elif ((CLUSTER_USED)); then
        log "PURGER_E2E_KEEP=1: the cluster stays up (scripts/cluster.sh down removes it)"
    fi
    summary "$status"
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap job_failed USR1

# ---------------------------------------------------------------------------------- builds
start_job "cluster binaries" "$SCRIPTS/cluster.sh" binaries
timed "PostgreSQL and Kafka on loopback (scripts/services.sh up)" "$SCRIPTS/services.sh" up
timed "Debian packages of the cluster and the images" \
    bash -c '"$1" deps && "$2" deps' _ "$SCRIPTS/cluster.sh" "$SCRIPTS/image.sh"
# shellcheck disable=SC2016 # expanded by the inner shell
read -r -a IMAGE_NAMES < <(bash -c 'eval "$("$1" names)"
    echo "$PURGER_IMAGE $PURGER_E2E_POSTGRES_IMAGE $PURGER_E2E_KAFKA_IMAGE"' _ "$SCRIPTS/image.sh")
# shellcheck disable=SC2016 # expanded by the inner shell
start_job images bash -c 'set -e
    "$1/image.sh" build
    "$1/image.sh" smoke
    "$1/image.sh" services
    shift
    "$0/cluster.sh" archive "$@"' "$SCRIPTS" "$SCRIPTS" "${IMAGE_NAMES[@]}"

# ---------------------------------------------------------------------------------- foreground
timed "helm and promtool (scripts/install-tools.sh)" "$SCRIPTS/install-tools.sh"
if ((${#COMMAND[@]})); then
    log "running $LABEL while the builds go on: ${COMMAND[*]}"
    timed "$LABEL" "${COMMAND[@]}"
fi

# ---------------------------------------------------------------------------------- e2e
for job in "${JOBS[@]}"; do wait_job "$job"; done
timed "cluster build check (pause image, cached binaries)" "$SCRIPTS/cluster.sh" build
STEP="end-to-end suite (tests/e2e)"
FG_LABEL="$STEP"
log "end-to-end suite: $PYTEST tests/e2e"
CLUSTER_USED=1
E2E_START=$(now)
status=0
in_group "$PYTEST" tests/e2e -q -p no:cacheprovider || status=$?
E2E_SECONDS=$(($(now) - E2E_START))
TIMES+=("end-to-end suite|$E2E_SECONDS")
if ((status != 0)); then
    log "end-to-end suite FAILED (pytest exit $status)"
    exit "$status"
fi

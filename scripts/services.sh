#!/usr/bin/env bash
# Real services for the integration tests: PostgreSQL (Debian's cluster tools) and a single-node
# KRaft Apache Kafka broker assembled from Maven Central. No Docker, no systemd.
#
#   scripts/services.sh up       start both (idempotent; fast no-op + readiness re-check when up)
#   scripts/services.sh down     stop Kafka and the PostgreSQL cluster
#   scripts/services.sh restart kafka|postgres
#                                stop one service, start it again and wait until it is ready
#                                (idempotent: a stopped service is just started; `make soak`)
#   scripts/services.sh status   print each service's state and address; exit 1 if any is down
#   scripts/services.sh env      print the shell exports the tests read
#                                (eval "$(scripts/services.sh env)")
#
# State and caches live outside the repository, under
#   ${PURGER_SERVICES_HOME:-$HOME/.cache/purger-services}
#     kafka-<version>/libs/      broker class path (Maven Central, cached per version)
#     kafka/                     broker state: server.properties, cluster.id, kafka.pid,
#                                data/ (log.dirs), logs/server.log, logs/kafka.out
#     logs/                      logs of this script's own steps (maven, apt, format, psql)
#
# Env:
#   PURGER_SERVICES_HOME          state/cache dir (see above)
#   PURGER_KAFKA_VERSION          default 4.3.1 (org.apache.kafka:kafka_2.13)
#   PURGER_KAFKA_PORT             default 19092 (PLAINTEXT, 127.0.0.1)
#   PURGER_KAFKA_CONTROLLER_PORT  default 19093 (CONTROLLER, 127.0.0.1)
#   PURGER_KAFKA_HEAP_OPTS        default "-Xms256m -Xmx1g"
#   PURGER_KAFKA_READY_TIMEOUT    seconds, default 120
#   PURGER_PG_PORT                default 5432 (127.0.0.1)
#   PURGER_PG_READY_TIMEOUT       seconds, default 60
#   PURGER_SERVICES_PYTHON        Python for the Kafka readiness probe (default: .venv/bin/python,
#                                 else python3; with kafka-python it also does a list_topics)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

SERVICES_HOME="${PURGER_SERVICES_HOME:-$HOME/.cache/purger-services}"
STEP_LOG_DIR="$SERVICES_HOME/logs"

KAFKA_VERSION="${PURGER_KAFKA_VERSION:-4.3.1}"
KAFKA_PORT="${PURGER_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${PURGER_KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP_OPTS="${PURGER_KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
KAFKA_READY_TIMEOUT="${PURGER_KAFKA_READY_TIMEOUT:-120}"
KAFKA_POM="$SCRIPT_DIR/kafka/pom.xml"
KAFKA_LOG4J="$SCRIPT_DIR/kafka/log4j2.xml"
KAFKA_DIST="$SERVICES_HOME/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_DIST/libs"
KAFKA_LIBS_MARKER="$KAFKA_DIST/.complete"
KAFKA_STATE="$SERVICES_HOME/kafka"
KAFKA_DATA="$KAFKA_STATE/data"
KAFKA_LOGS="$KAFKA_STATE/logs"
KAFKA_PROPS="$KAFKA_STATE/server.properties"
KAFKA_PID_FILE="$KAFKA_STATE/kafka.pid"
KAFKA_CLUSTER_ID_FILE="$KAFKA_STATE/cluster.id"
KAFKA_FORMAT_KEY_FILE="$KAFKA_STATE/format.key"
KAFKA_OUT="$KAFKA_LOGS/kafka.out"
KAFKA_SERVER_LOG="$KAFKA_LOGS/server.log"
KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

PG_PORT="${PURGER_PG_PORT:-5432}"
PG_READY_TIMEOUT="${PURGER_PG_READY_TIMEOUT:-60}"
PG_CLUSTER="main"
PG_USER="purger"
PG_PASSWORD="purger"
PG_DB="purger"
DATABASE_URL="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"

# ------------------------------------------------------------------------------------ helpers
log() { printf '[services] %s\n' "$*" >&2; }

show_tail() {
    local f="$1"
    if [[ -f "$f" ]]; then
        log "---- last 30 lines of $f ----"
        tail -n 30 "$f" >&2 || true
        log "---- end of $f ----"
    else
        log "(log file $f does not exist)"
    fi
}

# fail <step> [logfile...]: say which step failed, where its logs are, and print their tails.
fail() {
    local step="$1"
    shift
    log "FAILED: $step"
    local f
    for f in "$@"; do
        log "log file: $f"
    done
    for f in "$@"; do
        show_tail "$f"
    done
    exit 1
}

SUDO=""
if [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi

as_postgres() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        sudo -u postgres -- "$@"
    fi
}

APT_UPDATED=0
apt_install() {
    local logfile="$STEP_LOG_DIR/apt.log"
    if [[ "$APT_UPDATED" -eq 0 ]]; then
        log "apt-get update (log: $logfile)"
        $SUDO apt-get update >>"$logfile" 2>&1 || fail "apt-get update" "$logfile"
        APT_UPDATED=1
    fi
    log "apt-get install $* (log: $logfile)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "$@" >>"$logfile" 2>&1 \
        || fail "apt-get install $*" "$logfile"
}

port_open() {
    # port_open <port>: true when something accepts TCP connections on 127.0.0.1:<port>
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

python_bin() {
    # PURGER_SERVICES_PYTHON, else the project's venv when present (it has kafka-python), else
    # the system Python.
    if [[ -n "${PURGER_SERVICES_PYTHON:-}" ]]; then
        echo "$PURGER_SERVICES_PYTHON"
    elif [[ -x "$REPO_DIR/.venv/bin/python" ]]; then
        echo "$REPO_DIR/.venv/bin/python"
    elif command -v python3 >/dev/null 2>&1; then
        command -v python3
    else
        return 1
    fi
}

# ------------------------------------------------------------------------------------ PostgreSQL
pg_version() {
    # Highest installed server version with a postgres binary, e.g. "15".
    local v best=""
    for bin in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x "$bin" ]] || continue
        v="$(basename "$(dirname "$(dirname "$bin")")")"
        if [[ -z "$best" ]] || ((${v%%.*} > ${best%%.*})); then best="$v"; fi
    done
    [[ -n "$best" ]] && echo "$best"
}

pg_ensure_installed() {
    if command -v pg_ctlcluster >/dev/null 2>&1 && command -v pg_createcluster >/dev/null 2>&1 \
        && pg_version >/dev/null; then
        return 0
    fi
    log "PostgreSQL server not installed (only the client, or nothing): installing Debian's postgresql"
    apt_install postgresql
    pg_version >/dev/null || fail "PostgreSQL install: no /usr/lib/postgresql/*/bin/postgres afterwards" \
        "$STEP_LOG_DIR/apt.log"
}

pg_cluster_exists() { [[ -f "/etc/postgresql/$1/$PG_CLUSTER/postgresql.conf" ]]; }

pg_cluster_running() {
    # pg_ctlcluster status: exit 0 running, 3 stopped (anything else: treat as not running).
    pg_ctlcluster "$1" "$PG_CLUSTER" status >/dev/null 2>&1
}

pg_logfile() {
    echo "/var/log/postgresql/postgresql-$1-$PG_CLUSTER.log"
}

pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1; }

pg_up() {
    pg_ensure_installed
    local ver logfile steplog="$STEP_LOG_DIR/postgres.log"
    ver="$(pg_version)"
    logfile="$(pg_logfile "$ver")"

    # Fast path: running, ready, and the role works over TCP with its password.
    if pg_cluster_running "$ver" && pg_ready && pg_check_login 2>/dev/null; then
        log "PostgreSQL $ver already up on 127.0.0.1:$PG_PORT"
        return 0
    fi

    if ! pg_cluster_exists "$ver"; then
        log "creating PostgreSQL $ver cluster '$PG_CLUSTER' on port $PG_PORT (log: $steplog)"
        $SUDO pg_createcluster "$ver" "$PG_CLUSTER" -p "$PG_PORT" >>"$steplog" 2>&1 \
            || fail "pg_createcluster $ver $PG_CLUSTER" "$steplog"
    fi

    # Port (pg_conftool: pg_lsclusters/pg_ctlcluster read it from postgresql.conf) and listen
    # address (a conf.d drop-in: pg_conftool would write 127.0.0.1 unquoted, a syntax error).
    local cur_port need_restart=0
    cur_port="$(pg_conftool -s "$ver" "$PG_CLUSTER" show port 2>/dev/null || echo 5432)"
    if [[ "$cur_port" != "$PG_PORT" ]]; then
        log "setting PostgreSQL $ver/$PG_CLUSTER port $cur_port -> $PG_PORT"
        $SUDO pg_conftool "$ver" "$PG_CLUSTER" set port "$PG_PORT" >>"$steplog" 2>&1 \
            || fail "pg_conftool set port" "$steplog"
        need_restart=1
    fi
    local dropin="/etc/postgresql/$ver/$PG_CLUSTER/conf.d/purger-services.conf"
    local want_dropin="# Written by scripts/services.sh (purger test services).
listen_addresses = '127.0.0.1'"
    if [[ "$(cat "$dropin" 2>/dev/null || true)" != "$want_dropin" ]]; then
        $SUDO install -d -o postgres -g postgres "$(dirname "$dropin")"
        printf '%s\n' "$want_dropin" | $SUDO tee "$dropin" >/dev/null
        need_restart=1
    fi
    # TCP login with a password from 127.0.0.1 (Debian's default pg_hba already has a
    # scram-sha-256 line for 127.0.0.1/32; add one when a custom hba lacks it).
    local hba="/etc/postgresql/$ver/$PG_CLUSTER/pg_hba.conf"
    if ! grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+(scram-sha-256|md5)' "$hba"; then
        log "adding a password (scram-sha-256) rule for 127.0.0.1/32 to $hba"
        printf 'host    all             all             127.0.0.1/32            scram-sha-256\n' \
            | $SUDO tee -a "$hba" >/dev/null
        need_restart=1
    fi

    # The socket dir lives on a tmpfs that may be gone after a machine restart.
    $SUDO install -d -o postgres -g postgres -m 2775 /var/run/postgresql

    if pg_cluster_running "$ver" && [[ "$need_restart" -eq 1 ]]; then
        log "restarting PostgreSQL $ver/$PG_CLUSTER to apply settings"
        $SUDO pg_ctlcluster "$ver" "$PG_CLUSTER" restart -m fast >>"$steplog" 2>&1 \
            || fail "pg_ctlcluster $ver $PG_CLUSTER restart" "$steplog" "$logfile"
    elif ! pg_cluster_running "$ver"; then
        log "starting PostgreSQL $ver/$PG_CLUSTER on 127.0.0.1:$PG_PORT (server log: $logfile)"
        $SUDO pg_ctlcluster "$ver" "$PG_CLUSTER" start >>"$steplog" 2>&1 \
            || fail "pg_ctlcluster $ver $PG_CLUSTER start" "$steplog" "$logfile"
    fi

    local deadline=$((SECONDS + PG_READY_TIMEOUT))
    until pg_ready; do
        if ((SECONDS >= deadline)); then
            fail "PostgreSQL did not accept connections on 127.0.0.1:$PG_PORT within ${PG_READY_TIMEOUT}s" \
                "$logfile" "$steplog"
        fi
        sleep 0.5
    done

    # Role purger/purger (SUPERUSER: the tests create databases and templates and tamper with
    # an audit table as a superuser) and database purger owned by it.
    log "ensuring role '$PG_USER' (superuser) and database '$PG_DB'"
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$PG_PORT" -d postgres \
        >>"$steplog" 2>&1 <<SQL || fail "creating role $PG_USER / database $PG_DB with psql" "$steplog" "$logfile"
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') THEN
        CREATE ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
    ELSE
        ALTER ROLE $PG_USER WITH LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB')\gexec
ALTER DATABASE $PG_DB OWNER TO $PG_USER;
SQL

    pg_check_login || fail "password login over TCP: psql $DATABASE_URL -c 'select 1'" "$steplog" "$logfile"
    log "PostgreSQL $ver up: $DATABASE_URL"
}

pg_check_login() {
    local out
    out="$(PGCONNECT_TIMEOUT=5 psql -X -q -t -A "$DATABASE_URL" -c 'select 1' 2>>"$STEP_LOG_DIR/postgres.log")" \
        && [[ "$out" == 1 ]]
}

pg_down() {
    local ver
    if ! ver="$(pg_version)"; then
        log "PostgreSQL not installed: nothing to stop"
        return 0
    fi
    if pg_cluster_exists "$ver" && pg_cluster_running "$ver"; then
        log "stopping PostgreSQL $ver/$PG_CLUSTER"
        $SUDO pg_ctlcluster "$ver" "$PG_CLUSTER" stop -m fast >>"$STEP_LOG_DIR/postgres.log" 2>&1 \
            || fail "pg_ctlcluster $ver $PG_CLUSTER stop" "$STEP_LOG_DIR/postgres.log" "$(pg_logfile "$ver")"
    else
        log "PostgreSQL $ver/$PG_CLUSTER not running"
    fi
}

pg_status() {
    local ver
    if ver="$(pg_version)" && pg_cluster_exists "$ver" && pg_cluster_running "$ver" && pg_ready; then
        echo "postgresql: running  (PostgreSQL $ver/$PG_CLUSTER, 127.0.0.1:$PG_PORT, $DATABASE_URL)"
        return 0
    fi
    echo "postgresql: DOWN     (expected at 127.0.0.1:$PG_PORT)"
    return 1
}

# ------------------------------------------------------------------------------------ Kafka
ensure_java_maven() {
    if ! command -v java >/dev/null 2>&1; then
        log "java not found: installing Debian's default-jre-headless"
        apt_install default-jre-headless
    fi
    local major
    major="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}')"
    if [[ -z "$major" || "${major%%.*}" -lt 17 ]]; then
        fail "Kafka $KAFKA_VERSION needs Java 17+, found '${major:-unknown}' ($(command -v java))"
    fi
}

pom_hash() { sha256sum "$KAFKA_POM" | awk '{print $1}'; }

kafka_assemble() {
    # Broker class path from Maven Central, cached per Kafka version (and pom content).
    local want
    want="$(pom_hash)"
    if [[ -f "$KAFKA_LIBS_MARKER" && "$(cat "$KAFKA_LIBS_MARKER")" == "$want" ]] \
        && compgen -G "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
        return 0
    fi
    if ! command -v mvn >/dev/null 2>&1; then
        log "mvn not found: installing Debian's maven"
        apt_install maven
    fi
    local logfile="$STEP_LOG_DIR/maven-kafka-$KAFKA_VERSION.log" tmp="$KAFKA_DIST/libs.tmp.$$"
    log "assembling Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS (log: $logfile)"
    mkdir -p "$KAFKA_DIST"
    rm -rf "$tmp"
    local start=$SECONDS
    mvn -B -q -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
        -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$tmp" >"$logfile" 2>&1 \
        || { rm -rf "$tmp"; fail "mvn dependency:copy-dependencies (Kafka $KAFKA_VERSION)" "$logfile"; }
    [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] \
        || { rm -rf "$tmp"; fail "Kafka jar kafka_2.13-$KAFKA_VERSION.jar missing after mvn" "$logfile"; }
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    echo "$want" >"$KAFKA_LIBS_MARKER"
    log "Kafka $KAFKA_VERSION assembled ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars) in $((SECONDS - start)) s"
}

kafka_java() {
    # kafka_java <main class> [args...]: run a Kafka class with the cached class path.
    java -Dlog4j2.configurationFile="$KAFKA_STATE/log4j2.xml" -Dkafka.logs.dir="$KAFKA_LOGS" \
        -Djava.awt.headless=true -cp "$KAFKA_LIBS/*" "$@"
}

kafka_write_config() {
    mkdir -p "$KAFKA_DATA" "$KAFKA_LOGS"
    cp "$KAFKA_LOG4J" "$KAFKA_STATE/log4j2.xml"
    cat >"$KAFKA_PROPS.tmp" <<EOF
# Generated by scripts/services.sh: single-node KRaft broker for the purger's integration tests.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
log.dirs=$KAFKA_DATA
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
    mv "$KAFKA_PROPS.tmp" "$KAFKA_PROPS"
}

kafka_format() {
    # Format the data dir once. The data dir (meta.properties) is authoritative for the cluster
    # id; a data dir without meta.properties (broken earlier run), or formatted for another
    # version/listener layout, is wiped and formatted anew (it only holds test data).
    local key meta="$KAFKA_DATA/meta.properties" logfile="$STEP_LOG_DIR/kafka-format.log"
    key="kafka=$KAFKA_VERSION port=$KAFKA_PORT controller=$KAFKA_CONTROLLER_PORT data=$KAFKA_DATA"
    if [[ -f "$meta" ]]; then
        if [[ -f "$KAFKA_FORMAT_KEY_FILE" && "$(cat "$KAFKA_FORMAT_KEY_FILE")" == "$key" ]]; then
            local cid
            cid="$(sed -n 's/^cluster\.id=//p' "$meta")"
            if [[ -n "$cid" && "$cid" != "$(cat "$KAFKA_CLUSTER_ID_FILE" 2>/dev/null || true)" ]]; then
                log "cluster id file disagrees with $meta: keeping the data dir's id $cid"
                echo "$cid" >"$KAFKA_CLUSTER_ID_FILE"
            fi
            return 0
        fi
        log "Kafka data dir was formatted for another version/listeners: wiping $KAFKA_DATA"
    elif [[ -n "$(ls -A "$KAFKA_DATA" 2>/dev/null)" ]]; then
        log "Kafka data dir $KAFKA_DATA has no meta.properties (broken earlier run): wiping it"
    fi
    rm -rf "$KAFKA_DATA"
    mkdir -p "$KAFKA_DATA"
    local cid
    cid="$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$logfile" | tail -n 1)" \
        || fail "kafka.tools.StorageTool random-uuid" "$logfile"
    [[ "$cid" =~ ^[A-Za-z0-9_-]{22}$ ]] || fail "kafka.tools.StorageTool random-uuid printed '$cid'" "$logfile"
    echo "$cid" >"$KAFKA_CLUSTER_ID_FILE"
    log "formatting Kafka storage (cluster id $cid, log: $logfile)"
    kafka_java kafka.tools.StorageTool format --standalone --cluster-id "$cid" --config "$KAFKA_PROPS" \
        >>"$logfile" 2>&1 || fail "kafka.tools.StorageTool format --standalone" "$logfile"
    echo "$key" >"$KAFKA_FORMAT_KEY_FILE"
}

kafka_pid() {
    # Prints the broker's pid when it runs; clears a stale pid file.
    local pid=""
    if [[ -f "$KAFKA_PID_FILE" ]]; then
        pid="$(cat "$KAFKA_PID_FILE" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
            && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $KAFKA_PROPS"; then
            echo "$pid"
            return 0
        fi
        log "removing stale Kafka pid file $KAFKA_PID_FILE (pid '${pid}' is not our broker)"
        rm -f "$KAFKA_PID_FILE"
    fi
    # Pid file lost but our broker (identified by its own properties path) still runs?
    pid="$(pgrep -f -- "kafka.Kafka $KAFKA_PROPS" | head -n 1 || true)"
    if [[ -n "$pid" ]]; then
        echo "$pid" >"$KAFKA_PID_FILE"
        echo "$pid"
        return 0
    fi
    return 1
}

# Kafka protocol probe without third-party packages: ApiVersions v0 (every broker must answer
# it) on the PLAINTEXT listener, which a KRaft broker opens only once it serves requests. When
# kafka-python is importable (project venv), also a real metadata round trip (list_topics).
kafka_probe() {
    local py
    py="$(python_bin)" || return 1
    "$py" - "$KAFKA_PORT" <<'PY' 2>/dev/null
import socket, struct, sys
port = int(sys.argv[1])
try:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.settimeout(3)
        client = b"purger-services"
        body = struct.pack(">hhih", 18, 0, 7, len(client)) + client
        s.sendall(struct.pack(">i", len(body)) + body)
        buf = b""
        while len(buf) < 4:
            chunk = s.recv(4 - len(buf))
            if not chunk:
                sys.exit(1)
            buf += chunk
        (size,) = struct.unpack(">i", buf)
        data = b""
        while len(data) < size:
            chunk = s.recv(size - len(data))
            if not chunk:
                sys.exit(1)
            data += chunk
        corr, err = struct.unpack(">ih", data[:6])
        if corr != 7 or err != 0:
            sys.exit(1)
except OSError:
    sys.exit(1)
try:
    import logging
    logging.disable(logging.CRITICAL)
    from kafka import KafkaAdminClient
except Exception:
    sys.exit(0)  # no kafka-python here: the ApiVersions answer has to do
try:
    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=5000,
                             client_id="purger-services")
    try:
        admin.list_topics()
    finally:
        admin.close()
except Exception:
    sys.exit(1)
PY
}

kafka_up() {
    local pid
    if pid="$(kafka_pid)"; then
        if kafka_probe; then
            log "Kafka already up (pid $pid) on $KAFKA_BOOTSTRAP"
            return 0
        fi
        log "Kafka process $pid runs but does not answer yet: waiting"
        kafka_wait_ready "$pid"
        return 0
    fi

    ensure_java_maven
    mkdir -p "$KAFKA_STATE" "$STEP_LOG_DIR"
    local p
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$p"; then
            fail "port 127.0.0.1:$p is taken by another process (not our Kafka broker); free it or set PURGER_KAFKA_PORT / PURGER_KAFKA_CONTROLLER_PORT"
        fi
    done
    kafka_assemble
    kafka_write_config
    kafka_format

    log "starting Kafka $KAFKA_VERSION on $KAFKA_BOOTSTRAP (server log: $KAFKA_SERVER_LOG, stdout: $KAFKA_OUT)"
    # Start markers, so a log tail after a failure shows where this attempt begins.
    local marker
    marker="==== $(date -u +%FT%TZ) scripts/services.sh: starting kafka.Kafka $KAFKA_PROPS"
    echo "$marker" >>"$KAFKA_OUT"
    echo "$marker" >>"$KAFKA_SERVER_LOG"
    # shellcheck disable=SC2086  # heap options are a word list
    nohup java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_STATE/log4j2.xml" -Dkafka.logs.dir="$KAFKA_LOGS" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" >>"$KAFKA_OUT" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$KAFKA_PID_FILE"
    kafka_wait_ready "$pid"
}

kafka_wait_ready() {
    local pid="$1" start=$SECONDS deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$KAFKA_PID_FILE"
            fail "Kafka broker (pid $pid) exited during startup" "$KAFKA_OUT" "$KAFKA_SERVER_LOG"
        fi
        if port_open "$KAFKA_PORT" && kafka_probe; then
            break
        fi
        if ((SECONDS >= deadline)); then
            fail "Kafka broker (pid $pid) did not answer on $KAFKA_BOOTSTRAP within ${KAFKA_READY_TIMEOUT}s (it is still running; 'scripts/services.sh down' stops it)" \
                "$KAFKA_OUT" "$KAFKA_SERVER_LOG"
        fi
        sleep 1
    done
    log "Kafka up (pid $pid) on $KAFKA_BOOTSTRAP, ready after $((SECONDS - start)) s"
}

kafka_down() {
    local pid
    if ! pid="$(kafka_pid)"; then
        log "Kafka not running"
        return 0
    fi
    log "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "Kafka (pid $pid) still running after 60 s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        fail "could not stop Kafka (pid $pid)" "$KAFKA_SERVER_LOG"
    fi
    rm -f "$KAFKA_PID_FILE"
}

kafka_status() {
    local pid
    if pid="$(kafka_pid 2>/dev/null)" && kafka_probe; then
        echo "kafka:      running  (Kafka $KAFKA_VERSION KRaft, pid $pid, bootstrap $KAFKA_BOOTSTRAP, controller 127.0.0.1:$KAFKA_CONTROLLER_PORT)"
        return 0
    fi
    if [[ -n "${pid:-}" ]]; then
        echo "kafka:      NOT READY (pid $pid runs but $KAFKA_BOOTSTRAP does not answer; log $KAFKA_SERVER_LOG)"
    else
        echo "kafka:      DOWN     (expected at $KAFKA_BOOTSTRAP)"
    fi
    return 1
}

# ------------------------------------------------------------------------------------ commands
print_env() {
    echo "export PURGER_TEST_KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
    echo "export PURGER_TEST_DATABASE_URL=$DATABASE_URL"
}

usage() {
    echo "usage: $0 up|down|status|env" >&2
    echo "       $0 restart kafka|postgres" >&2
    exit 2
}

restart() {
    # One service down and up again, through the same steps as `down` and `up`; returns once
    # it answers (or fails with the step and its log, like `up`).
    mkdir -p "$STEP_LOG_DIR"
    local start=$SECONDS
    case "$1" in
    kafka)
        kafka_down
        kafka_up
        ;;
    postgres | postgresql)
        pg_down
        pg_up
        ;;
    *) usage ;;
    esac
    log "$1 restarted in $((SECONDS - start)) s"
}

main() {
    if [[ $# -eq 2 && "$1" == restart ]]; then
        restart "$2"
        return
    fi
    [[ $# -eq 1 ]] || usage
    case "$1" in
    up)
        mkdir -p "$STEP_LOG_DIR"
        local start=$SECONDS
        pg_up
        kafka_up
        log "all services up in $((SECONDS - start)) s; for the tests: eval \"\$($0 env)\""
        ;;
    down)
        mkdir -p "$STEP_LOG_DIR"
        kafka_down
        pg_down
        ;;
    status)
        local rc=0
        pg_status || rc=1
        kafka_status || rc=1
        return "$rc"
        ;;
    env) print_env ;;
    *) usage ;;
    esac
}

main "$@"

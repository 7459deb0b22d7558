#!/usr/bin/env bash
# What the comparisons of `make bench` need besides the project's own services, installed from
# the project's registries and cached outside the repository:
#
#   - Kafka Connect (org.apache.kafka:connect-runtime at the broker's version) from Maven Central
#     into $BENCH_CACHE/connect-<version>/libs;
#   - the Debezium JDBC sink plugin archive (io.debezium:debezium-connector-jdbc, tar.gz:plugin)
#     unpacked into $BENCH_CACHE/connect-plugins/<version>/;
#   - Debian's pg_partman for PostgreSQL 15 (postgresql-15-partman).
#
# Idempotent: a complete cache is reused. Prints nothing on success but its log lines.
#
#   scripts/bench/setup.sh [connect] [partman]     (both when none is named)
#
# Env: PURGER_KAFKA_VERSION (default 4.3.1, as scripts/services.sh), BENCH_DEBEZIUM_VERSION
# (default 3.6.0.Final: 3.6.1.Final's plugin archive was refused by Central), BENCH_CACHE
# (default ~/.cache/purger-bench), BENCH_PG_MAJOR (default 15).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG_TAG="bench-setup"
BENCH_CACHE="${BENCH_CACHE:-$HOME/.cache/purger-bench}"
APT_LOG_DIR="$BENCH_CACHE/logs"
# shellcheck source=../lib.sh
source "$SCRIPT_DIR/../lib.sh"

KAFKA_VERSION="${PURGER_KAFKA_VERSION:-4.3.1}"
DEBEZIUM_VERSION="${BENCH_DEBEZIUM_VERSION:-3.6.0.Final}"
PG_MAJOR="${BENCH_PG_MAJOR:-15}"
POM="$SCRIPT_DIR/connect/pom.xml"
M2="$BENCH_CACHE/m2"

need_maven() {
    command -v mvn >/dev/null 2>&1 || apt_install maven
    command -v java >/dev/null 2>&1 || apt_install default-jre-headless
}

connect_runtime() {
    local dist="$BENCH_CACHE/connect-$KAFKA_VERSION" want
    want="$(sha256sum "$POM" | awk '{print $1}')"
    if [[ -f "$dist/.complete" && "$(cat "$dist/.complete")" == "$want" ]]; then
        return 0
    fi
    need_maven
    local logfile="$APT_LOG_DIR/maven-connect-$KAFKA_VERSION.log" tmp="$dist/libs.tmp.$$"
    mkdir -p "$dist" "$APT_LOG_DIR"
    rm -rf "$tmp"
    log "resolving Kafka Connect $KAFKA_VERSION from Maven Central into $dist (log: $logfile)"
    mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$M2" -f "$POM" \
        dependency:copy-dependencies -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$tmp" \
        >"$logfile" 2>&1 || { rm -rf "$tmp"; fail "mvn (connect-runtime $KAFKA_VERSION)" "$logfile"; }
    [[ -f "$tmp/connect-runtime-$KAFKA_VERSION.jar" ]] \
        || { rm -rf "$tmp"; fail "connect-runtime-$KAFKA_VERSION.jar missing after mvn" "$logfile"; }
    rm -rf "$dist/libs"
    mv "$tmp" "$dist/libs"
    echo "$want" >"$dist/.complete"
}

debezium_plugin() {
    local dir="$BENCH_CACHE/connect-plugins/$DEBEZIUM_VERSION"
    if [[ -f "$dir/.complete" ]]; then
        return 0
    fi
    need_maven
    local logfile="$APT_LOG_DIR/maven-debezium-$DEBEZIUM_VERSION.log" tmp="$dir.tmp.$$"
    mkdir -p "$APT_LOG_DIR" "$tmp"
    log "resolving the Debezium JDBC sink plugin $DEBEZIUM_VERSION from Maven Central (log: $logfile)"
    # The plugin archive, not the jar: resolving the jar's own dependencies fails on a POM
    # that Central lacks, and the archive carries the JDBC drivers and Hibernate it needs.
    mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$M2" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
        -Dartifact="io.debezium:debezium-connector-jdbc:$DEBEZIUM_VERSION:tar.gz:plugin" \
        -DoutputDirectory="$tmp" >"$logfile" 2>&1 \
        || { rm -rf "$tmp"; fail "mvn (debezium-connector-jdbc $DEBEZIUM_VERSION plugin)" "$logfile"; }
    tar -xzf "$tmp"/debezium-connector-jdbc-*-plugin.tar.gz -C "$tmp" \
        || { rm -rf "$tmp"; fail "unpacking the Debezium plugin archive"; }
    rm -f "$tmp"/debezium-connector-jdbc-*-plugin.tar.gz
    rm -rf "$dir"
    mv "$tmp" "$dir"
    touch "$dir/.complete"
}

partman() {
    apt_install "postgresql-$PG_MAJOR-partman"
}

main() {
    local parts=("$@")
    ((${#parts[@]})) || parts=(connect partman)
    local p
    for p in "${parts[@]}"; do
        case "$p" in
            connect) connect_runtime; debezium_plugin ;;
            partman) partman ;;
            *) fail "unknown part '$p' (connect, partman)" ;;
        esac
    done
}

main "$@"

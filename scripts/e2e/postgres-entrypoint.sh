#!/bin/sh
# PostgreSQL of the e2e cluster (image built by scripts/image.sh services). Initialises
# $PGDATA on first start: superuser $POSTGRES_USER with $POSTGRES_PASSWORD (scram over TCP),
# a database $POSTGRES_DB; then runs the server in the foreground. Runs on a read-only root:
# $PGDATA and the socket directory (/tmp) are volumes.
set -eu
: "${PGDATA:=/data/pgdata}" "${POSTGRES_USER:=purger}" "${POSTGRES_DB:=purger}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" \
        | postgres --single -D "$PGDATA" -c unix_socket_directories=/tmp postgres >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp \
    -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off "$@"

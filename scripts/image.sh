#!/usr/bin/env bash
# Container images of the project, built without a Docker engine when none answers.
#
#   scripts/image.sh build            the purger image from the Dockerfile as it is
#                                     (docker when an engine answers, else buildah)
#   scripts/image.sh smoke            run the built image as its non-root user on a read-only
#                                     root filesystem: --help, migrate, stats --json against the
#                                     PostgreSQL of scripts/services.sh (127.0.0.1:5432)
#   scripts/image.sh services         the PostgreSQL and Kafka images the e2e cluster runs
#                                     (Debian packages + the Maven Central jars of services.sh)
#   scripts/image.sh archive IMAGE FILE   write IMAGE as an OCI archive (for `ctr import`)
#   scripts/image.sh buildah ARGS...  buildah with this script's storage (for cluster.sh)
#   scripts/image.sh names            print the image names (shell exports)
#
# Base image: the Dockerfile's PYTHON_IMAGE (python:3.11-slim-bookworm). With buildah, unless
# PURGER_PYTHON_IMAGE names an image to use, a stand-in made from Debian bookworm packages
# (mmdebstrap: python3 3.11, python3-venv, passwd) is built and passed as PYTHON_IMAGE: Docker
# Hub is not reachable from the machines this project is tested on. PURGER_IMAGE_PULL=1 tries to
# pull the real base first.
#
# Storage and caches (outside the repository): ${PURGER_IMAGES_HOME:-$HOME/.cache/purger-images}
#   storage/, runroot/   buildah's image store (vfs driver)
#   rootfs/*.tar         mmdebstrap root filesystems, cached per package list
#   logs/                build logs
#
# Env:
#   PURGER_IMAGE           purger image name (default localhost/purger:0.1.0)
#   PURGER_PYTHON_IMAGE    base image to build on instead of the Debian stand-in
#   PURGER_IMAGE_PULL      1: try pulling python:3.11-slim-bookworm before building the stand-in
#   PURGER_IMAGE_ENGINE    docker or buildah (default: docker when `docker info` answers)
#   PURGER_SMOKE_DATABASE_URL  database of the smoke test (default: a dedicated database
#                          purger_image_smoke on the services.sh PostgreSQL, created as needed)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

IMAGES_HOME="${PURGER_IMAGES_HOME:-$HOME/.cache/purger-images}"
STORE="$IMAGES_HOME/storage"
RUNROOT="$IMAGES_HOME/runroot"
ROOTFS="$IMAGES_HOME/rootfs"
LOGS="$IMAGES_HOME/logs"
SERVICES_HOME="${PURGER_SERVICES_HOME:-$HOME/.cache/purger-services}"
KAFKA_VERSION="${PURGER_KAFKA_VERSION:-4.3.1}"
KAFKA_LIBS="$SERVICES_HOME/kafka-$KAFKA_VERSION/libs"

APP_VERSION="$(awk -F'"' '/^appVersion:/ {print $2}' "$REPO_DIR/deploy/helm/purger/Chart.yaml")"
PURGER_IMAGE="${PURGER_IMAGE:-localhost/purger:${APP_VERSION:-0.1.0}}"
DEFAULT_PYTHON_IMAGE="python:3.11-slim-bookworm"
STANDIN_PYTHON_IMAGE="localhost/purger-base/python:3.11-debian-bookworm"
POSTGRES_IMAGE="localhost/purger-e2e/postgres:15"
KAFKA_IMAGE="localhost/purger-e2e/kafka:$KAFKA_VERSION"
DEBIAN_SUITE=bookworm
DEBIAN_MIRRORS=(
    "deb http://deb.debian.org/debian $DEBIAN_SUITE main"
    "deb http://deb.debian.org/debian $DEBIAN_SUITE-updates main"
    "deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main"
)

mkdir -p "$LOGS"

LOG_TAG=image
APT_LOG_DIR="$LOGS"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bh() { buildah --root "$STORE" --runroot "$RUNROOT" --storage-driver vfs "$@"; }

engine() {
    if [[ -n "${PURGER_IMAGE_ENGINE:-}" ]]; then
        echo "$PURGER_IMAGE_ENGINE"
    elif command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
        echo docker
    else
        echo buildah
    fi
}

image_exists() { bh inspect --type image "$1" >/dev/null 2>&1; }

# rootfs_tar <name> <packages,comma,separated>: a cached mmdebstrap minbase root filesystem.
rootfs_tar() {
    local name="$1" packages="$2" key tar logfile="$LOGS/mmdebstrap-$1.log"
    key="$(printf '%s\n' "$DEBIAN_SUITE" "$packages" "${DEBIAN_MIRRORS[@]}" | sha256sum | cut -c1-12)"
    tar="$ROOTFS/$name-$key.tar"
    if [[ ! -s "$tar" && ! -d "$tar" ]]; then
        apt_install mmdebstrap
        mkdir -p "$ROOTFS"
        log "mmdebstrap $DEBIAN_SUITE minbase + $packages (about a minute; log: $logfile)"
        local mirror_args=() m
        for m in "${DEBIAN_MIRRORS[@]}"; do mirror_args+=("$m"); done
        rm -rf "$tar.tmp"
        mmdebstrap --variant=minbase --format=tar --include="$packages" \
            --aptopt='Acquire::Check-Valid-Until "false"' \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --essential-hook='mkdir -p "$1"/usr/share/man/man1' \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
            "$DEBIAN_SUITE" "$tar.tmp" "${mirror_args[@]}" >"$logfile" 2>&1 \
            || { rm -rf "$tar.tmp"; fail "mmdebstrap $name" "$logfile"; }
        mv "$tar.tmp" "$tar"
    fi
    echo "$tar"
}

# image_from_rootfs <image> <tar> [buildah config args...]: FROM scratch + ADD tar /.
image_from_rootfs() {
    local image="$1" tar="$2"
    shift 2
    local ctr
    ctr="$(bh from scratch)"
    bh add "$ctr" "$tar" / >/dev/null
    (($#)) && bh config "$@" "$ctr"
    bh commit --quiet --rm "$ctr" "$image" >/dev/null
}

python_base() {
    # Prints the base image to pass as PYTHON_IMAGE.
    if [[ -n "${PURGER_PYTHON_IMAGE:-}" ]]; then
        echo "$PURGER_PYTHON_IMAGE"
        return
    fi
    if image_exists "$DEFAULT_PYTHON_IMAGE" || image_exists "docker.io/library/$DEFAULT_PYTHON_IMAGE"; then
        echo "$DEFAULT_PYTHON_IMAGE"
        return
    fi
    if [[ "${PURGER_IMAGE_PULL:-0}" == 1 ]] \
        && timeout 120 buildah --root "$STORE" --runroot "$RUNROOT" --storage-driver vfs \
            pull --quiet "docker.io/library/$DEFAULT_PYTHON_IMAGE" >>"$LOGS/pull.log" 2>&1; then
        echo "$DEFAULT_PYTHON_IMAGE"
        return
    fi
    if ! image_exists "$STANDIN_PYTHON_IMAGE"; then
        local tar
        tar="$(rootfs_tar python "python3,python3-venv,python-is-python3,passwd,ca-certificates")"
        log "base image $STANDIN_PYTHON_IMAGE from $tar (stands in for $DEFAULT_PYTHON_IMAGE)"
        image_from_rootfs "$STANDIN_PYTHON_IMAGE" "$tar" \
            --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
            --cmd '["python3"]'
    fi
    echo "$STANDIN_PYTHON_IMAGE"
}

cmd_build() {
    local eng start=$SECONDS logfile="$LOGS/purger-build.log"
    eng="$(engine)"
    if [[ "$eng" == docker ]]; then
        log "docker build -t $PURGER_IMAGE ."
        local args=()
        [[ -n "${PURGER_PYTHON_IMAGE:-}" ]] && args+=(--build-arg "PYTHON_IMAGE=$PURGER_PYTHON_IMAGE")
        docker build "${args[@]}" -t "$PURGER_IMAGE" "$REPO_DIR"
        return
    fi
    apt_install buildah ca-certificates
    local base
    base="$(python_base)"
    log "buildah bud -t $PURGER_IMAGE --build-arg PYTHON_IMAGE=$base . (log: $logfile)"
    # --format docker keeps the Dockerfile's HEALTHCHECK (the OCI format has no such field).
    bh bud --isolation chroot --network host --format docker --layers \
        --build-arg "PYTHON_IMAGE=$base" \
        -v /etc/ssl/certs:/etc/ssl/certs:ro --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
        -t "$PURGER_IMAGE" -f "$REPO_DIR/Dockerfile" "$REPO_DIR" >"$logfile" 2>&1 \
        || fail "buildah bud $PURGER_IMAGE" "$logfile"
    # The previous build's images are dangling now; with the vfs driver every layer is a full
    # copy of the root filesystem, so keeping them would grow the store by hundreds of MB per
    # change of the code.
    bh rmi --prune >>"$logfile" 2>&1 || log "warning: buildah rmi --prune failed (see $logfile)"
    log "built $PURGER_IMAGE in $((SECONDS - start)) s ($(bh inspect --type image --format '{{.FromImageID}}' "$PURGER_IMAGE" | cut -c1-12))"
}

# ------------------------------------------------------------------------------------ smoke
# The image runs under runc directly: a read-only root filesystem (the OCI bundle's
# root.readonly), the image's user (10001), all capabilities dropped, no new privileges, a
# tmpfs on /tmp; the host network namespace so it reaches PostgreSQL on 127.0.0.1.
smoke_database_url() {
    if [[ -n "${PURGER_SMOKE_DATABASE_URL:-}" ]]; then
        echo "$PURGER_SMOKE_DATABASE_URL"
        return
    fi
    "$SCRIPT_DIR/services.sh" up >&2
    local db=purger_image_smoke
    # A database of its own: the smoke test must not touch the one the integration tests use.
    if ! runuser -u postgres -- psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc "select 1" >/dev/null 2>&1; then
        :
    fi
    if [[ "$(runuser -u postgres -- psql -p 5432 -d postgres -tAc "select 1 from pg_database where datname = '$db'")" != 1 ]]; then
        runuser -u postgres -- psql -p 5432 -d postgres -qc "create database $db owner purger" >&2
    fi
    echo "postgresql://purger:purger@127.0.0.1:5432/$db"
}

run_in_image() {
    # run_in_image <database url> <args...>: prints stdout; stderr to the log; returns the status.
    local url="$1"
    shift
    local mnt="$SMOKE_ROOT" bundle
    bundle="$(mktemp -d)"
    bh inspect --type image "$PURGER_IMAGE" >"$bundle/image.json"
    python3 - "$bundle/config.json" "$mnt" "$bundle/image.json" "$url" "$@" <<'EOF'
import json, sys
out, root, image_json, url, *args = sys.argv[1:]
image = json.load(open(image_json))["Docker"]["config"]
uid, _, gid = image["User"].partition(":")
entrypoint = image.get("Entrypoint") or []
if args and args[0] == "--entrypoint":
    entrypoint, args = [args[1]], args[2:]
env = image["Env"] + [f"PURGER_DATABASE_URL={url}", "HOME=/tmp"]
caps = []
config = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False,
        "user": {"uid": int(uid), "gid": int(gid or uid)},
        "args": [*entrypoint, *args],
        "env": env,
        "cwd": "/tmp",
        "capabilities": {k: caps for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
        "noNewPrivileges": True,
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    },
    "root": {"path": root, "readonly": True},
    "hostname": "purger-smoke",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "ro"]},
    ],
    "linux": {
        # No network namespace: the host's loopback (PostgreSQL on 127.0.0.1).
        "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}
with open(out, "w") as f:
    json.dump(config, f)
EOF
    local status=0 id="purger-smoke-$$-$RANDOM"
    runc run --bundle "$bundle" "$id" </dev/null 2>>"$LOGS/smoke.log" || status=$?
    runc delete --force "$id" >/dev/null 2>&1 || true
    rm -rf "$bundle"
    return "$status"
}

cmd_smoke() {
    apt_install runc
    image_exists "$PURGER_IMAGE" || cmd_build
    local url out
    url="$(smoke_database_url)"
    : >"$LOGS/smoke.log"
    # One working container, mounted once (vfs copies the image for each).
    SMOKE_CTR="$(bh from --pull-never "$PURGER_IMAGE")"
    SMOKE_ROOT="$(bh mount "$SMOKE_CTR")"
    trap 'bh umount "$SMOKE_CTR" >/dev/null 2>&1; bh rm "$SMOKE_CTR" >/dev/null 2>&1' EXIT
    log "smoke test of $PURGER_IMAGE (its own user, read-only root, no capabilities; log: $LOGS/smoke.log)"
    out="$(run_in_image "$url" --help)" || fail "purger --help in the image" "$LOGS/smoke.log"
    grep -q migrate <<<"$out" || fail "purger --help does not list migrate: $out"
    log "  purger --help: ok"
    run_in_image "$url" migrate >>"$LOGS/smoke.log" || fail "purger migrate in the image" "$LOGS/smoke.log"
    log "  purger migrate: ok"
    out="$(run_in_image "$url" stats --json)" || fail "purger stats --json in the image" "$LOGS/smoke.log"
    python3 -c 'import json,sys; json.loads(sys.stdin.read())' <<<"$out" \
        || fail "purger stats --json printed no JSON: $out"
    log "  purger stats --json: ok ($(wc -c <<<"$out") bytes of JSON)"
    # The root filesystem really is read-only and the user really is 10001.
    out="$(run_in_image "$url" --entrypoint python -c 'import os
try:
    open("/opt/venv/written", "w")
except OSError as error:
    print(os.getuid(), error.errno)')" || fail "python in the image" "$LOGS/smoke.log"
    [[ "$out" == "10001 30" ]] || fail "expected uid 10001 and EROFS (30) writing to /opt/venv, got: $out"
    log "  uid 10001, read-only root (EROFS): ok"
    log "smoke test passed"
}

# ------------------------------------------------------------------------------------ services
cmd_services() {
    apt_install buildah
    if ! image_exists "$POSTGRES_IMAGE"; then
        local tar uid
        tar="$(rootfs_tar postgres "postgresql-15,passwd")"
        log "image $POSTGRES_IMAGE from $tar"
        local ctr
        ctr="$(bh from scratch)"
        bh add "$ctr" "$tar" / >/dev/null
        bh add --chmod 0755 "$ctr" "$SCRIPT_DIR/e2e/postgres-entrypoint.sh" /usr/local/bin/entrypoint.sh >/dev/null
        uid="$(bh run --isolation chroot "$ctr" -- id -u postgres)"
        bh config --user "$uid:$uid" --entrypoint '["/usr/local/bin/entrypoint.sh"]' --cmd '[]' \
            --env PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin --env PGDATA=/data/pgdata \
            --env LANG=C.UTF-8 --port 5432 "$ctr"
        bh commit --quiet --rm "$ctr" "$POSTGRES_IMAGE" >/dev/null
    fi
    if ! image_exists "$KAFKA_IMAGE"; then
        if [[ ! -f "$SERVICES_HOME/kafka-$KAFKA_VERSION/.complete" ]]; then
            log "the Kafka jars are assembled by scripts/services.sh: running it once"
            "$SCRIPT_DIR/services.sh" up >&2
        fi
        local tar ctr
        tar="$(rootfs_tar kafka "openjdk-17-jre-headless,passwd")"
        log "image $KAFKA_IMAGE from $tar + $KAFKA_LIBS"
        ctr="$(bh from scratch)"
        bh add "$ctr" "$tar" / >/dev/null
        bh add "$ctr" "$KAFKA_LIBS" /opt/kafka/libs >/dev/null
        bh add --chmod 0755 "$ctr" "$SCRIPT_DIR/e2e/kafka-entrypoint.sh" /usr/local/bin/entrypoint.sh >/dev/null
        bh add "$ctr" "$SCRIPT_DIR/e2e/kafka-log4j2.xml" /opt/kafka/log4j2.xml >/dev/null
        bh config --user 10002:10002 --entrypoint '["/usr/local/bin/entrypoint.sh"]' --cmd '[]' \
            --env LANG=C.UTF-8 --port 9092 "$ctr"
        bh commit --quiet --rm "$ctr" "$KAFKA_IMAGE" >/dev/null
    fi
    log "service images: $POSTGRES_IMAGE $KAFKA_IMAGE"
}

cmd_archive() {
    local image="$1" file="$2"
    rm -f "$file"
    bh push --quiet "$image" "oci-archive:$file:$image" >/dev/null 2>>"$LOGS/archive.log" \
        || fail "buildah push $image" "$LOGS/archive.log"
}

cmd_names() {
    printf 'export PURGER_IMAGE=%q\n' "$PURGER_IMAGE"
    printf 'export PURGER_E2E_POSTGRES_IMAGE=%q\n' "$POSTGRES_IMAGE"
    printf 'export PURGER_E2E_KAFKA_IMAGE=%q\n' "$KAFKA_IMAGE"
}

case "${1:-}" in
    build) cmd_build ;;
    smoke) cmd_smoke ;;
    services) cmd_services ;;
    archive) shift; cmd_archive "$@" ;;
    buildah) shift; bh "$@" ;;
    names) cmd_names ;;
    *)
        sed -n '2,14p' "$0" >&2
        exit 2
        ;;
esac

#!/usr/bin/env bash
# Container images of the project, built without a Docker engine when none answers.
#
#   scripts/image.sh build            the purger image from the Dockerfile as it is
#                                     (docker when an engine answers, else buildah); with
#                                     buildah, skipped while the build context (.dockerignore's
#                                     selection of the working tree), the Dockerfile and the
#                                     base image are the same as for the image in the store
#   scripts/image.sh smoke            run the built image as its non-root user on a read-only
#                                     root filesystem: --help, migrate, stats --json against the
#                                     PostgreSQL of scripts/services.sh (127.0.0.1:5432)
#   scripts/image.sh services         the PostgreSQL and Kafka images the e2e cluster runs:
#                                     the Debian base below + Debian packages + the Maven
#                                     Central jars of services.sh (rebuilt when an input changes)
#   scripts/image.sh deps             install the Debian packages the builds need (apt)
#   scripts/image.sh archive IMAGE FILE   write IMAGE as an OCI archive (for `ctr import`)
#   scripts/image.sh buildah ARGS...  buildah with this script's storage (for cluster.sh)
#   scripts/image.sh names            print the image names (shell exports)
#
# Base image: the Dockerfile's PYTHON_IMAGE (python:3.11-slim-bookworm). With buildah, unless
# PURGER_PYTHON_IMAGE names an image to use, a stand-in made from Debian bookworm packages
# (mmdebstrap: python3 3.11, python3-venv, passwd) is built and passed as PYTHON_IMAGE: Docker
# Hub is not reachable from the machines this project is tested on. PURGER_IMAGE_PULL=1 tries to
# pull the real base first. The PostgreSQL and Kafka images are built on that same Debian base
# (apt-get install in a container of it), so the node stores its layer once for all three.
#
# Storage and caches (outside the repository): ${PURGER_IMAGES_HOME:-$HOME/.cache/purger-images}
#   storage/, runroot/   buildah's image store (vfs driver)
#   rootfs/*.tar         the mmdebstrap root filesystem, cached per package list
#   keys/                per image: the hash of its build's inputs and the image ID built from
#                        them; an image is rebuilt only when that hash changes
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

KEYS="$IMAGES_HOME/keys"
BASE_PACKAGES="python3,python3-venv,python-is-python3,passwd,ca-certificates"
POSTGRES_PACKAGES="postgresql-15"
KAFKA_PACKAGES="openjdk-17-jre-headless"
DEB_PACKAGES=(buildah mmdebstrap runc ca-certificates)

mkdir -p "$LOGS"

LOG_TAG=image
APT_LOG_DIR="$LOGS"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bh() { buildah --root "$STORE" --runroot "$RUNROOT" --storage-driver vfs "$@"; }

# Working containers are removed on the way out, also when the script is stopped (make test
# stops the builds when something else failed): with vfs each one is a full copy of its image.
WORK_CTRS=()
new_ctr() {
    # new_ctr <variable> <buildah from args...>: a new working container, registered for removal.
    local _ctr
    _ctr="$(bh from "${@:2}")" || return 1
    WORK_CTRS+=("$_ctr")
    printf -v "$1" '%s' "$_ctr"
}
remove_work_ctrs() {
    local ctr
    for ctr in "${WORK_CTRS[@]}"; do
        bh umount "$ctr" >/dev/null 2>&1 || true
        bh rm "$ctr" >/dev/null 2>&1 || true
    done
}
trap remove_work_ctrs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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
image_id() { bh inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null; }

# Build keys: keys/<image> holds "<inputs hash> <image ID>"; the image is current while it still
# has that ID and its inputs still hash the same.
key_file() { echo "$KEYS/$(tr '/:' '__' <<<"$1")"; }
image_current() {
    # image_current <image> <inputs hash>
    local file want_key="" want_id="" id
    file="$(key_file "$1")"
    [[ -f "$file" ]] || return 1
    read -r want_key want_id <"$file" || true
    id="$(image_id "$1")" || return 1
    [[ "$want_key" == "$2" && "$want_id" == "$id" ]]
}
record_key() {
    # record_key <image> <inputs hash>
    mkdir -p "$KEYS"
    echo "$2 $(image_id "$1")" >"$(key_file "$1")"
}

context_hash() {
    # A hash of the Dockerfile, .dockerignore and every file of the build context as
    # .dockerignore selects it (patterns in order, the last match wins, `!` re-includes, a
    # pattern matching a folder matches what is under it, `**` any number of folders).
    python3 - "$REPO_DIR" <<'EOF'
import hashlib, os, re, sys
root = sys.argv[1]

def regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(c), i + 1
    return re.compile(out)

rules, reincluded = [], []
ignore = os.path.join(root, ".dockerignore")
if os.path.exists(ignore):
    for line in open(ignore):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip().strip("/"))
        rules.append((negate, regex(pattern)))
        if negate:
            reincluded.append(re.split(r"[*?\[]", pattern)[0])

def included(path):
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    keep = True
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            keep = negate
    return keep

digest = hashlib.sha256()
for name in ("Dockerfile", ".dockerignore"):
    path = os.path.join(root, name)
    if os.path.exists(path):
        digest.update(name.encode() + b"\0" + open(path, "rb").read() + b"\0")
def worth_entering(path):
    # An excluded folder is skipped unless a `!` pattern may re-include something under it.
    return included(path) or any(
        p.startswith(path + "/") or p == path or path.startswith(p) for p in reincluded
    )

for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    dirnames[:] = sorted(
        d for d in dirnames if worth_entering(d if rel_dir == "." else f"{rel_dir}/{d}")
    )
    for name in sorted(filenames):
        full = os.path.join(dirpath, name)
        rel = os.path.relpath(full, root)
        if os.path.isfile(full) and included(rel):
            mode = "x" if os.access(full, os.X_OK) else "-"
            digest.update(rel.encode() + b"\0" + mode.encode() + open(full, "rb").read() + b"\0")
print(digest.hexdigest()[:16])
EOF
}

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
    new_ctr ctr scratch
    bh add "$ctr" "$tar" / >/dev/null
    (($#)) && bh config "$@" "$ctr"
    bh commit --quiet --rm "$ctr" "$image" >/dev/null
}

STANDIN_CONFIG=(--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --env LANG=C.UTF-8 --cmd '["python3"]')

debian_base() {
    # Prints the Debian stand-in base image, built first when its inputs changed.
    local tar key
    tar="$(rootfs_tar python "$BASE_PACKAGES")"
    key="$(key_of "$tar" "${STANDIN_CONFIG[@]}")"
    if ! image_current "$STANDIN_PYTHON_IMAGE" "$key"; then
        log "base image $STANDIN_PYTHON_IMAGE from $tar (stands in for $DEFAULT_PYTHON_IMAGE)"
        image_from_rootfs "$STANDIN_PYTHON_IMAGE" "$tar" "${STANDIN_CONFIG[@]}"
        record_key "$STANDIN_PYTHON_IMAGE" "$key"
    fi
    # Root filesystems of other package lists are stale (the PostgreSQL and Kafka images used to
    # have root filesystems of their own).
    local old
    for old in "$ROOTFS"/*; do
        [[ -e "$old" && "$old" != "$tar" ]] && rm -rf "$old"
    done
    echo "$STANDIN_PYTHON_IMAGE"
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
    debian_base
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
    cmd_deps
    local base key
    base="$(python_base)"
    key="$(key_of purger "$(context_hash)" "$base" "$(image_id "$base")" "$PURGER_IMAGE")"
    if image_current "$PURGER_IMAGE" "$key"; then
        log "$PURGER_IMAGE is current: the build context, Dockerfile and base are unchanged ($(image_id "$PURGER_IMAGE" | cut -c1-12))"
        return 0
    fi
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
    record_key "$PURGER_IMAGE" "$key"
    log "built $PURGER_IMAGE in $((SECONDS - start)) s ($(image_id "$PURGER_IMAGE" | cut -c1-12))"
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
    cmd_deps
    image_exists "$PURGER_IMAGE" || cmd_build
    local url out
    url="$(smoke_database_url)"
    : >"$LOGS/smoke.log"
    # One working container, mounted once (vfs copies the image for each).
    new_ctr SMOKE_CTR --pull-never "$PURGER_IMAGE"
    SMOKE_ROOT="$(bh mount "$SMOKE_CTR")"
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
# apt-get in a container of the Debian base: services are not started (policy-rc.d), no
# default PostgreSQL cluster is created (the entrypoint makes its own in $PGDATA).
APT_IN_IMAGE='set -e
mkdir -p /usr/share/man/man1 /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/no-main-cluster.conf
printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
rm -f /usr/sbin/policy-rc.d
apt-get clean
rm -rf /var/lib/apt/lists/*'

service_image() {
    # service_image <image> <key> <packages (comma-separated)> <setup function>: the Debian
    # base + the packages, then <setup function> <container> adds files and config.
    local image="$1" key="$2" packages="$3" setup="$4" base="$5"
    if image_current "$image" "$key"; then return 0; fi
    local logfile="$LOGS/$(basename "${image%%:*}").log" ctr start=$SECONDS
    log "image $image: $base + $packages (log: $logfile)"
    new_ctr ctr --pull-never "$base"
    # shellcheck disable=SC2086 # the packages are a list
    bh run --isolation chroot --network host "$ctr" -- sh -c "$APT_IN_IMAGE" sh ${packages//,/ } \
        >"$logfile" 2>&1 || fail "apt-get install $packages in $image" "$logfile"
    "$setup" "$ctr" >>"$logfile" 2>&1 || fail "setting up $image" "$logfile"
    bh commit --quiet --rm "$ctr" "$image" >/dev/null
    bh rmi --prune >>"$logfile" 2>&1 || true
    record_key "$image" "$key"
    log "built $image in $((SECONDS - start)) s"
}

setup_postgres() {
    local ctr="$1" uid
    bh add --chmod 0755 "$ctr" "$SCRIPT_DIR/e2e/postgres-entrypoint.sh" /usr/local/bin/entrypoint.sh
    uid="$(bh run --isolation chroot "$ctr" -- id -u postgres)"
    bh config --user "$uid:$uid" --entrypoint '["/usr/local/bin/entrypoint.sh"]' --cmd '[]' \
        --env PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin --env PGDATA=/data/pgdata \
        --env LANG=C.UTF-8 --port 5432 "$ctr"
}

setup_kafka() {
    local ctr="$1"
    bh add "$ctr" "$KAFKA_LIBS" /opt/kafka/libs
    bh add --chmod 0755 "$ctr" "$SCRIPT_DIR/e2e/kafka-entrypoint.sh" /usr/local/bin/entrypoint.sh
    bh add "$ctr" "$SCRIPT_DIR/e2e/kafka-log4j2.xml" /opt/kafka/log4j2.xml
    bh config --user 10002:10002 --entrypoint '["/usr/local/bin/entrypoint.sh"]' --cmd '[]' \
        --env LANG=C.UTF-8 --port 9092 "$ctr"
}

cmd_services() {
    cmd_deps
    if [[ ! -f "$SERVICES_HOME/kafka-$KAFKA_VERSION/.complete" ]]; then
        log "the Kafka jars are assembled by scripts/services.sh: running it once"
        "$SCRIPT_DIR/services.sh" up >&2
    fi
    local base base_id
    base="$(debian_base)"
    base_id="$(image_id "$base")"
    # The keys: the base, the packages, what the setup functions add, and the setup itself.
    service_image "$POSTGRES_IMAGE" \
        "$(key_of "$base_id" "$POSTGRES_PACKAGES" "$APT_IN_IMAGE" "$(declare -f setup_postgres)" \
            "$(sha256sum <"$SCRIPT_DIR/e2e/postgres-entrypoint.sh")")" \
        "$POSTGRES_PACKAGES" setup_postgres "$base"
    service_image "$KAFKA_IMAGE" \
        "$(key_of "$base_id" "$KAFKA_PACKAGES" "$APT_IN_IMAGE" "$(declare -f setup_kafka)" \
            "$(tree_hash "$KAFKA_LIBS")" "$(sha256sum <"$SCRIPT_DIR/e2e/kafka-entrypoint.sh")" \
            "$(sha256sum <"$SCRIPT_DIR/e2e/kafka-log4j2.xml")")" \
        "$KAFKA_PACKAGES" setup_kafka "$base"
    log "service images: $POSTGRES_IMAGE $KAFKA_IMAGE"
}

cmd_deps() { apt_install "${DEB_PACKAGES[@]}"; }

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
    deps) cmd_deps ;;
    archive) shift; cmd_archive "$@" ;;
    buildah) shift; bh "$@" ;;
    names) cmd_names ;;
    *)
        sed -n '2,20p' "$0" >&2
        exit 2
        ;;
esac

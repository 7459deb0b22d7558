#!/usr/bin/env bash
# A real single-node Kubernetes cluster on loopback for the end-to-end tests (tests/e2e).
#
#   scripts/cluster.sh build        build/cache the binaries (Kubernetes, etcd, pause, helm)
#   scripts/cluster.sh deps         install the Debian packages the cluster needs (apt)
#   scripts/cluster.sh binaries     build/cache only the Go binaries (Kubernetes, etcd): needs
#                                   nothing but Go, so it can start before anything else
#   scripts/cluster.sh archive IMAGE..  write the OCI archives `load` imports (cached per image ID)
#   scripts/cluster.sh up           start etcd, the control plane, containerd and a kubelet;
#                                   wait until the node is Ready (idempotent: builds first)
#   scripts/cluster.sh load IMAGE.. import local buildah images into the node (ctr import);
#                                   images are never pulled
#   scripts/cluster.sh down         stop everything and remove every trace (state, pod logs,
#                                   network namespaces, the bridge); safe to run repeatedly
#   scripts/cluster.sh env          print the exports (KUBECONFIG, PATH) for kubectl and helm
#   scripts/cluster.sh status       exit 0 when the API server answers and the node is Ready
#
# What it runs, all bound to 127.0.0.1:
#   etcd (go.etcd.io/etcd/server/v3), kube-apiserver, kube-controller-manager, kube-scheduler
#   and a kubelet (k8s.io/kubernetes v1.34.x), built from the Go module proxy; Debian's containerd,
#   runc and CNI plugins. The pod network is a host-only bridge (no IP forwarding, no masquerading,
#   no route out): pods reach each other and nothing else; the host talks to the cluster only
#   through the API server on 127.0.0.1 (kubectl exec / port-forward / the API server proxy).
#
# Cache (kept between runs, never in the repository): ${PURGER_CLUSTER_HOME:-$HOME/.cache/purger-cluster}
#   bin/        kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl, etcd,
#               each set with a stamp .kubernetes-<key> / .etcd-<key>: the key hashes what the
#               build depends on (version, packages, flags, `go env GOVERSION`), so a change of
#               any of them rebuilds and nothing else does
#   images/     pause-<key>.tar (the sandbox image, built from pause.c); <image ID>.tar, the
#               archives of the project's images that `load` imports
#   src/        the small wrapper Go modules the binaries are built from
#   logs/       build logs
# State (removed by `down`): $PURGER_CLUSTER_HOME/run  (certificates, etcd data, kubelet and
#   containerd roots, component logs, kubeconfig).
#
# Env:
#   PURGER_CLUSTER_HOME         cache dir (see above)
#   PURGER_K8S_VERSION          default v1.34.4
#   PURGER_ETCD_VERSION         default v3.5.21
#   PURGER_CLUSTER_API_PORT     default 16443
#   PURGER_CLUSTER_POD_CIDR     default 10.244.0.0/24 (the bridge gets .1)
#   PURGER_CLUSTER_SERVICE_CIDR default 10.96.0.0/16
#   PURGER_CLUSTER_READY_TIMEOUT seconds, default 180
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

CLUSTER_HOME="${PURGER_CLUSTER_HOME:-$HOME/.cache/purger-cluster}"
BIN="$CLUSTER_HOME/bin"
SRC="$CLUSTER_HOME/src"
IMAGES="$CLUSTER_HOME/images"
BUILD_LOGS="$CLUSTER_HOME/logs"
RUN="$CLUSTER_HOME/run"
PKI="$RUN/pki"
LOGS="$RUN/logs"
K8S_VERSION="${PURGER_K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${PURGER_ETCD_VERSION:-v3.5.21}"
API_PORT="${PURGER_CLUSTER_API_PORT:-16443}"
ETCD_PORT=12379
ETCD_PEER_PORT=12380
POD_CIDR="${PURGER_CLUSTER_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="${PURGER_CLUSTER_SERVICE_CIDR:-10.96.0.0/16}"
READY_TIMEOUT="${PURGER_CLUSTER_READY_TIMEOUT:-180}"
BRIDGE=purger-br0
CNI_NET=purger-e2e
# The node's name is also its address for the API server (Hostname): kubelet refuses a loopback
# InternalIP, and it listens on 127.0.0.1 only.
NODE_NAME=localhost
PAUSE_IMAGE=localhost/purger-e2e/pause:3.10
KUBECONFIG_FILE="$RUN/admin.kubeconfig"
CONTAINERD_SOCK="$RUN/containerd/containerd.sock"
TOOLS_BIN="${PURGER_TOOLS_HOME:-$HOME/.cache/purger-tools}/bin"
# Folders kubelet, containerd and the CNI plugins write outside their state folder.
HOST_DIRS=(/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/containerd /etc/cni/net.d /opt/cni)

LOG_TAG=cluster
APT_LOG_DIR="$BUILD_LOGS"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ------------------------------------------------------------------------------------ build
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

k8s_ldflags() {
    local minor="${K8S_VERSION#v1.}" ldflags="-s -w" pkg
    minor="${minor%%.*}"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$ldflags"
}

go_version() { go env GOVERSION 2>/dev/null || echo none; }

build_kubernetes() {
    local ldflags key stamp b
    ldflags="$(k8s_ldflags)"
    key="$(key_of kubernetes "$K8S_VERSION" "${K8S_BINARIES[*]}" "$ldflags" CGO_ENABLED=0 "$(go_version)")"
    stamp="$BIN/.kubernetes-$key"
    local all=1
    for b in "${K8S_BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || all=0; done
    if [[ "$all" -eq 1 && -f "$stamp" ]]; then return 0; fi
    command -v go >/dev/null 2>&1 || fail "go is not installed (needed to build Kubernetes)"
    local mod="$SRC/kubernetes-$K8S_VERSION" logfile="$BUILD_LOGS/kubernetes-$K8S_VERSION.log"
    local start=$SECONDS gomod staging
    mkdir -p "$mod" "$BIN" "$BUILD_LOGS"
    rm -f "$BIN"/.kubernetes-*
    : >"$logfile"
    log "building Kubernetes $K8S_VERSION from the Go module proxy (6-14 min on 2 cores with an empty cache; log: $logfile)"
    # k8s.io/kubernetes replaces its staging modules with local folders, so it cannot be
    # `go install`ed: a wrapper module requires it and points every staging module at its
    # published version (v0.<minor>.<patch>).
    staging="v0.${K8S_VERSION#v1.}"
    local download
    download="$(cd "$mod" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" 2>>"$logfile")" || true
    echo "$download" >>"$logfile" # with -json, an error is a field of this output
    gomod="$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$download")"
    [[ -n "$gomod" && -f "$gomod" ]] || fail "go mod download k8s.io/kubernetes@$K8S_VERSION" "$logfile"
    {
        echo "module purger.local/kubernetes"
        echo
        awk '$1 == "go" {print; exit}' "$gomod"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        awk -v v="$staging" '$2 == "=>" && $3 ~ /^\.\/staging\// {print "\t" $1 " => " $1 " " v}' "$gomod"
        echo ")"
    } >"$mod/go.mod"
    {
        echo "//go:build tools"
        echo
        echo "package tools"
        echo
        echo "import ("
        for b in "${K8S_BINARIES[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$b\""; done
        echo ")"
    } >"$mod/tools.go"
    (cd "$mod" && go mod tidy) >>"$logfile" 2>&1 || fail "go mod tidy (Kubernetes wrapper module)" "$logfile"
    local pkgs=()
    for b in "${K8S_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
    (cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/" "${pkgs[@]}") \
        >>"$logfile" 2>&1 || fail "go build Kubernetes $K8S_VERSION" "$logfile"
    "$BIN/kubectl" version --client 2>/dev/null | grep -q "$K8S_VERSION" \
        || fail "kubectl does not report $K8S_VERSION" "$logfile"
    touch "$stamp"
    log "built Kubernetes $K8S_VERSION in $((SECONDS - start)) s"
}

# etcd built from its server module (go install refuses the module's replace directives).
ETCD_MAIN='package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }'

build_etcd() {
    local key stamp
    key="$(key_of etcd "$ETCD_VERSION" "$ETCD_MAIN" CGO_ENABLED=0 "-s -w" "$(go_version)")"
    stamp="$BIN/.etcd-$key"
    [[ -x "$BIN/etcd" && -f "$stamp" ]] && return 0
    command -v go >/dev/null 2>&1 || fail "go is not installed (needed to build etcd)"
    local mod="$SRC/etcd-$ETCD_VERSION" logfile="$BUILD_LOGS/etcd-$ETCD_VERSION.log" start=$SECONDS
    mkdir -p "$mod" "$BIN" "$BUILD_LOGS"
    rm -f "$BIN"/.etcd-*
    : >"$logfile"
    log "building etcd $ETCD_VERSION (log: $logfile)"
    printf '%s\n' "$ETCD_MAIN" >"$mod/main.go"
    printf 'module purger.local/etcd\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$mod/go.mod"
    (cd "$mod" && go mod tidy && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" .) \
        >>"$logfile" 2>&1 || fail "go build etcd $ETCD_VERSION" "$logfile"
    touch "$stamp"
    log "built etcd $ETCD_VERSION in $((SECONDS - start)) s"
}

PAUSE_CFLAGS="-Os -static -DVERSION=3.10-purger"
pause_tar() { echo "$IMAGES/pause-$(key_of pause "$K8S_VERSION" "$PAUSE_CFLAGS" "$PAUSE_IMAGE").tar"; }

build_pause() {
    # The sandbox image: pause.c from the k8s.io/kubernetes module, static, FROM scratch.
    local tar
    tar="$(pause_tar)"
    [[ -f "$tar" ]] && return 0
    rm -f "$IMAGES"/pause*.tar
    local logfile="$BUILD_LOGS/pause.log" dir src ctr
    mkdir -p "$IMAGES" "$BUILD_LOGS"
    dir="$(cd "$SRC/kubernetes-$K8S_VERSION" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
    src="$dir/build/pause/linux/pause.c"
    [[ -f "$src" ]] || fail "pause.c not found in $dir"
    log "building the pause image from $src"
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2086 # PAUSE_CFLAGS is a list of flags
    gcc $PAUSE_CFLAGS -o "$work/pause" "$src" >>"$logfile" 2>&1 \
        || fail "gcc -static pause.c" "$logfile"
    strip "$work/pause" || true
    ctr="$("$SCRIPT_DIR/image.sh" buildah from scratch)"
    "$SCRIPT_DIR/image.sh" buildah copy "$ctr" "$work/pause" /pause >>"$logfile"
    "$SCRIPT_DIR/image.sh" buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr" >>"$logfile"
    "$SCRIPT_DIR/image.sh" buildah commit --rm "$ctr" "$PAUSE_IMAGE" >>"$logfile" 2>&1 \
        || fail "buildah commit pause" "$logfile"
    rm -f "$tar.tmp"
    "$SCRIPT_DIR/image.sh" buildah push "$PAUSE_IMAGE" "oci-archive:$tar.tmp:$PAUSE_IMAGE" >>"$logfile" 2>&1 \
        || fail "buildah push pause" "$logfile"
    mv "$tar.tmp" "$tar"
    rm -rf "$work"
}

DEB_PACKAGES=(containerd runc containernetworking-plugins openssl buildah gcc libc6-dev iproute2 ca-certificates)

cmd_deps() { apt_install "${DEB_PACKAGES[@]}"; }

cmd_binaries() {
    # One build at a time: a second run waits, then finds the binaries built.
    mkdir -p "$CLUSTER_HOME"
    exec 8>"$CLUSTER_HOME/.build.lock"
    flock 8
    build_kubernetes
    build_etcd
    exec 8>&-
}

cmd_build() {
    cmd_deps
    cmd_binaries
    build_pause
    "$SCRIPT_DIR/install-tools.sh" >/dev/null
}

# ------------------------------------------------------------------------------------ up
is_running() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start_bg() {
    # start_bg <name> <command...>: a daemon in its own session, output to $LOGS/<name>.log.
    local name="$1"
    shift
    is_running "$name" && return 0
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
}

kubectl_() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

wait_for() {
    # wait_for <what> <timeout s> <logfile> <command...>
    local what="$1" timeout="$2" logfile="$3"
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "$what did not come up within $timeout s" "$logfile"
        sleep 0.5
    done
}

make_pki() {
    [[ -f "$PKI/.complete" ]] && return 0
    mkdir -p "$PKI"
    local l="$LOGS/pki.log"
    (
        cd "$PKI"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
            -subj "/CN=purger-e2e-ca" -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
        sign() { # sign <name> <subject> <extensions>
            openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
            printf '%s\n' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                -extfile "$1.ext" -out "$1.crt"
        }
        sign apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,IP:$(svc_ip=${SERVICE_CIDR%/*}; echo "${svc_ip%.*}.1"),DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
        sign admin "/O=system:masters/CN=purger-e2e-admin" "extendedKeyUsage=clientAuth"
        sign node "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
        sign kubelet "/CN=$NODE_NAME" "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:$NODE_NAME
extendedKeyUsage=serverAuth"
        openssl genrsa -out sa.key 2048
        openssl rsa -in sa.key -pubout -out sa.pub
    ) >"$l" 2>&1 || fail "openssl (cluster certificates)" "$l"
    local f
    for f in ca apiserver admin node kubelet; do
        [[ -s "$PKI/$f.crt" ]] || fail "openssl: no $PKI/$f.crt" "$l"
    done
    touch "$PKI/.complete"
}

kubeconfig() {
    # kubeconfig <file> <cert name>
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: purger-e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: purger-e2e
  context: {cluster: purger-e2e, user: $2}
current-context: purger-e2e
EOF
}

record_host_dirs() {
    # Which of the folders kubelet/containerd/CNI write outside $RUN existed before: `down`
    # removes only the others.
    [[ -f "$RUN/preexisting" ]] && return 0
    local d
    for d in "${HOST_DIRS[@]}"; do [[ -e "$d" ]] && echo "$d"; done >"$RUN/preexisting" || true
    ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' >"$RUN/preexisting-netns" || true
}

start_control_plane() {
    start_bg etcd "$BIN/etcd" --name purger-e2e --data-dir "$RUN/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "purger-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
        --listen-metrics-urls "" --unsafe-no-fsync --log-level warn
    start_bg kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
        --endpoint-reconciler-type none \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" \
        --kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key" \
        --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types Hostname \
        --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
        --service-account-issuer https://kubernetes.default.svc \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
        --allow-privileged=true --profiling=false --v=1
    wait_for "kube-apiserver" 90 "$LOGS/kube-apiserver.log" kubectl_ get --raw /readyz
    start_bg kube-controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig "$RUN/admin.kubeconfig" --bind-address 127.0.0.1 --secure-port 0 \
        --leader-elect=false --use-service-account-credentials \
        --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
        --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route' \
        --concurrent-gc-syncs 5 --profiling=false
    start_bg kube-scheduler "$BIN/kube-scheduler" \
        --kubeconfig "$RUN/admin.kubeconfig" --bind-address 127.0.0.1 --secure-port 0 \
        --leader-elect=false --profiling=false
}

start_node() {
    local snapshotter=native
    grep -qw overlay /proc/filesystems && snapshotter=overlayfs
    mkdir -p "$RUN/containerd" "$RUN/cni/net.d" "$RUN/kubelet" "$RUN/pod-logs"
    cat >"$RUN/containerd/config.toml" <<EOF
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Without CAP_SYS_RESOURCE, runc cannot lower oom_score_adj: every sandbox would fail.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$snapshotter"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"
EOF
    # A host-only bridge made here (the CNI bridge plugin with isGateway would switch IP
    # forwarding on): no forwarding, no masquerading, no default route in the pods.
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "${POD_CIDR%.*/*}.1/${POD_CIDR#*/}" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    cat >"$RUN/cni/net.d/10-$CNI_NET.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "${POD_CIDR%.*/*}.10"}]]
      }
    }
  ]
}
EOF
    # Service names resolve to the ready pods' addresses (no kube-proxy: see cluster-dns.py).
    start_bg cluster-dns python3 "$SCRIPT_DIR/e2e/cluster-dns.py" "${POD_CIDR%.*/*}.1" \
        "https://127.0.0.1:$API_PORT" "$PKI/ca.crt" "$PKI/admin.crt" "$PKI/admin.key"
    start_bg containerd containerd --config "$RUN/containerd/config.toml"
    wait_for "containerd" 30 "$LOGS/containerd.log" ctr --address "$CONTAINERD_SOCK" version
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$(pause_tar)" >>"$LOGS/import.log" 2>&1 \
        || fail "ctr import pause" "$LOGS/import.log"
    kubeconfig "$RUN/kubelet.kubeconfig" node
    cat >"$RUN/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
podLogsDir: $RUN/pod-logs
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
resolvConf: ""
clusterDNS: ["${POD_CIDR%.*/*}.1"]
clusterDomain: cluster.local
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusReportFrequency: 10s
shutdownGracePeriod: 0s
EOF
    start_bg kubelet "$BIN/kubelet" --config "$RUN/kubelet.yaml" --kubeconfig "$RUN/kubelet.kubeconfig" \
        --root-dir "$RUN/kubelet" --hostname-override "$NODE_NAME" --node-ip "${POD_CIDR%.*/*}.1" --v=1
}

cmd_up() {
    local start=$SECONDS
    cmd_build
    if cmd_status >/dev/null 2>&1; then
        log "cluster already up (kubeconfig: $KUBECONFIG_FILE)"
        return 0
    fi
    mkdir -p "$RUN" "$LOGS"
    record_host_dirs
    make_pki
    kubeconfig "$KUBECONFIG_FILE" admin
    start_control_plane
    start_node
    local deadline=$((SECONDS + READY_TIMEOUT))
    until kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; do
        ((SECONDS < deadline)) || fail "node $NODE_NAME not Ready within $READY_TIMEOUT s" "$LOGS/kubelet.log" "$LOGS/containerd.log"
        for p in etcd kube-apiserver kube-controller-manager kube-scheduler cluster-dns containerd kubelet; do
            is_running "$p" || fail "$p exited" "$LOGS/$p.log"
        done
        sleep 1
    done
    until kubectl_ -n default get serviceaccount default >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "no default ServiceAccount (controller-manager)" "$LOGS/kube-controller-manager.log"
        sleep 0.5
    done
    [[ "$(cat /proc/sys/net/ipv4/ip_forward)" == 0 ]] || log "WARNING: IP forwarding is on (not switched on by this script)"
    log "cluster up in $((SECONDS - start)) s: node $NODE_NAME Ready (kubeconfig: $KUBECONFIG_FILE)"
}

# ------------------------------------------------------------------------------------ load
archive_of() {
    # archive_of <image>: prints the OCI archive of the image's current ID (written once per ID).
    local image="$1" id tar
    id="$("$SCRIPT_DIR/image.sh" buildah inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null)" \
        || fail "image $image not found in the buildah store (scripts/image.sh build / services)"
    tar="$IMAGES/${id:0:16}.tar"
    if [[ ! -s "$tar" ]]; then
        rm -f "$tar.partial"
        "$SCRIPT_DIR/image.sh" archive "$image" "$tar.partial"
        mv "$tar.partial" "$tar"
    fi
    echo "$tar"
}

cmd_archive() {
    local image
    mkdir -p "$IMAGES"
    for image in "$@"; do archive_of "$image" >/dev/null; done
    # Archives of images that no longer exist in the buildah store are stale (each image
    # build leaves one otherwise).
    local ids keep tar
    ids="$("$SCRIPT_DIR/image.sh" buildah images --no-trunc --format '{{.ID}}' 2>/dev/null)" || return 0
    for tar in "$IMAGES"/*.tar; do
        [[ -e "$tar" && "$(basename "$tar")" != pause* ]] || continue
        keep="$(basename "$tar" .tar)"
        grep -q "^\(sha256:\)\{0,1\}$keep" <<<"$ids" || rm -f "$tar"
    done
}

cmd_load() {
    [[ -S "$CONTAINERD_SOCK" ]] || fail "the cluster is not up (no $CONTAINERD_SOCK)"
    local image tar
    cmd_archive "$@"
    for image in "$@"; do
        tar="$(archive_of "$image")"
        ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$tar" >>"$LOGS/import.log" 2>&1 \
            || fail "ctr import $image" "$LOGS/import.log"
        log "loaded $image ($(basename "$tar" .tar | cut -c1-12)) into the node"
    done
}

# ------------------------------------------------------------------------------------ down
pids_of_run() {
    # Processes whose command line mentions $RUN (our daemons, the shims of our containerd).
    local p
    for p in /proc/[0-9]*; do
        { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$RUN/" && echo "${p#/proc/}"
    done
    return 0
}

stop_pid() {
    local name="$1" pid
    [[ -f "$RUN/$name.pid" ]] || return 0
    pid="$(cat "$RUN/$name.pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$name.pid"
}

cmd_down() {
    [[ -d "$RUN" ]] || { ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"; return 0; }
    local start=$SECONDS
    stop_pid kubelet
    # Pod tasks outlive kubelet and containerd: kill them while containerd still answers.
    if [[ -S "$CONTAINERD_SOCK" ]] && ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
        local c
        for c in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
            ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
        done
        for c in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
            for _ in $(seq 1 30); do
                ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks delete "$c" >/dev/null 2>&1 && break
                sleep 0.1
            done
        done
    fi
    stop_pid containerd
    stop_pid cluster-dns
    stop_pid kube-scheduler
    stop_pid kube-controller-manager
    stop_pid kube-apiserver
    stop_pid etcd
    # Whatever still runs from $RUN (shims, container processes): by pid, after a TERM.
    local pids
    pids="$(pids_of_run)"
    if [[ -n "$pids" ]]; then
        kill $pids 2>/dev/null || true
        sleep 1
        pids="$(pids_of_run)"
        [[ -n "$pids" ]] && kill -9 $pids 2>/dev/null || true
    fi
    # Network namespaces the CNI made for the pods, then the bridge.
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true); do
        grep -qx "$ns" "$RUN/preexisting-netns" 2>/dev/null && continue
        ip netns delete "$ns" 2>/dev/null || true
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
    # Mounts under our folders (pod volumes, snapshots, sandbox shm), deepest first.
    local m
    for _ in 1 2 3; do
        m="$(awk -v r="$RUN/" -v c="/run/containerd/" -v k="/var/lib/kubelet/" \
            'index($2, r) == 1 || index($2, c) == 1 || index($2, k) == 1 {print $2}' /proc/mounts | sort -r)"
        [[ -z "$m" ]] && break
        while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true; done <<<"$m"
    done
    local d
    for d in "${HOST_DIRS[@]}"; do
        grep -qx "$d" "$RUN/preexisting" 2>/dev/null && continue
        rm -rf "$d"
    done
    rm -rf "$RUN"
    log "cluster down in $((SECONDS - start)) s"
    cmd_check_clean
}

cmd_check_clean() {
    # Exit 1 and say what is left when anything of a cluster remains.
    local left=()
    [[ -e "$RUN" ]] && left+=("$RUN")
    ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true); do left+=("netns $ns"); done
    local d
    for d in /var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/containerd; do
        [[ -e "$d" ]] && left+=("$d")
    done
    local pids
    pids="$(pids_of_run | tr '\n' ' ')"
    [[ -n "${pids// /}" ]] && left+=("processes $pids")
    local p
    for p in /proc/[0-9]*; do
        case "$(readlink "$p/exe" 2>/dev/null)" in
            "$BIN"/*|/usr/bin/containerd|/usr/bin/containerd-shim-runc-v2) left+=("process ${p#/proc/} $(readlink "$p/exe")") ;;
        esac
    done
    if ((${#left[@]})); then
        log "left behind: ${left[*]}"
        return 1
    fi
    log "nothing left behind"
}

cmd_status() {
    [[ -f "$KUBECONFIG_FILE" ]] || return 1
    kubectl_ get --raw /readyz >/dev/null 2>&1 || return 1
    kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

cmd_env() {
    printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
    printf 'export PATH=%q:%q:"$PATH"\n' "$BIN" "$TOOLS_BIN"
    printf 'export PURGER_CLUSTER_CONTAINERD=%q\n' "$CONTAINERD_SOCK"
    printf 'export PURGER_CLUSTER_LOGS=%q\n' "$LOGS"
}

# ------------------------------------------------------------------------------------ main
case "${1:-}" in
    build) cmd_build ;;
    deps) cmd_deps ;;
    binaries) cmd_binaries ;;
    archive) shift; cmd_archive "$@" ;;
    up) cmd_up ;;
    down) cmd_down ;;
    load) shift; cmd_load "$@" ;;
    env) cmd_env ;;
    status) cmd_status ;;
    check-clean) cmd_check_clean ;;
    *)
        sed -n '2,16p' "$0" >&2
        exit 2
        ;;
esac

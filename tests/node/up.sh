#!/usr/bin/env bash
# Starts a real node for a control plane started by tests/controlplane/up.sh:
# containerd (Debian's, from tests/peers/install.sh) and the kubelet (built
# with the control plane by tests/controlplane/build.sh), all state under DIR.
#
#   up.sh [--until-stdin-closes] CPDIR [DIR]
#
# CPDIR is the control plane's directory (its kubeconfig and pki/ca.key).
# Prints `READY <node name> <DIR>` once the Node is Ready, then runs until
# SIGINT/SIGTERM or, with --until-stdin-closes, until stdin closes. On the way
# out it undoes everything the kubelet and containerd did to the host:
# processes, mounts, cgroups, sysctls and the files they put outside DIR.
#
# Pods must be hostNetwork (containerd has only a loopback CNI network) and
# name the node in spec.nodeName (the test control plane runs no scheduler).
# Registries are made known to containerd by writing
# DIR/containerd/certs.d/<host:port>/hosts.toml (read at every pull).
#
# Needs root (cgroups, mounts). One node per machine: a lock file makes a
# second caller wait for the first to finish (see $lock below).
set -euo pipefail

lifetime=signal
if [ "${1:-}" = "--until-stdin-closes" ]; then lifetime=stdin; shift; fi
cp=${1:?usage: up.sh [--until-stdin-closes] CPDIR [DIR]}
cp=$(cd "$cp" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
dir=${2:-$(mktemp -d "${TMPDIR:-/tmp}/regcred-node.XXXXXX")}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
node=${REGCRED_NODE_NAME:-regcred-node}
log() { echo "node: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root (the kubelet manages cgroups and mounts)"; exit 1; }
bin=$("$here/../controlplane/build.sh")
eval "$("$here/../peers/install.sh")"
for t in containerd ctr containerd-shim-runc-v2 runc; do
  command -v "$t" >/dev/null || { log "$t is missing (tests/peers/install.sh installs it)"; exit 1; }
done
kubectl() { "$bin/kubectl" --kubeconfig "$cp/kubeconfig" "$@"; }

# One node per machine: the kubelet's device-plugin socket, the kubepods
# cgroups, the kernel sysctls and /var/log/containers are machine-wide.
lock=${REGCRED_NODE_LOCK:-/tmp/regcred-node.lock}
exec 9>"$lock"
if ! flock -n 9; then
  log "waiting for the node another process runs ($lock)"
  flock -w 1800 9 || { log "gave up waiting for $lock"; exit 1; }
fi

# What a node killed before its teardown left (a SIGKILLed test run), undone
# now that no node runs.
"$here/sweep.sh" --locked

# What the kubelet and containerd change outside DIR, as it is now, for
# tests/node/restore.sh: the teardown restores it from there, and so does the
# sweep should this script be killed before its teardown (memory would die
# with it). Written once, before the kubelet changes anything; removed when
# the teardown has restored it all.
state=${REGCRED_NODE_STATE:-/run/regcred-node}
had() { [ -e "$1" ] || [ -L "$1" ] && echo 1 || echo 0; }
rm -rf "$state.tmp" && mkdir -p "$state.tmp"
for s in vm.overcommit_memory kernel.panic kernel.panic_on_oops; do echo "$s=$(sysctl -n "$s")"; done >"$state.tmp/sysctls"
for f in /run/mount /var/lib/kubelet /var/log/containers /var/log/pods; do echo "$f=$(had "$f")"; done >"$state.tmp/had"
{ ls /run/containerd/s 2>/dev/null || true; } >"$state.tmp/shims"
echo "$dir" >"$state.tmp/owner"
rm -rf "$state" && mv "$state.tmp" "$state"

pids=()
cleanup() {
  trap - EXIT INT TERM
  # Whoever reads our stderr may be gone (a killed pipeline): tear down anyway.
  trap '' PIPE
  set +e
  log "tearing down"
  # Pods first, while the kubelet runs, so it stops their sandboxes itself.
  if [ "${#pids[@]}" -ge 2 ] && kubectl get --raw /readyz >/dev/null 2>&1; then
    kubectl delete pods -A --field-selector "spec.nodeName=$node" --wait=false >/dev/null 2>&1
    for _ in $(seq 1 40); do
      [ -z "$(kubectl get pods -A --field-selector "spec.nodeName=$node" -o name 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[i]}
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  # Whatever still runs from DIR (shims, containers), mounts, cgroups, kernel
  # settings, files outside DIR: undone from the state saved at the start.
  REGCRED_RESTORE_WHO=node "$here/restore.sh" --locked
  if kubectl get --raw /readyz >/dev/null 2>&1; then
    kubectl delete pods -A --field-selector "spec.nodeName=$node" --force --grace-period=0 >/dev/null 2>&1
    kubectl delete node "$node" --wait=false >/dev/null 2>&1
  fi
  log "stopped ($dir)"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

read -r kport hport < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
# The kubelet refuses a loopback node IP; without one it would resolve the host
# name. The sealed test suite gives it a test address on its namespace's
# loopback (REGCRED_NODE_IP), which must be local: nothing may go elsewhere.
# Run by hand (deploy/local/up.sh --node), use the address of the
# default-route interface (no traffic goes there: Pods are hostNetwork and
# everything they reach is on 127.0.0.1).
if [ -n "${REGCRED_NODE_IP:-}" ]; then
  node_ip=$REGCRED_NODE_IP
  route=$(ip -o -4 route get "$node_ip" 2>&1 || true)
  case $route in
    local\ *) ;;
    *) log "REGCRED_NODE_IP=$node_ip is not an address of this host (ip route get: $route)"; exit 1 ;;
  esac
else
  dev=$(ip -4 route show default | awk 'NR==1{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}')
  node_ip=$(ip -4 -o addr show dev "${dev:-lo}" | awk 'NR==1{split($4, a, "/"); print a[1]}')
fi
[ -n "$node_ip" ] && [ "$node_ip" != 127.0.0.1 ] || { log "no non-loopback IPv4 address for --node-ip"; exit 1; }

mkdir -p "$dir"/{containerd/certs.d,cni/net.d,kubelet/pki,logs/pods,image}
# --- images: the pause image, built here, imported into containerd.
python3 "$here/mkoci.py" "$dir/image/pause" 3.10 "$BUSYBOX" -- /bin/busybox sleep 2147483647
rm -f "$dir/image/pause.tar"
"$SKOPEO" copy -q "oci:$dir/image/pause:3.10" "docker-archive:$dir/image/pause.tar:registry.k8s.io/pause:3.10" >&2

# --- containerd
cat >"$dir/cni/net.d/10-loopback.conflist" <<'EOF'
{"cniVersion": "1.0.0", "name": "regcred-lo", "plugins": [{"type": "loopback"}]}
EOF
cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # This VM lacks CAP_SYS_RESOURCE: nobody may lower oom_score_adj, and runc
  # dies trying to give the sandbox -998. Clamp to containerd's own score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/containerd/certs.d"
EOF
containerd --config "$dir/containerd/config.toml" >"$dir/containerd.log" 2>&1 &
pids+=($!)
sock="$dir/containerd/containerd.sock"
for _ in $(seq 1 100); do [ -S "$sock" ] && ctr -a "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
ctr -a "$sock" -n k8s.io images import "$dir/image/pause.tar" >/dev/null

# --- the node's identity: a client certificate from the control plane's CA,
# and the system:node role for the system:nodes group (the test API server
# runs RBAC without the Node authorizer).
pki="$dir/kubelet/pki"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/node.key" -out "$pki/node.csr" \
  -subj "/O=system:nodes/CN=system:node:$node" 2>/dev/null
openssl x509 -req -in "$pki/node.csr" -CA "$cp/pki/ca.crt" -CAkey "$cp/pki/ca.key" -CAcreateserial \
  -out "$pki/node.crt" -days 2 -extfile <(echo "extendedKeyUsage=clientAuth") 2>/dev/null
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
cat >"$dir/kubelet/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority: "$cp/pki/ca.crt"}}]
users: [{name: node, user: {client-certificate: "$pki/node.crt", client-key: "$pki/node.key"}}]
contexts: [{name: local, context: {cluster: local, user: node}}]
current-context: local
EOF
kubectl create clusterrolebinding regcred-test-nodes --clusterrole system:node --group system:nodes \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# --- the kubelet
cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$sock
address: 127.0.0.1
port: $kport
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $hport
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: "$cp/pki/ca.crt"}}
authorization: {mode: AlwaysAllow}
podLogsDir: $dir/logs/pods
volumePluginDir: $dir/kubelet/volume-plugins
oomScoreAdj: 0
resolvConf: /etc/resolv.conf
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
EOF
# No /usr/sbin on the PATH: the kubelet then finds no iptables and adds no chains.
env PATH=/usr/local/bin:/usr/bin "$bin/kubelet" --config "$dir/kubelet/config.yaml" \
  --kubeconfig "$dir/kubelet/kubeconfig" --root-dir "$dir/kubelet/root" --cert-dir "$dir/kubelet/pki/serving" \
  --hostname-override "$node" --node-ip "$node_ip" -v 1 >"$dir/kubelet.log" 2>&1 &
pids+=($!)

ready=0
for _ in $(seq 1 240); do
  if [ "$(kubectl get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; then
    ready=1; break
  fi
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { log "a process died; see $dir/*.log"; tail -n 20 "$dir"/*.log >&2; exit 1; }; done
  sleep 0.25
done
[ "$ready" = 1 ] || { log "node not Ready after 60 s; see $dir/kubelet.log"; tail -n 20 "$dir/kubelet.log" >&2; exit 1; }
log "node $node Ready (kubelet pid ${pids[1]}, containerd pid ${pids[0]}), logs in $dir"
echo "READY $node $dir"

# shellcheck source=../controlplane/lifetime.sh
source "$here/../controlplane/lifetime.sh"
run_until_stopped "$lifetime"

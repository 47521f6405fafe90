#!/usr/bin/env bash
# Starts a real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver
# (RBAC on, client-certificate auth), kube-controller-manager (so garbage
# collection, namespace deletion, ServiceAccounts and Deployments work) and
# kube-scheduler (so a Deployment's Pods find the node of tests/node/up.sh),
# on free ports.
#
#   up.sh [--until-stdin-closes] [DIR]
#
# Writes DIR/kubeconfig (an admin in system:masters), prints one line
# `READY <kubeconfig>` on stdout once /readyz answers, then keeps running until
# SIGINT/SIGTERM, or, with --until-stdin-closes, until its standard input
# closes (so a test process that dies takes the control plane with it).
# Everything it started is stopped on the way out.
set -euo pipefail

lifetime=signal
if [ "${1:-}" = "--until-stdin-closes" ]; then lifetime=stdin; shift; fi
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$(mktemp -d "${TMPDIR:-/tmp}/regcred-cp.XXXXXX")}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
log() { echo "control plane: $*" >&2; }

bin=$("$here/build.sh")
export PATH="$bin:$PATH"

pids=()
cleanup() {
  trap - EXIT INT TERM
  # Newest first (the API server shuts down cleanly only while etcd is up);
  # each gets 10 s to stop before SIGKILL.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[i]}
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  log "stopped ($dir)"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

read -r etcd_port peer_port api_port kcm_port sched_port < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)

# --- certificates: one CA signs the serving cert and the client certs.
pki="$dir/pki"
mkdir -p "$pki"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 30 \
  -subj "/CN=regcred-test-ca" 2>/dev/null
sign() { # name subject extensions
  openssl req "${ec[@]}" -keyout "$pki/$1.key" -out "$pki/$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -out "$pki/$1.crt" -days 30 -extfile <(printf '%s\n' "$3") 2>/dev/null
}
sign apiserver "/CN=kube-apiserver" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
sign admin "/O=system:masters/CN=regcred-admin" "extendedKeyUsage=clientAuth"
# The controller manager runs with its own identity, not per-controller
# ServiceAccounts, so it needs full rights (as in a single-binary dev cluster).
sign kcm "/O=system:masters/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
openssl ecparam -genkey -name prime256v1 -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$pki/sa.key"
openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

kubeconfig() { # file user
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: local
  context: {cluster: local, user: $2, namespace: default}
current-context: local
EOF
}
# The scheduler as itself: the bootstrap RBAC policy binds system:kube-scheduler.
sign scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
kubeconfig "$dir/kubeconfig" admin
kubeconfig "$dir/kcm.kubeconfig" kcm
kubeconfig "$dir/scheduler.kubeconfig" scheduler

# --- etcd
etcd --name regcred-test --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "regcred-test=http://127.0.0.1:$peer_port" \
  --unsafe-no-fsync --log-level warn >"$dir/etcd.log" 2>&1 &
pids+=($!)

# --- kube-apiserver. The audit log records only TokenRequests (what the
# tests count to show a refused web identity requested no token) and Pod
# evictions (to show regcred restarts Pods through the Eviction API).
cat >"$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    resources: [{group: "", resources: ["serviceaccounts/token", "pods/eviction"]}]
  - level: None
EOF
kube-apiserver \
  --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/24 \
  --endpoint-reconciler-type none \
  --cert-dir "$dir/apiserver-certs" \
  >"$dir/kube-apiserver.log" 2>&1 &
pids+=($!)

ready=0
for _ in $(seq 1 240); do
  if kubectl --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; then ready=1; break; fi
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { log "a process died; see $dir/*.log"; tail -n 20 "$dir"/*.log >&2; exit 1; }; done
  sleep 0.5
done
[ "$ready" = 1 ] || { log "kube-apiserver not ready after 120 s; see $dir/kube-apiserver.log"; exit 1; }

# --- kube-controller-manager: garbage collector, namespace deletion, ServiceAccounts,
# Deployments and ReplicaSets, PodDisruptionBudget status (the Eviction API
# honours a budget only once computed), kube-root-ca.crt in every namespace,
# ResourceQuota usage (admission enforces a quota only once its status is computed),
# node lifecycle (it lifts the not-ready taint the kubelet registers with, so
# the scheduler places Pods on the node once it is Ready).
kube-controller-manager \
  --kubeconfig "$dir/kcm.kubeconfig" \
  --authentication-kubeconfig "$dir/kcm.kubeconfig" --authorization-kubeconfig "$dir/kcm.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" \
  --leader-elect=false --use-service-account-credentials=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --controllers garbagecollector,namespace,serviceaccount,serviceaccount-token,resourcequota,deployment,replicaset,disruption,root-ca-cert-publisher,nodelifecycle \
  >"$dir/kube-controller-manager.log" 2>&1 &
pids+=($!)

# --- kube-scheduler: Pods that name no node (a Deployment's) go to the one
# node tests/node/up.sh starts; Pods naming theirs are left alone.
kube-scheduler \
  --kubeconfig "$dir/scheduler.kubeconfig" \
  --authentication-kubeconfig "$dir/scheduler.kubeconfig" --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false \
  >"$dir/kube-scheduler.log" 2>&1 &
pids+=($!)

log "kube-apiserver https://127.0.0.1:$api_port, logs in $dir"
echo "READY $dir/kubeconfig"

source "$here/lifetime.sh"
run_until_stopped "$lifetime"

#!/usr/bin/env bash
# Runs regcred for real on this machine, nothing but 127.0.0.1:
#   - a local Kubernetes control plane (kube-apiserver, etcd, kube-controller-manager),
#   - the RegistryCredential CRD,
#   - a local OAuth2 token endpoint (oidc-provider) issuing 30-second tokens,
#   - the operator (`regcred run`),
#   - an example RegistryCredential in namespace `demo`, rotating before each expiry.
#
#   deploy/local/up.sh           # shows `kubectl get regcred -w` until Ctrl-C
#   deploy/local/up.sh --check   # exits 0 once the example has rotated twice
#
# With --node (opt-in: needs root, and the kubelet touches cgroups, mounts and
# sysctls, all undone on exit; see tests/node/up.sh) it also starts a node
# (containerd + kubelet) and a registry whose token realm accepts only OAuth2
# tokens that are active right now, so the example's Secret is what Pods pull
# with: Pod demo/app runs with it, and after two rotations (the first token
# expired) Pod demo/app-rotated does too. The operator then runs as users run
# it: its image built from the release binary (deploy/image/build.py),
# imported into the node's containerd, and `helm install`ed from
# charts/regcred as a Pod on the node's network, told the API server's address
# (chart values hostNetwork, apiServer.host/port), so nothing dials the
# `kubernetes` Service's address. `--check --node` asserts all of it.
#
# The first run builds the control plane from the Go module proxy (~10 min on
# 2 cores) and the operator; later runs start in seconds. Everything stops on
# exit. Set REGCRED_BIN to use an already built binary (with --node, the
# release binary for the image: REGCRED_IMAGE_BIN).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mode=watch
with_node=0
for a in "$@"; do
  case $a in
    --check) mode=--check ;;
    --node) with_node=1 ;;
    *) echo "usage: deploy/local/up.sh [--check] [--node]" >&2; exit 2 ;;
  esac
done
log() { echo "up: $*" >&2; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred/target}
if [ "$with_node" = 1 ]; then
  bin=${REGCRED_IMAGE_BIN:-}
  if [ -z "$bin" ]; then
    log "building regcred (release, for the image)"
    (cd "$root" && cargo build --locked --release --quiet --bin regcred)
    bin="$CARGO_TARGET_DIR/release/regcred"
  fi
else
  bin=${REGCRED_BIN:-}
  if [ -z "$bin" ]; then
    log "building regcred"
    (cd "$root" && cargo build --locked --quiet)
    bin="$CARGO_TARGET_DIR/debug/regcred"
  fi
fi
cpbin=$("$root/tests/controlplane/build.sh")
peers=$("$root/tests/peers/install.sh")
oauth2=$(sed -n 's/^OAUTH2_SERVER=//p' <<<"$peers")
peer() { sed -n "s/^$1=//p" <<<"$peers"; }
kubectl="$cpbin/kubectl"

dir=$(mktemp -d "${TMPDIR:-/tmp}/regcred-local.XXXXXX")
pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # The operator's Deployment would replace the Pods the node deletes on its way out.
  [ -n "${node_pid:-}" ] && "$kubectl" -n regcred-system scale deployment regcred --replicas 0 >/dev/null 2>&1
  # Then the node (the operator, started after it, held its stdin open too),
  # before the control plane: it deletes its Pods through the API.
  [ -n "${node_fd:-}" ] && eval "exec $node_fd>&-"
  [ -n "${node_pid:-}" ] && wait "$node_pid" 2>/dev/null || true
  # Closing its stdin stops the control plane.
  [ -n "${cp_fd:-}" ] && eval "exec $cp_fd>&-"
  [ -n "${cp_pid:-}" ] && wait "$cp_pid" 2>/dev/null || true
  log "stopped; logs were in $dir"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# --- control plane, alive as long as this script holds its stdin open
coproc CP { exec "$root/tests/controlplane/up.sh" --until-stdin-closes "$dir/cp"; }
cp_pid=$CP_PID
cp_fd=${CP[1]}
read -r ready kubeconfig <&"${CP[0]}"
[ "$ready" = READY ] || { log "the control plane did not start"; exit 1; }
export KUBECONFIG=$kubeconfig
log "control plane up; export KUBECONFIG=$KUBECONFIG to use kubectl ($kubectl)"

# With a node, the chart installs the CRDs (below).
if [ "$with_node" = 0 ]; then
  "$kubectl" apply --server-side -f "$root/crds/" >/dev/null
  "$kubectl" wait --for=condition=Established crd/registrycredentials.regcred.dev --timeout=60s >/dev/null
fi

# --- a local token endpoint
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
secret=$(openssl rand -hex 24)
(cd "$(dirname "$oauth2")" && PORT=$port TOKEN_TTL=30 CLIENT_SECRET=$secret exec node "$oauth2") >"$dir/oauth2.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do grep -q LISTENING "$dir/oauth2.log" && break; sleep 0.2; done
log "OAuth2 token endpoint on http://127.0.0.1:$port/token (30 s tokens)"
registry=registry.example.com
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [ "$with_node" = 1 ]; then
  # --- a registry that accepts the example's OAuth2 tokens while they are active
  mkdir -p "$dir/registry"
  openssl ecparam -genkey -name prime256v1 -noout -out "$dir/registry/realm.key" 2>/dev/null
  openssl req -x509 -new -days 2 -subj /CN=regcred-local-realm -key "$dir/registry/realm.key" -out "$dir/registry/realm.crt" 2>/dev/null
  realm_port=$(free_port); reg_port=$(free_port); push_pw=$(openssl rand -hex 16)
  PORT=$realm_port KEY="$dir/registry/realm.key" CERT="$dir/registry/realm.crt" ISSUER=regcred-local SERVICE=regcred-local \
    INTROSPECT_URL="http://127.0.0.1:$port/token/introspection" CLIENT_ID=regcred-basic CLIENT_SECRET="$secret" \
    PUSH_USER=pusher PUSH_PASSWORD="$push_pw" "$(peer MOTO_PYTHON)" "$(peer REALM)" >"$dir/realm.log" 2>&1 &
  pids+=($!)
  cat >"$dir/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $dir/registry/data}}
http: {addr: "127.0.0.1:$reg_port", secret: regcred-local}
auth:
  token: {realm: "http://127.0.0.1:$realm_port/token", service: regcred-local, issuer: regcred-local, rootcertbundle: $dir/registry/realm.crt}
EOF
  "$(peer REGISTRY)" serve "$dir/registry/config.yml" >"$dir/registry.log" 2>&1 &
  pids+=($!)
  registry=127.0.0.1:$reg_port
  for _ in $(seq 1 50); do
    grep -q LISTENING "$dir/realm.log" && (echo >"/dev/tcp/127.0.0.1/$reg_port") 2>/dev/null && break
    sleep 0.2
  done
  python3 "$(peer MKOCI)" "$dir/image" 1 "$(peer BUSYBOX)" -- /bin/busybox sh -c 'echo started; exec sleep 3600'
  "$(peer SKOPEO)" copy -q --dest-tls-verify=false --dest-creds "pusher:$push_pw" "oci:$dir/image:1" "docker://$registry/app:1" >&2
  log "registry on http://$registry (its token realm accepts active OAuth2 tokens), image $registry/app:1"
  # --- the node, alive as long as this script holds its stdin open
  # (bash runs one coproc at a time: a FIFO holds this one's stdin)
  mkfifo "$dir/node.in"
  "$root/tests/node/up.sh" --until-stdin-closes "$dir/cp" "$dir/node" <"$dir/node.in" >"$dir/node.out" &
  node_pid=$!
  exec {node_fd}>"$dir/node.in"
  node_name=
  for _ in $(seq 1 600); do
    read -r ready node_name _ <"$dir/node.out" 2>/dev/null && [ "$ready" = READY ] && break
    kill -0 "$node_pid" 2>/dev/null || { log "the node did not start"; exit 1; }
    node_name=; sleep 0.5
  done
  [ -n "$node_name" ] || { log "the node did not start in 300 s"; exit 1; }
  mkdir -p "$dir/node/containerd/certs.d/$registry"
  printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$registry" "$registry" \
    >"$dir/node/containerd/certs.d/$registry/hosts.toml"
  log "node $node_name Ready (logs in $dir/node)"
fi
pod() { # name: a Pod on the node pulling with the example's Secret
  "$kubectl" -n demo apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  nodeName: $node_name
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  imagePullSecrets: [{name: example}]
  containers: [{name: app, image: "$registry/app:1", imagePullPolicy: Always}]
EOF
}
wait_running() { # name
  for _ in $(seq 1 120); do
    [ "$("$kubectl" -n demo get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null)" = Running ] && return 0
    sleep 0.5
  done
  "$kubectl" -n demo describe pod "$1" >&2
  return 1
}

# --- the operator
operator_log() { # the operator's log: its file, or the kubelet's for its Pod
  if [ "$with_node" = 1 ]; then cat "$dir"/node/logs/pods/regcred-system_*/regcred/*.log 2>/dev/null; else cat "$dir/operator.log"; fi
}
if [ "$with_node" = 1 ]; then
  image=$(python3 "$root/deploy/image/build.py" --binary "$bin" --archive "$dir/regcred-image.tar" "$dir/regcred-image" 2>&1 >/dev/null)
  ctr -a "$dir/node/containerd/containerd.sock" -n k8s.io images import "$dir/regcred-image.tar" >/dev/null
  log "image $image, imported into the node's containerd"
  server=$("$kubectl" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  api_port=${server##*:}
  "$cpbin/helm" install regcred "$root/charts/regcred" --namespace regcred-system --create-namespace \
    --set hostNetwork=true --set apiServer.host=127.0.0.1 --set apiServer.port="$api_port" \
    --set replicaCount=1 --set metrics.port="$(free_port)" --set logging.format=text >/dev/null
  "$kubectl" wait --for=condition=Established crd/registrycredentials.regcred.dev --timeout=60s >/dev/null
  "$kubectl" -n regcred-system rollout status deployment/regcred --timeout=120s >/dev/null ||
    { "$kubectl" -n regcred-system describe pods >&2; log "the operator's Pod did not become Ready"; exit 1; }
  log "operator installed with Helm: Pod $("$kubectl" -n regcred-system get pods -o name) Ready on the node's network;" \
    "logs in $dir/node/logs/pods/regcred-system_*"
else
  "$bin" run --log-level info --metrics-bind-address 127.0.0.1:0 >"$dir/operator.log" 2>&1 &
  pids+=($!)
  log "operator running; logs in $dir/operator.log"
fi

# --- an example credential
"$kubectl" create namespace demo >/dev/null
"$kubectl" -n demo create secret generic oauth2-client \
  --from-literal=client_id=regcred-basic --from-literal=client_secret="$secret" >/dev/null
"$kubectl" -n demo apply -f - >/dev/null <<EOF
apiVersion: regcred.dev/v1alpha1
kind: RegistryCredential
metadata:
  name: example
spec:
  source:
    oauth2:
      tokenURL: http://127.0.0.1:$port/token
      allowInsecureHTTP: true  # a local endpoint; real ones use https
      clientSecretRef: {name: oauth2-client}
      scopes: [registry:pull]
      registries: [$registry]
EOF
log "applied RegistryCredential demo/example; its Secret demo/example is renewed before each 30 s token expires"
if [ "$with_node" = 1 ]; then
  "$kubectl" -n demo wait --for=condition=Ready regcred/example --timeout=60s >/dev/null
  pod app
  wait_running app || { log "Pod demo/app did not start"; exit 1; }
  log "Pod demo/app Running, pulled with Secret demo/example"
fi

if [ "$mode" = --check ]; then
  seen=()
  for _ in $(seq 1 300); do
    t=$("$kubectl" -n demo get regcred example -o jsonpath='{.status.notAfter}' 2>/dev/null || true)
    if [ -n "$t" ] && [[ " ${seen[*]} " != *" $t "* ]]; then
      seen+=("$t")
      log "minted a token valid until $t"
    fi
    if [ ${#seen[@]} -ge 3 ]; then
      "$kubectl" -n demo get regcred example
      "$kubectl" -n demo get events --field-selector involvedObject.name=example
      if [ "$with_node" = 1 ]; then
        # Rotated by the operator's Pod, which still runs as it started.
        "$kubectl" -n regcred-system get pods -o wide
        operator_log >"$dir/operator-pod.log"
        grep -q "became the leader" "$dir/operator-pod.log" || { log "the operator's Pod log does not show it leading"; exit 1; }
        restarts=$("$kubectl" -n regcred-system get pods -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')
        [ "$restarts" = 0 ] || { log "the operator's Pod restarted $restarts times"; exit 1; }
        # The first token has expired: the registry refuses it; the Secret's
        # current one pulls.
        pod app-rotated
        wait_running app-rotated || { log "Pod demo/app-rotated did not start"; exit 1; }
        "$kubectl" -n demo get pods -o wide
        log "Pod demo/app-rotated Running with the rotated Secret: OK"
      fi
      log "rotated twice: OK"
      exit 0
    fi
    sleep 0.5
  done
  log "no two rotations in 150 s"; operator_log | tail -n 20 >&2
  exit 1
fi
[ "$with_node" = 1 ] && "$kubectl" -n demo get pods -o wide
"$kubectl" -n demo get regcred -o wide -w

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
# The first run builds the control plane from the Go module proxy (~10 min on
# 2 cores) and the operator; later runs start in seconds. Everything stops on
# exit. Set REGCRED_BIN to use an already built binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:-watch}
log() { echo "up: $*" >&2; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred/target}
bin=${REGCRED_BIN:-}
if [ -z "$bin" ]; then
  log "building regcred"
  (cd "$root" && cargo build --locked --quiet)
  bin="$CARGO_TARGET_DIR/debug/regcred"
fi
cpbin=$("$root/tests/controlplane/build.sh")
peers=$("$root/tests/peers/install.sh")
oauth2=$(sed -n 's/^OAUTH2_SERVER=//p' <<<"$peers")
kubectl="$cpbin/kubectl"

dir=$(mktemp -d "${TMPDIR:-/tmp}/regcred-local.XXXXXX")
pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
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

"$kubectl" apply --server-side -f "$root/crds/" >/dev/null
"$kubectl" wait --for=condition=Established crd/registrycredentials.regcred.dev --timeout=60s >/dev/null

# --- a local token endpoint
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
secret=$(openssl rand -hex 24)
(cd "$(dirname "$oauth2")" && PORT=$port TOKEN_TTL=30 CLIENT_SECRET=$secret exec node "$oauth2") >"$dir/oauth2.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do grep -q LISTENING "$dir/oauth2.log" && break; sleep 0.2; done
log "OAuth2 token endpoint on http://127.0.0.1:$port/token (30 s tokens)"

# --- the operator
"$bin" run --log-level info --metrics-bind-address 127.0.0.1:0 >"$dir/operator.log" 2>&1 &
pids+=($!)
log "operator running; logs in $dir/operator.log"

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
      registries: [registry.example.com]
EOF
log "applied RegistryCredential demo/example; its Secret demo/example is renewed before each 30 s token expires"

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
      log "rotated twice: OK"
      exit 0
    fi
    sleep 0.5
  done
  log "no two rotations in 150 s"; tail -n 20 "$dir/operator.log" >&2
  exit 1
fi
"$kubectl" -n demo get regcred -o wide -w

#!/usr/bin/env bash
# Benchmark: one ClusterRegistryCredential feeding N namespaces (default 500).
# On the project's control plane, first the raw rate at which the API server
# creates N Secrets of the same shape (16 threads with kept-alive
# connections, one Secret per namespace: about the physical limit of this
# work on this machine), then the time from creating the credential
# (a `basic` source, no login check) to `status.syncedNamespaces == N`, with
# the operator's release build. Prints:
#   raw: N secrets in S s (R/s)
#   regcred: N namespaces in S s (R/s, ratio to raw)
#   tests/bench/fleet.sh [N]
# Not part of the test command: figures for a note, not assertions.
set -euo pipefail
n=${1:-500}
source "$(dirname "$0")/lib.sh"
bench_setup
"$k" create namespace regcred-system >/dev/null
"$k" -n regcred-system create secret generic robot --from-literal=username=robot --from-literal=password=bench-pw >/dev/null
for i in $(seq 1 "$n"); do
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: fleet-%d, labels: {fleet: bench}}\n---\n' "$i"
done | "$k" apply -f - >/dev/null

now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%d in %.2f s (%.0f/s)", n, b - a, n / (b - a) }'; }
# The raw rate: the same API server creating N small dockerconfigjson Secrets.
data=$(printf '{"auths":{"registry.example.com":{"username":"robot","password":"bench-pw","auth":"cm9ib3Q6YmVuY2gtcHc="}}}' | base64 -w0)
# A lean client straight to the API server: 16 threads, each with one
# kept-alive TLS connection (regcred writes 16 namespaces at a time; kubectl or
# curl per Secret would measure their own start-up instead).
server=$("$k" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
pki="$dir/cp/pki"
t0=$(now)
python3 - "$server" "$pki" "$n" "$data" <<'PY'
import http.client, json, ssl, sys, threading, urllib.parse
server, pki, n, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
u = urllib.parse.urlsplit(server)
ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
ctx.load_cert_chain(f"{pki}/admin.crt", f"{pki}/admin.key")
body = json.dumps({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
                   "metadata": {"name": "raw"}, "data": {".dockerconfigjson": data}})
todo, lock, bad = list(range(1, n + 1)), threading.Lock(), []
def work():
    c = http.client.HTTPSConnection(u.hostname, u.port, context=ctx)
    while True:
        with lock:
            if not todo:
                return
            i = todo.pop()
        c.request("POST", f"/api/v1/namespaces/fleet-{i}/secrets", body, {"Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        if r.status != 201:
            bad.append(r.status)
threads = [threading.Thread(target=work) for _ in range(16)]
[t.start() for t in threads]; [t.join() for t in threads]
sys.exit(f"raw creates failed: {bad[:5]}" if bad else 0)
PY
t1=$(now)
raw=$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { print n / (b - a) }')
echo "raw: $(rate "$n" "$t0" "$t1")"

POD_NAMESPACE=regcred-system "$bin" run --metrics-bind-address 127.0.0.1:0 --log-level warn &
op=$!
sleep 2
t0=$(now)
"$k" apply -f - >/dev/null <<'EOF'
apiVersion: regcred.dev/v1alpha1
kind: ClusterRegistryCredential
metadata: {name: bench}
spec:
  source:
    basic: {secretRef: {name: robot}, registries: [registry.example.com], verify: false}
  target:
    namespaceSelector: {matchLabels: {fleet: bench}}
    secretName: pull
EOF
while :; do
  got=$("$k" get cregcred bench -o jsonpath='{.status.syncedNamespaces}' 2>/dev/null || true)
  [ "${got:-0}" = "$n" ] && break
  sleep 0.05
done
t1=$(now)
echo "regcred: $(rate "$n" "$t0" "$t1"), $(awk -v n="$n" -v a="$t0" -v b="$t1" -v r="$raw" 'BEGIN { printf "%.0f%% of the raw rate", 100 * n / (b - a) / r }')"

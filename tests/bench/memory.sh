#!/usr/bin/env bash
# Benchmark: does the operator's memory grow with unrelated Secrets?
# Starts the test control plane, creates N unrelated 4 KiB Secrets, runs the
# operator (one basic credential) and reads its resident memory once it has
# reconciled and settled. Repeats for each N given (default: 0 2000 8000).
# Prints one line per N: `secrets=N rss_kib=M`.
#   tests/bench/memory.sh [N...]
# Not part of the test command: numbers on a shared machine are figures for a
# note, not assertions.
set -euo pipefail
counts=("${@:-0 2000 8000}")
read -r -a counts <<<"${counts[*]}"
source "$(dirname "$0")/lib.sh"
bench_setup
"$k" create namespace bench >/dev/null
"$k" -n bench create secret generic robot --from-literal=username=u --from-literal=password=p >/dev/null
"$k" -n bench apply -f - >/dev/null <<'EOF'
apiVersion: regcred.dev/v1alpha1
kind: RegistryCredential
metadata: {name: pull}
spec:
  source:
    basic: {secretRef: {name: robot}, registries: [registry.example.com], verify: false}
EOF

payload=$(head -c 3072 /dev/urandom | base64 -w0)
have=0
for n in "${counts[@]}"; do
  # Add unrelated Secrets up to n, in batches through one kubectl apply.
  while [ "$have" -lt "$n" ]; do
    batch=$(( n - have < 500 ? n - have : 500 ))
    for i in $(seq "$have" $((have + batch - 1))); do
      printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: unrelated-%d, namespace: bench}\ndata: {blob: %s}\n---\n' "$i" "$payload"
    done | "$k" apply --server-side -f - >/dev/null
    have=$((have + batch))
  done
  "$bin" run --metrics-bind-address 127.0.0.1:0 --log-level warn &
  op=$!
  for _ in $(seq 1 100); do
    [ "$("$k" -n bench get regcred pull -o jsonpath='{.status.conditions[0].status}')" = True ] && break
    sleep 0.2
  done
  sleep 5
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$op/status")
  echo "secrets=$n rss_kib=$rss"
  kill "$op"; wait "$op" 2>/dev/null || true
  op=""
done

#!/usr/bin/env bash
# Benchmark: the operator's resident memory while 50 credentials fetch
# hostile 1 MiB token responses at once (tests/peers/hostile.py, half with
# Content-Length, half chunked), with the default response cap (64 KiB) and
# with the cap at its maximum (1 MiB, roughly the old behaviour). Samples RSS
# every 100 ms for 40 s per run and prints one line per cap:
#   cap=BYTES rss_kib_before=A rss_kib_peak=B rss_kib_after=C
#   tests/bench/hostile-memory.sh [N]     (N credentials, default 50)
# Not part of the test command: numbers on a shared machine are figures for a
# note, not assertions.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
n=${1:-50}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred/target}
(cd "$root" && cargo build --release --locked --quiet --bin regcred)
bin="$CARGO_TARGET_DIR/release/regcred"
cpbin=$("$root/tests/controlplane/build.sh")
peers=$("$root/tests/peers/install.sh")
py=$(sed -n 's/^MOTO_PYTHON=//p' <<<"$peers")
hostile=$(sed -n 's/^HOSTILE=//p' <<<"$peers")
k="$cpbin/kubectl"

dir=$(mktemp -d "${TMPDIR:-/tmp}/regcred-bench.XXXXXX")
coproc CP { exec "$root/tests/controlplane/up.sh" --until-stdin-closes "$dir/cp"; }
read -r _ kubeconfig <&"${CP[0]}"
export KUBECONFIG=$kubeconfig
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$py" "$hostile" 127.0.0.1 "$port" 2>"$dir/hostile.log" &
hs=$!
op=""
trap '[ -n "$op" ] && kill "$op" 2>/dev/null; kill "$hs" 2>/dev/null; eval "exec ${CP[1]}>&-"; wait' EXIT
"$k" apply --server-side -f "$root/crds/" >/dev/null
"$k" wait --for=condition=Established crd/registrycredentials.regcred.dev >/dev/null
"$k" create namespace bench >/dev/null

for cap in 65536 1048576; do
  "$k" -n bench delete registrycredentials --all >/dev/null
  "$bin" run --watch-namespace bench --metrics-bind-address 127.0.0.1:0 --log-level warn \
    --max-response-bytes "$cap" --namespace-concurrency "$n" --concurrency "$n" &
  op=$!
  sleep 3
  before=$(awk '/VmRSS/ {print $2}' "/proc/$op/status")
  for i in $(seq 1 "$n"); do
    kind=$([ $((i % 2)) = 0 ] && echo huge || echo chunked)
    printf 'apiVersion: regcred.dev/v1alpha1\nkind: RegistryCredential\nmetadata: {name: h%d}\nspec:\n  source:\n    http: {url: "http://127.0.0.1:%d/c/h%d/%s?bytes=1048576", allowInsecureHTTP: true, registries: [r.example]}\n---\n' \
      "$i" "$port" "$i" "$kind"
  done | "$k" -n bench apply -f - >/dev/null
  peak=0
  for _ in $(seq 1 400); do
    r=$(awk '/VmRSS/ {print $2}' "/proc/$op/status")
    [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.1
  done
  after=$(awk '/VmRSS/ {print $2}' "/proc/$op/status")
  echo "cap=$cap credentials=$n rss_kib_before=$before rss_kib_peak=$peak rss_kib_after=$after"
  kill "$op"; wait "$op" 2>/dev/null || true
  op=""
done

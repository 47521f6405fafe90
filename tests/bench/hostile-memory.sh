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
n=${1:-50}
source "$(dirname "$0")/lib.sh"
bench_setup
peers=$("$root/tests/peers/install.sh")
py=$(sed -n 's/^MOTO_PYTHON=//p' <<<"$peers")
hostile=$(sed -n 's/^HOSTILE=//p' <<<"$peers")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$py" "$hostile" 127.0.0.1 "$port" 2>"$dir/hostile.log" &
extra_pids=$!
"$k" create namespace bench >/dev/null

for cap in 65536 1048576; do
  "$k" -n bench delete registrycredentials --all >/dev/null
  "$bin" run --watch-namespace bench --metrics-bind-address 127.0.0.1:0 --log-level error \
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

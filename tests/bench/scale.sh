#!/usr/bin/env bash
# Benchmark (not a test): N credentials side by side with External Secrets
# Operator on the project's control plane.
#
#   tests/bench/scale.sh [N] [--namespaces M] [--no-eso | --eso-defaults-only] [--out FILE]
#
# N (default 1000) credentials, each a dockerconfigjson Secret from a static
# source (regcred: `basic` from one of 10 Secrets per namespace, no login
# check; ESO: an ExternalSecret templating the same dockerconfigjson from a
# `fake` SecretStore), created 8 at a time in M namespaces (default 1). First
# the raw rate at which the same API server creates N such Secrets (the
# physical limit of this work), then for each controller, alone: time from
# the first create to all N Ready with their Secrets written, as a rate and a
# ratio to raw; RSS idle / peak / 60 s after; CPU seconds; API requests per
# credential and per idle minute (from the API server's apiserver_request_total,
# minus the driver's own requests and a no-controller baseline); regcred's
# mints in the idle minute (must be 0) and a churn phase (10% of the sources
# changed at once: time until every affected Secret is rewritten).
#
# Controllers: regcred (release build, defaults); ESO v0.16.2 built from the Go
# module proxy (its own module source, so its go.mod replace directives apply)
# on its defaults, and with --concurrent=32 and no client rate limit. ESO's
# root command starts no webhook and no cert controller.
#
# Prints a Markdown table; writes JSON (default: $dir/scale.json, printed).
#
#   tests/bench/scale.sh --burst [N] [--before BIN] [--out FILE]
#
# The burst instead (tests/bench/burst.py; regcred only, N default 10000):
# 100 running credentials with 20 s tokens renewed at half their life while
# N new credentials are created at once, all from one token server answering
# after 50 ms. Reports the worst and median lateness of the renewals that
# fell due meanwhile, expired moments, first create -> all N written, peak
# RSS; with --before, the same for another regcred binary (e.g. the previous
# main's release build) first.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
n=""; namespaces=1; eso=1; eso_tuned=1; out=""; burst=0; before=""
while [ $# -gt 0 ]; do
  case $1 in
    --burst) burst=1; shift ;;
    --before) before=$2; shift 2 ;;
    --namespaces) namespaces=$2; shift 2 ;;
    --no-eso) eso=0; shift ;;
    --eso-defaults-only) eso_tuned=0; shift ;;
    --out) out=$2; shift 2 ;;
    *) n=$1; shift ;;
  esac
done
if [ "$burst" = 1 ]; then
  n=${n:-10000}
  bench_setup
  out=${out:-$dir/burst.json}
  run="run --watch-namespace {ns} --metrics-bind-address 127.0.0.1:{port} --log-level warn"
  controllers=()
  [ -n "$before" ] && controllers+=("before=exec env POD_NAMESPACE=default $before $run")
  controllers+=("regcred=exec env POD_NAMESPACE=default $bin $run")
  server=$("$k" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  hostile="$root/tests/peers/hostile.py"
  python3 "$root/tests/bench/burst.py" "$server" "$dir/cp/pki" "$out" "$n" "$hostile" "${controllers[@]}"
  echo "JSON: $out (controller logs beside it)"
  exit 0
fi
n=${n:-1000}
bench_build
version=v0.16.2
cache=${REGCRED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred}
eso_bin="$cache/eso-$version/external-secrets"
if [ "$eso" = 1 ] && [ "${REGCRED_SEALED:-}" != 1 ]; then
  # Fetched and built outside the seal; its source directory goes in with us.
  ESO_SRC=$(GOFLAGS=-mod=mod go mod download -json "github.com/external-secrets/external-secrets@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  export ESO_SRC
  if [ ! -x "$eso_bin" ]; then
    echo "building External Secrets Operator $version (once; several minutes)" >&2
    mkdir -p "$(dirname "$eso_bin")"
    (cd "$ESO_SRC" && CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false" go build -ldflags "-s -w" -o "$eso_bin.tmp" .)
    mv "$eso_bin.tmp" "$eso_bin"
  fi
fi
bench_setup
out=${out:-$dir/scale.json}

controllers=("regcred=exec env POD_NAMESPACE=default $bin run --metrics-bind-address 127.0.0.1:{port} --log-level warn")
if [ "$eso" = 1 ]; then
  src=$ESO_SRC
  for crd in "$src"/config/crds/bases/*.io_*.yaml; do "$k" apply --server-side -f "$crd" >/dev/null; done
  "$k" wait --for=condition=Established crd/externalsecrets.external-secrets.io crd/secretstores.external-secrets.io >/dev/null
  eso_run="exec $eso_bin --metrics-addr 127.0.0.1:{port} --enable-leader-election=false --loglevel error"
  controllers+=("eso-defaults=$eso_run")
  [ "$eso_tuned" = 1 ] && controllers+=("eso-32-unlimited=$eso_run --concurrent 32 --client-qps -1")
fi
server=$("$k" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
python3 "$root/tests/bench/scale.py" "$server" "$dir/cp/pki" "$out" "$n" "$namespaces" "${controllers[@]}"
echo "JSON: $out (controller logs beside it)"

# Shared start of the benchmarks (sourced, not run): builds the release
# binary, starts the project's control plane on 127.0.0.1 and installs the
# CRDs. Sets root, bin, cpbin, k and dir; exports KUBECONFIG and
# CARGO_TARGET_DIR. On exit it stops $op (the operator, if set), every pid in
# $extra_pids, and the control plane.
#
# Builds on the machine's network, then runs the benchmark sealed
# (tests/seal/sealed.sh: only the loopback; whatever it starts dies with it):
# bench_seal re-runs the calling script inside, with the arguments it had
# when it sourced this file. Needs root.
bench_args=("$@")
bench_script=${BASH_SOURCE[${#BASH_SOURCE[@]} - 1]}
bench_build() {
  root=$(cd "$(dirname "$bench_script")/../.." && pwd)
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred/target}
  (cd "$root" && cargo build --release --locked --quiet --bin regcred)
  bin="$CARGO_TARGET_DIR/release/regcred"
  cpbin=$("$root/tests/controlplane/build.sh")
  "$root/tests/peers/install.sh" >/dev/null
}
bench_seal() {
  # The figures (JSON, logs) stay after a passing run.
  [ "${REGCRED_SEALED:-}" = 1 ] || REGCRED_KEEP_LOGS=${REGCRED_KEEP_LOGS:-1} exec "$root/tests/seal/sealed.sh" bash "$bench_script" "${bench_args[@]}"
}
bench_setup() {
  bench_build
  bench_seal
  k="$cpbin/kubectl"
  dir=$(mktemp -d "${TMPDIR:-/tmp}/regcred-bench.XXXXXX")
  coproc CP { exec "$root/tests/controlplane/up.sh" --until-stdin-closes "$dir/cp"; }
  cp_fd=${CP[1]}
  local kubeconfig
  read -r _ kubeconfig <&"${CP[0]}"
  export KUBECONFIG=$kubeconfig
  op=""
  extra_pids=""
  trap bench_cleanup EXIT
  "$k" apply --server-side -f "$root/crds/" >/dev/null
  "$k" wait --for=condition=Established crd/registrycredentials.regcred.dev crd/clusterregistrycredentials.regcred.dev >/dev/null
}

bench_cleanup() {
  [ -n "${op:-}" ] && kill "$op" 2>/dev/null
  for p in ${extra_pids:-}; do kill "$p" 2>/dev/null; done
  eval "exec ${cp_fd}>&-"
  wait
}

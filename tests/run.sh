#!/usr/bin/env bash
# The test command:
#
#   tests/run.sh [CARGO TEST FILTER AND FLAGS]...
#   tests/run.sh --killed-run          (only the killed-run check, see below)
#   tests/run.sh --local-node          (only `deploy/local/up.sh --check --node`)
#
# 1. Fetch and build, on the machine's network: the control plane binaries and
#    the real peers (each cached outside the repository, so a warm run only
#    checks), the test binaries (`cargo test --no-run`) and the release
#    binary (the image tests/it/alone/install.rs builds and installs).
# 2. Sweep what a killed earlier run left (tests/node/sweep.sh).
# 3. Run, sealed (tests/seal/sealed.sh): every test process in network, PID
#    and mount namespaces of the run's own, offline, with only the loopback
#    and a few test addresses on it. Unit tests, and integration tests against
#    a real kube-apiserver, etcd and kube-controller-manager, real peers and a
#    real kubelet on the loopback. Without a filter, then the tests in
#    tests/it/alone one at a time (a burst of thousands of credentials would
#    disturb the others), the README's first command with a node
#    (`deploy/local/up.sh --check --node`: the operator installed with Helm as
#    a Pod; a node of its own, so after the test processes, whose node lives
#    as long as they do), and the killed-run check (tests/seal/killed-run.sh):
#    a node and a Pod, the run SIGKILLed, the sweep, nothing left.
#
# Needs root. USE_EXISTING_CLUSTER=true (with KUBECONFIG) runs the tests
# unsealed against that cluster instead, and skips what needs the node or
# test addresses.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred/target}
threads=${REGCRED_TEST_THREADS:-8}

if [ "${REGCRED_SEALED:-}" != 1 ]; then
  tests/controlplane/build.sh >/dev/null
  tests/peers/install.sh >/dev/null
  cargo test --locked --no-run --quiet
  # The release binary, for the image the install test builds (deploy/image/build.py).
  cargo build --locked --release --quiet --bin regcred
  if [ "${USE_EXISTING_CLUSTER:-}" = true ]; then
    echo "tests: UNSEALED: USE_EXISTING_CLUSTER=true runs the tests on this machine's network against $KUBECONFIG;" \
      "the node tests, the stand-in checks and the killed-run check are skipped" >&2
    exec cargo test --locked -- --test-threads "$threads" "$@"
  fi
  tests/node/sweep.sh
  exec tests/seal/sealed.sh "$0" "$@"
fi

# Sealed from here on.
if [ "${1:-}" = --killed-run ]; then exec tests/seal/killed-run.sh; fi
local_node() { REGCRED_IMAGE_BIN="$CARGO_TARGET_DIR/release/regcred" deploy/local/up.sh --check --node; }
if [ "${1:-}" = --local-node ]; then local_node; exit; fi
# Integration tests mostly wait on servers: run more of them than there are cores.
if [ $# -gt 0 ]; then exec cargo test --locked -- --test-threads "$threads" "$@"; fi
cargo test --locked -- --test-threads "$threads" --skip alone::
# Then the tests that load the whole machine or time the operator's work
# (tests/it/alone), one at a time, and the killed-run check.
cargo test --locked --test it -- --test-threads 1 alone::
local_node
tests/seal/killed-run.sh

#!/usr/bin/env bash
# The test command. Installs what the tests need when missing (control plane
# binaries, real peers; each cached outside the repository, so a warm run only
# checks), then runs every test: unit tests, and integration tests against a
# real kube-apiserver, etcd and kube-controller-manager on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred/target}
tests/controlplane/build.sh >/dev/null
tests/peers/install.sh >/dev/null
# Integration tests mostly wait on servers: run more of them than there are cores.
cargo test --locked -- --test-threads "${REGCRED_TEST_THREADS:-8}" "$@"

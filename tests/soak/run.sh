#!/usr/bin/env bash
# The soak: 50+ credentials of every source kind with short lifetimes, two
# regcred replicas with leader election, every Secret checked every 250 ms,
# chaos on a schedule (kill -9 and SIGTERM of the leader, kube-apiserver and
# etcd restarts, the token endpoint down for less and for more than a
# lifetime). Prints a JSON report; exits 1 on an expired moment outside a
# declared outage (the longer-than-a-lifetime token outage, and the control
# plane restarts, during which nothing can write a Secret; both are counted
# separately), or a lost Secret. See soak.py.
#
#   tests/soak/run.sh [--minutes 30] [--chaos all|short] [--credentials 50] [--out FILE]
#
# The test suite runs a 3-minute version with two chaos events
# (tests/it/soak.rs). REGCRED_BIN picks the binary (default: a release build).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred/target}
bin=${REGCRED_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --locked --quiet --bin regcred)
  bin="$CARGO_TARGET_DIR/release/regcred"
fi
"$root/tests/controlplane/build.sh" >/dev/null
"$root/tests/peers/install.sh" >/dev/null
# Run sealed (tests/seal/sealed.sh; a no-op inside the sealed test suite):
# only the loopback, and everything the soak starts dies with it. Its logs
# stay after a passing run too.
REGCRED_KEEP_LOGS=${REGCRED_KEEP_LOGS:-1} exec "$root/tests/seal/sealed.sh" bash -c 'dir=$(mktemp -d "$TMPDIR/regcred-soak.XXXXXX")
echo "soak: logs in $dir" >&2
exec python3 "$0" --dir "$dir" "$@"' "$root/tests/soak/soak.py" --regcred "$bin" "$@"

#!/usr/bin/env bash
# Runs a command sealed off from the network, with everything it starts tied
# to its life:
#
#   tests/seal/sealed.sh [--] COMMAND [ARG]...
#
# - Network: a namespace of its own whose only interface is the loopback. A
#   dial to any address but the test hosts below fails at once with "Network
#   is unreachable"; DNS of a name /etc/hosts lacks fails at once (the
#   namespace's resolv.conf names 127.0.0.1, where nothing serves DNS).
# - Test hosts, extra /32 addresses on that loopback, exported for the tests:
#   REGCRED_NODE_IP (198.51.100.1, the kubelet's node IP),
#   REGCRED_METADATA_STANDIN (169.254.169.254, where cloud metadata would be)
#   and REGCRED_PRIVATE_STANDIN (10.96.0.1, the `kubernetes` Service address
#   and a private 10.x host): a test may serve on them to count what reaches
#   them; nothing else is there.
# - Test names, in the run's own /etc/hosts (the machine's entries, then):
#   metadata.regcred.test (the metadata stand-in), private.regcred.test (the
#   private stand-in) and tokens.regcred.test (127.0.0.2, an allowed host that
#   is not the API server's 127.0.0.1).
# - Processes: a PID namespace whose first process is this script. When it
#   ends, or when the run is killed (even SIGKILL of its whole process group),
#   the kernel kills everything the run started, daemonized shims included.
#   SIGTERM/SIGINT (to the run or to its unshare) reach COMMAND first, and
#   what it started gets up to a minute to tear itself down.
# - Mounts: a private mount namespace, so the kubelet's and containerd's mounts
#   disappear with the run. What lives outside a namespace (the kubepods
#   cgroups, kernel sysctls, a few files) is undone by tests/node/up.sh on the
#   way out and, after a killed run, by tests/node/sweep.sh at the next start.
# - Offline: CARGO_NET_OFFLINE=true, GOPROXY=off. Fetch and build before.
# - TMPDIR=/tmp/regcred-run.XXXXXX (its file `pid` names the run): removed
#   when the command succeeds (unless REGCRED_KEEP_LOGS=1), kept with every
#   log when it fails; a killed run's is removed by tests/node/sweep.sh.
#
# Exits with COMMAND's status. Needs root (namespaces). Already sealed
# (REGCRED_SEALED=1), it runs COMMAND as it is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || { echo "usage: tests/seal/sealed.sh [--] COMMAND [ARG]..." >&2; exit 2; }

if [ "${REGCRED_SEALED:-}" = 1 ]; then exec "$@"; fi

if [ "${REGCRED_SEAL_STAGE:-}" != inside ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "sealed: the tests run in network, PID and mount namespaces of their own and need root" >&2
    echo "sealed: (USE_EXISTING_CLUSTER=true with KUBECONFIG runs them unsealed against a cluster of yours)" >&2
    exit 1
  fi
  for t in unshare ip mount; do
    command -v "$t" >/dev/null || { echo "sealed: $t is missing (util-linux, iproute2)" >&2; exit 1; }
  done
  run=$(mktemp -d /tmp/regcred-run.XXXXXX)
  # $$ is unshare's PID after the exec: the sweep checks it (from the same PID
  # namespace) to tell a live run from a killed one.
  echo "$$ $(readlink /proc/self/ns/pid)" >"$run/pid"
  export REGCRED_SEAL_STAGE=inside REGCRED_RUN_DIR=$run
  exec unshare --net --pid --fork --mount-proc --kill-child=TERM -- "$here/sealed.sh" "$@"
fi

# --- inside: PID 1 of the run's namespaces.
unset REGCRED_SEAL_STAGE
run=$REGCRED_RUN_DIR
links=$(ip -o link show | awk -F': ' '{print $2}')
if [ "$links" != lo ]; then
  echo "sealed: the new network namespace has interfaces besides the loopback: $links" >&2
  exit 1
fi
ip link set lo up
export REGCRED_NODE_IP=198.51.100.1 REGCRED_METADATA_STANDIN=169.254.169.254 REGCRED_PRIVATE_STANDIN=10.96.0.1
for a in "$REGCRED_NODE_IP" "$REGCRED_METADATA_STANDIN" "$REGCRED_PRIVATE_STANDIN"; do
  ip addr add "$a/32" dev lo
done
# DNS: a resolver on the loopback that is not there answers at once.
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$run/resolv.conf"
mount --bind "$run/resolv.conf" /etc/resolv.conf
{ cat /etc/hosts 2>/dev/null || true
  printf '%s metadata.regcred.test\n%s private.regcred.test\n127.0.0.2 tokens.regcred.test\n' \
    "$REGCRED_METADATA_STANDIN" "$REGCRED_PRIVATE_STANDIN"
} >"$run/hosts"
mount --bind "$run/hosts" /etc/hosts
export REGCRED_SEALED=1 CARGO_NET_OFFLINE=true GOPROXY=off TMPDIR=$run

"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  # wait returns early (status > 128) when a trapped signal arrives.
  kill -0 "$child" 2>/dev/null || break
done
# Let what the command started finish its own teardown (the control plane and
# the node stop when their stdin closes) before this PID 1 ends and the
# kernel kills whatever is left.
for _ in $(seq 1 600); do
  others=0
  for s in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$s" || continue
    pid=${line%% *}
    [ "$pid" = 1 ] && continue
    rest=${line##*) }
    [ "${rest%% *}" = Z ] || { others=1; break; }
  done
  [ "$others" = 0 ] && break
  sleep 0.1
done
touch "$run/finished"
if [ "$rc" = 0 ] && [ "${REGCRED_KEEP_LOGS:-}" != 1 ]; then
  rm -rf --one-file-system "$run"
elif [ "$rc" = 0 ]; then
  echo "sealed: logs kept in $run" >&2
else
  echo "sealed: exit status $rc; logs kept in $run" >&2
fi
exit "$rc"

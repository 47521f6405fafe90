#!/usr/bin/env bash
# Undoes what a node (tests/node/up.sh) did to this machine outside its
# directory, from what up.sh saved before the kubelet started, in
# $REGCRED_NODE_STATE (default /run/regcred-node): kills what still runs from
# the node's directory, unmounts what is mounted there, removes the kubepods
# cgroups, puts the three kernel settings the kubelet changes back, removes
# the files it made outside its directory; then removes the state.
#
#   tests/node/restore.sh --locked
#
# up.sh runs it at the end of its teardown, and tests/node/sweep.sh after a
# node was killed before its teardown. The caller holds the node lock
# (/tmp/regcred-node.lock): no other node runs. Without a state, nothing to do.
set -uo pipefail
[ "${1:-}" = --locked ] || { echo "usage: tests/node/restore.sh --locked (hold the node lock)" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
state=${REGCRED_NODE_STATE:-/run/regcred-node}
who=${REGCRED_RESTORE_WHO:-restore}
log() { echo "$who: $*" >&2; }
[ -f "$state/owner" ] || exit 0
dir=$(cat "$state/owner")
[ -n "$dir" ] && [ "$dir" != / ] && free_dir "$dir" "$who"
cgroups=0
for h in /sys/fs/cgroup/*/; do
  h=${h%/}
  [ -d "$h/kubepods" ] || continue
  find "$h/kubepods" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null && sleep 0.2
  find "$h/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
  if [ -d "$h/kubepods" ]; then log "could not remove the cgroup $h/kubepods"; else cgroups=$((cgroups + 1)); fi
done
[ "$cgroups" = 0 ] || log "removed the kubepods cgroup in $cgroups hierarchies"
if [ -f "$state/sysctls" ]; then
  while IFS='=' read -r name value; do
    [ -n "$name" ] || continue
    now=$(sysctl -n "$name")
    [ "$now" = "$value" ] || { sysctl -qw "$name=$value" >/dev/null && log "restored $name=$value (was $now)"; }
  done <"$state/sysctls"
fi
if [ -f "$state/had" ]; then
  while IFS='=' read -r path had; do
    [ -n "$path" ] && [ "$had" = 0 ] || continue
    [ -e "$path" ] || [ -L "$path" ] || continue
    rm -rf --one-file-system "$path"
  done <"$state/had"
fi
# The kubelet's container log links point into the node's directory.
[ -d /var/log/containers ] && find /var/log/containers -maxdepth 1 -type l -lname "$dir/*" -delete 2>/dev/null
if [ -f "$state/shims" ] && [ -d /run/containerd/s ]; then
  for s in $(ls /run/containerd/s); do grep -qx "$s" "$state/shims" || rm -f "/run/containerd/s/$s"; done
  rmdir /run/containerd/s /run/containerd 2>/dev/null
fi
rm -rf "$state"
exit 0

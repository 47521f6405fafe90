#!/usr/bin/env bash
# Undoes what a killed run left on this machine, so the next run starts from
# the machine as it was:
#
#   tests/node/sweep.sh [--locked]
#
# 1. Test runs that were killed (tests/seal/sealed.sh records each run in
#    /tmp/regcred-run.XXXXXX; a run that ended writes `finished` there): when
#    the recorded PID is dead (or, seen from outside any run, its PID
#    namespace is gone), their remaining processes are killed, their mounts
#    unmounted and the directory removed.
# 2. A node whose tests/node/up.sh was killed before its teardown: up.sh keeps
#    what it must restore in $REGCRED_NODE_STATE (default /run/regcred-node),
#    written once when it starts and removed when its teardown ends. A state
#    left behind with the node lock free belongs to a dead node:
#    tests/node/restore.sh undoes its processes, mounts, the kubepods
#    cgroups, the files the kubelet puts outside its directory, and the three
#    kernel settings it changed, back to the values saved before it started.
#
# Runs with the node lock held (/tmp/regcred-node.lock, as up.sh), so it never
# touches a live node: --locked says the caller holds it; otherwise it takes
# it, and when a node is running, says so and leaves everything alone.
# Prints what it undid; needs root for the node part.
set -uo pipefail
state=${REGCRED_NODE_STATE:-/run/regcred-node}
lock=${REGCRED_NODE_LOCK:-/tmp/regcred-node.lock}
log() { echo "sweep: $*" >&2; }

if [ "${1:-}" != --locked ]; then
  exec 9>"$lock"
  if ! flock -n 9; then
    log "a node is running (its lock $lock is held): nothing swept"
    exit 0
  fi
fi

here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

# --- 1. killed runs
# A run is recorded with its PID as seen from the PID namespace that started
# it (a sealed run nested in another records the outer run's namespace). From
# that namespace, its PID tells; from the machine's own (outside any sealed
# run, where every process is visible), a namespace no process is in any
# more is gone, with every run recorded from it.
mypidns=$(readlink /proc/self/ns/pid)
live_pidns=""
[ "${REGCRED_SEALED:-}" = 1 ] || live_pidns=$(for p in /proc/[0-9]*; do readlink "$p/ns/pid"; done 2>/dev/null | sort -u)
for run in /tmp/regcred-run.*; do
  [ -d "$run" ] && [ -f "$run/pid" ] || continue
  [ -e "$run/finished" ] && continue
  read -r pid pidns <"$run/pid" || continue
  if [ "${pidns:-}" = "$mypidns" ]; then
    if kill -0 "$pid" 2>/dev/null && grep -qa unshare "/proc/$pid/cmdline" 2>/dev/null; then continue; fi
  elif [ -z "$live_pidns" ] || grep -qxF -- "${pidns:-}" <<<"$live_pidns"; then
    continue
  fi
  free_dir "$run" sweep
  rm -rf --one-file-system "$run"
  log "removed the killed run $run"
done

# --- 2. a node killed before its teardown
if [ -f "$state/owner" ]; then
  log "a node was killed before its teardown ($(cat "$state/owner")): undoing what it left"
  REGCRED_RESTORE_WHO=sweep "$here/restore.sh" --locked
  log "node state restored"
fi

#!/usr/bin/env bash
# The killed-run check: a sealed run that has a control plane, a node and a
# running Pod is killed with SIGKILL to its whole process group (as a time
# limit kills), so no teardown runs; then the sweep (tests/node/sweep.sh).
# Afterwards nothing of that run may be left: no kubelet, containerd, shim,
# container, etcd or kube-apiserver, no mount, no kubepods cgroup, no node
# state, and the three kernel settings the kubelet changes as they were
# before. Before the sweep it checks that the run had indeed changed them
# (else the check would prove nothing).
#
#   tests/seal/killed-run.sh      (part of tests/run.sh; needs root, built peers)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lock=${REGCRED_NODE_LOCK:-/tmp/regcred-node.lock}
state=${REGCRED_NODE_STATE:-/run/regcred-node}
log() { echo "killed-run: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
sysctls=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
settings() { for s in "${sysctls[@]}"; do printf '%s=%s ' "$s" "$(sysctl -n "$s")"; done; }

# Wait until no node runs (the suite's own stops as its test process ends).
flock -w 600 "$lock" true || fail "the node lock $lock stayed held for 10 minutes"
before=$(settings)
work=$(mktemp -d "${TMPDIR:-/tmp}/regcred-killed-run.XXXXXX")

# The run to kill: a control plane, a node and a Pod, inside a sealed run of
# its own (nested in this one when the suite runs sealed).
cat >"$work/inner.sh" <<'EOF'
set -euo pipefail
root=$1
cp=$TMPDIR/cp
"$root/tests/controlplane/up.sh" "$cp" >"$TMPDIR/cp.out" &
until grep -q '^READY' "$TMPDIR/cp.out" 2>/dev/null; do sleep 0.2; done
kubectl() { "$("$root/tests/controlplane/build.sh")/kubectl" --kubeconfig "$cp/kubeconfig" "$@"; }
REGCRED_NODE_NAME=killed-run-node "$root/tests/node/up.sh" "$cp" "$TMPDIR/node" >"$TMPDIR/node.out" &
until grep -q '^READY' "$TMPDIR/node.out" 2>/dev/null; do sleep 0.2; done
pod='{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "held", "namespace": "default"},
  "spec": {"nodeName": "killed-run-node", "hostNetwork": true, "automountServiceAccountToken": false,
    "terminationGracePeriodSeconds": 1,
    "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "imagePullPolicy": "Never"}]}}'
# The default ServiceAccount appears a moment after the namespace controller starts.
until echo "$pod" | kubectl create -f - >/dev/null 2>&1; do sleep 0.5; done
kubectl wait --for=jsonpath='{.status.phase}'=Running pod/held --timeout=120s >/dev/null
echo "RUNNING $TMPDIR"
sleep infinity
EOF
env -u REGCRED_SEALED setsid "$root/tests/seal/sealed.sh" bash "$work/inner.sh" "$root" >"$work/out" 2>"$work/err" &
leader=$!
run=""
for _ in $(seq 1 900); do
  run=$(awk '$1 == "RUNNING" {print $2}' "$work/out")
  [ -n "$run" ] && break
  kill -0 "$leader" 2>/dev/null || { tail -n 30 "$work/err" >&2; fail "the run to kill ended before its Pod ran"; }
  sleep 0.2
done
[ -n "$run" ] || { tail -n 30 "$work/err" >&2; kill -9 -- "-$leader"; fail "the Pod did not run within 3 minutes"; }
during=$(settings)
ours() { # processes of the killed run: command line or root directory under it
  local p
  for p in /proc/[0-9]*; do
    if grep -qaF -- "$run/" "$p/cmdline" 2>/dev/null; then echo "${p#/proc/} $(tr '\0' ' ' <"$p/cmdline" | cut -c1-100)"; continue; fi
    case $(readlink "$p/root" 2>/dev/null) in "$run"/*) echo "${p#/proc/} (a container)" ;; esac
  done
}
alive=$(ours)
log "the run to kill (process group $leader, $run) has a node and a running Pod; $(wc -l <<<"$alive") processes; settings now: $during"
grep -q kubelet <<<"$alive" && grep -q 'containerd-shim' <<<"$alive" && grep -q kube-apiserver <<<"$alive" ||
  fail "expected a kubelet, a containerd shim and a kube-apiserver in the run: $alive"
[ "$before" != "$during" ] || fail "the kubelet changed none of the kernel settings ($during): this check would prove nothing"
[ -f "$state/owner" ] || fail "the node recorded no state in $state"

{ kill -9 -- "-$leader"; wait "$leader"; } 2>/dev/null || true
for _ in $(seq 1 50); do [ -z "$(ours)" ] && break; sleep 0.1; done
# The sweep as the next node start runs it: once the node lock is free.
flock -w 60 "$lock" "$root/tests/node/sweep.sh" --locked || fail "the sweep failed, or the lock stayed held"

problems=()
left=$(ours); [ -z "$left" ] || problems+=("processes left: $left")
mounts=$(grep -F -- "$run/" /proc/self/mounts || true); [ -z "$mounts" ] || problems+=("mounts left: $mounts")
after=$(settings); [ "$after" = "$before" ] || problems+=("kernel settings: before $before, after $after")
for h in /sys/fs/cgroup/*/; do [ -d "$h/kubepods" ] && problems+=("cgroup left: $h/kubepods"); done
[ -e "$state" ] && problems+=("node state left: $state")
[ -e "$run" ] && problems+=("the killed run's directory left: $run")
if [ ${#problems[@]} -gt 0 ]; then
  for p in "${problems[@]}"; do log "FAIL: $p"; done
  exit 1
fi
rm -rf "$work"
log "ok: after SIGKILL of the run's process group and the sweep, no process, mount, cgroup or node state is left, and $after"

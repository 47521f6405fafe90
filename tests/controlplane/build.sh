#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler (for
# Deployments: tests/it/alone/install.rs), kubectl and the kubelet
# (for the node harness, tests/node/up.sh) at the versions pinned in go.mod, and Helm as pinned in helm/go.mod, into a cache
# outside the repository keyed by the hash of each go.mod/go.sum, so only the
# first run is slow. Prints the bin directory (helm is linked into it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
cache=${REGCRED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred}
bin="$cache/controlplane-$key/bin"
tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
missing=()
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
  mkdir -p "$bin"
  cd "$here"
  # -trimpath and no VCS stamping keep the build independent of the checkout.
  export CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false"
  # Stamp the release so `version` and skew checks see v1.37.2, not v0.0.0-master.
  kv=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' go.mod)
  ldv="-X k8s.io/component-base/version.gitVersion=$kv -X k8s.io/component-base/version.gitMajor=1"
  ldv="$ldv -X k8s.io/component-base/version.gitMinor=$(echo "$kv" | cut -d. -f2)"
  ldv="$ldv -X k8s.io/component-base/version.gitTreeState=clean"
  # Only what is missing (a tool added later builds alone); each lands whole
  # or not at all (built beside it, then renamed).
  for t in "${missing[@]}"; do
    echo "building $t" >&2
    if [ "$t" = etcd ]; then
      go build -o "$bin/.$t.tmp" go.etcd.io/etcd/server/v3 >&2
    else
      go build -ldflags "-s -w $ldv" -o "$bin/.$t.tmp" "k8s.io/kubernetes/cmd/$t" >&2
    fi
    mv "$bin/.$t.tmp" "$bin/$t"
  done
fi
helm_key=$(cat "$here/helm/go.mod" "$here/helm/go.sum" | sha256sum | cut -c1-16)
helm="$cache/helm-$helm_key/helm"
if [ ! -x "$helm" ]; then
  echo "building helm" >&2
  mkdir -p "$(dirname "$helm")"
  (cd "$here/helm" && CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false" \
    go build -ldflags "-s -w" -o "$helm.tmp" helm.sh/helm/v4/cmd/helm) >&2
  mv "$helm.tmp" "$helm"
fi
ln -sfn "$helm" "$bin/helm"
echo "$bin"

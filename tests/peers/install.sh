#!/usr/bin/env bash
# Installs the real peers the integration tests start on 127.0.0.1, into a
# cache outside the repository (keyed by the pinned versions), and prints
# their locations as NAME=path lines:
#   Debian: docker-registry (distribution), skopeo, htpasswd, openssl,
#           tinyproxy (tinyproxy-bin: the binary without its service); for the
#           node harness (tests/node/up.sh): containerd, runc, the CNI
#           loopback plugin and a static busybox (the test images' only binary)
#   Go module proxy: distribution's contrib/token-server (tokenserver/go.mod)
#   npm: oidc-provider (oauth2/package-lock.json)
#   PyPI: moto[server] (requirements.txt; its venv also runs mkcerts.py,
#         which needs the `cryptography` package moto brings)
#   here: hostile.py, the tests' own hostile token endpoint (stdlib only)
#         realm.py, a registry token realm accepting OAuth2 tokens and short-lived
#         passwords (runs in moto's venv, for `cryptography`)
# Idempotent: a warm run only checks and prints.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${REGCRED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/regcred}/peers
mkdir -p "$cache"
log() { echo "peers: $*" >&2; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- Debian packages
# Installed means "install ok installed": a removed package keeps a dpkg
# record (config-files) that `dpkg -s` still accepts.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in docker-registry skopeo apache2-utils openssl ca-certificates tinyproxy-bin \
  containerd runc containernetworking-plugins busybox-static; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  # The package's own service is not wanted: the tests start registries themselves.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- Docker token server (Go)
ts="$cache/token-server-$(hash_of "$here/tokenserver/go.mod" "$here/tokenserver/go.sum")"
if [ ! -x "$ts" ]; then
  log "building the Docker token server"
  (cd "$here/tokenserver" && CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false" \
    go build -o "$ts.tmp" github.com/docker/distribution/contrib/token-server) >&2
  mv "$ts.tmp" "$ts"
fi

# --- OAuth2 server (npm)
# oidc-provider 9 is written for current Node.js; say so rather than fail later.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  log "the OAuth2 test peer (oidc-provider 9) needs Node.js 20 or newer; found $(node --version 2>/dev/null || echo none)"
  exit 1
fi
oa="$cache/oauth2-$(hash_of "$here/oauth2/package-lock.json")"
if [ ! -d "$oa/node_modules/oidc-provider" ]; then
  log "installing oidc-provider"
  mkdir -p "$oa"
  cp "$here/oauth2/package.json" "$here/oauth2/package-lock.json" "$oa/"
  (cd "$oa" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
cp "$here/oauth2/server.mjs" "$oa/server.mjs"

# --- moto (PyPI)
venv="$cache/venv-$(hash_of "$here/requirements.txt")"
if [ ! -x "$venv/bin/moto_server" ]; then
  log "installing moto"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
fi

echo "REGISTRY=$(command -v docker-registry || echo /usr/bin/docker-registry)"
echo "SKOPEO=$(command -v skopeo)"
echo "TINYPROXY=$(command -v tinyproxy || echo /usr/bin/tinyproxy)"
echo "HTPASSWD=$(command -v htpasswd)"
echo "TOKEN_SERVER=$ts"
echo "OAUTH2_SERVER=$oa/server.mjs"
echo "MOTO_PYTHON=$venv/bin/python"
echo "MOTO_ECR=$here/moto_ecr.py"
echo "HOSTILE=$here/hostile.py"
echo "MKCERTS=$here/mkcerts.py"
echo "BUSYBOX=/bin/busybox"
echo "MKOCI=$here/../node/mkoci.py"
echo "REALM=$here/realm.py"
echo "VENDORS=$here/vendors.py"

"""A registry token realm for short-lived pull credentials, for regcred's tests.

distribution's registry with `auth: token` sends clients here for a bearer
token. A client (containerd, skopeo) presents the pull Secret's username and
password, by HTTP Basic on GET or as an OAuth2 password grant on POST. The
password is accepted while it is one of:

- an OAuth2 access token that the OAuth2 server's introspection endpoint
  (RFC 7662) calls active right now (set INTROSPECT_URL, CLIENT_ID,
  CLIENT_SECRET);
- a password this server minted at ``GET /credential`` (Basic auth as
  ROBOT_USER/ROBOT_PASSWORD; answers ``{"token", "expires_in"}`` with
  CREDENTIAL_TTL seconds), not yet expired: what a registry's "robot token"
  endpoint does, and what regcred's `http` source reads.

So once a credential expires at its issuer, the registry stops accepting it:
rotation is visible to pulls. One static pusher (PUSH_USER/PUSH_PASSWORD) may
also push, to seed images.

The registry token is a JWT signed with ES256 by KEY, its certificate CERT in
the `x5c` header (the registry's `rootcertbundle` holds CERT).

Environment: PORT, KEY, CERT, ISSUER, SERVICE, PUSH_USER, PUSH_PASSWORD and
the variables above. Prints ``LISTENING PORT`` when ready.
GET /_stats answers {"granted": n, "refused": n, "minted": n}.
"""

import base64
import json
import os
import secrets
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ENV = os.environ
with open(ENV["KEY"], "rb") as f:
    KEY = serialization.load_pem_private_key(f.read(), None)
with open(ENV["CERT"], "rb") as f:
    CERT_DER = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)

lock = threading.Lock()
stats = {"granted": 0, "refused": 0, "minted": 0}
minted = {}  # password -> expiry (Unix seconds)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims):
    header = {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(CERT_DER).decode()]}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    r, s = decode_dss_signature(KEY.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def active(token):
    with lock:
        expiry = minted.get(token)
    if expiry is not None:
        return time.time() < expiry
    if not ENV.get("INTROSPECT_URL"):
        return False
    form = urllib.parse.urlencode({"token": token}).encode()
    req = urllib.request.Request(ENV["INTROSPECT_URL"], data=form, method="POST")
    basic = base64.b64encode(f"{ENV['CLIENT_ID']}:{ENV['CLIENT_SECRET']}".encode()).decode()
    req.add_header("Authorization", "Basic " + basic)
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return bool(json.load(resp).get("active"))
    except Exception as e:  # the OAuth2 server is down: nothing is active
        print(f"introspection failed: {e}", file=sys.stderr)
        return False


# More ways a password may be accepted (user, password) -> bool: a peer
# that imports this module adds its own (tests/peers/vendors.py).
CHECKS = []


def access(scopes, may_push):
    out = []
    for scope in scopes:
        parts = scope.split(":")
        if len(parts) != 3 or parts[0] != "repository":
            continue
        wanted = parts[2].split(",")
        actions = [a for a in wanted if a == "pull" or (may_push and a in ("push", "delete"))]
        if actions:
            out.append({"type": "repository", "name": parts[1], "actions": actions})
    return out


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):  # no request log (it would hold tokens)
        pass

    def send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def grant(self, params, user, password):
        pusher = user == ENV.get("PUSH_USER") and password == ENV.get("PUSH_PASSWORD")
        if not pusher and not (password and (any(c(user, password) for c in CHECKS) or active(password))):
            with lock:
                stats["refused"] += 1
            return self.send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "access token not active"}]})
        now = int(time.time())
        scopes = " ".join(params.get("scope", [])).split()
        claims = {
            "iss": ENV["ISSUER"], "sub": user, "aud": params.get("service", [ENV["SERVICE"]])[0],
            "exp": now + 60, "nbf": now - 5, "iat": now, "jti": str(uuid.uuid4()),
            "access": access(scopes, pusher),
        }
        with lock:
            stats["granted"] += 1
        token = jwt(claims)
        self.send(200, {"token": token, "access_token": token, "expires_in": 60, "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/_stats":
            with lock:
                return self.send(200, dict(stats))
        user = password = ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                pass
        if url.path == "/credential":
            robot = ENV.get("ROBOT_USER")
            if not robot or user != robot or password != ENV.get("ROBOT_PASSWORD"):
                return self.send(401, {"error": "invalid_client"})
            ttl = int(ENV.get("CREDENTIAL_TTL", "60"))
            token = "pull-" + secrets.token_hex(16)
            with lock:
                now = time.time()
                for k in [k for k, v in minted.items() if v < now - 600]:
                    del minted[k]
                minted[token] = now + ttl
                stats["minted"] += 1
            return self.send(200, {"token": token, "expires_in": ttl})
        self.grant(urllib.parse.parse_qs(url.query), user, password)

    def do_POST(self):
        length = min(int(self.headers.get("Content-Length") or 0), 65536)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != "password":
            return self.send(400, {"error": "unsupported_grant_type"})
        self.grant(form, form.get("username", [""])[0], form.get("password", [""])[0])


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(ENV["PORT"])), Handler)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

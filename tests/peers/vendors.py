"""Local stand-ins for three registry vendors' key APIs, for regcred's tests.

No offline server exists for Docker Hub, Harbor or GitLab, so this peer
implements, from their public API documentation, the calls regcred makes and
the quirks that matter:

- Docker Hub (API "2-beta"): ``POST /v2/auth/token`` {identifier, secret} ->
  {access_token} (a bearer for 10 minutes); ``POST /v2/access-tokens``
  {token_label (1-100 chars), scopes, expires_at (RFC 3339, optional: no
  expiry)} -> 201 {uuid, token ("dckr_pat_..."), token_label, scopes,
  expires_at, is_active}; ``GET /v2/access-tokens?page=&page_size=`` ->
  {count, next, results} (token values redacted as ``***``);
  ``DELETE /v2/access-tokens/{uuid}`` -> 204. The pull username is the
  account's; a token works until its ``expires_at``; ``repo:public_read``
  cannot pull.
- Harbor (API v2.0, Basic auth): ``POST /api/v2.0/robots`` {name, duration
  (days; -1: never), level, permissions} -> 201 {id, name
  ("robot$<project>+<name>"), secret, expires_at (Unix seconds)}; a name is
  unique per project (409); ``GET /api/v2.0/projects/{name}`` with
  ``X-Is-Resource-Name: true`` -> {project_id}; ``GET /api/v2.0/robots?q=
  Level=project,ProjectID=N`` lists a project's robots (a project admin must
  name the project); ``PATCH /api/v2.0/robots/{id}`` {secret} sets a secret
  of 8-128 characters with upper, lower and digit and invalidates the old
  one at once; ``DELETE /api/v2.0/robots/{id}`` -> 200.
- GitLab (API v4, ``PRIVATE-TOKEN``): ``POST /api/v4/projects/{id or
  url-encoded path}/access_tokens`` (and ``/groups/...``) {name, scopes,
  expires_at (a date after today, at most 365 days ahead), access_level} ->
  201 {id, name, token ("glpat-..."), scopes, expires_at, active}; a token
  stops working at the first midnight (UTC) of its date; ``GET
  ...?state=active``; ``DELETE .../{id}`` -> 204. A token login accepts any
  username; pulling needs ``read_registry``.

It also serves as the token realm of a distribution registry (it extends
tests/peers/realm.py): a pull is granted exactly while the key presented is
live here, so a revoked or expired key gets 401 at a real registry.

Admin credentials: ADMIN_USER/ADMIN_PASSWORD (Docker Hub account and Harbor
project admin), ADMIN_TOKEN (GitLab Maintainer with ``api``); LIMITED_USER/
LIMITED_PASSWORD and LIMITED_TOKEN authenticate but may not create keys (403).
Harbor project ``library`` (id 1); GitLab project ``group/app`` (id 7) and
group ``group`` (id 3).

With TLS_PORT, TLS_CERT and TLS_KEY, the same APIs (and keys) are served
over https on TLS_PORT as well.

Test controls: ``GET /_keys`` (every key, without secrets), ``GET
/_vendor_stats``, ``POST /_seed?vendor=V&prefix=P&n=N`` (N unused keys), ``POST /_fault?op=create|list|delete|auth&mode=M[&hold=S]``
with M one of none, 500, 503, 403, hang, huge, malformed, expired, noexpiry,
created-then-hang (the key is made, the answer never comes).
"""

import json
import os
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from datetime import date, datetime, timedelta, timezone

import realm

ENV = os.environ
lock = threading.Lock()
keys = {}  # id -> key record
bearers = {}  # Docker Hub bearer -> expiry
faults = {}  # op -> mode
vstats = {"created": 0, "revoked": 0, "listed": 0, "refused": 0}
HARBOR_PROJECTS = {"library": 1}
GITLAB_PROJECTS = {"7": "group/app", "group/app": "group/app"}
GITLAB_GROUPS = {"3": "group", "group": "group"}
HUB_SCOPES = {"repo:admin", "repo:write", "repo:read", "repo:public_read"}
GITLAB_SCOPES = {"api", "read_api", "read_user", "read_registry", "write_registry", "read_repository",
                 "write_repository", "create_runner", "manage_runner", "k8s_proxy", "self_rotate", "ai_features"}
HARBOR_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
next_id = [100]


def now():
    return time.time()


def page_of(items, query, size_key, default_size):
    """One page of `items`, as `page` and `size_key` in the query ask."""
    try:
        page, size = max(int(query.get("page", ["1"])[0]), 1), max(int(query.get(size_key, [default_size])[0]), 1)
    except ValueError:
        page, size = 1, int(default_size)
    return page, size, items[(page - 1) * size:page * size]


def live(k):
    return not k["revoked"] and (k["expires"] is None or now() < k["expires"])


def registry_check(user, password):
    """The realm's test for a pull: the key is live and may pull."""
    with lock:
        for k in keys.values():
            if k["secret"] != password or not live(k):
                continue
            if k["vendor"] == "hub":
                return user == ENV.get("ADMIN_USER") and bool({"repo:read", "repo:write", "repo:admin"} & set(k["scopes"]))
            if k["vendor"] == "harbor":
                return user == k["full_name"] and "pull" in k["scopes"]
            if k["vendor"] == "gitlab":
                return bool(user) and "read_registry" in k["scopes"]
    return False


realm.CHECKS.append(registry_check)


class Handler(realm.Handler):
    def body(self):
        length = min(int(self.headers.get("Content-Length") or 0), 65536)
        raw = self.rfile.read(length)
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def fault(self, op):
        """Answer as the fault for `op` says; True when answered."""
        with lock:
            mode = faults.get(op, "none")
        if mode in ("500", "503", "403"):
            self.send(int(mode), {"errors": [{"code": "UNKNOWN", "message": "injected"}]})
            return True
        if mode == "hang":
            time.sleep(float(faults.get(op + ".hold", "120")))
            self.send(503, {"message": "late"})
            return True
        if mode == "huge":
            self.send(200, {"padding": "x" * (4 * 1024 * 1024)})
            return True
        if mode == "malformed":
            data = b"{\"id\": 1, \"token\": \"abc"
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        return False

    def mode(self, op):
        with lock:
            return faults.get(op, "none")

    # ---------------------------------------------------------------- auth

    def basic_user(self):
        import base64
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except Exception:
            return None
        if user == ENV.get("ADMIN_USER") and password == ENV.get("ADMIN_PASSWORD"):
            return "admin"
        if user == ENV.get("LIMITED_USER") and password == ENV.get("LIMITED_PASSWORD"):
            return "limited"
        return None

    def hub_user(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        with lock:
            who = bearers.get(auth[7:])
        if who and who[1] > now():
            return who[0]
        return None

    def gitlab_user(self):
        t = self.headers.get("PRIVATE-TOKEN", "")
        if t and t == ENV.get("ADMIN_TOKEN"):
            return "admin"
        if t and t == ENV.get("LIMITED_TOKEN"):
            return "limited"
        return None

    def unauthorized(self):
        with lock:
            vstats["refused"] += 1
        self.send(401, {"message": "401 Unauthorized"})

    # ---------------------------------------------------------------- routing

    def route(self, method):
        url = urllib.parse.urlparse(self.path)
        path = url.path
        query = urllib.parse.parse_qs(url.query)
        if path == "/_keys" and method == "GET":
            with lock:
                out = [{k: v for k, v in rec.items() if k != "secret"} | {"live": live(rec)} for rec in keys.values()]
            return self.send(200, out)
        if path == "/_vendor_stats" and method == "GET":
            with lock:
                return self.send(200, dict(vstats))
        if path == "/_seed" and method == "POST":
            # Keys nobody uses, named with a prefix (a sweep's work).
            vendor, prefix, n = query["vendor"][0], query["prefix"][0], int(query["n"][0])
            for i in range(n):
                extra = {"full_name": f"robot$library+{prefix}{i}", "project": "library", "duration": 1} if vendor == "harbor" else {"owner": "projects/group/app", "access_level": 20}
                self.created(vendor, f"{prefix}{i}", secrets.token_urlsafe(16), now() + 86400, ["pull"], extra)
            return self.send(200, {"seeded": n})
        if path == "/_fault" and method == "POST":
            op, mode = query.get("op", [""])[0], query.get("mode", ["none"])[0]
            with lock:
                faults[op] = mode
                if "hold" in query:
                    faults[op + ".hold"] = query["hold"][0]
            return self.send(200, {"op": op, "mode": mode})
        if path == "/v2/auth/token" and method == "POST":
            return self.hub_auth()
        if path.startswith("/v2/access-tokens"):
            return self.hub(method, path, query)
        if path.startswith("/api/v2.0/"):
            return self.harbor(method, path, query)
        if path.startswith("/api/v4/"):
            return self.gitlab(method, path, query)
        return self.send(404, {"message": "not found"})

    def do_GET(self):
        if urllib.parse.urlparse(self.path).path.startswith(("/_keys", "/_vendor_stats", "/v2/access-tokens", "/api/")):
            return self.route("GET")
        return super().do_GET()

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        if url.path.startswith(("/_", "/v2/", "/api/")):
            return self.route("POST")
        return super().do_POST()

    def do_DELETE(self):
        return self.route("DELETE")

    def do_PATCH(self):
        return self.route("PATCH")

    # ---------------------------------------------------------------- creation

    def creation(self, who, error):
        """The body of a create request; None once answered (an injected
        fault, a caller that may not create keys, a body that is not JSON).
        `error(message)` is the vendor's error shape."""
        if self.fault("create"):
            return None
        if who != "admin":
            self.send(403, error("forbidden"))
            return None
        b = self.body()
        if not isinstance(b, dict):
            self.send(400, error("invalid JSON"))
            return None
        return b

    def created(self, vendor, name, secret, expires, scopes, extra):
        with lock:
            kid = str(next_id[0])
            next_id[0] += 1
            if vendor == "hub":
                kid = str(uuid.uuid4())
            rec = {"vendor": vendor, "id": kid, "name": name, "secret": secret, "expires": expires,
                   "scopes": scopes, "revoked": False, "created": now()} | extra
            keys[kid] = rec
            vstats["created"] += 1
        return rec

    def after_create(self, rec, answer):
        mode = self.mode("create")
        if mode == "created-then-hang":
            time.sleep(float(faults.get("create.hold", "120")))
            return self.send(503, {"message": "late"})
        if mode == "expired":
            with lock:
                rec["expires"] = now() - 3600
            answer = answer | self.expiry_fields(rec["vendor"], rec["expires"])
        if mode == "noexpiry":
            with lock:
                rec["expires"] = None
            answer = answer | self.expiry_fields(rec["vendor"], None)
        return self.send(201, answer)

    def expiry_fields(self, vendor, expires):
        if vendor == "hub":
            return {"expires_at": None if expires is None else datetime.fromtimestamp(expires, timezone.utc).isoformat().replace("+00:00", "Z")}
        if vendor == "harbor":
            return {"expires_at": -1 if expires is None else int(expires)}
        return {"expires_at": None if expires is None else datetime.fromtimestamp(expires, timezone.utc).date().isoformat()}

    # ---------------------------------------------------------------- Docker Hub

    def hub_auth(self):
        if self.fault("auth"):
            return
        b = self.body() or {}
        if b.get("identifier") == ENV.get("ADMIN_USER") and b.get("secret") == ENV.get("ADMIN_PASSWORD"):
            who = "admin"
        elif b.get("identifier") == ENV.get("LIMITED_USER") and b.get("secret") == ENV.get("LIMITED_PASSWORD"):
            who = "limited"
        else:
            return self.unauthorized()
        token = "hubjwt-" + secrets.token_hex(16)
        with lock:
            bearers[token] = (who, now() + 600)
        return self.send(200, {"access_token": token})

    def hub(self, method, path, query):
        who = self.hub_user()
        if not who:
            return self.unauthorized()
        if method == "POST" and path == "/v2/access-tokens":
            b = self.creation(who, lambda m: {"detail": m})
            if b is None:
                return
            label, scopes = b.get("token_label"), b.get("scopes")
            if not isinstance(label, str) or not 1 <= len(label) <= 100:
                return self.send(400, {"detail": "token_label must be 1-100 characters"})
            if not isinstance(scopes, list) or not scopes or not set(scopes) <= HUB_SCOPES:
                return self.send(400, {"detail": "invalid scopes"})
            expires = None
            if b.get("expires_at") is not None:
                try:
                    expires = datetime.fromisoformat(b["expires_at"].replace("Z", "+00:00")).timestamp()
                except (ValueError, AttributeError):
                    return self.send(400, {"detail": "invalid expires_at"})
            rec = self.created("hub", label, "dckr_pat_" + secrets.token_urlsafe(20), expires, scopes, {})
            answer = {"uuid": rec["id"], "token": rec["secret"], "token_label": label, "scopes": scopes,
                      "is_active": True, "client_id": "HUB", "generated_by": "manual",
                      "created_at": datetime.now(timezone.utc).isoformat()} | self.expiry_fields("hub", expires)
            return self.after_create(rec, answer)
        if method == "GET" and path == "/v2/access-tokens":
            if self.fault("list"):
                return
            with lock:
                vstats["listed"] += 1
                mine = [k for k in keys.values() if k["vendor"] == "hub" and not k["revoked"]]
            page, size, chunk = page_of(mine, query, "page_size", "10")
            results = [{"uuid": k["id"], "token_label": k["name"], "token": "***", "scopes": k["scopes"],
                        "is_active": live(k)} | self.expiry_fields("hub", k["expires"]) for k in chunk]
            more = page * size < len(mine)
            return self.send(200, {"count": len(mine), "active_count": len(mine), "next": f"?page={page + 1}" if more else None,
                                   "previous": None, "results": results})
        m = re.fullmatch(r"/v2/access-tokens/([0-9a-f-]+)", path)
        if method == "DELETE" and m:
            return self.revoke("hub", m.group(1), who)
        return self.send(404, {"detail": "not found"})

    # ---------------------------------------------------------------- Harbor

    def harbor(self, method, path, query):
        who = self.basic_user()
        if not who:
            return self.unauthorized()
        m = re.fullmatch(r"/api/v2.0/projects/([^/]+)", path)
        if method == "GET" and m:
            name = urllib.parse.unquote(m.group(1))
            if name not in HARBOR_PROJECTS:
                return self.send(404, {"errors": [{"code": "NOT_FOUND", "message": "project not found"}]})
            return self.send(200, {"project_id": HARBOR_PROJECTS[name], "name": name})
        if method == "POST" and path == "/api/v2.0/robots":
            b = self.creation(who, lambda m: {"errors": [{"code": "FORBIDDEN" if m == "forbidden" else "BAD_REQUEST", "message": m}]})
            if b is None:
                return
            name, duration, perms = b.get("name"), b.get("duration"), b.get("permissions")
            if not isinstance(name, str) or not HARBOR_NAME.match(name) or len(name) > 255:
                return self.send(400, {"errors": [{"code": "BAD_REQUEST", "message": "invalid robot name"}]})
            if not isinstance(duration, int) or duration == 0 or duration < -1:
                return self.send(400, {"errors": [{"code": "BAD_REQUEST", "message": "invalid duration"}]})
            if b.get("level") != "project" or not isinstance(perms, list) or len(perms) != 1:
                return self.send(400, {"errors": [{"code": "BAD_REQUEST", "message": "one project permission expected"}]})
            project = perms[0].get("namespace")
            if perms[0].get("kind") != "project" or project not in HARBOR_PROJECTS:
                return self.send(400, {"errors": [{"code": "BAD_REQUEST", "message": "unknown project"}]})
            actions = [a.get("action") for a in perms[0].get("access", []) if a.get("resource") == "repository"]
            if not actions or not set(actions) <= {"pull", "push"}:
                return self.send(400, {"errors": [{"code": "BAD_REQUEST", "message": "invalid access"}]})
            full = f"robot${project}+{name}"
            with lock:
                clash = any(k["vendor"] == "harbor" and k["full_name"] == full for k in keys.values())
            if clash:
                return self.send(409, {"errors": [{"code": "CONFLICT", "message": "robot exists"}]})
            expires = None if duration == -1 else now() + duration * 86400
            rec = self.created("harbor", name, secrets.token_urlsafe(24), expires, actions,
                               {"full_name": full, "project": project, "duration": duration})
            answer = {"id": int(rec["id"]), "name": full, "secret": rec["secret"],
                      "creation_time": datetime.now(timezone.utc).isoformat()} | self.expiry_fields("harbor", expires)
            return self.after_create(rec, answer)
        if method == "GET" and path == "/api/v2.0/robots":
            if self.fault("list"):
                return
            q = dict(p.split("=", 1) for p in query.get("q", [""])[0].split(",") if "=" in p)
            if q.get("Level") != "project" or not q.get("ProjectID", "").isdigit():
                return self.send(403, {"errors": [{"code": "FORBIDDEN", "message": "a project admin must name the project"}]})
            pid = int(q["ProjectID"])
            with lock:
                vstats["listed"] += 1
                mine = [k for k in keys.values() if k["vendor"] == "harbor" and HARBOR_PROJECTS.get(k["project"]) == pid and not k["revoked"]]
            _, _, chunk = page_of(mine, query, "page_size", "10")
            return self.send(200, [{"id": int(k["id"]), "name": k["full_name"], "level": "project", "disable": False,
                                    "duration": k["duration"]} | self.expiry_fields("harbor", k["expires"]) for k in chunk])
        m = re.fullmatch(r"/api/v2.0/robots/([0-9]+)", path)
        if m and method == "DELETE":
            return self.revoke("harbor", m.group(1), who, ok=200)
        if m and method == "PATCH":
            b = self.body() or {}
            s = b.get("secret", "")
            strong = isinstance(s, str) and 8 <= len(s) <= 128 and re.search(r"[A-Z]", s) and re.search(r"[a-z]", s) and re.search(r"[0-9]", s)
            if not strong:
                return self.send(400, {"errors": [{"code": "BAD_REQUEST", "message": "weak secret"}]})
            with lock:
                k = keys.get(m.group(1))
                if not k or k["vendor"] != "harbor" or k["revoked"]:
                    return self.send(404, {"errors": [{"code": "NOT_FOUND", "message": "robot not found"}]})
                k["secret"] = s  # the old secret stops working at once
            return self.send(200, {})
        return self.send(404, {"errors": [{"code": "NOT_FOUND", "message": "not found"}]})

    # ---------------------------------------------------------------- GitLab

    def gitlab(self, method, path, query):
        who = self.gitlab_user()
        if not who:
            return self.unauthorized()
        m = re.fullmatch(r"/api/v4/(projects|groups)/([^/]+)/access_tokens(?:/([0-9]+))?", self.path.split("?")[0])
        if not m:
            return self.send(404, {"message": "404 Not Found"})
        kind, ident, token_id = m.group(1), urllib.parse.unquote(m.group(2)), m.group(3)
        table = GITLAB_PROJECTS if kind == "projects" else GITLAB_GROUPS
        if ident not in table:
            return self.send(404, {"message": "404 Project Not Found"})
        owner = f"{kind}/{table[ident]}"
        if method == "POST" and not token_id:
            b = self.creation(who, lambda m: {"message": "403 Forbidden" if m == "forbidden" else m})
            if b is None:
                return
            name, scopes, exp, level = b.get("name"), b.get("scopes"), b.get("expires_at"), b.get("access_level", 40)
            if not isinstance(name, str) or not name:
                return self.send(400, {"message": "name is missing"})
            if not isinstance(scopes, list) or not scopes or not set(scopes) <= GITLAB_SCOPES:
                return self.send(400, {"message": "scopes does not have a valid value"})
            if level not in (10, 15, 20, 30, 40, 50):
                return self.send(400, {"message": "access_level does not have a valid value"})
            try:
                d = date.fromisoformat(exp)
            except (TypeError, ValueError):
                return self.send(400, {"message": "expires_at is missing or invalid"})
            today = datetime.now(timezone.utc).date()
            if d <= today or d > today + timedelta(days=365):
                return self.send(400, {"message": "expires_at must be after today and at most 365 days ahead"})
            expires = datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()
            rec = self.created("gitlab", name, "glpat-" + secrets.token_urlsafe(20), expires, scopes, {"owner": owner, "access_level": level})
            answer = {"id": int(rec["id"]), "name": name, "token": rec["secret"], "scopes": scopes, "active": True,
                      "revoked": False, "access_level": level, "user_id": 900} | self.expiry_fields("gitlab", expires)
            return self.after_create(rec, answer)
        if method == "GET" and not token_id:
            if self.fault("list"):
                return
            with lock:
                vstats["listed"] += 1
                mine = [k for k in keys.values() if k["vendor"] == "gitlab" and k["owner"] == owner and not k["revoked"]]
            if query.get("state", [""])[0] == "active":
                mine = [k for k in mine if live(k)]
            _, _, chunk = page_of(mine, query, "per_page", "20")
            return self.send(200, [{"id": int(k["id"]), "name": k["name"], "scopes": k["scopes"], "active": live(k),
                                    "revoked": k["revoked"]} | self.expiry_fields("gitlab", k["expires"]) for k in chunk])
        if method == "DELETE" and token_id:
            return self.revoke("gitlab", token_id, who)
        return self.send(405, {"message": "405 Method Not Allowed"})

    # ---------------------------------------------------------------- revocation

    def revoke(self, vendor, kid, who, ok=204):
        if self.fault("delete"):
            return
        if who != "admin":
            return self.send(403, {"message": "403 Forbidden"})
        with lock:
            k = keys.get(kid)
            if not k or k["vendor"] != vendor or k["revoked"]:
                return self.send(404, {"message": "404 Not Found"})
            k["revoked"] = True
            k["revoked_at"] = now()
            vstats["revoked"] += 1
        if ok == 204:
            self.send_response(204)
            self.end_headers()
            return True
        return self.send(ok, {})


def main():
    server = realm.ThreadingHTTPServer(("127.0.0.1", int(ENV["PORT"])), Handler)
    if ENV.get("TLS_PORT"):
        # The same APIs (and keys) over https too, as the vendors serve them.
        import ssl
        tls = realm.ThreadingHTTPServer(("127.0.0.1", int(ENV["TLS_PORT"])), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ENV["TLS_CERT"], ENV["TLS_KEY"])
        tls.socket = context.wrap_socket(tls.socket, server_side=True)
        threading.Thread(target=tls.serve_forever, daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

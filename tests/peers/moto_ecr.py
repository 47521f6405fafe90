"""moto's server (ECR, STS, ...) behind a thin WSGI layer for regcred's tests.

moto answers GetAuthorizationToken with an expiry in 2015 and a fixed
proxyEndpoint. This layer, and nothing else, changes that:

- ``expiresAt`` becomes now + TOKEN_TTL seconds;
- ``proxyEndpoint`` is replaced per registry id from PROXY_ENDPOINTS (a JSON
  object ``{"123456789012": "http://127.0.0.1:5000"}``), so a Secret can be
  proven to pull from a local registry;
- ``GET /_stats`` counts calls per operation, ``POST /_fault`` makes the next
  calls of one operation fail (``{"operation": ..., "code": ..., "status": 400}``;
  an empty body clears it);
- ECR Public (which moto lacks) answers GetAuthorizationToken at the HTTP
  level with a token for ``public.ecr.aws``.

Usage: python moto_ecr.py PORT   (prints ``LISTENING PORT`` when ready)
"""

import base64
import json
import os
import sys
import threading
import time
from urllib.parse import parse_qs

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

TTL = int(os.environ.get("TOKEN_TTL", "43200"))
PROXY = json.loads(os.environ.get("PROXY_ENDPOINTS", "{}"))

lock = threading.Lock()
stats = {}
fault = {}

moto_app = DomainDispatcherApplication(create_backend_app)


def operation(environ, body):
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.split(".")[-1], target
    action = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
    return action, ""


def respond(start_response, status, payload, content_type="application/json"):
    data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return [data]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    if path == "/_stats":
        with lock:
            return respond(start_response, "200 OK", dict(stats))
    if path == "/_fault":
        with lock:
            fault.clear()
            if body.strip():
                fault.update(json.loads(body))
        return respond(start_response, "200 OK", {"ok": True})

    op, target = operation(environ, body)
    with lock:
        stats[op] = stats.get(op, 0) + 1
        injected = dict(fault) if fault.get("operation") == op else None
    if injected:
        code = injected.get("code", "AccessDeniedException")
        status = injected.get("status", 400)
        if target:
            payload = {"__type": code, "message": injected.get("message", "injected by the test")}
            return respond(start_response, f"{status} Error", payload, "application/x-amz-json-1.1")
        xml = (
            "<ErrorResponse><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error>"
            "<RequestId>test</RequestId></ErrorResponse>" % (code, injected.get("message", "injected by the test"))
        )
        return respond(start_response, f"{status} Error", xml.encode(), "text/xml")

    if target.startswith("SpencerFrontendService") and op == "GetAuthorizationToken":
        token = base64.b64encode(b"AWS:ecr-public-token").decode()
        payload = {"authorizationData": {"authorizationToken": token, "expiresAt": time.time() + TTL}}
        return respond(start_response, "200 OK", payload, "application/x-amz-json-1.1")

    environ["wsgi.input"] = __import__("io").BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    if op != "GetAuthorizationToken":
        return moto_app(environ, start_response)

    captured = {}

    def capture(status, headers, exc_info=None):
        captured["status"] = status
        captured["headers"] = headers

    chunks = b"".join(moto_app(environ, capture))
    if not captured["status"].startswith("200"):
        start_response(captured["status"], captured["headers"])
        return [chunks]
    data = json.loads(chunks)
    for entry in data.get("authorizationData", []):
        entry["expiresAt"] = time.time() + TTL
        host = entry.get("proxyEndpoint", "").split("://")[-1]
        registry_id = host.split(".")[0]
        if registry_id in PROXY:
            entry["proxyEndpoint"] = PROXY[registry_id]
    return respond(start_response, "200 OK", data, "application/x-amz-json-1.1")


def main():
    port = int(sys.argv[1])
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"LISTENING {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

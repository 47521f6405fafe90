"""A hostile token endpoint and registry for regcred's tests: answers what
real servers never would (absurd lifetimes, huge and endless bodies, echoed
secrets, redirects, hangs), over http or https (optionally requiring a client
certificate). Standard library only.

    hostile.py HOST PORT [--cert C --key K [--client-ca CA]]

Paths are /c/<case>/<kind>[?query]; requests are counted per case and served
as JSON at /_stats (which is not counted). Kinds:

    body?b=RAW      200 with RAW as the body; "{n}" in RAW becomes a counter
                    (a body set with POST /_set?case=C&b=RAW wins over b)
    status?code=N&b=RAW   the same with another status
    huge?bytes=N    a JSON token response padded to N bytes (Content-Length)
    chunked?bytes=N the same, chunked (no Content-Length)
    endless         a chunked body that never ends
    hang            reads the request and never answers
    slow?ms=N&b=RAW like body, answered N ms after the request
    redirect?to=URL 302 to URL
    echo-error      400 {"error": <the client secret it was sent>}

A registry's /v2/ answers 401 with a Bearer challenge naming --realm (after
the delay set with POST /_set?case=v2-delay-ms&b=N, if any).
"""
import base64
import json
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {}
overrides = {}
counter = [0]
lock = threading.Lock()
stop = threading.Event()


def count(case):
    with lock:
        counts[case] = counts.get(case, 0) + 1
        counter[0] += 1
        return counter[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("hostile: %s %s\n" % (self.command, self.path.split("?")[0]))

    def send(self, status, body, ctype="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_POST(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def handle_any(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/_stats":
            with lock:
                return self.send(200, json.dumps(counts).encode())
        if url.path == "/_set":
            with lock:
                overrides[q["case"]] = q["b"]
            return self.send(200, b"{}")
        parts = url.path.split("/")
        # A registry is looked up at /v2/: the case is the whole registry.
        if url.path.startswith("/v2"):
            n = count("v2")
            with lock:
                delay = float(overrides.get("v2-delay-ms", "0")) / 1000
            stop.wait(delay)
            realm = self.server.registry_realm or "http://127.0.0.1:1/token"
            return self.send(401, b"{}", headers=[("WWW-Authenticate", 'Bearer realm="%s",service="hostile"' % realm)])
        if len(parts) < 4 or parts[1] != "c":
            return self.send(404, b"{}")
        case, kind = parts[2], parts[3]
        n = count(case)
        body = self.read_body()
        if kind == "body":
            with lock:
                raw = overrides.get(case, q.get("b", "{}"))
            return self.send(200, raw.replace("{n}", str(n)).encode())
        if kind == "slow":
            stop.wait(float(q.get("ms", "1000")) / 1000)
            return self.send(200, q.get("b", "{}").replace("{n}", str(n)).encode())
        if kind == "status":
            return self.send(int(q.get("code", "500")), q.get("b", "{}").replace("{n}", str(n)).encode())
        if kind in ("huge", "chunked"):
            size = int(q.get("bytes", str(1024 * 1024)))
            head = '{"token":"hostile-huge-%d","expires_in":300,"pad":"' % n
            data = (head + "a" * max(0, size - len(head) - 2) + '"}').encode()
            if kind == "huge":
                return self.send(200, data)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 16384):
                chunk = data[i:i + 16384]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        if kind == "endless":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b'{"token":"' + b"x" * 8192
            deadline = time.time() + 120
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                while time.time() < deadline and not stop.is_set():
                    self.wfile.write(b"%x\r\n%s\r\n" % (8192, b"x" * 8192))
                    time.sleep(0.005)
            except OSError:
                pass
            self.close_connection = True
            return
        if kind == "hang":
            stop.wait(600)
            self.close_connection = True
            return
        if kind == "redirect":
            return self.send(302, b"{}", headers=[("Location", q.get("to", "/"))])
        if kind == "echo-error":
            # What a broken or hostile server does: reflect the client secret.
            secret = ""
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                pair = base64.b64decode(auth[6:]).decode()
                secret = urllib.parse.unquote_plus(pair.split(":", 1)[1])
            form = dict(urllib.parse.parse_qsl(body.decode()))
            secret = form.get("client_secret", secret)
            return self.send(400, json.dumps({"error": secret, "error_description": "bad " + secret}).encode())
        return self.send(404, b"{}")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    ssl_context = None
    registry_realm = None

    def finish_request(self, request, client_address):
        # The TLS handshake happens here, in the request's own thread, so a
        # client that stalls it holds up nobody else.
        if self.ssl_context is not None:
            try:
                request.settimeout(30)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError) as e:
                sys.stderr.write("hostile: TLS handshake failed: %s\n" % e)
                return
        self.RequestHandlerClass(request, client_address, self)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    args = sys.argv[3:]
    opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1, 2)}
    server = Server((host, port), Handler)
    server.registry_realm = opt.get("--realm")
    if "--cert" in opt:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(opt["--cert"], opt["--key"])
        if "--client-ca" in opt:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(opt["--client-ca"])
        server.ssl_context = ctx
    try:
        server.serve_forever()
    finally:
        stop.set()


if __name__ == "__main__":
    main()

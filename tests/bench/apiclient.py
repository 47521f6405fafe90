"""A lean Kubernetes API client for the benchmark and soak drivers (stdlib
only): the test control plane's admin certificate, one kept-alive connection
per object, a count of the requests it sends (so a driver can subtract its
own load from the API server's metrics)."""

import http.client
import json
import os
import ssl
import threading
import urllib.parse

own_lock = threading.Lock()
own = {}  # (method, resource) -> requests sent


class Conn:
    def __init__(self, server, pki, timeout=60):
        u = urllib.parse.urlsplit(server)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
        self.ctx.load_cert_chain(f"{pki}/admin.crt", f"{pki}/admin.key")
        self.c = self._connect()

    def _connect(self):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=self.timeout)

    def req(self, method, path, body=None, ctype="application/json", resource=None, retries=3):
        """(status, body bytes); `resource` names what to count it as."""
        if resource:
            with own_lock:
                own[(method, resource)] = own.get((method, resource), 0) + 1
        data = json.dumps(body) if isinstance(body, (dict, list)) else body
        for attempt in range(retries):
            try:
                self.c.request(method, path, data, {"Content-Type": ctype} if data else {})
                r = self.c.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.c.close()
                self.c = self._connect()
                if attempt == retries - 1:
                    raise

    def json(self, method, path, body=None, **kw):
        status, data = self.req(method, path, body, **kw)
        return status, (json.loads(data) if data else None)


def parallel(items, fn, connect, threads):
    """fn(conn, item) for every item, on `threads` threads with a connection
    each (from `connect()`); exits with the first errors after the run."""
    import sys
    items, lock, errors = list(items), threading.Lock(), []

    def work():
        c = connect()
        while True:
            with lock:
                if not items:
                    return
                it = items.pop()
            try:
                fn(c, it)
            except Exception as e:  # reported after the run
                errors.append(repr(e))

    ts = [threading.Thread(target=work) for _ in range(threads)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    if errors:
        sys.exit(f"creates failed: {errors[:3]}")


def own_snapshot():
    with own_lock:
        return dict(own)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0

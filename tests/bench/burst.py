"""The burst benchmark's driver (run by `tests/bench/scale.sh --burst`;
stdlib only): does a burst of new credentials delay the renewals that fall
due meanwhile?

    python3 burst.py SERVER PKI_DIR OUT_JSON N HOSTILE_PY CONTROLLERS...

For each CONTROLLER (`label=command line`, `{port}` a free port, `{ns}` the
namespace it must watch), alone: 100 running credentials with 20 s tokens
renewed at half their life, then N new credentials created at once (32 at
a time), all `http` sources of one token server (tests/peers/hostile.py)
that answers after 50 ms. A sampler lists the running credentials' Secrets
every 0.5 s until every new Secret is written. Reported: the lateness of
each renewal seen (issued-at of the new credential minus the renewal-time
of the one it replaced; the annotations have whole seconds), worst and
median; expired moments (a Secret seen expired at a read, or a credential
issued after the one before expired) and how many credentials they hit;
first create -> all N Secrets written; peak RSS.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apiclient import Conn as _Conn, parallel as _parallel, rss_kib as rss  # noqa: E402

SERVER, PKI, OUT, N, HOSTILE = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
CONTROLLERS = [a.split("=", 1) for a in sys.argv[6:]]
RUNNING = 100
LIFETIME = 20


def Conn():
    return _Conn(SERVER, PKI)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parallel(items, fn):
    _parallel(items, fn, Conn, 32)


def parse_time(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def token_url(base, case, expires_in):
    body = '{"token":"%s-{n}","expires_in":%d}' % (case, expires_in)
    return f"{base}/c/{case}/slow?" + urllib.parse.urlencode({"ms": "50", "b": body})


def credential(name, url, group, extra):
    spec = {"source": {"http": {"url": url, "allowInsecureHTTP": True, "registries": ["registry.example.com"]}},
            "secretTemplate": {"labels": {"burst": group}}}
    spec.update(extra)
    return {"apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential", "metadata": {"name": name}, "spec": spec}


def count(c, ns, group):
    s, b = c.req("GET", f"/api/v1/namespaces/{ns}/secrets?labelSelector=burst%3D{group}")
    return len(json.loads(b)["items"])


class Sampler(threading.Thread):
    def __init__(self, ns):
        super().__init__()
        self.ns, self.stop, self.last = ns, threading.Event(), {}
        self.lateness, self.expired, self.polls, self.gap = [], [], 0, 0.0
        self.names = set()  # credentials seen expired

    def run(self):
        c, prev = Conn(), time.time()
        while not self.stop.is_set():
            s, b = c.req("GET", f"/api/v1/namespaces/{self.ns}/secrets?labelSelector=burst%3Drunning")
            now = datetime.now(timezone.utc)
            self.polls += 1
            self.gap, prev = max(self.gap, time.time() - prev), time.time()
            for x in json.loads(b)["items"]:
                a = x["metadata"]["annotations"]
                name = x["metadata"]["name"]
                issued, not_after, renewal = (parse_time(a[k]) for k in
                                              ("regcred.dev/issued-at", "regcred.dev/not-after", "regcred.dev/renewal-time"))
                if now >= not_after:
                    self.expired.append(f"{name} at {now}")
                    self.names.add(name)
                was = self.last.get(name)
                if was and issued != was[0]:
                    self.lateness.append((issued - was[2]).total_seconds())
                    if issued > was[1]:
                        self.expired.append(f"{name}: issued {issued} after {was[1]}")
                        self.names.add(name)
                self.last[name] = (issued, not_after, renewal)
            time.sleep(0.5)


def run(label, command, base):
    c = Conn()
    ns = f"burst-{label}"
    c.req("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    port = free_port()
    log = open(os.path.join(os.path.dirname(OUT), f"burst-{label}.log"), "w")
    proc = subprocess.Popen(command.replace("{port}", str(port)).replace("{ns}", ns), shell=True, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(3)
    peak = [0]
    done = threading.Event()

    def watch_rss():
        while not done.is_set():
            peak[0] = max(peak[0], rss(proc.pid))
            time.sleep(0.2)

    threading.Thread(target=watch_rss, daemon=True).start()
    path = f"/apis/regcred.dev/v1alpha1/namespaces/{ns}/registrycredentials"

    def create(conn, obj):
        s, b = conn.req("POST", path, obj)
        if s != 201:
            raise RuntimeError(f"create: {s} {b[:300]}")

    running = token_url(base, "running", LIFETIME)
    parallel([credential(f"run-{i:03}", running, "running", {"renewBeforePercentage": 50}) for i in range(RUNNING)], create)
    while count(c, ns, "running") < RUNNING:
        time.sleep(0.5)
    time.sleep(LIFETIME)  # every running credential has renewed once: in its rhythm
    sampler = Sampler(ns)
    sampler.start()
    new = token_url(base, "new", 3600)
    t0 = time.time()
    parallel([credential(f"new-{i:05}", new, "new", {}) for i in range(N)], create)
    created = time.time() - t0
    while count(c, ns, "new") < N and time.time() - t0 < 3600:
        time.sleep(2)
    converged = time.time() - t0
    sampler.stop.set()
    sampler.join()
    done.set()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    c.req("DELETE", f"/api/v1/namespaces/{ns}")
    late = sorted(sampler.lateness)
    return {
        "label": label, "n": N, "created_s": round(created, 1), "all_written_s": round(converged, 1),
        "renewals_seen": len(late), "lateness_median_s": statistics.median(late) if late else None,
        "lateness_worst_s": late[-1] if late else None, "expired_moments": len(sampler.expired), "credentials_expired": len(sampler.names),
        "expired_examples": sampler.expired[:5], "polls": sampler.polls, "longest_gap_s": round(sampler.gap, 1),
        "rss_peak_mib": round(peak[0] / 1024),
    }


def main():
    port = free_port()
    hostile = subprocess.Popen([sys.executable, HOSTILE, "127.0.0.1", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    results = []
    try:
        for label, command in CONTROLLERS:
            r = run(label, command, base)
            print(f"{label}: {json.dumps(r)}", file=sys.stderr)
            results.append(r)
    finally:
        hostile.kill()
    with open(OUT, "w") as f:
        json.dump({"n": N, "running": RUNNING, "lifetime_s": LIFETIME, "results": results,
                   "machine": f"{os.cpu_count()} cores, {os.uname().release}"}, f, indent=2)
    print(f"\n{RUNNING} running credentials ({LIFETIME} s tokens, renewed at half) while {N} new ones are created at once\n")
    print("| controller | created in | all written | renewals seen | lateness median / worst | expired moments (credentials) | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['created_s']} s | {r['all_written_s']} s | {r['renewals_seen']} | "
              f"{r['lateness_median_s']} s / {r['lateness_worst_s']} s | {r['expired_moments']} ({r['credentials_expired']}) | {r['rss_peak_mib']} MiB |")


if __name__ == "__main__":
    main()

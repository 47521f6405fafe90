"""The scale benchmark's driver (run by tests/bench/scale.sh; stdlib only).

Talks to the project's control plane as its admin with kept-alive
connections, creates the objects, samples the controller process (RSS from
/proc, CPU seconds from /proc/PID/stat), and counts API requests from the API
server's own `apiserver_request_total` (it has no per-client label: the
driver subtracts its own requests, counted here, and a no-controller baseline
rate measured first).

    python3 scale.py SERVER PKI_DIR OUT_JSON N NAMESPACES CONTROLLERS...

where each CONTROLLER is `label=command line` (run with shell=True, output to
a log next to OUT_JSON; `{port}` in it becomes a free port for its metrics).
Prints a Markdown table.
"""

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apiclient import Conn as _Conn, cpu_seconds, own_snapshot, parallel as _parallel, rss_kib as rss  # noqa: E402

SERVER, PKI, OUT, N, NAMESPACES = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
CONTROLLERS = [a.split("=", 1) for a in sys.argv[6:]]
THREADS = 8  # parallel creates, as a user's `kubectl apply` fan-out would be


def Conn():
    return _Conn(SERVER, PKI)


def parallel(items, fn):
    _parallel(items, fn, Conn, THREADS)


def request_counts(c):
    """apiserver_request_total by (verb, resource), watches left out."""
    status, text = c.req("GET", "/metrics")
    out = {}
    for line in text.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if labels.get("verb") in ("WATCH", "CONNECT") or not labels.get("resource"):
            continue
        res = labels["resource"] + ("/" + labels["subresource"] if labels.get("subresource") else "")
        key = (labels["verb"], res)
        out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return out


def minus(a, b):
    return {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b)}



def requests_in(c, fn):
    """Run fn; the API requests others made meanwhile (driver's own out), and its duration."""
    before, own_before, t0 = request_counts(c), own_snapshot(), time.time()
    result = fn()
    t1 = time.time()
    after, own_after = request_counts(c), own_snapshot()
    total = minus(after, before)
    mine = minus(own_after, own_before)
    # The driver's own requests, by the verb the API server records.
    for (method, resource), n in mine.items():
        verb = {"GET": "GET", "POST": "POST", "PATCH": "PATCH", "PUT": "UPDATE", "DELETE": "DELETE"}[method]
        if resource.endswith("#list"):
            verb, resource = "LIST", resource[:-5]
        total[(verb, resource)] = total.get((verb, resource), 0) - n
    # The metrics reads themselves are not resource requests.
    return result, t1 - t0, total


def sample(pid, stop, out):
    peak = 0
    while not stop.is_set():
        peak = max(peak, rss(pid))
        time.sleep(0.2)
    out["peak"] = peak




def namespaces():
    return [f"scale-{i}" for i in range(NAMESPACES)]


def ns_of(i):
    return f"scale-{i % NAMESPACES}"


DOCKER = base64.b64encode(json.dumps({"auths": {"registry.example.com": {
    "username": "robot", "password": "bench-pw-000", "auth": base64.b64encode(b"robot:bench-pw-000").decode()}}}).encode()).decode()


def raw_rate(c):
    c.req("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "scale-raw"}})

    def create(conn, i):
        s, b = conn.req("POST", "/api/v1/namespaces/scale-raw/secrets", {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": f"raw-{i}"}, "data": {".dockerconfigjson": DOCKER}})
        if s != 201:
            raise RuntimeError(f"raw create: {s} {b[:200]}")

    t0 = time.time()
    parallel(range(N), create)
    return N / (time.time() - t0)


def regcred_object(i):
    return ("/apis/regcred.dev/v1alpha1/namespaces/{ns}/registrycredentials", "registrycredentials", {
        "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
        "metadata": {"name": f"cred-{i}"},
        "spec": {"secretName": f"pull-{i}", "source": {"basic": {
            "secretRef": {"name": f"robot-{i % 10}"}, "registries": ["registry.example.com"], "verify": False}}}})


TEMPLATE = ('{"auths":{"registry.example.com":{"username":"{{ .username }}","password":"{{ .password }}",'
            '"auth":"{{ printf "%s:%s" .username .password | b64enc }}"}}}')


def eso_object(i):
    return ("/apis/external-secrets.io/v1beta1/namespaces/{ns}/externalsecrets", "externalsecrets", {
        "apiVersion": "external-secrets.io/v1beta1", "kind": "ExternalSecret",
        "metadata": {"name": f"es-{i}"},
        "spec": {"refreshInterval": "1h", "secretStoreRef": {"name": "fake", "kind": "SecretStore"},
                 "target": {"name": f"pull-{i}", "template": {"type": "kubernetes.io/dockerconfigjson",
                                                              "data": {".dockerconfigjson": TEMPLATE}}},
                 "data": [{"secretKey": "username", "remoteRef": {"key": f"robot-{i % 10}", "property": "username"}},
                          {"secretKey": "password", "remoteRef": {"key": f"robot-{i % 10}", "property": "password"}}]}})


def setup_sources(c, label):
    """Per namespace: 10 source Secrets (regcred) or a fake SecretStore (ESO)."""
    for ns in namespaces():
        c.req("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        if label.startswith("regcred"):
            for j in range(10):
                c.req("POST", f"/api/v1/namespaces/{ns}/secrets", {
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"robot-{j}"},
                    "stringData": {"username": "robot", "password": "bench-pw-000"}})
        else:
            data = [{"key": f"robot-{j}", "value": json.dumps({"username": "robot", "password": "bench-pw-000"})} for j in range(10)]
            s, b = c.req("POST", f"/apis/external-secrets.io/v1beta1/namespaces/{ns}/secretstores", {
                "apiVersion": "external-secrets.io/v1beta1", "kind": "SecretStore", "metadata": {"name": "fake"},
                "spec": {"provider": {"fake": {"data": data}}}})
            if s != 201:
                sys.exit(f"SecretStore: {s} {b[:300]}")


def cleanup(c):
    for ns in namespaces():
        c.req("DELETE", f"/api/v1/namespaces/{ns}")
    for _ in range(600):
        s, b = c.req("GET", "/api/v1/namespaces?labelSelector=")
        names = [n["metadata"]["name"] for n in json.loads(b)["items"]]
        if not any(n.startswith("scale-") and n != "scale-raw" for n in names):
            return
        time.sleep(0.5)


def ready_count(c, plural_path, secret_prefix):
    """Objects Ready=True, and target Secrets present (one LIST each, from
    the API server's watch cache, to load it as little as possible)."""
    s, b = c.req("GET", plural_path + "?resourceVersion=0", resource=plural_path.rsplit("/", 1)[1] + "#list")
    items = json.loads(b)["items"]
    ready = sum(1 for o in items if any(x.get("type") == "Ready" and x.get("status") == "True"
                                          for x in (o.get("status") or {}).get("conditions", [])))
    s, b = c.req("GET", "/api/v1/secrets?resourceVersion=0&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dregcred", resource="secrets#list")
    if not secret_prefix.startswith("pull-") or "regcred" not in plural_path:
        s, b = c.req("GET", "/api/v1/secrets?resourceVersion=0&fieldSelector=type%3Dkubernetes.io%2Fdockerconfigjson", resource="secrets#list")
    have = sum(1 for x in json.loads(b)["items"] if x["metadata"]["name"].startswith(secret_prefix)
               and x["metadata"]["namespace"].startswith("scale-") and x["metadata"]["namespace"] != "scale-raw")
    return ready, have


def run(label, command, raw, baseline):
    c = Conn()
    kind = "regcred" if label.startswith("regcred") else "eso"
    setup_sources(c, kind if kind == "regcred" else "eso")
    log = open(os.path.join(os.path.dirname(OUT), f"{label}.log"), "w")
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = command.replace("{port}", str(port))
    proc = subprocess.Popen(command, shell=True, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(5)  # started, caches synced
    pid = proc.pid
    # The shell exec'd the controller (commands start with `exec`).
    idle_rss = rss(pid)
    cpu0 = cpu_seconds(pid)
    make = regcred_object if kind == "regcred" else eso_object
    path0, resource, _ = make(0)
    list_path = "/apis/regcred.dev/v1alpha1/registrycredentials" if kind == "regcred" else "/apis/external-secrets.io/v1beta1/externalsecrets"
    stop, peak = threading.Event(), {}
    sampler = threading.Thread(target=sample, args=(pid, stop, peak))
    sampler.start()

    def create(conn, i):
        path, res, body = make(i)
        s, b = conn.req("POST", path.format(ns=ns_of(i)), body, resource=res)
        if s != 201:
            raise RuntimeError(f"create: {s} {b[:300]}")

    def converge():
        t0 = time.time()
        parallel(range(N), create)
        created = time.time() - t0
        while True:
            ready, have = ready_count(c, list_path, "pull-")
            if ready >= N and have >= N:
                return created, time.time() - t0
            if proc.poll() is not None:
                return created, None
            if time.time() - t0 > 3600:
                sys.exit(f"{label}: no convergence in an hour ({ready} ready, {have} Secrets)")
            time.sleep(0.5)

    (created, took), window, reqs = requests_in(c, converge)
    if took is None:
        # The controller died: say so, with the first line of its log.
        stop.set()
        sampler.join()
        log.flush()
        with open(log.name) as f:
            first = f.readline().strip()
        ready, have = ready_count(c, list_path, "pull-")
        cleanup(c)
        return {"label": label, "n": N, "namespaces": NAMESPACES, "exited": first[:200], "ready_before_exit": ready}
    # Settle: late requests of the burst (status writes, Events) count too.
    _, settle, late = requests_in(c, lambda: time.sleep(5))
    for k, v in late.items():
        reqs[k] = reqs.get(k, 0) + v
    window += settle
    for k, v in baseline.items():
        reqs[k] = reqs.get(k, 0) - v * window
    stop.set()
    sampler.join()
    cpu = cpu_seconds(pid) - cpu0
    time.sleep(55)
    after60 = rss(pid)
    # Idle minute: API requests (watches aside) and mints.
    mints0 = mints(port) if kind == "regcred" else None
    _, idle_window, idle = requests_in(c, lambda: time.sleep(60))
    idle_mints = (mints(port) - mints0) if kind == "regcred" else None
    for k, v in baseline.items():
        idle[k] = idle.get(k, 0) - v * idle_window
    result = {
        "label": label, "n": N, "namespaces": NAMESPACES,
        "creates_s": round(created, 2), "converged_s": round(took, 2), "rate": round(N / took, 1),
        "ratio_to_raw": round(N / took / raw, 3),
        "rss_idle_kib": idle_rss, "rss_peak_kib": peak.get("peak", 0), "rss_after_60s_kib": after60,
        "cpu_s": round(cpu, 2),
        "requests_per_object": round(sum(v for v in reqs.values()) / N, 2),
        "requests_by_kind": {f"{v} {r}": round(n / N, 2) for (v, r), n in sorted(reqs.items()) if abs(n / N) >= 0.05},
        "idle_requests_per_min": round(sum(max(v, 0) for v in idle.values()) * 60 / idle_window, 1),
        "idle_by_kind": {f"{v} {r}": round(n, 1) for (v, r), n in sorted(idle.items()) if n >= 0.5},
    }
    if kind == "regcred":
        result.update(churn(c), idle_mints=idle_mints)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    cleanup(c)
    return result


def mints(port):
    """regcred_mints_total, summed over source kinds, from the operator's metrics."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("regcred_mints_total"))


def churn(c):
    """10% of the sources change at once (robot-0 everywhere): time until every affected Secret is rewritten."""
    affected = [i for i in range(N) if i % 10 == 0]
    t0 = time.time()
    for ns in namespaces():
        c.req("PATCH", f"/api/v1/namespaces/{ns}/secrets/robot-0", {"stringData": {"password": "bench-pw-001"}},
              ctype="application/merge-patch+json", resource="secrets")
    want = base64.b64encode(b"robot:bench-pw-001").decode()
    while True:
        s, b = c.req("GET", "/api/v1/secrets?fieldSelector=type%3Dkubernetes.io%2Fdockerconfigjson", resource="secrets#list")
        done = 0
        names = {f"pull-{i}" for i in affected}
        for x in json.loads(b)["items"]:
            if x["metadata"]["name"] in names and x["metadata"]["namespace"] != "scale-raw":
                if want in base64.b64decode(x["data"][".dockerconfigjson"]).decode():
                    done += 1
        if done >= len(affected):
            return {"churn_n": len(affected), "churn_s": round(time.time() - t0, 2)}
        if time.time() - t0 > 600:
            return {"churn_n": len(affected), "churn_s": None, "churn_done": done}
        time.sleep(0.25)


def main():
    c = Conn()
    # No controller running: the background request rate (kube-controller-manager etc.).
    _, w, base = requests_in(c, lambda: time.sleep(20))
    baseline = {k: v / w for k, v in base.items() if v > 0}
    raw = raw_rate(c)
    print(f"raw: {N} Secrets at {raw:.0f}/s", file=sys.stderr)
    results = []
    for label, command in CONTROLLERS:
        r = run(label, command, raw, baseline)
        print(f"{label}: {json.dumps(r)}", file=sys.stderr)
        results.append(r)
    with open(OUT, "w") as f:
        json.dump({"n": N, "namespaces": NAMESPACES, "raw_rate": round(raw, 1), "results": results,
                   "machine": f"{os.cpu_count()} cores, {os.uname().release}"}, f, indent=2)
    first = results[0] if results else None
    print(f"\n{N} credentials in {NAMESPACES} namespace(s); raw Secret creates: {raw:.0f}/s\n")
    print("| controller | converged | rate | of raw | RSS idle / peak / +60 s (MiB) | CPU s | API req per object | idle req/min | idle mints | churn 10% |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "exited" in r:
            print(f"| {r['label']} | exited with {r['ready_before_exit']} of {N} Ready: `{r['exited']}` | | | | | | | | |")
            continue
        vs = ""
        if first and r is not first:
            vs = f" ({r['converged_s'] / first['converged_s']:.1f}× {first['label']})"
        churn_s = f"{r['churn_s']} s" if r.get("churn_s") is not None else "–"
        print(f"| {r['label']} | {r['converged_s']} s{vs} | {r['rate']}/s | {100 * r['ratio_to_raw']:.0f}% | "
              f"{r['rss_idle_kib'] / 1024:.0f} / {r['rss_peak_kib'] / 1024:.0f} / {r['rss_after_60s_kib'] / 1024:.0f} | "
              f"{r['cpu_s']} | {r['requests_per_object']} | {r['idle_requests_per_min']} | {r.get('idle_mints', '–')} | {churn_s} |")
    for r in (r for r in results if "exited" not in r):
        print(f"\n{r['label']} requests per object: {r['requests_by_kind']}; idle minute: {r['idle_by_kind']}")


if __name__ == "__main__":
    main()

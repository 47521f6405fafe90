"""Tries to reach outside from wherever it runs; prints one JSON object.

  python3 probe.py HOST:PORT...

For each target: a TCP connect with a 1 s limit. Then a DNS lookup of
example.invalid (a name no /etc/hosts has), also given 1 s. Each result is
{"ok": bool, "errno": name or null, "error": text, "ms": elapsed}; an attempt
that has not failed within the second reports errno "TIMEOUT".
"""
import errno
import json
import socket
import sys
import threading
import time


def dial(target):
    host, port = target.rsplit(":", 1)
    began = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((host, int(port)))
        return {"ok": True, "errno": None, "error": "", "ms": ms(began)}
    except socket.timeout as e:
        return {"ok": False, "errno": "TIMEOUT", "error": str(e), "ms": ms(began)}
    except OSError as e:
        return {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno)), "error": str(e), "ms": ms(began)}
    finally:
        s.close()


def lookup(name):
    began = time.monotonic()
    out = {"ok": False, "errno": "TIMEOUT", "error": "no answer within 1 s", "ms": None}

    def run():
        try:
            socket.getaddrinfo(name, 80)
            out.update(ok=True, errno=None, error="")
        except socket.gaierror as e:
            out.update(errno=f"EAI{e.errno}", error=str(e))
        out["ms"] = ms(began)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(1.0)
    return dict(out)


def ms(began):
    return round((time.monotonic() - began) * 1000, 1)


print(json.dumps({"dial": {t: dial(t) for t in sys.argv[1:]}, "dns": {"example.invalid": lookup("example.invalid")}}))

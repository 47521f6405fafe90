#!/usr/bin/env python3
"""Builds the regcred container image without a container engine: an OCI image
layout (a directory) and, with --archive, the same layout as one tar file,
from a release binary of regcred and what it needs at run time, taken from
this machine's Debian packages.

    deploy/image/build.py [--binary PATH] [--name REF] [--archive FILE] OUT

    --binary   the regcred binary (default: $CARGO_TARGET_DIR/release/regcred,
               from `cargo build --release --locked --bin regcred`)
    --name     the image's name (default: ghcr.io/regcred/regcred:<the chart's appVersion>)
    --archive  also write the layout as a tar (`ctr images import` takes it)

The image is the one the Dockerfile describes (USER 65532:65532, ENTRYPOINT
/usr/local/bin/regcred, CMD run), in two layers:

  1. the base: the shared libraries the binary is linked against (as `ldd`
     lists them: the C library, libm, libgcc_s, the dynamic loader), the CA
     bundle /etc/ssl/certs/ca-certificates.crt, /etc/passwd and /etc/group with
     `nonroot` (65532), /tmp and /home/nonroot, and the copyright files of the
     packages those came from (named with their versions in the config's
     labels);
  2. the binary, /usr/local/bin/regcred.

Reproducible: fixed owners and modification times (SOURCE_DATE_EPOCH, or 0),
sorted entries, gzip without a timestamp, canonical JSON. Two builds from one
binary on one machine give one digest (printed on stdout as `sha256:…`).
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRYPOINT = ["/usr/local/bin/regcred"]
CMD = ["run"]
USER = "65532:65532"
BINARY_PATH = "usr/local/bin/regcred"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
NSSWITCH = "passwd: files\ngroup: files\nhosts: files dns\n"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def chart_app_version():
    with open(os.path.join(ROOT, "charts/regcred/Chart.yaml")) as f:
        m = re.search(r'^appVersion:\s*"?([^"\s]+)"?', f.read(), re.M)
    return m.group(1)


def shared_libraries(binary):
    """(path inside the image, file on this machine) for each library ldd lists."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        sys.exit(f"ldd {binary}: {out.stderr.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        m = re.match(r"\S+ => (/\S+) \(", line) or re.match(r"(/\S+) \(", line)
        if m:
            libs.append((m.group(1).lstrip("/"), os.path.realpath(m.group(1))))
        elif "=>" in line and "not found" in line:
            sys.exit(f"ldd {binary}: {line}")
    return libs


def debian_package(path):
    """`name=version` of the Debian package that owns path (or its real path)."""
    for p in (path, os.path.realpath(path)):
        out = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
        if out.returncode == 0:
            pkg = out.stdout.split(":")[0].strip()
            ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True).stdout
            return pkg, ver
    return None


class Layer:
    """A tar layer with fixed owners and times, entries sorted by path."""

    def __init__(self, mtime):
        self.mtime, self.entries = mtime, {}

    def dir(self, path, mode=0o755, uid=0):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            self.entries.setdefault("/".join(parts[:i]), ("dir", 0o755, 0, None))
        self.entries[path.strip("/")] = ("dir", mode, uid, None)

    def file(self, path, data, mode=0o644):
        if os.path.dirname(path.strip("/")):
            self.dir(os.path.dirname(path))
        self.entries[path.strip("/")] = ("file", mode, 0, data)

    def symlink(self, path, target):
        self.dir(os.path.dirname(path))
        self.entries[path.strip("/")] = ("link", 0o777, 0, target)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, mode, uid, data = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode, info.mtime, info.uid, info.gid = mode, self.mtime, uid, uid
                info.uname = info.gname = ""
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    p = argparse.ArgumentParser(description="Build the regcred image (OCI layout) without a container engine.")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    p.add_argument("--binary", default=os.path.join(target, "release", "regcred"))
    p.add_argument("--name", default=f"ghcr.io/regcred/regcred:{chart_app_version()}")
    p.add_argument("--archive")
    p.add_argument("out")
    a = p.parse_args()
    if not os.path.isfile(a.binary):
        sys.exit(f"no binary at {a.binary}: build it with `cargo build --release --locked --bin regcred` or pass --binary")
    if ":" not in a.name.rsplit("/", 1)[-1]:
        sys.exit(f"--name {a.name}: give a tag (NAME:TAG)")
    tag = a.name.rsplit(":", 1)[1]
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

    base = Layer(mtime)
    packages = {}
    for inside, real in shared_libraries(a.binary):
        base.file(inside, read(real), 0o755)
        pkg = debian_package("/" + inside)
        if pkg:
            packages[pkg[0]] = pkg[1]
    if not os.path.isfile(CA_BUNDLE):
        sys.exit(f"{CA_BUNDLE} is missing: install Debian's ca-certificates")
    base.file(CA_BUNDLE, read(CA_BUNDLE))
    pkg = debian_package("/usr/share/ca-certificates")
    if pkg:
        packages[pkg[0]] = pkg[1]
    for name in sorted(packages):
        copyright = f"/usr/share/doc/{name}/copyright"
        if os.path.isfile(copyright):
            base.file(copyright, read(copyright))
    base.file("etc/passwd", PASSWD.encode())
    base.file("etc/group", GROUP.encode())
    base.file("etc/nsswitch.conf", NSSWITCH.encode())
    base.dir("tmp", 0o1777)
    base.dir("home/nonroot", 0o700, 65532)
    app = Layer(mtime)
    app.file(BINARY_PATH, read(a.binary), 0o755)

    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    blobs = os.path.join(a.out, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    def canonical(obj):
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    layers, diff_ids = [], []
    for layer in (base, app):
        raw = layer.tar()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        desc = put(gzip.compress(raw, compresslevel=9, mtime=0))
        layers.append(dict(desc, mediaType="application/vnd.oci.image.layer.v1.tar+gzip"))
    created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "architecture": ARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "created": created,
        "config": {
            "User": USER,
            "Entrypoint": ENTRYPOINT,
            "Cmd": CMD,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"SSL_CERT_FILE={CA_BUNDLE}"],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "regcred",
                "org.opencontainers.image.version": tag,
                "dev.regcred.image.debian-packages": " ".join(f"{n}={v}" for n, v in sorted(packages.items())),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": created, "created_by": "deploy/image/build.py: libraries, CA bundle, users from Debian"},
            {"created": created, "created_by": f"deploy/image/build.py: COPY regcred /{BINARY_PATH}"},
        ],
    }
    config_desc = put(canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": dict(config_desc, mediaType="application/vnd.oci.image.config.v1+json"),
        "layers": layers,
    }
    manifest_desc = put(canonical(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            dict(
                manifest_desc,
                mediaType="application/vnd.oci.image.manifest.v1+json",
                # skopeo finds `oci:OUT:TAG` by the first, containerd names the
                # image it imports by the second.
                annotations={"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": a.name},
            )
        ],
    }
    with open(os.path.join(a.out, "index.json"), "wb") as f:
        f.write(canonical(index))
    with open(os.path.join(a.out, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))

    if a.archive:
        with tarfile.open(a.archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(a.out):
                dirnames.sort()
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    info = tar.gettarinfo(full, os.path.relpath(full, a.out))
                    info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = mtime, 0, 0, "", "", 0o644
                    with open(full, "rb") as f:
                        tar.addfile(info, f)
    size = sum(layer["size"] for layer in layers) + config_desc["size"]
    print(f"{a.name} {manifest_desc['digest']} {size} bytes compressed", file=sys.stderr)
    print(manifest_desc["digest"])


if __name__ == "__main__":
    main()

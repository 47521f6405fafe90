"""Writes a one-layer OCI image layout holding a static busybox, for the node
harness (no image can be downloaded on these machines).

    python3 mkoci.py DIR TAG BUSYBOX -- ARGV...

The layer holds BUSYBOX as /bin/busybox and /bin/sh linking to it; ARGV becomes
the image's entrypoint. The pause image is `busybox sleep 2147483647` (the CRI
stops sandboxes with SIGKILL, so a real pause binary is not needed); the test
image runs a shell. Layers are plain tar (no gzip): small enough, and
reproducible byte for byte (fixed mtimes and owners).
"""

import hashlib
import io
import json
import os
import sys
import tarfile


def main():
    if len(sys.argv) < 5 or sys.argv[4] != "--":
        sys.exit(__doc__)
    out, tag, busybox, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5:]
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def entry(name, kind, mode, **kw):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
            for k, v in kw.items():
                setattr(info, k, v)
            return info

        tar.addfile(entry("bin", tarfile.DIRTYPE, 0o755))
        with open(busybox, "rb") as f:
            data = f.read()
        tar.addfile(entry("bin/busybox", tarfile.REGTYPE, 0o755, size=len(data)), io.BytesIO(data))
        tar.addfile(entry("bin/sh", tarfile.SYMTYPE, 0o777, linkname="busybox"))
        for d in ("tmp", "etc", "proc", "sys", "dev"):
            tar.addfile(entry(d, tarfile.DIRTYPE, 0o755))
    layer = layer.getvalue()
    layer_desc = put(layer)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": argv, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = put(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": dict(config_desc, mediaType="application/vnd.oci.image.config.v1+json"),
        "layers": [dict(layer_desc, mediaType="application/vnd.oci.image.layer.v1.tar")],
    }
    manifest_desc = put(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            dict(
                manifest_desc,
                mediaType="application/vnd.oci.image.manifest.v1+json",
                annotations={"org.opencontainers.image.ref.name": tag},
            )
        ],
    }
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    main()

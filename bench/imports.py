"""Time `dockyard import` of a 100 MiB image from CNCF Distribution, against `skopeo copy` of the same.

    .venv/bin/python bench/imports.py [--size-mib 100] [--layers 4] [--runs 3]

Starts Distribution (the upstream, plain HTTP) and `dockyard serve` (the importer, token auth on),
pushes an image of random layers to Distribution, then for each run: one import into a fresh
repository (every byte streamed from the upstream), one import into another fresh repository of
the same registry (every blob linked, nothing downloaded), and `skopeo copy` from Distribution into
Dockyard (the client-side copy an import replaces). Prints seconds and MiB/s; needs
`docker-registry` and `skopeo` (Debian).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import Distribution, Dockyard

CHUNK = 8 * 1024 * 1024


def push_random_image(base: str, repository: str, size: int, layers: int) -> None:
    """Push layers of random bytes (POST, then chunked PATCHes, then PUT) and their manifest."""
    descriptors = []
    with httpx.Client(base_url=base, timeout=300) as http:
        for _ in range(layers):
            layer_size = size // layers
            digest = hashlib.sha256()
            started = http.post(f"/v2/{repository}/blobs/uploads/")
            location = started.headers["Location"]
            sent = 0
            while sent < layer_size:
                data = os.urandom(min(CHUNK, layer_size - sent))
                digest.update(data)
                answer = http.patch(
                    location, content=data, headers={"Content-Type": "application/octet-stream"}
                )
                answer.raise_for_status()
                location = answer.headers["Location"]
                sent += len(data)
            done = http.put(httpx.URL(location).copy_merge_params({"digest": f"sha256:{digest.hexdigest()}"}))
            done.raise_for_status()
            descriptors.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": f"sha256:{digest.hexdigest()}",
                    "size": layer_size,
                }
            )
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        config_digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
        started = http.post(f"/v2/{repository}/blobs/uploads/")
        location = httpx.URL(started.headers["Location"]).copy_merge_params({"digest": config_digest})
        http.put(location, content=config).raise_for_status()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": descriptors,
        }
        http.put(
            f"/v2/{repository}/manifests/v1",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": manifest["mediaType"]},
        ).raise_for_status()


def timed_import(dockyard: Dockyard, source: str, target: str) -> float:
    """POST an import and poll it to the end; seconds from the request to success."""
    assert dockyard.credentials is not None
    with httpx.Client(base_url=dockyard.base, auth=dockyard.credentials, timeout=60) as http:
        began = time.perf_counter()
        created = http.post("/api/v1/imports", json={"source": source, "targetTags": [target]})
        created.raise_for_status()
        while True:
            found = http.get(f"/api/v1/imports/{created.json()['id']}").json()
            if found["status"] == "succeeded":
                return time.perf_counter() - began
            if found["status"] == "failed":
                raise RuntimeError(f"import failed: {found['error']}")
            time.sleep(0.02)


def timed_skopeo(dockyard: Dockyard, source: str, target: str, folder: Path) -> float:
    assert dockyard.credentials is not None
    policy = folder / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    user, password = dockyard.credentials
    argv = [
        "skopeo", "--policy", str(policy), "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
        "--dest-creds", f"{user}:{password}", f"docker://{source}", f"docker://127.0.0.1:{dockyard.port}/{target}",
    ]  # fmt: skip
    began = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install -y {tool}", file=sys.stderr)
            return 1
    size = options.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="dockyard-import-bench-") as temp:
        folder = Path(temp)
        upstream = Distribution(folder / "distribution", access_log=False)
        upstream.start()
        env = {
            "DOCKYARD_INSECURE_UPSTREAMS": "127.0.0.1",
            "DOCKYARD_UPSTREAM_ALLOWED_NETWORKS": "127.0.0.0/8",
        }
        dockyard = Dockyard(folder / "dockyard", access_log=False, storage_env=env)
        dockyard.start()
        host = f"127.0.0.1:{upstream.port}"
        try:
            rows = []
            for run in range(options.runs):
                # fresh random images each run: none of their blobs is in Dockyard yet
                print(f"run {run + 1}: pushing two {options.size_mib} MiB images", file=sys.stderr)
                push_random_image(upstream.base, f"bench/import-{run}", size, options.layers)
                push_random_image(upstream.base, f"bench/skopeo-{run}", size, options.layers)
                source = f"{host}/bench/import-{run}:v1"
                streamed = timed_import(dockyard, source, f"imported-{run}/big:v1")
                linked = timed_import(dockyard, source, f"linked-{run}/big:v1")
                copied = timed_skopeo(
                    dockyard, f"{host}/bench/skopeo-{run}:v1", f"skopeo-{run}/big:v1", folder
                )
                rows.append((streamed, linked, copied))
                print(f"run {run + 1}: import {streamed:.2f} s, linked {linked:.2f} s, skopeo {copied:.2f} s")
            best = [min(column) for column in zip(*rows, strict=True)]
            mib = options.size_mib
            print(
                f"best of {options.runs}: import {best[0]:.2f} s ({mib / best[0]:.0f} MiB/s), "
                f"linked re-import {best[1]:.2f} s, skopeo copy {best[2]:.2f} s ({mib / best[2]:.0f} MiB/s)"
            )
        finally:
            dockyard.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

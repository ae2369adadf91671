"""Issue #9's proof: clients push and pull images that share layers while retention, purge and
garbage collection run in a loop, on SQLite (filesystem) and on PostgreSQL + S3 (SeaweedFS).

Each client and the lifecycle loop run on their own ``build(settings)`` (own engine and pool), as
separate ``dockyard serve`` processes and a ``dockyard worker`` would. Garbage collection runs in a
tight loop with a one-second grace period, so a shared layer that purge left unreferenced can be
collected while a push reuses it: that push must fail cleanly (MANIFEST_BLOB_UNKNOWN, or 503 while
the bytes are being deleted) and succeed when retried.
Afterwards every tagged image reads back byte-exact, and after one more collection the store holds
exactly the blobs some manifest references.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from dockyard.app import build
from dockyard.lifecycle.services.gc import Options
from dockyard.lifecycle.services.policies import RETENTION
from dockyard.lifecycle.services.purge import PurgeParameters
from dockyard.oci.errors import ErrorCode, RegistryError
from dockyard.registry.models import blobs, manifest_blobs, manifests, tags
from dockyard.registry.services.blobstate import BlobBusy
from dockyard.rooms import Dockyard
from tests.support.images import OCI_MANIFEST, canonical, sha256

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql-s3"], indirect=True)

CLIENTS = 3
#: The loop's grace period: short, so blobs unreferenced a moment ago are collected while pushes that
#: reuse them run (with none at all a push could never finish: each fresh upload would be taken).
GRACE_SECONDS = 1
PUSHES_PER_CLIENT = 14
#: Clients go on pushing past PUSHES_PER_CLIENT until a collection has freed a blob while they push
#: (on a fast machine the first 14 can all finish inside one grace period), but never beyond this.
MAX_PUSHES_PER_CLIENT = 200
REPOSITORIES = ("stress/a", "stress/b")
#: Shared layers: every image takes two of them, so most layers are shared by many manifests.
LAYERS = [hashlib.sha256(b"layer %d" % i).digest() * 2048 for i in range(6)]  # 64 KiB each
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def _image(client: int, number: int, rng: random.Random) -> tuple[bytes, list[bytes]]:
    """A manifest (unique by its config) and the blobs it needs."""
    config = canonical(
        {"architecture": "amd64", "os": "linux", "config": {"Labels": {"n": f"{client}-{number}"}}}
    )
    layers = rng.sample(LAYERS, 2)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)} for layer in layers],
    }
    return canonical(document), [config, *layers]


def _push(parts: Dockyard, repository: str, tag: str, manifest: bytes, needed: list[bytes]) -> int:
    """Push blobs then the manifest; retry the whole push while GC takes a blob first. Returns retries."""
    for attempt in range(20):
        try:
            for blob in needed:
                parts.registry.uploads.upload_whole(repository, sha256(blob), iter([blob]))
            parts.registry.manifests.put(repository, tag, manifest, OCI_MANIFEST)
            return attempt
        except BlobBusy:
            continue  # 503 + Retry-After: the blob was being collected; clients push it again
        except RegistryError as error:
            if error.code is not ErrorCode.MANIFEST_BLOB_UNKNOWN:
                raise
    raise AssertionError(f"{repository}:{tag} could not be pushed in 20 attempts")


def _pull_and_verify(parts: Dockyard, repository: str, tag: str) -> bool:
    """Read a tagged image whole and check every digest. False if the tag is gone (purged)."""
    try:
        record = parts.registry.manifests.get(repository, tag, [OCI_MANIFEST])
    except RegistryError as error:
        if error.code is not ErrorCode.MANIFEST_UNKNOWN:
            raise
        return False
    assert sha256(record.payload) == record.digest
    document = json.loads(record.payload)
    for descriptor in [document["config"], *document["layers"]]:
        try:
            info = parts.registry.blobs.stat(repository, descriptor["digest"])
            data = b"".join(parts.registry.blobs.open(info))
        except RegistryError:
            # Only legitimate if the manifest itself was deleted meanwhile (every manifest here is
            # unique and never pushed again, so "still there" means it was there all along).
            try:
                parts.registry.manifests.get(repository, record.digest, [OCI_MANIFEST])
            except RegistryError:
                return False
            raise AssertionError(
                f"{repository}@{record.digest} points at missing {descriptor['digest']}"
            ) from None
        assert sha256(data) == descriptor["digest"]
    return True


def _lifecycle_loop(parts: Dockyard, stop: threading.Event, counts: dict[str, int]) -> None:
    lifecycle = parts.service("lifecycle")
    purge = lifecycle.purge
    while not stop.is_set():
        report = lifecycle.gc.collector.collect(Options(grace_seconds=GRACE_SECONDS))
        counts["gc_runs"] += 1
        counts["blobs_freed"] += report.freed["blobs"].items
        counts["retention_deleted"] += len(lifecycle.recycle.retention.run().deleted)
        parameters = PurgeParameters(filters=("stress/.*:.*",), ago="0d", keep=3, untagged=True)
        run_id = purge.start(parameters, requested_by=None, dry_run=False)  # as a schedule does: the registry
        report = purge.execute(run_id)
        counts["purged_tags"] += report.deleted_tags if report is not None else 0


def test_pushes_and_pulls_survive_retention_purge_and_gc(settings) -> None:
    admin = build(settings)
    admin.service("lifecycle").recycle.policies.update(RETENTION, status="enabled", days=0)
    instances = [build(settings) for _ in range(CLIENTS + 1)]
    stop = threading.Event()
    counts = dict.fromkeys(("gc_runs", "blobs_freed", "retention_deleted", "purged_tags"), 0)
    retries: list[int] = []
    pulled: list[bool] = []
    pushed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        parts = instances[index]
        rng = random.Random(index)
        for number in range(MAX_PUSHES_PER_CLIENT):
            if number >= PUSHES_PER_CLIENT and counts["blobs_freed"] > 0:
                break
            repository = REPOSITORIES[number % len(REPOSITORIES)]
            tag = f"c{index}-{number}"
            manifest, needed = _image(index, number, rng)
            retried = _push(parts, repository, tag, manifest, needed)
            with lock:
                retries.append(retried)
                pushed.append((repository, tag))
                sample = rng.sample(pushed, min(3, len(pushed)))
            if number % 3 == 2:  # move a tag off its manifest: the old one becomes untagged
                again, again_needed = _image(index, 1000 + number, rng)
                _push(parts, repository, tag, again, again_needed)
            for other_repository, other_tag in sample:
                pulled.append(_pull_and_verify(parts, other_repository, other_tag))

    try:
        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            loop = pool.submit(_lifecycle_loop, instances[CLIENTS], stop, counts)
            try:
                for future in [pool.submit(client, i) for i in range(CLIENTS)]:
                    future.result()
            finally:
                stop.set()
            loop.result()
        assert counts["blobs_freed"] > 0, counts  # GC really freed bytes while pushes went on
        assert counts["retention_deleted"] > 0, counts
        assert counts["purged_tags"] > 0, counts
        assert any(pulled), "no pull found its image"

        # Every tagged image reads back whole; then one more collection leaves only referenced bytes.
        _check_final_state(admin)
    finally:
        stop.set()
        for parts in [admin, *instances]:
            parts.db.dispose()


def _rows(parts: Dockyard, query: sa.Select) -> list[Any]:
    with parts.db.read() as conn:
        return list(conn.execute(query).all())


def _stored_digests(parts: Dockyard) -> tuple[set[str], set[str]]:
    """Digests of the blob objects the store holds, and the locations of those kept elsewhere."""
    digests: set[str] = set()
    locations: set[str] = set()
    cursor = None
    while True:
        page = parts.store.list_blobs(cursor, 500)
        for stored in page.blobs:
            if stored.digest is not None:
                digests.add(stored.digest)
            else:
                locations.add(str(stored.location))
        if page.cursor is None:
            return digests, locations
        cursor = page.cursor


def _check_final_state(parts: Dockyard) -> None:
    tagged = _rows(parts, sa.select(tags.c.name, manifests.c.repository_id).join(manifests))
    assert tagged, "purge and retention must leave the kept tags"
    names = dict(_rows(parts, sa.text("SELECT id, name FROM repositories")))  # type: ignore[arg-type]
    for tag, repository_id in tagged:
        assert _pull_and_verify(parts, names[repository_id], tag)
    parts.service("lifecycle").gc.collector.collect(Options(grace_seconds=0))
    referenced = {row.digest for row in _rows(parts, sa.select(manifest_blobs.c.digest).distinct())}
    live = {
        row.digest: row.location
        for row in _rows(parts, sa.select(blobs.c.digest, blobs.c.location).where(blobs.c.state == "live"))
    }
    assert set(live) == referenced  # no unreferenced blob left, none referenced missing
    digests, locations = _stored_digests(parts)
    expected_at_digest = {digest for digest, location in live.items() if location is None}
    expected_elsewhere = {location for location in live.values() if location is not None}
    assert digests == expected_at_digest
    assert locations == expected_elsewhere

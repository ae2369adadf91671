"""PostgreSQL row locks between garbage collection and manifest pushes (SQLite serialises writers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from dockyard.access.services import bootstrap
from dockyard.app import Dockyard, build
from dockyard.config import Settings
from dockyard.db import utcnow
from dockyard.lifecycle.services.gc import GarbageCollector
from dockyard.oci.errors import RegistryError
from dockyard.registry.models import blobs, repositories, repository_blobs
from dockyard.registry.services.blobstate import DELETING
from dockyard.registry.services.references import HELD_BLOBS
from tests.conftest import _truncate_all
from tests.support.auth import ADMIN_PASSWORD
from tests.support.images import make_image

OLD = timedelta(hours=3)


@pytest.fixture
def pg(tmp_path: Path, postgres_url: str) -> Iterator[Dockyard]:
    _truncate_all(postgres_url)
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "database_url": postgres_url,
            "access_log": False,
            "admin_password": ADMIN_PASSWORD,
        }
    )
    parts = build(settings)
    bootstrap(settings, parts.access)
    yield parts
    parts.db.dispose()


def _old_blobs(parts: Dockyard, image) -> int:
    """The image's blobs stored and linked into repository "app" three hours ago; its id."""
    then = utcnow() - OLD
    for blob in image.blobs:
        parts.store.put(blob.digest, blob.data)

    def work(conn) -> int:
        repo_id = conn.execute(
            repositories.insert()
            .values(name="app", created_at=then, updated_at=then)
            .returning(repositories.c.id)
        ).scalar_one()
        for blob in image.blobs:
            conn.execute(blobs.insert().values(digest=blob.digest, size=len(blob.data), created_at=then))
            conn.execute(
                repository_blobs.insert().values(repository_id=repo_id, digest=blob.digest, created_at=then)
            )
        return repo_id

    return parts.db.run_write(work)


def _collector(parts: Dockyard) -> GarbageCollector:
    return GarbageCollector(parts.db, parts.store, parts.registry.manifests, [])


def test_a_manifest_push_holding_its_blobs_keeps_the_collector_out(pg):
    image = make_image("locked")
    _old_blobs(pg, image)
    digests = [b.digest for b in image.blobs]
    with pg.db.engine.connect() as pusher, pg.db.engine.connect() as collector:
        pusher.begin()
        held = pusher.execute(HELD_BLOBS, {"repository": "app", "digests": digests}).all()
        assert len(held) == 2
        collector.begin()
        for table in (blobs, repository_blobs):
            with pytest.raises(sa.exc.OperationalError) as refused:
                collector.execute(
                    sa.select(table.c.digest).where(table.c.digest.in_(digests)).with_for_update(nowait=True)
                )
            assert refused.value.orig.sqlstate == "55P03"  # lock not available
            collector.rollback()
            collector.begin()
        collector.rollback()
        pusher.rollback()


def test_a_manifest_push_waiting_on_a_marking_collector_fails_cleanly(pg):
    image = make_image("waits")
    _old_blobs(pg, image)
    cutoff = utcnow() - timedelta(hours=1)
    gc = _collector(pg)
    outcome: list[object] = []

    with pg.db.engine.connect() as marking:
        marking.begin()
        marking.execute(repository_blobs.delete())
        marking.execute(
            blobs.update()
            .where(blobs.c.created_at < cutoff)
            .values(state=DELETING, generation=blobs.c.generation + 1)
        )

        def push() -> None:
            try:
                outcome.append(pg.registry.manifests.put("app", "v1", image.manifest, image.media_type))
            except RegistryError as exc:
                outcome.append(exc)

        pusher = threading.Thread(target=push)
        pusher.start()
        _wait_until_blocked(pg)  # the push waits on the collector's row locks
        marking.commit()
    pusher.join(timeout=30)
    assert not pusher.is_alive()
    (result,) = outcome
    assert isinstance(result, RegistryError)
    assert result.code.name == "MANIFEST_BLOB_UNKNOWN"
    assert gc.mark([b.digest for b in image.blobs], cutoff) == []  # already marked; nothing to redo


def _wait_until_blocked(parts: Dockyard, timeout: float = 10.0) -> None:
    """Poll pg_stat_activity until some backend waits on a lock (deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    while time.monotonic() < deadline:
        with parts.db.engine.connect() as conn:
            if conn.execute(query).scalar():
                return
        time.sleep(0.01)
    raise AssertionError("the manifest push never waited on the collector's locks")

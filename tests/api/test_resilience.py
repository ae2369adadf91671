"""Failed, interrupted and concurrent writes never damage what is stored nor leave half-written data."""

import logging
import os
import threading
from datetime import timedelta

import pytest
from starlette.testclient import TestClient

from dockyard.access.services import bootstrap
from dockyard.app import build, create_app
from dockyard.db import utcnow
from dockyard.oci.errors import RegistryError
from dockyard.registry.models import uploads as uploads_table
from dockyard.registry.services.upload_sessions import CLOCK_SKEW, CLOSED, unopened_since
from dockyard.storage import StorageError, StorageFull
from tests.support.auth import ADMIN
from tests.support.images import sha256
from tests.support.registry import error_codes, push_blob
from tests.support.small_filesystem import SmallFilesystem, small_filesystem
from tests.support.stores import stored_blobs, upload_leftovers

DATA = bytes(range(256)) * 1024  # 256 KiB
MiB = 1024 * 1024


class Disconnect(Exception):
    """Stands in for a client that goes away mid-body."""


def broken_body(*chunks):
    yield from chunks
    raise Disconnect


def test_interrupted_chunk_is_not_recorded_and_the_upload_resumes(dockyard):
    uploads = dockyard.registry.uploads
    state = uploads.start("team/app")
    uploads.append("team/app", state.id, iter([DATA[:1000]]))
    with pytest.raises(Disconnect):
        uploads.append("team/app", state.id, broken_body(DATA[1000:5000]))
    assert uploads.status("team/app", state.id).size == 1000
    uploads.append("team/app", state.id, iter([DATA[1000:]]), content_range=(1000, len(DATA) - 1))
    blob = uploads.complete("team/app", state.id, sha256(DATA), iter([]))
    assert b"".join(dockyard.registry.blobs.open(blob)) == DATA


def test_interrupted_monolithic_upload_leaves_nothing(dockyard):
    with pytest.raises(Disconnect):
        dockyard.registry.uploads.upload_whole("team/app", sha256(DATA), broken_body(DATA[:10_000]))
    with pytest.raises(RegistryError):
        dockyard.registry.blobs.stat("team/app", sha256(DATA))
    assert stored_blobs(dockyard.store) == []
    assert upload_leftovers(dockyard.store) == 0


def test_short_body_is_size_invalid(dockyard):
    uploads = dockyard.registry.uploads
    state = uploads.start("team/app")
    with pytest.raises(RegistryError) as failure:
        uploads.append("team/app", state.id, iter([DATA[:10]]), content_length=20)
    assert failure.value.code.name == "SIZE_INVALID"
    assert uploads.status("team/app", state.id).size == 0


def test_wrong_content_for_an_existing_digest_cannot_overwrite_it(dockyard):
    uploads = dockyard.registry.uploads
    good = uploads.upload_whole("team/app", sha256(DATA), iter([DATA]))
    with pytest.raises(RegistryError):
        uploads.upload_whole("team/app", good.digest, iter([b"evil" * 100]))
    state = uploads.start("team/app")
    uploads.append("team/app", state.id, iter([b"evil" * 100]))
    with pytest.raises(RegistryError):
        uploads.complete("team/app", state.id, good.digest, iter([]))
    assert b"".join(dockyard.registry.blobs.open(good)) == DATA


def test_failure_while_committing_to_storage_records_nothing(dockyard, monkeypatch):
    uploads = dockyard.registry.uploads
    state = uploads.start("team/app")
    uploads.append("team/app", state.id, iter([DATA]))

    def failing_commit(*_args):
        raise StorageError("disk full")

    monkeypatch.setattr(dockyard.store, "commit_upload", failing_commit)
    with pytest.raises(StorageError):
        uploads.complete("team/app", state.id, sha256(DATA), iter([]))
    with pytest.raises(RegistryError):
        dockyard.registry.blobs.stat("team/app", sha256(DATA))
    monkeypatch.undo()
    assert uploads.status("team/app", state.id).size == len(DATA)
    assert uploads.complete("team/app", state.id, sha256(DATA), iter([])).size == len(DATA)


def cancelled_midway(uploads, upload_id: str, data: bytes, after: int):
    """A streamed body whose session a DELETE (another request) cancels after ``after`` of its
    chunks (0: before the store's writer opened anything)."""
    chunks = [data[:MiB], data[MiB:]]
    yield from chunks[:after]
    uploads.cancel("team/app", upload_id)
    yield from chunks[after:]


@pytest.mark.parametrize("after", [0, 1])
def test_a_closing_put_whose_session_is_cancelled_while_it_streams_links_nothing(dockyard, after):
    """Red team (helper-57): the DELETE answered 204, then the streaming PUT answered 201 and linked
    the blob. The cancel wins: the PUT gets BLOB_UPLOAD_UNKNOWN, and nothing is linked or left."""
    uploads = dockyard.registry.uploads
    data = os.urandom(3 * MiB)
    state = uploads.start("team/app")
    with pytest.raises(RegistryError) as failure:
        uploads.complete("team/app", state.id, sha256(data), cancelled_midway(uploads, state.id, data, after))
    assert failure.value.code.name == "BLOB_UPLOAD_UNKNOWN"
    with pytest.raises(RegistryError):
        dockyard.registry.blobs.stat("team/app", sha256(data))
    with pytest.raises(RegistryError):
        uploads.status("team/app", state.id)
    assert upload_leftovers(dockyard.store) == 0
    if dockyard.store.local:  # not even unlinked (red team, helper-58); an object store writes a
        assert stored_blobs(dockyard.store) == []  # whole-blob PUT in place: orphan GC takes it


@pytest.mark.parametrize("after", [0, 1])
def test_a_patch_whose_session_is_cancelled_while_it_streams_leaves_no_bytes(dockyard, after):
    """Red team (helper-57): the PATCH failed, but its bytes stayed in the store until expiry."""
    uploads = dockyard.registry.uploads
    data = os.urandom(3 * MiB)
    state = uploads.start("team/app")
    with pytest.raises(RegistryError) as failure:
        uploads.append("team/app", state.id, cancelled_midway(uploads, state.id, data, after))
    assert failure.value.code.name in ("BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN")
    with pytest.raises(RegistryError):
        uploads.status("team/app", state.id)
    assert upload_leftovers(dockyard.store) == 0


def _expire_lease(dockyard, upload_id: str) -> None:
    with dockyard.db.write() as conn:
        conn.execute(
            uploads_table.update()
            .where(uploads_table.c.id == upload_id)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )


@pytest.mark.parametrize("noticed_by", ["lease", "store"])
def test_a_stalled_writer_that_lost_its_session_never_touches_the_blob_it_became(
    dockyard, monkeypatch, noticed_by
):
    """Red team (helper-58, high): a PATCH stalls past its lease; a PUT takes the session over and
    completes it, so on a filesystem the upload file becomes the stored blob (shared by digest);
    the PATCH then went on writing into it, or truncated it to 0 bytes on a hang-up. Now the
    PATCH renews its lease before writing after a pause (``lease``), and the filesystem writer
    checks the file is still the upload (``store``): the PATCH fails and the blob stays whole."""
    from dockyard.registry.services import upload_streams

    uploads = dockyard.registry.uploads
    first, last = os.urandom(MiB), os.urandom(MiB)
    state = uploads.start("team/app")
    uploads.append("team/app", state.id, iter([first]), content_range=(0, MiB - 1))
    clock = [0.0]
    monkeypatch.setattr(
        upload_streams, "time", type("Clock", (), {"monotonic": staticmethod(lambda: clock[0])})
    )

    def stalled_patch():
        yield os.urandom(MiB)  # streamed under the lease, never recorded
        _expire_lease(dockyard, state.id)  # the client stalls past its lease ...
        blob = uploads.complete(
            "team/app", state.id, sha256(first + last), iter([last])
        )  # ... and a PUT takes over
        assert blob.size == 2 * MiB
        if noticed_by == "lease":
            clock[0] += 3600  # long enough that the PATCH renews before its next write
        yield os.urandom(MiB)  # the stalled PATCH resumes
        raise Disconnect  # and hangs up

    with pytest.raises((RegistryError, Disconnect)) as failure:
        uploads.append("team/app", state.id, stalled_patch(), content_range=(MiB, 4 * MiB - 1))
    if noticed_by == "lease" or dockyard.store.local:  # an object store's parts never touch a blob
        assert isinstance(failure.value, RegistryError)
        assert failure.value.code.name in ("BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN")  # the session ended
    stored = dockyard.registry.blobs.stat("team/app", sha256(first + last))
    assert b"".join(dockyard.registry.blobs.open(stored)) == first + last


def test_a_second_writer_is_refused_while_one_is_streaming(dockyard):
    uploads = dockyard.registry.uploads
    state = uploads.start("team/app")
    streaming = threading.Event()
    release = threading.Event()

    def slow_body():
        yield DATA[:100]
        streaming.set()
        assert release.wait(10)
        yield DATA[100:200]

    first = threading.Thread(target=uploads.append, args=("team/app", state.id, slow_body()))
    first.start()
    try:
        assert streaming.wait(10)
        with pytest.raises(RegistryError) as refused:
            uploads.append("team/app", state.id, iter([b"intruder"]))
        assert refused.value.status == 416
    finally:
        release.set()
        first.join(10)
    assert uploads.status("team/app", state.id).size == 200
    blob = uploads.complete("team/app", state.id, sha256(DATA[:200]), iter([]))
    assert b"".join(dockyard.registry.blobs.open(blob)) == DATA[:200]


def test_a_stale_lease_can_be_taken_over(dockyard):
    import sqlalchemy as sa

    from dockyard.registry.models import uploads as uploads_table

    uploads = dockyard.registry.uploads
    state = uploads.start("team/app")
    with dockyard.db.write() as conn:
        conn.execute(
            sa.update(uploads_table)
            .where(uploads_table.c.id == state.id)
            .values(lease_token="dead-process", lease_until=utcnow() - timedelta(seconds=1))
        )
    assert uploads.append("team/app", state.id, iter([b"abc"])).size == 3


def _upload_rows(dockyard) -> dict[str, int]:
    import sqlalchemy as sa

    from dockyard.registry.models import uploads as uploads_table

    with dockyard.db.read() as conn:
        return dict(conn.execute(sa.select(uploads_table.c.id, uploads_table.c.size)).all())


def test_expire_ends_idle_sessions_and_drops_orphaned_data(dockyard):
    uploads = dockyard.registry.uploads
    idle = uploads.start("team/app")
    uploads.append("team/app", idle.id, iter([b"idle"]))
    fresh = uploads.start("team/app")
    orphan = dockyard.store.open_upload("orphan-from-a-crash", None, 0)  # written, never recorded
    orphan.write(b"partial")
    orphan.close()
    assert uploads.expire(now=utcnow()) == 0
    ended = utcnow() + timedelta(days=1, minutes=1)
    assert uploads.expire(now=ended) == 2  # the idle session and the orphan
    assert upload_leftovers(dockyard.store) == 0
    # The ended session's row stays, closed, while its id could still open on some node ...
    assert _upload_rows(dockyard) == {idle.id: CLOSED}
    with pytest.raises(RegistryError):
        uploads.status("team/app", idle.id)
    # ... and goes once no clock (up to CLOCK_SKEW apart) would open its id any more, counted from
    # when it closed (the indexed column; a session closed by expiry is kept one expiry longer).
    forgotten = ended + timedelta(days=1) + CLOCK_SKEW + timedelta(minutes=1)
    assert uploads.expire(now=forgotten) == 0
    assert _upload_rows(dockyard) == {}
    assert unopened_since(idle.id, "team/app", forgotten, timedelta(days=1)) is None
    # A session nothing was written to has no row: its id's age alone ends it.
    assert uploads.status("team/app", fresh.id).size == 0


def test_expire_leaves_a_session_whose_lease_is_live(dockyard):
    import sqlalchemy as sa

    from dockyard.registry.models import uploads as uploads_table

    uploads = dockyard.registry.uploads
    busy = uploads.start("team/app")
    uploads.append("team/app", busy.id, iter([b"busy"]))
    later = utcnow() + timedelta(days=2)
    with dockyard.db.write() as conn:
        conn.execute(
            sa.update(uploads_table)
            .where(uploads_table.c.id == busy.id)
            .values(lease_token="streaming", lease_until=later + timedelta(minutes=1))
        )
    assert uploads.expire(now=later) == 0
    assert _upload_rows(dockyard) == {busy.id: 4}


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """An 8 MiB filesystem (its tests are ``filesystem_only``; the object stores' suites test quotas)."""
    with small_filesystem(tmp_path / "small", 8 * MiB, monkeypatch) as space:
        yield space


@pytest.fixture
def small_disk_client(small_disk, settings):
    """A registry whose blob store is on the 8 MiB filesystem (its database is not)."""
    small_settings = settings.model_copy(update={"storage_path": small_disk.path / "storage"})
    parts = build(small_settings)
    bootstrap(small_settings, parts.access)
    with TestClient(create_app(small_settings, parts, background_jobs=False), headers=ADMIN) as client:
        yield client
    parts.db.dispose()


def _storage_full(response):
    assert response.status_code == 507, response.text
    assert error_codes(response) == ["UNKNOWN"]
    assert "storage is full" in response.json()["errors"][0]["message"]


@pytest.mark.filesystem_only
def test_a_push_that_does_not_fit_is_507_leaves_nothing_and_can_be_retried(
    small_disk: SmallFilesystem, small_disk_client, caplog
):
    client = small_disk_client
    kept = os.urandom(MiB)
    kept_digest = push_blob(client, "team/app", kept)
    small_disk.fill(leave=512 * 1024)
    big = os.urandom(3 * MiB)
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    caplog.set_level(logging.INFO)
    _storage_full(client.patch(location, content=big))  # streamed to storage
    _storage_full(client.patch(location, content=big[:MiB]))  # appended in one transaction
    _storage_full(client.post("/v2/team/app/blobs/uploads/", params={"digest": sha256(big)}, content=big))
    uploads = small_disk.path / "storage" / "uploads"
    assert sum(f.stat().st_size for f in uploads.iterdir()) == 0
    assert client.get(f"/v2/team/app/blobs/{kept_digest}").content == kept
    refusals = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(":")[0] for r in refusals] == ["refused a push to team/app"] * 3
    assert not [r for r in caplog.records if r.exc_info]

    small_disk.release()
    assert client.patch(location, content=big).status_code == 202
    done = client.put(location, params={"digest": sha256(big)})
    assert done.status_code == 201
    assert client.get(f"/v2/team/app/blobs/{sha256(big)}").content == big


def test_no_space_while_committing_is_507_and_the_upload_is_kept(dockyard, client, monkeypatch):
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.patch(location, content=DATA).status_code == 202

    def full(*_args):
        raise StorageFull("no space left on the blob store")

    monkeypatch.setattr(dockyard.store, "commit_upload", full)
    _storage_full(client.put(location, params={"digest": sha256(DATA)}))
    monkeypatch.undo()
    assert client.get(location).headers["range"] == f"0-{len(DATA) - 1}"
    assert client.put(location, params={"digest": sha256(DATA)}).status_code == 201

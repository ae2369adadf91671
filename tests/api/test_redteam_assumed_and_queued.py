"""Red team: commit c07b5ab, (1) a closing PUT that assumes a new blob (``blobstate.assume_new``,
``NotNew``) and (2) PostgreSQL pipelined writes that send their own BEGIN/COMMIT with the driver
in autocommit and queue statements in libpq's buffer (``prepared._queue``).

``test_refused_…`` reproduces the one hole found (a quota refusal after the store commit, fixed);
``test_held_…`` tests are attacks that were refused, kept as regression tests.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dockyard import prepared
from dockyard.db import Database, utcnow
from dockyard.lifecycle.services.gc import GarbageCollector, Options, Report
from dockyard.registry.models import blobs, manifests, repository_blobs, tags, uploads
from dockyard.registry.services import blobstate
from dockyard.registry.services.blobstate import GONE, LIVE
from dockyard.registry.services.manifests import TagExists
from dockyard.registry.services.upload_sessions import CLOSED
from tests.support.images import make_image, sha256
from tests.support.registry import push_blob, push_image
from tests.support.scratch import INSERT, NAMES, RENAME, scratch, scratch_database
from tests.support.stores import stored_blobs

LIMIT = 5000
QUOTA_TESTS = (
    "test_refused_a_quota_refusal_after_the_assumed",
    "test_held_concurrent_closing_puts_of_one_new",
)


@pytest.fixture
def settings(settings, request):
    if request.node.name.startswith(QUOTA_TESTS):
        return settings.model_copy(update={"tiers": {"Premium": {"storage_bytes": LIMIT}}})
    return settings


def _data(seed: str, size: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(size)


def _in_store(dockyard, digest: str) -> bool:
    return any(b.digest == digest for b in stored_blobs(dockyard.store))


def _row(dockyard, digest: str):
    with dockyard.db.read() as conn:
        return conn.execute(
            sa.select(blobs.c.state, blobs.c.generation, blobs.c.state_at).where(blobs.c.digest == digest)
        ).first()


def _links(db: Database, digest: str) -> int:
    with db.read() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(repository_blobs)
            .where(repository_blobs.c.digest == digest)
        ).scalar_one()


def _tombstone(
    dockyard, digest: str, size: int, *, generation: int = 3, age: timedelta = timedelta(0)
) -> None:
    at = utcnow() - age
    row = blobs.insert().values(
        digest=digest, size=size, created_at=at, state=GONE, generation=generation, state_at=at
    )
    dockyard.db.run_write(lambda conn: conn.execute(row))


def _collector(dockyard, *, ahead: float = 0.0) -> GarbageCollector:
    return GarbageCollector(
        dockyard.db,
        dockyard.store,
        dockyard.registry.manifests,
        dockyard.service("lifecycle").kept_blobs,
        batch=2,
        clock=lambda: utcnow() + timedelta(seconds=ahead),
    )


def _assert_consistent(dockyard) -> None:
    with dockyard.db.read() as conn:
        rows = conn.execute(sa.select(blobs.c.digest, blobs.c.state, blobs.c.location)).all()
    for row in rows:
        if row.state == LIVE:
            assert dockyard.store.stat(row.digest, location=row.location) is not None, row.digest


def _close(client, repository: str, data: bytes):
    started = client.post(f"/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202, started.text
    return client.put(started.headers["location"], params={"digest": sha256(data)}, content=data)


def _after_first_put(dockyard, monkeypatch, action) -> list[str]:
    """Run ``action`` right after the store's first ``put`` (between a closing PUT's store commit
    and its link); the digests ``put`` is called with, then and later."""
    store = dockyard.store
    original = store.put
    puts: list[str] = []

    def put_then_act(digest, payload):
        original(digest, payload)
        if not puts:
            action()
        puts.append(digest)

    monkeypatch.setattr(store, "put", put_then_act)
    return puts


# -- (1) the assumed new blob ----------------------------------------------------------------------


def test_refused_a_quota_refusal_after_the_assumed_store_commit(client, dockyard, monkeypatch):
    """The closing PUT checks the quota as for a new blob, then stores the bytes; its link finds
    the blob's tombstone (NotNew). Other commits in between (here: this process counts a
    concurrent push's bytes while ours are stored) must not make it refuse now, after the bytes
    were stored: they would stay in the store, recorded nowhere (found by review: it checked
    the quota a second time there)."""
    data = _data("tombstoned", 1000)
    digest = sha256(data)
    _tombstone(dockyard, digest, len(data))
    quota = dockyard.service("tiers").quota
    assert quota.used() == 0
    # a concurrent push of this process commits while ours is stored
    puts = _after_first_put(dockyard, monkeypatch, lambda: quota.added(LIMIT - 500))
    answer = _close(client, "team/app", data)
    assert answer.status_code == 201, answer.text
    assert len(puts) == 2  # stored, then stored again after reading the tombstone
    assert client.get(f"/v2/team/app/blobs/{digest}").content == data
    assert _row(dockyard, digest).state == LIVE


def test_held_concurrent_closing_puts_of_one_new_blob_into_two_repositories_count_it_once(
    client, dockyard, monkeypatch
):
    """Both pushes assume a new blob and store it before either links: one links by its insert,
    the other finds the row (NotNew), reads it live and links without counting it again."""
    data = _data("twice at once", 1500)
    digest = sha256(data)
    quota = dockyard.service("tiers").quota
    assert quota.used() == 0
    store = dockyard.store
    original = store.put
    both_stored = threading.Barrier(2)
    calls = []

    def put_then_wait(d, payload):
        original(d, payload)
        calls.append(d)
        if len(calls) <= 2:
            both_stored.wait(30)

    monkeypatch.setattr(store, "put", put_then_wait)
    uploads_service = dockyard.registry.uploads
    sessions = {repo: uploads_service.start(repo).id for repo in ("team/one", "team/two")}

    def close(repo):
        return uploads_service._complete_in_one(repo, sessions[repo], digest, data, None)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(close, sessions))
    assert [(r.digest, r.size) for r in results] == [(digest, len(data))] * 2
    assert quota.used() == len(data)
    quota.forget()
    assert quota.used() == len(data)
    assert _links(dockyard.db, digest) == 2
    assert tuple(_row(dockyard, digest))[:2] == (LIVE, 0)
    for repo in sessions:
        assert client.get(f"/v2/{repo}/blobs/{digest}").content == data
    with dockyard.db.read() as conn:
        sizes = conn.execute(sa.select(uploads.c.size).where(uploads.c.id.in_(list(sessions.values()))))
        assert sorted(sizes.scalars()) == [CLOSED, CLOSED]


def test_held_an_orphan_claimed_and_deleted_between_the_assumed_store_commit_and_the_link(
    client, dockyard, monkeypatch
):
    """The blob's bytes are an old unrecorded object (a crash between commit and record): the
    filesystem store's put then keeps the old object as is. Collection claims it as an orphan,
    deletes it and leaves a tombstone, all between the push's put and its link."""
    data = _data("an orphan", 700)
    digest = sha256(data)
    dockyard.store.put(digest, data)  # no row: an orphan
    gc = _collector(dockyard, ahead=7200)
    cutoff = utcnow() + timedelta(hours=1)
    puts = _after_first_put(dockyard, monkeypatch, lambda: gc.collect_orphans(cutoff, False, Report()))
    answer = _close(client, "team/app", data)
    assert answer.status_code == 201, answer.text
    assert len(puts) == 2  # stored again after reading the tombstone
    assert client.get(f"/v2/team/app/blobs/{digest}").content == data
    assert _row(dockyard, digest).state == LIVE
    _assert_consistent(dockyard)


def test_held_an_orphan_claim_that_loses_to_the_assumed_link_deletes_nothing(client, dockyard, monkeypatch):
    """Collection reads "no row" for an orphan, then the closing PUT of the same bytes stores
    (a no-op: the object is there) and links by its own insert, then the claim runs: it must find
    the row and delete nothing."""
    data = _data("an orphan, linked first", 900)
    digest = sha256(data)
    dockyard.store.put(digest, data)
    gc = _collector(dockyard, ahead=7200)
    cutoff = utcnow() + timedelta(hours=1)
    real_claim = gc.claim
    claims = []

    def push_then_claim(found, tombstones):
        if not claims:
            answer = _close(client, "team/app", data)
            assert answer.status_code == 201, answer.text
        claims.append(dict(found))
        return real_claim(found, tombstones)

    monkeypatch.setattr(gc, "claim", push_then_claim)
    report = Report()
    gc.collect_orphans(cutoff, False, report)
    assert claims
    assert digest in claims[0]
    assert report.freed["orphans"].items == 0
    assert client.get(f"/v2/team/app/blobs/{digest}").content == data
    _assert_consistent(dockyard)


def test_held_a_day_old_tombstone_pruned_after_the_assumed_store_commit(client, dockyard, monkeypatch):
    """The tombstone a day old (bytes deleted long ago) is pruned between the push's put and its
    link: the push's own insert then creates the row over the bytes it just stored."""
    data = _data("pruned", 600)
    digest = sha256(data)
    _tombstone(dockyard, digest, len(data), age=timedelta(days=2))
    gc = _collector(dockyard)

    def prune() -> None:
        report = Report()
        gc.prune_tombstones(utcnow(), report)
        assert report.freed["tombstones"].items == 1

    _after_first_put(dockyard, monkeypatch, prune)
    answer = _close(client, "team/app", data)
    assert answer.status_code == 201, answer.text
    assert client.get(f"/v2/team/app/blobs/{digest}").content == data
    _assert_consistent(dockyard)


def test_held_a_day_old_tombstone_reclaimed_then_pruned_around_the_assumed_store_commit(
    client, dockyard, monkeypatch
):
    """Attack on the docstring's argument: after the push's put, collection claims the day-old
    tombstone (its new object looks orphaned), deletes the bytes, and a prune runs. The claim's
    'gone' is fresh, so the prune must not remove it, and the push must store again."""
    data = _data("reclaimed", 650)
    digest = sha256(data)
    _tombstone(dockyard, digest, len(data), age=timedelta(days=2))
    gc = _collector(dockyard, ahead=7200)
    cutoff = utcnow() + timedelta(hours=1)

    def collect_and_prune() -> None:
        report = Report()
        gc.collect_orphans(cutoff, False, report)
        assert report.freed["orphans"].items == 1
        gc.prune_tombstones(utcnow(), report)
        assert report.freed["tombstones"].items == 0

    puts = _after_first_put(dockyard, monkeypatch, collect_and_prune)
    answer = _close(client, "team/app", data)
    assert answer.status_code == 201, answer.text
    assert len(puts) == 2
    assert client.get(f"/v2/team/app/blobs/{digest}").content == data
    _assert_consistent(dockyard)


def test_held_a_blob_marked_between_the_assumed_store_commit_and_the_link_is_refused(
    client, dockyard, monkeypatch
):
    """The blob is stored and unreferenced; collection marks it (its put was a no-op on the
    filesystem: the object was there) and deletes it after the push's put. The push must not link
    the deleted bytes: it reads 'deleting' (503) or 'gone' (stores again)."""
    data = _data("marked meanwhile", 800)
    digest = push_blob(client, "team/old", data)
    gc = _collector(dockyard, ahead=7200)
    cutoff = utcnow() + timedelta(hours=1)
    gc.collect_links(cutoff, False, Report())

    def mark_and_delete() -> None:
        marked = gc.mark([digest], cutoff)
        assert len(marked) == 1
        gc.delete_bytes(marked)  # not finished: the row stays 'deleting'

    _after_first_put(dockyard, monkeypatch, mark_and_delete)
    answer = _close(client, "team/app", data)
    assert answer.status_code == 503, answer.text
    assert _links(dockyard.db, digest) == 0
    assert client.head(f"/v2/team/app/blobs/{digest}").status_code == 404
    _assert_consistent(dockyard)


def test_held_an_assumption_past_its_time_reads_first_through_the_api(client, dockyard, monkeypatch):
    """Past ``ASSUMED_FOR`` (clock jumped) the link refuses to trust the assumption even with no row."""
    data = _data("slow push", 300)
    digest = sha256(data)
    start = blobstate.time.monotonic()

    def jump() -> None:
        monkeypatch.setattr(blobstate.time, "monotonic", lambda: start + blobstate.ASSUMED_FOR + 60)

    puts = _after_first_put(dockyard, monkeypatch, jump)
    answer = _close(client, "team/app", data)
    assert answer.status_code == 201, answer.text
    assert len(puts) == 2  # read, stored again, linked
    assert client.get(f"/v2/team/app/blobs/{digest}").content == data


def test_held_a_stored_blob_closed_into_a_write_locked_repository_links_nothing(client, dockyard):
    """NotNew path (the blob lives in another repository) into a write-locked repository: 403,
    no link, the session still open, nothing of the refused transaction kept."""
    image = make_image("locked-notnew")
    push_image(client, "team/open", image, tag="v1")
    started = client.post("/v2/team/locked/blobs/uploads/")
    assert started.status_code == 202
    push_blob(client, "team/locked", b"makes the repository exist")
    dockyard.registry.locks.update_repository("team/locked", {"write_enabled": False})
    layer = image.layers[0]
    refused = client.put(started.headers["location"], params={"digest": layer.digest}, content=layer.data)
    assert refused.status_code == 403, refused.text
    assert _links(dockyard.db, layer.digest) == 1
    assert tuple(_row(dockyard, layer.digest))[:2] == (LIVE, 0)
    dockyard.registry.locks.update_repository("team/locked", {"write_enabled": True})
    again = client.put(started.headers["location"], params={"digest": layer.digest}, content=layer.data)
    assert again.status_code == 201, again.text
    assert _links(dockyard.db, layer.digest) == 2


def test_held_layers_pushed_again_into_a_new_repository_make_a_manifest_gc_keeps(client, dockyard):
    """Every layer of the second push takes the NotNew path; its manifest then references them."""
    image = make_image("twice-pushed", layers=3)
    push_image(client, "team/first", image, tag="v1")
    push_image(client, "team/second", image, tag="v1")
    assert client.delete(f"/v2/team/first/manifests/{image.digest}").status_code == 202
    _collector(dockyard, ahead=7200).collect(Options(grace_seconds=3600))
    for blob in image.blobs:
        assert client.get(f"/v2/team/second/blobs/{blob.digest}").content == blob.data
        assert _links(dockyard.db, blob.digest) == 1
    _assert_consistent(dockyard)


# -- (2) PostgreSQL pipelined writes with their own BEGIN and COMMIT ---------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    cleanup = ("DROP TABLE IF EXISTS redteam_queued_deferred",)
    with scratch_database(database_url, postgresql_cleanup=cleanup) as database:  # one connection
        yield database


def _names_elsewhere(db: Database) -> list[str]:
    """What another session sees committed (a fresh engine: the tested pool has one connection)."""
    other = sa.create_engine(db.url, poolclass=sa.pool.NullPool)
    try:
        with other.connect() as conn:
            return list(conn.execute(NAMES).scalars())
    finally:
        other.dispose()


def _assert_transactional_afterwards(db: Database, tag: str) -> None:
    """The pooled connection is out of autocommit: a plain write is one transaction, invisible to
    others until it commits and rolled back whole on an error; a read is one transaction."""

    class Boom(Exception):
        pass

    def write_then_fail() -> None:
        with db.write() as conn:
            driver = conn.connection.dbapi_connection
            if not db.is_sqlite:
                assert driver.autocommit is False
                assert driver.pgconn.pipeline_status == 0
            prepared.execute(conn, INSERT, {"id": 900, "name": f"{tag}-rolled-back"})
            conn.execute(scratch.insert().values(id=901, name=f"{tag}-rolled-back-too"))
            assert f"{tag}-rolled-back" not in _names_elsewhere(db)
            raise Boom

    with pytest.raises(Boom):
        write_then_fail()
    names = _names_elsewhere(db)
    assert f"{tag}-rolled-back" not in names
    assert f"{tag}-rolled-back-too" not in names
    with db.read() as conn:
        conn.execute(NAMES).all()
        if not db.is_sqlite:
            assert conn.connection.dbapi_connection.pgconn.transaction_status != 0  # not IDLE: a transaction


@pytest.mark.postgresql_only
def test_held_the_pooled_connection_leaves_autocommit_after_every_kind_of_pipelined_end(db):
    class Refused(Exception):
        pass

    with db.write(pipelined=True) as conn:  # committed
        prepared.execute_later(conn, INSERT, {"id": 1, "name": "committed"})
    _assert_transactional_afterwards(db, "after-commit")

    def python_error_after_a_read() -> None:
        with db.write(pipelined=True) as conn:
            prepared.execute_later(conn, INSERT, {"id": 2, "name": "python-error"})
            conn.execute(NAMES).all()  # SQLAlchemy's statement: synced mid-transaction
            prepared.execute_later(conn, RENAME, {"old": "python-error", "new": "renamed"})
            raise Refused

    with pytest.raises(Refused):
        python_error_after_a_read()
    _assert_transactional_afterwards(db, "after-python-error")

    def deferred_error() -> None:
        with db.write(pipelined=True) as conn:
            prepared.execute_later(conn, INSERT, {"id": 3, "name": "half"})
            prepared.execute_later(conn, INSERT, {"id": 1, "name": "duplicate id"})

    with pytest.raises(sa.exc.IntegrityError):
        deferred_error()
    _assert_transactional_afterwards(db, "after-db-error")

    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE redteam_queued_deferred (name text,"
            " CONSTRAINT once UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)"
        )
    deferred = sa.table("redteam_queued_deferred", sa.column("name"))

    def error_at_commit() -> None:
        with db.write(pipelined=True) as conn:
            prepared.execute_later(conn, INSERT, {"id": 4, "name": "with-the-commit"})
            prepared.execute_later(conn, deferred.insert(), {"name": "x"})
            prepared.execute_later(conn, deferred.insert(), {"name": "x"})

    with pytest.raises(sa.exc.IntegrityError):
        error_at_commit()
    _assert_transactional_afterwards(db, "after-commit-error")
    assert _names_elsewhere(db) == ["committed"]


@pytest.mark.postgresql_only
def test_held_mixed_sqlalchemy_and_queued_statements_are_one_transaction(db):
    """Queued statements, SQLAlchemy's (each synced), a nested sync and reads, then an error:
    nothing of it was visible meanwhile, nothing is kept."""

    class Refused(Exception):
        pass

    def mixed_then_refused() -> None:
        with db.write(pipelined=True) as conn:
            prepared.execute_later(conn, INSERT, {"id": 10, "name": "q1"})
            conn.execute(scratch.insert().values(id=11, name="sa1"))
            prepared.wait_for_answers(conn.connection.dbapi_connection)
            assert _names_elsewhere(db) == []
            sent = prepared.send(conn, NAMES.where(scratch.c.id >= 0), {})
            prepared.execute_later(conn, RENAME, {"old": "q1", "new": "q1b"})
            assert [r.name for r in sent.rows()] == ["q1", "sa1"]
            conn.execute(scratch.update().where(scratch.c.id == 11).values(name="sa1b"))
            assert prepared.execute(conn, RENAME, {"old": "q1b", "new": "q1c"}) == 1
            assert _names_elsewhere(db) == []
            raise Refused

    with pytest.raises(Refused):
        mixed_then_refused()
    assert _names_elsewhere(db) == []
    with db.write(pipelined=True) as conn:
        prepared.execute_later(conn, INSERT, {"id": 12, "name": "kept"})
        conn.execute(scratch.insert().values(id=13, name="kept-too"))
        assert _names_elsewhere(db) == []
    assert _names_elsewhere(db) == ["kept", "kept-too"]


@pytest.mark.postgresql_only
def test_held_a_pipelined_write_that_is_not_durable_turns_synchronous_commit_off_for_itself_only(db):
    with db.write(pipelined=True, durable=False) as conn:
        prepared.execute_later(conn, INSERT, {"id": 20, "name": "fast"})
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    with db.write(pipelined=True) as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    with db.write() as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    assert _names_elsewhere(db) == ["fast"]


def _terminate(db: Database, pid: int) -> None:
    """Kill backend ``pid`` from another session and wait until PostgreSQL has let it go."""
    other = sa.create_engine(db.url, poolclass=sa.pool.NullPool)
    try:
        with other.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            for _ in range(10000):
                gone = conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                ).scalar_one()
                if not gone:
                    return
                conn.commit()
        raise AssertionError(f"backend {pid} still there")
    finally:
        other.dispose()


@pytest.mark.postgresql_only
def test_held_a_backend_killed_mid_transaction_is_retried_and_keeps_no_half(db):
    attempts = []

    def work(conn):
        attempts.append(1)
        prepared.execute_later(conn, INSERT, {"id": 30, "name": "first-half"})
        assert prepared.first(conn, NAMES) is not None
        if len(attempts) == 1:
            _terminate(db, conn.connection.dbapi_connection.info.backend_pid)
        prepared.execute_later(conn, INSERT, {"id": 31, "name": "second-half"})
        return prepared.execute(conn, RENAME, {"old": "second-half", "new": "second-half!"})

    assert db.run_write(work, pipelined=True) == 1
    assert len(attempts) == 2
    assert _names_elsewhere(db) == ["first-half", "second-half!"]
    _assert_transactional_afterwards(db, "after-kill")


@pytest.mark.postgresql_only
def test_held_a_backend_killed_before_the_commit_commits_nothing_and_the_next_write_works(db):
    attempts = []

    def work(conn):
        attempts.append(1)
        assert prepared.first(conn, NAMES) is None
        prepared.execute_later(conn, INSERT, {"id": 40, "name": "lost"})
        _terminate(db, conn.connection.dbapi_connection.info.backend_pid)

    with pytest.raises(sa.exc.DBAPIError) as raised:
        db.run_write(work, pipelined=True)
    assert raised.value.connection_invalidated
    assert len(attempts) == 1  # the outcome of a COMMIT sent is unknown: not run again
    assert _names_elsewhere(db) == []
    with db.write(pipelined=True) as conn:
        prepared.execute_later(conn, INSERT, {"id": 41, "name": "next"})
    assert _names_elsewhere(db) == ["next"]
    _assert_transactional_afterwards(db, "after-kill-at-commit")


@pytest.mark.postgresql_only
def test_held_statements_prepared_by_the_driver_survive_failing_pipelined_transactions(db):
    """psycopg prepares a statement on its sixth run (Parse in the same pipeline): failing
    transactions around that point (the Parse aborted, a rollback) must leave no statement the
    driver believes prepared but the server lacks."""
    for round_ in range(14):
        fail_first = round_ % 3 == 0
        try:
            with db.write(pipelined=True) as conn:
                if fail_first:
                    prepared.execute_later(conn, INSERT, {"id": 50, "name": "taken"})
                    prepared.execute_later(conn, INSERT, {"id": 50, "name": "taken twice"})
                prepared.execute_later(conn, RENAME, {"old": "nothing", "new": f"r{round_}"})
                assert (
                    prepared.first(conn, NAMES.where(scratch.c.id > sa.bindparam("above")), {"above": 0})
                    is None
                )
                if round_ % 3 == 1:
                    raise KeyError(round_)
        except (sa.exc.IntegrityError, KeyError):
            pass
        else:
            assert round_ % 3 == 2
    for _ in range(8):
        with db.write(pipelined=True) as conn:
            prepared.execute_later(conn, RENAME, {"old": "nothing", "new": "x"})
            assert prepared.execute(conn, RENAME, {"old": "nothing", "new": "y"}) == 0
            assert (
                prepared.first(conn, NAMES.where(scratch.c.id > sa.bindparam("above")), {"above": 0}) is None
            )
        with db.write() as conn:
            assert prepared.execute(conn, RENAME, {"old": "nothing", "new": "z"}) == 0
    assert _names_elsewhere(db) == []


@pytest.mark.postgresql_only
def test_held_a_new_tag_only_push_refused_keeps_nothing_and_the_next_push_commits(client, dockyard):
    one, two = make_image("new-tag-only-one"), make_image("new-tag-only-two")
    push_image(client, "team/tags", one, tag="v1")
    for blob in two.blobs:
        push_blob(client, "team/tags", blob.data)

    def state():
        with dockyard.db.read() as conn:
            return (
                sorted(conn.execute(sa.select(manifests.c.digest)).scalars()),
                sorted(conn.execute(sa.select(tags.c.name, tags.c.manifest_id)).all()),
                conn.execute(sa.text("SELECT count(*) FROM repository_events")).scalar_one(),
            )

    before = state()
    for _ in range(3):
        with pytest.raises(TagExists):
            dockyard.registry.manifests.put(
                "team/tags", "v1", two.manifest, two.media_type, new_tag_only=True
            )
    assert state() == before
    dockyard.registry.manifests.put("team/tags", "v2", two.manifest, two.media_type, new_tag_only=True)
    after = state()
    assert two.digest in after[0]
    assert len(after[1]) == 2
    assert after[2] == before[2] + 1


def test_held_a_session_with_a_row_closed_on_a_stored_blob_takes_both_fallbacks(client, dockyard):
    """A session that has a row (an empty PATCH) and a blob live elsewhere: GeneralPath, then
    NotNew in ``link_in_any_session``, then read, store, GeneralPath and link again: one link more,
    the session closed, the blob counted once."""
    data = _data("live elsewhere", 400)
    digest = push_blob(client, "team/elsewhere", data)
    started = client.post("/v2/team/here/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers["location"]
    patched = client.patch(location, content=b"", headers={"Content-Type": "application/octet-stream"})
    assert patched.status_code == 202, patched.text
    upload_id = location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(uploads.c.size).where(uploads.c.id == upload_id)).scalar() == 0
    closed = client.put(location, params={"digest": digest}, content=data)
    assert closed.status_code == 201, closed.text
    assert _links(dockyard.db, digest) == 2
    assert client.get(f"/v2/team/here/blobs/{digest}").content == data
    assert client.get(location).status_code == 404
    assert tuple(_row(dockyard, digest))[:2] == (LIVE, 0)

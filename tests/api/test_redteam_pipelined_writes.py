"""Red team: the push transactions that run in psycopg pipeline mode (``run_write(pipelined=True)``).

Errors of statements sent without waiting (``prepared.execute_later``), retries, the pooled
connection afterwards, refused pushes, concurrent pushes of one tag, and events exactly once.
On SQLite ``pipelined`` is a no-op: the same tests must pass there unchanged (those marked
``postgresql_only`` fake PostgreSQL errors with triggers, or need its pipeline mode).
``test_closed_…`` tests reproduced a hole when they were written (each failed until it was closed:
``Database.write`` now reads what a failed pipelined transaction still has due before the
rollback); ``test_refused_…`` tests are attacks that were refused.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from dockyard import prepared
from dockyard.app import build
from dockyard.db import Database
from dockyard.events.models import repository_events
from dockyard.oci.errors import RegistryError
from dockyard.registry.models import manifests, repositories, repository_blobs, tags, uploads
from dockyard.registry.services.blobstate import Seen, link_committed
from dockyard.registry.services.common import ensure_repository
from dockyard.registry.services.upload_sessions import CLOSED
from tests.support.images import make_image
from tests.support.polling import eventually
from tests.support.registry import error_codes, push_blob, push_image
from tests.support.scratch import INSERT, NAMES, RENAME, scratch, scratch_database

REPO = "redteam/pipelined"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    cleanup = (
        "DROP TRIGGER IF EXISTS redteam_fail ON redteam_scratch",
        "DROP FUNCTION IF EXISTS redteam_fail_once()",
        "DROP SEQUENCE IF EXISTS redteam_attempts",
    )
    with scratch_database(database_url, postgresql_cleanup=cleanup) as database:
        yield database


def _install_failing_trigger(conn: sa.Connection, table: str, sqlstate: str, *, once: bool) -> None:
    """A BEFORE INSERT OR UPDATE trigger on ``table`` raising ``sqlstate`` (on its first firing only
    if ``once``: a sequence counts firings and is not rolled back with the transaction)."""
    conn.exec_driver_sql("CREATE SEQUENCE IF NOT EXISTS redteam_attempts")
    condition = "nextval('redteam_attempts') = 1" if once else "nextval('redteam_attempts') > 0"
    conn.exec_driver_sql(
        f"""
        CREATE OR REPLACE FUNCTION redteam_fail_once() RETURNS trigger AS $$
        BEGIN
            IF {condition} THEN
                RAISE EXCEPTION 'redteam injected failure' USING ERRCODE = '{sqlstate}';
            END IF;
            RETURN NEW;
        END $$ LANGUAGE plpgsql
        """
    )
    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS redteam_fail ON {table}")
    conn.exec_driver_sql(
        f"CREATE TRIGGER redteam_fail BEFORE INSERT OR UPDATE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION redteam_fail_once()"
    )


def _drop_failing_trigger(database: Database, table: str) -> None:
    with database.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS redteam_fail ON {table}")
        conn.exec_driver_sql("DROP FUNCTION IF EXISTS redteam_fail_once()")
        conn.exec_driver_sql("DROP SEQUENCE IF EXISTS redteam_attempts")


def _firings(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT last_value FROM redteam_attempts").scalar_one())


def _assert_clean_connection(database: Database) -> None:
    """The next user of the (single) pooled connection gets it out of pipeline mode, outside any
    transaction, with row counts and reads that answer at once."""
    with database.write() as conn:
        driver = conn.connection.dbapi_connection
        assert not prepared.pipelined(conn)
        if not database.is_sqlite:
            assert driver.pgconn.pipeline_status == 0
        prepared.execute(conn, INSERT, {"id": 999, "name": "probe"})
        assert prepared.execute(conn, RENAME, {"old": "probe", "new": "probe2"}) == 1
        assert prepared.execute(conn, RENAME, {"old": "nothing", "new": "x"}) == 0
        assert "probe2" in [row.name for row in prepared.rows(conn, NAMES)]
        conn.execute(scratch.delete().where(scratch.c.id == 999))


# -- the database layer -------------------------------------------------------------------------


SHAPES = (
    "then_commit",
    "then_sqlalchemy_read",
    "first_statement_then_read",
    "two_deferred_then_read",
    "then_row_count",
)


def _deferred_duplicate(conn: sa.Connection, shape: str, key: int) -> None:
    """Send a unique violation with ``execute_later``, then what ``shape`` says."""
    if shape != "first_statement_then_read":
        prepared.rows(conn, NAMES)  # BEGIN answered: the failing statement is not the first
    prepared.execute_later(conn, INSERT, {"id": key, "name": "dup"})
    if shape == "two_deferred_then_read":
        prepared.execute_later(conn, RENAME, {"old": "nothing", "new": "x"})
    if shape == "then_row_count":
        prepared.execute(conn, RENAME, {"old": "nothing", "new": "x"})
    elif shape == "then_sqlalchemy_read":
        conn.execute(sa.select(scratch.c.id)).all()
    elif shape != "then_commit":
        prepared.first(conn, NAMES)


def test_refused_a_failed_pipelined_transaction_keeps_nothing_and_leaves_the_connection_clean(db):
    """Whatever follows a failing deferred statement, the transaction fails, keeps nothing, and
    the single pooled connection is clean for its next user, many times over (past psycopg's
    prepare threshold)."""
    with db.write() as conn:
        prepared.execute(conn, INSERT, {"id": 1, "name": "dup"})
    for attempt in range(3):
        for number, shape in enumerate(SHAPES):
            with pytest.raises(sa.exc.DBAPIError), db.write(pipelined=True) as conn:
                _deferred_duplicate(conn, shape, 100 + 10 * attempt + number)
            _assert_clean_connection(db)
    with db.read() as conn:
        assert [row.name for row in prepared.rows(conn, NAMES)] == ["dup"]


@pytest.mark.postgresql_only
def test_closed_a_deferred_error_is_replaced_by_pipeline_aborted(db):
    """HOLE (closed; medium). Attack: a statement sent with ``execute_later`` fails (unique violation),
    followed by the COMMIT, an SQLAlchemy read, a ``prepared`` read, a second ``execute_later``,
    or a ``prepared.execute`` (row count); each shape 6 times. What happens (PostgreSQL): the real
    error is raised where psycopg reads it, but when the result of a statement after it is still
    unread then, SQLAlchemy's rollback (psycopg ``_rollback_gen`` syncs the pipeline first) raises
    ``PipelineAborted`` for it, which replaces the real error: the caller gets
    ``OperationalError(PipelineAborted)`` with no SQLSTATE. It depends on timing (how far psycopg
    had read), so it is intermittent for every shape, near-certain when the failing statement is
    the transaction's first. Expected: the original ``IntegrityError`` (23505), as ARCHITECTURE
    promises ("an error in one of them is raised there") and as on SQLite. Fix: Database.write
    (dockyard/db.py): on an exception in a pipelined transaction, drain the pipeline
    (``driver.pipeline().sync()`` / a nested block, suppressing ``psycopg.errors.PipelineAborted``)
    before SQLAlchemy's rollback, so the rollback cannot raise over the original error."""
    with db.write() as conn:
        prepared.execute(conn, INSERT, {"id": 1, "name": "dup"})
    masked = []
    for attempt in range(6):
        for number, shape in enumerate(SHAPES):
            with pytest.raises(sa.exc.DBAPIError) as raised, db.write(pipelined=True) as conn:
                _deferred_duplicate(conn, shape, 100 + 10 * attempt + number)
            if not isinstance(raised.value, sa.exc.IntegrityError):
                masked.append((shape, type(raised.value.orig).__name__))
    assert masked == []


@pytest.mark.postgresql_only
def test_refused_sqlalchemy_statements_in_a_pipelined_transaction_answer_in_full(db):
    """SQLAlchemy's own statements mixed with deferred ones: results, row counts, iteration of a
    result while later statements are sent, all complete and in order."""
    with db.write(pipelined=True) as conn:
        for index in range(5):
            prepared.execute_later(conn, INSERT, {"id": index, "name": f"n{index}"})
        result = conn.execute(sa.select(scratch.c.id, scratch.c.name).order_by(scratch.c.id))
        seen = []
        for row in result:  # each iteration sends another statement, deferred or not
            seen.append(row.id)
            prepared.execute_later(conn, RENAME, {"old": row.name, "new": f"m{row.id}"})
            assert conn.execute(scratch.update().where(scratch.c.id == -1).values(name="z")).rowcount == 0
        assert seen == [0, 1, 2, 3, 4]
        assert (
            conn.execute(scratch.update().where(scratch.c.id < 3).values(name=scratch.c.name + "x")).rowcount
            == 3
        )
        assert prepared.execute(conn, RENAME, {"old": "m4", "new": "last"}) == 1
    with db.read() as conn:
        assert [row.name for row in prepared.rows(conn, NAMES)] == ["last", "m0x", "m1x", "m2x", "m3"]


def _deadlock_rounds(db: Database, shape: str, rounds: int) -> list[tuple[int, str, int]]:
    """Transactions whose deferred insert deadlocks once; those not retried."""
    not_retried = []
    for round_ in range(rounds):
        with db.engine.begin() as conn:
            conn.execute(scratch.delete())
            _install_failing_trigger(conn, "redteam_scratch", "40P01", once=True)
        calls: list[int] = []

        def work(conn: sa.Connection, calls: list[int] = calls) -> None:
            calls.append(1)
            prepared.rows(conn, NAMES)
            prepared.execute_later(conn, INSERT, {"id": len(calls), "name": f"attempt{len(calls)}"})
            if shape == "two_deferred_then_read":
                prepared.execute_later(conn, RENAME, {"old": "nothing", "new": "x"})
                prepared.first(conn, NAMES)

        try:
            db.run_write(work, pipelined=True)
        except sa.exc.DBAPIError as exc:
            not_retried.append((round_, type(exc.orig).__name__, len(calls)))
        else:
            assert len(calls) == 2
            with db.read() as conn:
                assert [row.name for row in prepared.rows(conn, NAMES)] == ["attempt2"]
        finally:
            _drop_failing_trigger(db, "redteam_scratch")
        _assert_clean_connection(db)
    return not_retried


@pytest.mark.postgresql_only
def test_refused_a_deadlock_of_the_last_deferred_statement_is_retried_by_the_commit(db):
    """The deadlock of the last deferred statement is raised by the COMMIT: retried, 5 of 5."""
    assert _deadlock_rounds(db, "then_commit", 5) == []


@pytest.mark.postgresql_only
def test_closed_a_deadlock_of_a_deferred_statement_is_not_always_retried(db):
    """HOLE (closed; high). Attack: a deferred statement deadlocks (40P01, injected once by a trigger)
    and another deferred statement and a read follow it (the manifest push's event row,
    tag_version bump and tag check); 40 times. What
    happens: intermittently the rollback raises ``PipelineAborted`` over the deadlock;
    ``run_write`` sees no retryable SQLSTATE and raises instead of running the transaction again
    (a push fails with a 500). Expected: every deadlock retried, only the second attempt kept.
    Fix: in ``Database.write`` keep the first error of a pipelined transaction (drain the
    pipeline, suppressing ``PipelineAborted``, before the rollback); belt and braces, let
    ``run_write``'s ``_is_retryable`` look at the chained ``__context__`` too."""
    assert _deadlock_rounds(db, "two_deferred_then_read", 40) == []


@pytest.mark.postgresql_only
def test_refused_a_non_retryable_deferred_error_is_raised_once_not_retried(db):
    with db.engine.begin() as conn:
        _install_failing_trigger(conn, "redteam_scratch", "P0001", once=False)
    calls = []

    def work(conn: sa.Connection) -> None:
        calls.append(1)
        prepared.execute_later(conn, INSERT, {"id": 5, "name": "never"})

    with pytest.raises(sa.exc.DBAPIError, match="redteam injected failure"):
        db.run_write(work, pipelined=True)
    assert len(calls) == 1
    assert _firings(db) == 1
    _drop_failing_trigger(db, "redteam_scratch")
    _assert_clean_connection(db)
    with db.read() as conn:
        assert prepared.rows(conn, NAMES) == []


# -- pushes ---------------------------------------------------------------------------------------


def _state(database: Database, repository: str = REPO) -> dict[str, object]:
    with database.read() as conn:
        repo = conn.execute(
            sa.select(repositories.c.id, repositories.c.tag_version).where(repositories.c.name == repository)
        ).first()
        events = conn.execute(
            sa.select(repository_events.c.action, repository_events.c.tag, repository_events.c.digest)
            .where(repository_events.c.repository == repository)
            .order_by(repository_events.c.id)
        ).all()
        if repo is None:
            return {"tag_version": None, "events": [tuple(e) for e in events], "tags": {}, "manifests": set()}
        tag_rows = conn.execute(
            sa.select(tags.c.name, manifests.c.digest)
            .join(manifests, manifests.c.id == tags.c.manifest_id)
            .where(tags.c.repository_id == repo.id)
        ).all()
        digests = conn.execute(
            sa.select(manifests.c.digest).where(manifests.c.repository_id == repo.id)
        ).scalars()
        return {
            "tag_version": repo.tag_version,
            "events": [tuple(e) for e in events],
            "tags": {name: digest for name, digest in tag_rows},
            "manifests": set(digests),
        }


def _pushes(state: dict[str, object]) -> list[tuple[str, str | None, str | None]]:
    return [e for e in state["events"] if e[0] == "push"]  # type: ignore[union-attr]


def _push_blobs(client, image) -> None:
    for blob in image.blobs:
        push_blob(client, REPO, blob.data)


@pytest.mark.postgresql_only
def test_closed_a_deadlock_on_the_deferred_tag_version_bump_fails_the_push(client, dockyard):
    """HOLE (closed; high). Attack: the repository's ``tag_version`` UPDATE (``touch_repository``, sent
    without waiting) deadlocks once (injected by a trigger; in production two pushes and a lock
    change or a delete on one repository can do it), in 16 tag pushes and 4 pushes by digest.
    What happens: intermittently (1 in 2 to 1 in 5 here) the tag push answers 500 "internal
    server error": the deadlock is raised by the tag check, but SQLAlchemy's rollback raises
    psycopg ``PipelineAborted`` over it (the tag check's own result was still unread), which
    ``run_write`` does not retry. Before ec1220e the UPDATE waited and its deadlock was retried.
    Expected: every push retried and answered 201, each recorded once, ``tag_version`` bumped
    once per push. Fix: dockyard/db.py ``Database.write``: drain the pipeline (suppressing
    ``PipelineAborted``) before the rollback so the deadlock is what ``run_write`` sees."""
    db = dockyard.db
    pushes = []
    for index in range(16):
        tagged = make_image(f"deadlock-tagged-{index}")
        _push_blobs(client, tagged)
        pushes.append((tagged, f"v{index}"))
        if index % 4 == 0:
            by_digest = make_image(f"deadlock-digest-{index}")
            _push_blobs(client, by_digest)
            pushes.append((by_digest, by_digest.digest))
    before = _state(db)
    failed = []
    for image, reference in pushes:
        with db.engine.begin() as conn:
            _install_failing_trigger(conn, "repositories", "40P01", once=True)
        try:
            response = client.put(
                f"/v2/{REPO}/manifests/{reference}",
                content=image.manifest,
                headers={"Content-Type": image.media_type},
            )
            if response.status_code != 201:
                failed.append((reference, response.status_code))
            else:
                assert _firings(db) >= 2  # it did run again
        finally:
            _drop_failing_trigger(db, "repositories")
    after = _state(db)
    committed = [(image, ref) for image, ref in pushes if (ref, 500) not in failed]
    assert after["tag_version"] == before["tag_version"] + len(committed)
    assert _pushes(after)[len(_pushes(before)) :] == [
        ("push", None if ref.startswith("sha256:") else ref, image.digest) for image, ref in committed
    ]
    assert failed == []


@pytest.mark.postgresql_only
def test_refused_a_deadlock_on_the_deferred_blob_link_is_retried(client, dockyard):
    """The blob link is the last statement of the closing PUT: its deadlock is raised by the
    COMMIT, and run_write runs the transaction again (the session is opened closed once more)."""
    db = dockyard.db
    data = b"deferred link deadlock " * 100
    with db.engine.begin() as conn:
        _install_failing_trigger(conn, "repository_blobs", "40P01", once=True)
    try:
        digest = push_blob(client, REPO, data)
        assert _firings(db) >= 2
    finally:
        _drop_failing_trigger(db, "repository_blobs")
    assert client.get(f"/v2/{REPO}/blobs/{digest}").content == data
    assert _links(db, digest) == 1


@pytest.mark.postgresql_only
@pytest.mark.parametrize("by_tag", [True, False], ids=["tag", "digest"])
def test_refused_a_failing_deferred_event_row_rolls_the_push_back_whole(client, dockyard, by_tag):
    """The event row (sent without waiting) fails for good: the manifest push is answered with an
    error, nothing of it is kept (manifest, tag, tag_version, event), the error is not retried,
    and the next push on the pooled connections succeeds and is recorded exactly once."""
    db = dockyard.db
    image = make_image(f"event-fails-{by_tag}")
    _push_blobs(client, image)
    before = _state(db)
    reference = "v1" if by_tag else image.digest
    with db.engine.begin() as conn:
        _install_failing_trigger(conn, "repository_events", "P0001", once=False)
    try:
        with pytest.raises(sa.exc.DBAPIError, match="redteam injected failure"):
            dockyard.registry.manifests.put(REPO, reference, image.manifest, image.media_type)
        assert _firings(db) == 1
    finally:
        _drop_failing_trigger(db, "repository_events")
    assert _state(db) == before
    for _ in range(3):  # every pooled connection is usable
        dockyard.registry.manifests.put(REPO, reference, image.manifest, image.media_type)
    after = _state(db)
    assert _pushes(after)[len(_pushes(before)) :] == [("push", "v1" if by_tag else None, image.digest)] * 3
    assert after["manifests"] == before["manifests"] | {image.digest}


def test_refused_moving_an_immutable_tag_keeps_nothing_of_the_refused_push(client, dockyard):
    one, two = make_image("immutable-pipelined-one"), make_image("immutable-pipelined-two")
    push_image(client, REPO, one, "v1")
    _push_blobs(client, two)
    response = client.put(
        f"/api/v1/repositories/{REPO}/immutability", json={"enabled": True, "exemptions": []}
    )
    assert response.status_code == 200, response.text
    before = _state(dockyard.db)
    for _ in range(3):
        response = client.put(
            f"/v2/{REPO}/manifests/v1", content=two.manifest, headers={"Content-Type": two.media_type}
        )
        assert response.status_code == 403, response.text
        assert error_codes(response) == ["DENIED"]
    after = _state(dockyard.db)
    assert after == before
    assert after["tags"] == {"v1": one.digest}


def test_refused_a_write_locked_repository_refuses_blob_and_manifest_pushes_leaving_nothing(client, dockyard):
    one, two = make_image("locked-pipelined-one"), make_image("locked-pipelined-two")
    push_image(client, REPO, one, "v1")
    _push_blobs(client, two)
    upload = client.post(f"/v2/{REPO}/blobs/uploads/")
    assert upload.status_code == 202, upload.text
    dockyard.registry.locks.update_repository(REPO, {"write_enabled": False})
    before = _state(dockyard.db)
    data = b"a blob for a locked repository " * 10
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    closing = client.put(upload.headers["Location"], params={"digest": digest}, content=data)
    assert closing.status_code == 403, closing.text
    with dockyard.db.read() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(repository_blobs)
                .where(repository_blobs.c.digest == digest)
            ).scalar_one()
            == 0
        )
    response = client.put(
        f"/v2/{REPO}/manifests/v1", content=two.manifest, headers={"Content-Type": two.media_type}
    )
    assert response.status_code == 403, response.text
    assert _state(dockyard.db) == before


def _race(settings, count, job):
    instances = [build(settings) for _ in range(count)]
    barrier = threading.Barrier(count)

    def run(index):
        barrier.wait(30)
        return job(instances[index], index)

    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(run, range(count)))
    finally:
        for instance in instances:
            instance.db.dispose()


@pytest.mark.parametrize("immutable", [False, True], ids=["mutable", "immutable"])
def test_refused_concurrent_pushes_of_one_tag_record_each_committed_push_once(
    client, settings, dockyard, immutable
):
    """Four instances push four manifests to one tag at once (twice over). Mutable: every push
    commits, each recorded once, ``tag_version`` bumped once each, the tag names one of them.
    Immutable: exactly one commits; the refused ones leave no tag move, no bump and no event."""
    count, rounds = 4, 2
    images = [make_image(f"race-{immutable}-{i}") for i in range(count * rounds)]
    for image in images:
        _push_blobs(client, image)
    dockyard.registry.manifests.put(REPO, "seed", images[0].manifest, images[0].media_type)
    if immutable:
        response = client.put(
            f"/api/v1/repositories/{REPO}/immutability", json={"enabled": True, "exemptions": []}
        )
        assert response.status_code == 200, response.text
    before = _state(dockyard.db)
    outcomes: list[str] = []
    for round_ in range(rounds):

        def push(instance, index, round_=round_):
            image = images[round_ * count + index]
            try:
                instance.registry.manifests.put(REPO, f"race{round_}", image.manifest, image.media_type)
            except RegistryError as exc:
                return f"refused:{exc.code.name}"
            return image.digest

        outcomes += _race(settings, count, push)
    after = _state(dockyard.db)
    committed = [o for o in outcomes if not o.startswith("refused")]
    refused = [o for o in outcomes if o.startswith("refused")]
    new_pushes = _pushes(after)[len(_pushes(before)) :]
    assert sorted(d for _, _, d in new_pushes) == sorted(committed)
    assert after["tag_version"] == before["tag_version"] + len(committed)
    for round_ in range(rounds):
        assert after["tags"][f"race{round_}"] in committed
    if immutable:
        assert len(committed) == rounds, outcomes
        assert set(refused) == {"refused:DENIED"}, outcomes
        for round_ in range(rounds):
            assert [d for _, t, d in new_pushes if t == f"race{round_}"] == [after["tags"][f"race{round_}"]]
    else:
        assert len(committed) == count * rounds, outcomes


def test_refused_a_repository_deleted_during_manifest_pushes_leaves_no_half_push(client, settings, dockyard):
    """Three instances push tags into one repository while a fourth deletes it, three rounds.
    Every call either commits or is refused with a registry error (no 500, no driver error), and
    every push recorded in the event log is one that committed: none of a rolled-back push."""
    rounds, pushers = 3, 3
    images = [make_image(f"delete-race-{i}") for i in range(rounds * pushers)]
    committed: list[str] = []
    refused: list[str] = []
    for round_ in range(rounds):
        for image in images[round_ * pushers : (round_ + 1) * pushers]:
            _push_blobs(client, image)
        start = len(_pushes(_state(dockyard.db)))

        def job(instance, index, round_=round_):
            if index == pushers:
                try:
                    instance.registry.repositories.delete(REPO)
                except RegistryError as exc:
                    return ("delete-refused", exc.code.name)
                return ("deleted", None)
            image = images[round_ * pushers + index]
            try:
                instance.registry.manifests.put(REPO, f"r{round_}-{index}", image.manifest, image.media_type)
            except RegistryError as exc:
                return ("refused", exc.code.name)
            return ("pushed", image.digest)

        outcomes = _race(settings, pushers + 1, job)
        committed += [value for what, value in outcomes if what == "pushed"]
        refused += [value for what, value in outcomes if what == "refused"]
        after = _state(dockyard.db)
        recorded = sorted(digest for _, _, digest in _pushes(after)[start:])
        assert recorded == sorted(value for what, value in outcomes if what == "pushed"), outcomes
        if after["tag_version"] is not None:
            assert set(after["tags"].values()) <= after["manifests"]
    assert committed or refused


def test_refused_one_small_blob_closed_at_once_through_four_instances_is_linked_once(
    client, settings, dockyard
):
    """The pipelined closing PUT of one small blob, in four sessions of four instances at once
    (three rounds, each a new blob): every session closes, the blob is recorded and linked once,
    every session row is closed, and the bytes read back."""
    count = 4
    for round_ in range(3):
        data = f"one small blob, round {round_} ".encode() * 40
        digest = "sha256:" + hashlib.sha256(data).hexdigest()

        def close(instance, _index, data=data, digest=digest):
            state = instance.registry.uploads.start(REPO)
            return state.id, instance.registry.uploads._complete_in_one(REPO, state.id, digest, data, None)

        results = _race(settings, count, close)
        assert [(r.digest, r.size) for _, r in results] == [(digest, len(data))] * count
        with dockyard.db.read() as conn:
            sizes = conn.execute(
                sa.select(uploads.c.size).where(uploads.c.id.in_([upload_id for upload_id, _ in results]))
            ).scalars()
            assert list(sizes) == [CLOSED] * count
            links = conn.execute(
                sa.select(sa.func.count())
                .select_from(repository_blobs)
                .where(repository_blobs.c.digest == digest)
            ).scalar_one()
        assert links == 1
        assert client.get(f"/v2/{REPO}/blobs/{digest}").content == data


@pytest.mark.postgresql_only
@pytest.mark.filesystem_only
def test_refused_two_ways_of_linking_one_layer_into_a_new_repository_do_not_deadlock(dockyard, caplog):
    """Attack (found by review): the one-round-trip closing PUT sent the blob's row with the
    repository's lock; finding no repository, it created it after the blob row. A chunked push's
    link (repository first, then blob) of the same layer into the same new repository then waited
    on it the other way round: a deadlock, aborted after deadlock_timeout and retried."""
    repository = "redteam/new-repository"
    data = b"one layer pushed two ways " * 20
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    session = dockyard.registry.uploads.start(repository)
    stored = dockyard.registry.uploads.store_closing(digest, data)
    assert stored is not None
    assert stored.seen.state is None  # a new blob: its row is inserted, not locked
    other = dockyard.db.engine.connect()  # the other push's link, statement by statement
    other_pid = other.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    other.commit()
    failures: list[Exception] = []
    transaction = other.begin()
    try:
        repo_id = ensure_repository(other, repository)  # its row inserted, not committed

        def close() -> None:
            try:
                dockyard.registry.uploads.close_stored(repository, session.id, stored)
            except Exception as exc:  # recorded: the assertion below names it
                failures.append(exc)

        caplog.set_level("INFO", logger="dockyard.db")
        closer = threading.Thread(target=close)
        closer.start()
        eventually(lambda: _waits_to_insert_the_repository(dockyard, other_pid), "the close to wait")
        link_committed(other, repo_id, digest, len(data), None, Seen(None))  # deadlocked here
        transaction.commit()
        closer.join(60)
    finally:
        other.close()
    assert not failures, failures
    assert not [r for r in caplog.records if "retrying transaction" in r.getMessage()]
    assert _links(dockyard.db, digest) == 1


def _waits_to_insert_the_repository(dockyard, other_pid: int) -> bool:
    with dockyard.db.engine.connect() as probe:
        return bool(
            probe.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND pid <> :pid AND query LIKE 'INSERT INTO repositories%'"
                ),
                {"pid": other_pid},
            ).scalar_one()
        )


def _links(db: Database, digest: str) -> int:
    """How many repositories link the blob."""
    with db.read() as conn:
        linking = sa.select(sa.func.count()).select_from(repository_blobs)
        return conn.execute(linking.where(repository_blobs.c.digest == digest)).scalar_one()

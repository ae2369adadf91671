"""dockyard.prepared: statements run on the driver's cursor behave as SQLAlchemy's execute does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from dockyard import prepared
from dockyard.db import BIGINT, TIMESTAMP, Database, per_dialect

scratch_metadata = sa.MetaData()
scratch = sa.Table(
    "prepared_scratch",
    scratch_metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("at", TIMESTAMP, nullable=False),
    sa.Column("doc", sa.JSON, nullable=True),
    sa.Column("payload", sa.LargeBinary, nullable=True),
    sa.Column("note", sa.Text, nullable=True, default="python-side default"),
)
INSERT = per_dialect(lambda insert: insert(scratch).returning(scratch.c.id))
BY_NAME = sa.select(scratch).where(scratch.c.name == sa.bindparam("name"))
FLAGGED = sa.select(scratch.c.name).where(scratch.c.flag.is_(True)).order_by(scratch.c.name)
RENAME = scratch.update().where(scratch.c.name == sa.bindparam("old")).values(name=sa.bindparam("new"))
WHEN = datetime(2026, 12, 3, 9, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, pool_size=2)
    scratch_metadata.create_all(database.engine)
    try:
        yield database
    finally:
        scratch_metadata.drop_all(database.engine)
        database.dispose()


def _row(name: str, flag: bool = True) -> dict[str, object]:
    return {
        "name": name,
        "flag": flag,
        "at": WHEN,
        "doc": {"a": [1, "x"]},
        "payload": b"\x00\xff",
        "note": None,
    }


def test_rows_convert_like_sqlalchemy(db):
    with db.write() as conn:
        new_id = prepared.scalar(conn, INSERT[db.dialect], _row("one"))
        conn.execute(scratch.insert(), {**_row("two", flag=False), "note": "n"})
    assert isinstance(new_id, int)
    with db.read() as conn:
        ours = prepared.first(conn, BY_NAME, {"name": "one"})
        theirs = conn.execute(BY_NAME, {"name": "one"}).one()
        other = prepared.first(conn, BY_NAME, {"name": "two"})
        missing = prepared.first(conn, BY_NAME, {"name": "nobody"})
        flagged = prepared.rows(conn, FLAGGED)
    assert tuple(ours) == tuple(theirs)
    assert ours.id == new_id
    assert ours.flag is True
    assert ours.doc == {"a": [1, "x"]}
    assert ours.payload == b"\x00\xff"
    assert ours.at.replace(tzinfo=UTC) == WHEN
    assert other.flag is False
    assert other.note == "n"
    assert missing is None
    assert [r.name for r in flagged] == ["one"]


def test_execute_counts_rows_and_joins_the_transaction(db):
    with db.write() as conn:
        prepared.execute(conn, INSERT[db.dialect], _row("a"))
    changed: list[int] = []

    def rename_then_fail() -> None:
        with db.write() as conn:
            changed.append(prepared.execute(conn, RENAME, {"old": "a", "new": "b"}))
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        rename_then_fail()
    assert changed == [1]
    with db.read() as conn:
        assert prepared.scalar(conn, sa.select(scratch.c.name)) == "a"
        assert prepared.execute(conn, RENAME, {"old": "nobody", "new": "c"}) == 0


def test_driver_errors_are_sqlalchemy_errors(db):
    with db.write() as conn:
        prepared.execute(conn, INSERT[db.dialect], _row("dup"))
    with pytest.raises(sa.exc.IntegrityError), db.write() as conn:
        prepared.execute(conn, INSERT[db.dialect], _row("dup"))


def test_cursor_listeners_see_every_statement(db):
    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        with db.read() as conn:
            prepared.first(conn, BY_NAME, {"name": "x"})
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    assert any("prepared_scratch" in s for s in seen)


def test_a_missing_parameter_is_an_error_not_a_null(db):
    with db.read() as conn, pytest.raises(KeyError):
        prepared.first(conn, BY_NAME, {})


def test_statements_needing_execution_time_work_are_refused(db):
    with db.write() as conn, pytest.raises(ValueError, match="every column"):  # `note` has a Python default
        prepared.execute(conn, scratch.insert(), {k: v for k, v in _row("d").items() if k != "note"})


def test_in_lists_are_rendered_per_call(db):
    named = sa.select(scratch.c.name).where(
        scratch.c.name.in_(sa.bindparam("names", expanding=True)), scratch.c.at == sa.bindparam("at")
    )
    with db.write() as conn:
        for name in ("a", "b", "c"):
            prepared.execute(conn, INSERT[db.dialect], _row(name))
    with db.read() as conn:
        assert sorted(r.name for r in prepared.rows(conn, named, {"names": ["a", "c", "z"], "at": WHEN})) == [
            "a",
            "c",
        ]
        assert [r.name for r in prepared.rows(conn, named, {"names": ["b"], "at": WHEN})] == ["b"]
        assert prepared.rows(conn, named, {"names": [], "at": WHEN}) == []


def test_plans_are_kept_only_up_to_the_limit(db, monkeypatch):
    monkeypatch.setattr(prepared, "_plans", {})
    monkeypatch.setattr(prepared, "PLAN_LIMIT", 2)
    with db.read() as conn:
        for n in range(5):  # statements built at run time: answered, but not all kept
            assert prepared.first(conn, sa.select(scratch.c.id).where(scratch.c.id == n)) is None
    assert len(prepared._plans) == 2


def test_execute_many_writes_every_row(db):
    with db.write() as conn:
        prepared.execute_many(conn, scratch.insert(), [_row(f"m{n}", flag=n % 2 == 0) for n in range(5)])
        prepared.execute_many(conn, scratch.insert(), [])
    with db.read() as conn:
        assert [r.name for r in prepared.rows(conn, FLAGGED)] == ["m0", "m2", "m4"]
        assert prepared.first(conn, FLAGGED).name == "m0"  # the first of several rows
        assert prepared.scalar(conn, FLAGGED) == "m0"
    in_list = scratch.delete().where(scratch.c.name.in_(sa.bindparam("names", expanding=True)))
    with db.write() as conn, pytest.raises(ValueError, match="IN lists"):
        prepared.execute_many(conn, in_list, [{"names": ["m0"]}])


def test_a_pipelined_transaction_answers_as_any_other(db):
    """PostgreSQL sends ``execute_later`` statements without waiting; every answer is still right."""
    with db.write(pipelined=True) as conn:
        assert prepared.pipelined(conn) == (db.dialect == "postgresql")
        first_id = prepared.scalar(conn, INSERT[db.dialect], _row("a"))
        prepared.execute_later(conn, INSERT[db.dialect], _row("b", flag=False))
        prepared.execute_later(conn, RENAME, {"old": "a", "new": "c"})
        # a statement that waits sees what was sent before it, in order
        assert prepared.first(conn, BY_NAME, {"name": "c"}).id == first_id
        assert prepared.execute(conn, RENAME, {"old": "b", "new": "d"}) == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(scratch)).scalar_one() == 2
        names = conn.execute(sa.select(scratch.c.name).order_by(scratch.c.name)).scalars().all()
        assert names == ["c", "d"]
    with db.read() as conn:
        assert prepared.rows(conn, FLAGGED) == [("c",)]
        assert not prepared.pipelined(conn)


def test_an_error_sent_without_waiting_fails_the_transaction_and_keeps_nothing(db):
    with db.write() as conn:
        prepared.execute(conn, INSERT[db.dialect], _row("dup"))

    def duplicate(then_wait: bool) -> None:
        with db.write(pipelined=True) as conn:
            prepared.execute_later(conn, INSERT[db.dialect], _row("new"))
            prepared.execute_later(conn, INSERT[db.dialect], _row("dup"))  # raised here or later
            if then_wait:  # the next statement that waits raises it; else the commit does
                prepared.first(conn, BY_NAME, {"name": "new"})

    with pytest.raises(sa.exc.IntegrityError):
        duplicate(then_wait=False)
    with pytest.raises(sa.exc.IntegrityError):
        duplicate(then_wait=True)
    with db.read() as conn:
        assert prepared.rows(conn, sa.select(scratch.c.name)) == [("dup",)]


def test_sent_statements_are_answered_in_order_when_read(db):
    """``send``: in pipeline mode the statement goes out at once and its rows are read later,
    after statements sent behind it; without a pipeline it runs at once. Same rows either way."""
    for pipelined in (True, False):
        with db.write(pipelined=pipelined) as conn:
            inserting = prepared.send(conn, INSERT[db.dialect], _row("sent"))
            renamed_before = prepared.send(conn, BY_NAME, {"name": "sent"})
            prepared.execute_later(conn, RENAME, {"old": "sent", "new": "moved"})
            after = prepared.send(conn, BY_NAME, {"name": "moved"})
            # read out of order: each answers as of its place in the transaction
            assert after.first().doc == {"a": [1, "x"]}
            new_id = inserting.first().id
            assert renamed_before.rows()[0].id == new_id == after.first().id
            assert renamed_before.rows() == renamed_before.rows()  # read once, kept
            assert prepared.send(conn, BY_NAME, {"name": "sent"}).first() is None
            conn.execute(scratch.delete())


def test_a_sent_statement_that_fails_raises_when_read_and_keeps_nothing(db):
    with db.write() as conn:
        prepared.execute(conn, INSERT[db.dialect], _row("dup"))

    def insert_both() -> None:
        with db.write(pipelined=True) as conn:
            fresh = prepared.send(conn, INSERT[db.dialect], _row("fresh"))
            duplicate = prepared.send(conn, INSERT[db.dialect], _row("dup"))
            assert fresh.first() is not None  # answered before the failure
            duplicate.first()

    with pytest.raises(sa.exc.IntegrityError):
        insert_both()
    with db.read() as conn:
        assert prepared.rows(conn, sa.select(scratch.c.name)) == [("dup",)]


def test_send_is_for_statements_that_return_rows(db):
    with db.write(pipelined=True) as conn, pytest.raises(ValueError, match="return rows"):
        prepared.send(conn, RENAME, {"old": "a", "new": "b"})


# -- the pipelined transaction's own BEGIN and COMMIT (PostgreSQL) ----------------------------------


def _visible_elsewhere(db: Database, name: str) -> bool:
    with db.engine.connect() as other:
        return other.execute(sa.select(scratch.c.id).where(scratch.c.name == name)).first() is not None


@pytest.mark.postgresql_only
def test_a_pipelined_transaction_is_one_transaction_until_its_commit(db):
    """BEGIN is sent with the first statement, not synced: what was written stays invisible to
    others after answers were read, and an error after them rolls all of it back."""

    class Refused(Exception):
        pass

    def refused_after_reading() -> None:
        with db.write(pipelined=True) as conn:
            prepared.execute_later(conn, INSERT[db.dialect], _row("uncommitted"))
            assert prepared.first(conn, BY_NAME, {"name": "uncommitted"}) is not None  # answers read
            assert prepared.execute(conn, RENAME, {"old": "uncommitted", "new": "renamed"}) == 1
            assert not _visible_elsewhere(db, "renamed")
            raise Refused

    with pytest.raises(Refused):
        refused_after_reading()
    assert not _visible_elsewhere(db, "renamed")
    with db.write(pipelined=True) as conn:
        prepared.execute_later(conn, INSERT[db.dialect], _row("committed"))
        assert not _visible_elsewhere(db, "committed")
    assert _visible_elsewhere(db, "committed")


@pytest.mark.postgresql_only
def test_a_pipelined_transaction_waits_only_to_read_and_to_commit(db, monkeypatch):
    """Statements queue in the driver's buffer: the transaction below waits on its socket only to
    read (once) and to commit (the COMMIT with the pipeline's sync): 4 waits, where psycopg's own
    pipeline waited 25 times (a flush per statement, a synced BEGIN)."""
    import psycopg

    waits = []  # the driver's steps that waited on the socket, once per wait
    real_wait = psycopg.Connection.wait

    def counted(self, gen, *args, **kwargs):
        def counting():
            ready = None
            try:
                while True:
                    wanted = gen.send(ready)
                    waits.append(gen.__qualname__)
                    ready = yield wanted
            except StopIteration as stop:
                return stop.value

        return real_wait(self, counting(), *args, **kwargs)

    with db.write(pipelined=True) as conn:
        monkeypatch.setattr(psycopg.Connection, "wait", counted)
        inserted = prepared.send(conn, INSERT[db.dialect], _row("queued"))
        prepared.execute_later(conn, RENAME, {"old": "queued", "new": "moved"})
        prepared.execute_many(conn, scratch.insert(), [_row(f"many{n}") for n in range(3)])
        assert inserted.first() is not None
        prepared.execute_later(conn, RENAME, {"old": "many0", "new": "first"})
    monkeypatch.undo()
    assert waits.count("BasePipeline._fetch_gen") == 1, waits
    assert set(waits) == {"BasePipeline._fetch_gen", "BasePipeline._exit_gen"}, waits
    assert len(waits) <= 4, waits
    with db.read() as conn:
        assert [r.name for r in prepared.rows(conn, FLAGGED)] == ["first", "many1", "many2", "moved"]


@pytest.mark.postgresql_only
def test_an_error_at_the_commit_of_a_pipelined_transaction_is_sqlalchemys_and_keeps_nothing(db):
    """The COMMIT travels with the pipeline's sync: a deferred constraint that fails there is an
    IntegrityError (retried or answered like any other), and the connection works afterwards."""
    deferred = sa.table("deferred_scratch", sa.column("name"))
    with db.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE deferred_scratch (name text,"
            " CONSTRAINT once UNIQUE (name) DEFERRABLE INITIALLY DEFERRED)"
        )

    def twice() -> None:
        with db.write(pipelined=True) as conn:
            prepared.execute_later(conn, deferred.insert(), {"name": "twice"})
            prepared.execute_later(conn, deferred.insert(), {"name": "twice"})
            prepared.execute_later(conn, INSERT[db.dialect], _row("with-them"))

    def refused_in_a_plain_transaction() -> None:
        with db.write() as conn:
            prepared.execute(conn, INSERT[db.dialect], _row("rolled-back"))
            raise ZeroDivisionError

    try:
        with pytest.raises(sa.exc.IntegrityError):
            twice()
        assert not _visible_elsewhere(db, "with-them")
        with db.write() as conn:  # the connection is back in transactions of its own
            prepared.execute(conn, INSERT[db.dialect], _row("after"))
        with pytest.raises(ZeroDivisionError):
            refused_in_a_plain_transaction()
        assert _visible_elsewhere(db, "after")
        assert not _visible_elsewhere(db, "rolled-back")
    finally:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE deferred_scratch")

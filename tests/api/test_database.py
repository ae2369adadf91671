"""Database helpers: durable and relaxed commits, inline lookups, inline writes."""

import asyncio
import os
import resource
import sqlite3
import threading
import time

import anyio
import pytest
import sqlalchemy as sa

from dockyard.asgi import run_soon
from dockyard.db import Database, WouldBlock


def _commit_setting(db: Database) -> str:
    with db.write() as conn:
        if db.is_sqlite:
            return str(conn.exec_driver_sql("PRAGMA synchronous").scalar())
        return conn.exec_driver_sql("SHOW synchronous_commit").scalar()


def test_relaxed_writes_commit_and_leave_connections_durable(database_url):
    db = Database(database_url, pool_size=1)
    try:
        with db.write(durable=False) as conn:
            if db.is_sqlite:
                setting = conn.exec_driver_sql("PRAGMA synchronous").scalar()
                assert setting == 1  # NORMAL
            else:
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS scratch (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO scratch VALUES (1)")
        # FULL again on the same pooled connection; a file-backed SQLite database commits with
        # NORMAL throughout and makes durable writes durable with a shared WAL flush (GroupSync)
        assert _commit_setting(db) in {"2", "on"} or (db.is_sqlite and db._group is not None)
        with db.read() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM scratch")).scalar_one() == 1
        with db.write() as conn:
            conn.exec_driver_sql("DROP TABLE scratch")
    finally:
        db.dispose()


def test_lookup_outside_the_loop_thread_uses_the_pool(database_url):
    db = Database(database_url, pool_size=1)
    try:
        assert db.run_lookup(lambda conn: conn.execute(sa.text("SELECT 1")).scalar_one()) == 1
        db.serve_lookups_inline()
        first = db.run_lookup(lambda conn: conn)
        assert db.run_lookup(lambda conn: conn) is first  # the loop thread keeps its connection
    finally:
        db.dispose()


# -- writes attempted on the event loop (Database.attempt_inline, asgi.run_soon) ----------------


def _inline_db(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'inline.db'}", pool_size=4)
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    db.serve_lookups_inline()  # this test's thread plays the event loop
    return db


def _insert(value):
    return lambda conn: conn.exec_driver_sql(f"INSERT INTO t VALUES ({value})").rowcount


def _count(db):
    return db.run_lookup(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM t").scalar())


def test_a_relaxed_write_runs_inline_when_nothing_else_writes(tmp_path):
    db = _inline_db(tmp_path)
    try:
        with db.attempt_inline() as relaxed:
            assert db.run_write(_insert(1), durable=False) == 1
        assert _count(db) == 1
        assert relaxed.ticket == 0  # nothing to wait for
        counted_during = []

        def insert_and_look(conn):
            counted_during.append(db._group._committed)
            return _insert(2)(conn)

        with db.attempt_inline() as attempt:
            db.run_write(insert_and_look)  # durable: committed here, its flush left to the caller
        assert attempt.ticket > counted_during[0]  # counted after the commit, never before it
        assert not db._group.is_durable(attempt.ticket)
        with pytest.raises(WouldBlock), db.attempt_inline(), db.read():
            pass  # a read transaction may be slow: not on the loop
        with pytest.raises(WouldBlock), db.attempt_inline():
            db.refuse_inline("a read from the blob store")
        db.refuse_inline("a read from the blob store")  # outside an attempt: nothing to refuse
        assert _count(db) == 2
    finally:
        db.dispose()


def test_an_inline_write_never_waits_for_another_writer(tmp_path):
    db = _inline_db(tmp_path)
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds SQLite's write lock
        started = time.monotonic()
        with pytest.raises(WouldBlock), db.attempt_inline():
            db.run_write(_insert(1), durable=False)
        assert time.monotonic() - started < 1.0  # at once: the loop never sits in SQLite's busy handler
        other.execute("COMMIT")
        held = threading.Event()
        release = threading.Event()

        def hold_the_lock():
            with db.write(durable=False):
                held.set()
                release.wait(10)

        writer = threading.Thread(target=hold_the_lock)
        writer.start()
        held.wait(10)
        try:  # another thread of this process writes
            with pytest.raises(WouldBlock), db.attempt_inline():
                db.run_write(_insert(2), durable=False)
        finally:
            release.set()
            writer.join()
        with db.attempt_inline():
            db.run_write(_insert(3), durable=False)
        assert db.run_lookup(lambda conn: conn.exec_driver_sql("SELECT x FROM t").scalars().all()) == [3]
    finally:
        other.close()
        db.dispose()


def test_only_the_loop_thread_attempts_inline(tmp_path):
    db = _inline_db(tmp_path)
    failures = []

    def elsewhere():
        try:
            with db.attempt_inline():
                pass
        except WouldBlock as exc:
            failures.append(exc)

    try:
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert len(failures) == 1
    finally:
        db.dispose()


def test_run_soon_falls_back_to_a_worker_thread(tmp_path):
    db = _inline_db(tmp_path)
    threads = []

    def start():
        threads.append(threading.get_ident())
        if len(threads) == 1:
            raise WouldBlock("busy")
        return "done"

    async def main():
        db.serve_lookups_inline()  # the loop's thread
        return await run_soon(db, start)

    try:
        assert anyio.run(main) == "done"
        assert len(threads) == 2
        assert threads[0] != threads[1]  # the second call ran in a worker thread
    finally:
        db.dispose()


def _attempt(db, *works, durable=False):
    with db.attempt_inline():
        return [db.run_write(work, durable=durable) for work in works]


def _values(db):
    return db.run_lookup(lambda conn: conn.exec_driver_sql("SELECT x FROM t ORDER BY x").scalars().all())


def test_an_attempt_writes_at_most_once_and_errors_leave_the_writer_usable(tmp_path):
    db = _inline_db(tmp_path)

    def fails(conn):
        conn.exec_driver_sql("INSERT INTO t VALUES (3)")
        raise ValueError("refused")

    def swallowing():
        try:
            with db.attempt_inline(), db.read():
                pass
        except Exception:
            return "swallowed"
        return "passed"

    try:
        with pytest.raises(RuntimeError, match="at most once"):
            _attempt(db, _insert(1), _insert(2))
        with pytest.raises(ValueError, match="refused"):
            _attempt(db, fails)
        _attempt(db, _insert(4))
        assert _values(db) == [1, 4]
        with pytest.raises(WouldBlock):
            swallowing()

        def write_then_wait(wait):
            with db.attempt_inline():
                db.run_write(_insert(6), durable=False)
                wait()

        # done again in a thread, the write would be made twice
        with pytest.raises(RuntimeError, match="after its write"):
            write_then_wait(lambda: db.refuse_inline("a read from the blob store"))
        with pytest.raises(RuntimeError, match="after its write"):
            write_then_wait(db.read().__enter__)
        assert _values(db) == [1, 4, 6, 6]
        assert db._inline_writer.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    finally:
        db.dispose()


def test_the_loop_never_waits_for_a_pooled_connection(tmp_path):
    small = Database(f"sqlite:///{tmp_path / 'small.db'}", pool_size=2)
    small.serve_lookups_inline()
    assert not small.writes_inline  # the loop would hold both connections
    small.dispose()
    db = _inline_db(tmp_path)
    held = []
    try:
        assert db._inline_writer is not None  # taken while the pool was free
        db._drop_writer()
        while db.engine.pool.checkedout() < db.engine.pool.size():
            held.append(db.engine.connect())
        with pytest.raises(WouldBlock), db.attempt_inline():
            db.run_write(_insert(1), durable=False)
    finally:
        for conn in held:
            conn.close()
        db.dispose()


def test_run_soon_awaits_the_writer_and_attempts_again_on_the_loop(tmp_path):
    db = _inline_db(tmp_path)
    held = threading.Event()
    release = threading.Event()
    calls = []

    def hold_the_lock():
        with db.write(durable=False):
            held.set()
            assert release.wait(10)

    def insert():
        calls.append(threading.get_ident())
        return db.run_write(_insert(7), durable=False)

    async def main():
        db.serve_lookups_inline()
        loop_thread = threading.get_ident()
        writer = threading.Thread(target=hold_the_lock)
        writer.start()
        assert held.wait(10)
        attempt = asyncio.ensure_future(run_soon(db, insert))
        await asyncio.sleep(0.05)
        assert not attempt.done()  # waiting for the other writer, not in a thread of its own
        release.set()
        assert await attempt == 1
        writer.join(10)
        return loop_thread

    try:
        loop_thread = asyncio.run(main())
        assert calls == [loop_thread, loop_thread]  # refused once, then done on the loop
        assert _values(db) == [7]
    finally:
        db.dispose()


def test_run_soon_answers_a_durable_write_once_a_flush_covers_it(tmp_path):
    db = _inline_db(tmp_path)
    gate = threading.Event()
    flushes = []
    group = db._group
    real_flush = group._flush

    def gated_flush():
        flushes.append(group._committed)
        assert gate.wait(10)
        real_flush()

    group._flush = gated_flush

    async def main():
        db.serve_lookups_inline()
        pushes = [asyncio.ensure_future(run_soon(db, db.run_write, _insert(v))) for v in (1, 2, 3)]
        while not flushes:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert not any(push.done() for push in pushes)  # committed, not answered before the flush
        assert _count(db) == 3
        gate.set()
        return await asyncio.gather(*pushes)

    try:
        assert asyncio.run(main()) == [1, 1, 1]
        # the first flush may begin before the later two commits: those then share the next one
        assert len(flushes) <= 2
        assert flushes[-1] == group._committed
        assert group.is_durable(group._committed)
    finally:
        db.dispose()


def test_what_waits_for_durability_runs_after_the_flush(tmp_path):
    db = _inline_db(tmp_path)
    gate = threading.Event()
    group = db._group
    real_flush = group._flush
    seen = []

    def gated_flush():
        assert gate.wait(10)
        real_flush()

    group._flush = gated_flush

    def push():
        db.run_write(_insert(1))
        db.when_durable(lambda: seen.append(group.is_durable(group._committed)))
        return "pushed"

    async def main():
        db.serve_lookups_inline()
        pushing = asyncio.ensure_future(run_soon(db, push))
        await asyncio.sleep(0.05)
        assert seen == []  # committed, still flushing: not yet
        gate.set()
        return await pushing

    try:
        assert asyncio.run(main()) == "pushed"
        assert seen == [True]
        db.when_durable(lambda: seen.append("at once"))  # outside an attempt: called now
        assert seen == [True, "at once"]
    finally:
        db.dispose()


# -- PostgreSQL connections the server dropped (no ping on a busy pool's checkouts) --------------


def _backend_pid(conn: sa.Connection) -> int:
    return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(admin: Database, pid: int) -> None:
    """End backend ``pid`` and return once it has exited (its socket is closed)."""
    with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        alive = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
        deadline = time.monotonic() + 10
        while conn.execute(alive, {"pid": pid}).scalar():
            assert time.monotonic() < deadline, f"backend {pid} did not exit"
            time.sleep(0.01)


@pytest.fixture
def pg_pair(postgres_url, monkeypatch):
    """A database with one pooled connection whose pings are counted, and an admin connection."""
    db = Database(postgres_url, pool_size=1)
    admin = Database(postgres_url, pool_size=1)
    pings: list[object] = []
    real_ping = db.engine.dialect.do_ping
    monkeypatch.setattr(db.engine.dialect, "do_ping", lambda dbapi: pings.append(dbapi) or real_ping(dbapi))
    yield db, admin, pings
    db.dispose()
    admin.dispose()


def test_a_busy_pool_checks_out_without_a_ping(pg_pair):
    db, _, pings = pg_pair
    for _ in range(3):
        with db.read() as conn:
            _backend_pid(conn)
    assert pings == []


def test_a_busy_pool_checks_out_without_a_ping_past_descriptor_1024(pg_pair):
    """select() cannot watch a descriptor past FD_SETSIZE; the socket check must still work there."""
    db, _, pings = pg_pair
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 2048, "raise the hard open-file limit to run this test"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with db.read() as conn:
            _backend_pid(conn)
        raw = db.engine.raw_connection()
        try:
            assert raw.driver_connection.fileno() > 1024
        finally:
            raw.close()
        pings.clear()
        with db.read() as conn:
            _backend_pid(conn)
        assert pings == []
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(pg_pair):
    db, admin, pings = pg_pair
    with db.read() as conn:
        pid = _backend_pid(conn)
    _terminate(admin, pid)
    with db.read() as conn:  # a read transaction cannot run again: the checkout must notice
        assert _backend_pid(conn) != pid
    assert len(pings) == 1


def test_a_long_idle_connection_is_pinged(pg_pair, monkeypatch):
    db, _, pings = pg_pair
    with db.read() as conn:
        pid = _backend_pid(conn)
    monkeypatch.setattr("time.monotonic", lambda: time.perf_counter() + 3600)
    with db.read() as conn:
        assert _backend_pid(conn) == pid
    assert len(pings) == 1


def _dropped_on_first_call(admin: Database, calls: list[int], then):
    """A unit of work whose first call has its backend terminated before it runs ``then``."""

    def work(conn: sa.Connection):
        calls.append(_backend_pid(conn))
        if len(calls) == 1:
            _terminate(admin, calls[0])
        return then(conn)

    return work


def test_a_write_whose_connection_drops_before_its_commit_runs_again(pg_pair):
    db, admin, _ = pg_pair
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS dropped_writes (x INTEGER)")
        conn.exec_driver_sql("DELETE FROM dropped_writes")
    calls: list[int] = []
    work = _dropped_on_first_call(
        admin, calls, lambda conn: conn.exec_driver_sql("INSERT INTO dropped_writes VALUES (1)")
    )

    try:
        db.run_write(work)
        assert len(calls) == 2
        assert calls[0] != calls[1]
        assert (
            db.run_lookup(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM dropped_writes").scalar())
            == 1
        )
    finally:
        with db.write() as conn:
            conn.exec_driver_sql("DROP TABLE dropped_writes")


def test_a_lookup_whose_connection_drops_runs_again(pg_pair):
    db, admin, _ = pg_pair
    calls: list[int] = []
    work = _dropped_on_first_call(
        admin, calls, lambda conn: conn.execute(sa.text("SELECT 41 + 1")).scalar_one()
    )

    assert db.run_lookup(work) == 42
    assert len(calls) == 2


def test_a_write_whose_connection_drops_at_its_commit_is_not_run_again(pg_pair, monkeypatch):
    """Past the COMMIT nobody knows whether it committed (here it did): the error is raised, the
    work is not run a second time."""
    db, admin, _ = pg_pair
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS commit_drops (x INTEGER)")
        conn.exec_driver_sql("DELETE FROM commit_drops")
    real_commit = db.engine.dialect.do_commit
    armed = [True]

    def commit_then_drop(pooled):
        real_commit(pooled)
        if armed and armed.pop():
            driver = pooled.dbapi_connection  # the pool's proxy around psycopg's connection
            _terminate(admin, driver.info.backend_pid)
            driver.execute("SELECT 1")  # the answer lost, as a dropped COMMIT's would be

    monkeypatch.setattr(db.engine.dialect, "do_commit", commit_then_drop)
    calls: list[int] = []
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised:
            db.run_write(
                lambda conn: calls.append(1) or conn.exec_driver_sql("INSERT INTO commit_drops VALUES (1)")
            )
        assert raised.value.connection_invalidated
        assert calls == [1]
        count = db.run_lookup(lambda conn: conn.exec_driver_sql("SELECT count(*) FROM commit_drops").scalar())
        assert count == 1
    finally:
        monkeypatch.undo()
        with db.write() as conn:
            conn.exec_driver_sql("DROP TABLE commit_drops")

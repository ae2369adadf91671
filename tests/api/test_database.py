"""Database helpers: durable and relaxed commits, inline lookups."""

import sqlalchemy as sa

from dockyard.db import Database


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

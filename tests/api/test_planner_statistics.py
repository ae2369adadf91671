"""A young PostgreSQL database's hot tables are analyzed as they grow (registry.refresh-statistics),
so statements prepared while they were empty stop scanning whole repositories."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from dockyard.db import Database
from dockyard.registry import jobs
from tests.support.polling import eventually

#: The manifest push's check of its blobs (HELD_BLOBS in registry/services/references.py).
HELD = (
    "SELECT blobs.digest, blobs.size"
    " FROM repository_blobs JOIN blobs ON blobs.digest = repository_blobs.digest"
    " WHERE repository_blobs.repository_id = (SELECT repositories.id FROM repositories"
    " WHERE repositories.name = $1) AND repository_blobs.digest IN ($2, $3)"
    " AND blobs.state = $4 FOR SHARE OF repository_blobs, blobs"
)


def _fill(db: Database, links: int) -> int:
    """One repository holding ``links`` blobs; its id."""
    with db.write() as conn:
        repo_id = conn.execute(
            sa.text(
                "INSERT INTO repositories (name, created_at, updated_at)"
                " VALUES ('big', now(), now()) RETURNING id"
            )
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO blobs (digest, size, created_at)"
                " SELECT 'sha256:' || lpad(n::text, 64, '0'), n, now()"
                " FROM generate_series(1, :n) AS n"
            ),
            {"n": links},
        )
        conn.execute(
            sa.text(
                "INSERT INTO repository_blobs (repository_id, digest, created_at)"
                " SELECT :repo, 'sha256:' || lpad(n::text, 64, '0'), now() FROM generate_series(1, :n) AS n"
            ),
            {"repo": repo_id, "n": links},
        )
    return repo_id


def _plan(conn: psycopg.Connection) -> str:
    rows = conn.execute("EXPLAIN EXECUTE held('big', 'sha256:1', 'sha256:2', 'live')").fetchall()
    return "\n".join(r[0] for r in rows)


def _changes_counted(url: str, table: str, at_least: int) -> None:
    """Wait until the statistics collector counts ``at_least`` changes of ``table`` (backends
    report theirs up to a second late; each read is a new snapshot)."""

    def counted() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = %s", (table,)
            ).fetchone()
        return row is not None and row[0] >= at_least

    eventually(counted, f"{at_least} changes of {table} to be counted")


def _finds_by_digest(plan: str) -> bool:
    """Whether the plan looks the links up by digest, not by reading the repository's every link."""
    conditions = [line for line in plan.splitlines() if "Index Cond:" in line]
    by_repository_only = any("repository_id" in c and "digest" not in c for c in conditions)
    scans_links = any(f"Seq Scan on {table} " in plan for table in ("blobs", "repository_blobs"))
    return bool(conditions) and not scans_links and not by_repository_only


@pytest.mark.postgresql_only
def test_tables_that_grew_are_analyzed_and_stale_plans_replanned(database_url):
    db = Database(database_url, pool_size=2)
    try:
        with psycopg.connect(database_url, autocommit=True) as watcher:
            # A new registry: empty tables, analyzed as such. A long-lived connection plans the
            # statement then, as a server's pooled connections do (a generic plan, kept).
            watcher.execute("ANALYZE repositories, repository_blobs, blobs")
            watcher.execute("SET plan_cache_mode = force_generic_plan")
            watcher.execute(f"PREPARE held(varchar, varchar, varchar, varchar) AS {HELD}")
            assert not _finds_by_digest(_plan(watcher))
            _fill(db, 3000)
            stale = _plan(watcher)
            assert not _finds_by_digest(stale), stale  # each push would read all 3,000 links

            _changes_counted(database_url, "repository_blobs", 3000)
            analyzed = jobs.refresh_statistics(db)
            assert {"blobs", "repository_blobs"} <= set(analyzed)  # not repositories: one row changed
            plan = _plan(watcher)
            assert _finds_by_digest(plan), plan
            assert jobs.refresh_statistics(db) == []  # nothing changed since
    finally:
        db.dispose()


@pytest.mark.postgresql_only
def test_large_tables_are_left_to_autovacuum_and_few_changes_wait(database_url, monkeypatch):
    db = Database(database_url, pool_size=1)
    try:
        jobs.refresh_statistics(db)
        _fill(db, 200)
        _changes_counted(database_url, "blobs", 200)
        young = jobs.YOUNG_ROWS
        monkeypatch.setattr(jobs, "YOUNG_ROWS", 100)  # these tables now count as large
        assert jobs.refresh_statistics(db) == []
        monkeypatch.setattr(jobs, "YOUNG_ROWS", young)
        monkeypatch.setattr(jobs, "MIN_CHANGES", 201)  # fewer changes than that: not yet
        assert "blobs" not in jobs.refresh_statistics(db)
        monkeypatch.setattr(jobs, "MIN_CHANGES", 200)
        assert "blobs" in jobs.refresh_statistics(db)
    finally:
        db.dispose()


def test_sqlite_needs_no_refresh(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        assert jobs.refresh_statistics(db) == []
    finally:
        db.dispose()

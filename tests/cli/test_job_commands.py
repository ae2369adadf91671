"""`dockyard job list|retry|stats` against the database directly (both engines)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dockyard.cli import app
from dockyard.db import Database
from dockyard.events.queue import DEAD, QUEUED, JobService


def _dead_job(url: str) -> int:
    db = Database(url, pool_size=1)
    try:
        jobs = JobService(db)
        job_id = jobs.enqueue("scan", {"repository": "team/app"}, max_attempts=1)
        (job,) = jobs.claim(["scan"], "test", 1, {"scan": 60})
        assert jobs.fail(job, "test", "ValueError: scanner offline") == DEAD
        jobs.enqueue("scan", {"repository": "team/other"})
        return job_id
    finally:
        db.dispose()


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_list_retry_and_stats(database_url):
    job_id = _dead_job(database_url)
    listed = run("job", "list", "--status", "dead", "--database-url", database_url)
    assert listed.exit_code == 0, listed.output
    (dead,) = json.loads(listed.stdout)
    assert dead == {
        **dead,
        "id": job_id,
        "kind": "scan",
        "status": DEAD,
        "lastError": "ValueError: scanner offline",
    }
    stats = json.loads(run("job", "stats", "--database-url", database_url).stdout)
    assert (stats["queued"], stats["dead"]) == (1, 1)

    retried = run("job", "retry", str(job_id), "--database-url", database_url)
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout)["status"] == QUEUED
    assert json.loads(run("job", "list", "--status", "dead", "--database-url", database_url).stdout) == []

    again = run("job", "retry", str(job_id), "--database-url", database_url)
    assert again.exit_code == 1
    assert f"job {job_id} is queued, not dead" in again.stderr
    missing = run("job", "retry", "999999", "--database-url", database_url)
    assert missing.exit_code == 1
    assert "job 999999 not found" in missing.stderr

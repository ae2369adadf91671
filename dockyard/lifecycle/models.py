"""Tables of the lifecycle room (recycle bin, purge schedules, garbage-collection runs)."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import BIGINT, TIMESTAMP, metadata

#: Garbage-collection runs: queued by the management API or the schedule, run by the job runtime.
gc_runs = sa.Table(
    "gc_runs",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    #: queued | running | succeeded | failed
    sa.Column("status", sa.String(16), nullable=False),
    #: api | schedule
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("untagged", sa.Boolean, nullable=False),
    sa.Column("grace_seconds", sa.BigInteger, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("started_at", TIMESTAMP),
    sa.Column("finished_at", TIMESTAMP),
    #: {kind: {"items": n, "bytes": n}} for manifests, links, blobs, orphans, tombstones.
    sa.Column("freed", sa.JSON),
    sa.Column("error", sa.String(2048)),
    sa.Index("ix_gc_runs_created_at", "created_at"),
)

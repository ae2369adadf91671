"""Tables of the lifecycle room (recycle bin, purge schedules, garbage-collection runs)."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import BIGINT, TIMESTAMP, metadata

# -- purge (``dockyard purge``, as ``acr purge``) ----------------------------------------------------

#: Scheduled purges: a 5-field cron expression in UTC and the purge's parameters.
purge_schedules = sa.Table(
    "purge_schedules",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("cron", sa.String(128), nullable=False),
    #: JSON: filters, ago, keep, untagged, untagged_only, concurrency.
    sa.Column("parameters", sa.Text, nullable=False),
    sa.Column("next_run_at", TIMESTAMP, nullable=False),
    sa.Column("last_run_at", TIMESTAMP),
    sa.Column("last_run_id", sa.BigInteger),
    sa.Column("created_by", sa.String(128)),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Index("ix_purge_schedules_next_run_at", "next_run_at"),
)

#: One purge, once or scheduled: what it was asked, how it ended, what it deleted (or would have).
purge_runs = sa.Table(
    "purge_runs",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("schedule_name", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),  # queued | running | succeeded | failed
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),  # JSON, as purge_schedules.parameters (+ repositories)
    sa.Column("requested_by", sa.String(128)),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("started_at", TIMESTAMP),
    sa.Column("finished_at", TIMESTAMP),
    sa.Column("deleted_tags", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deleted_manifests", sa.Integer, nullable=False, server_default="0"),
    sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
    #: Bytes of blobs no remaining manifest references (freed once garbage collection runs).
    sa.Column("freed_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("error", sa.String(2048)),
    #: JSON list of what was deleted or skipped (at most MAX_ITEMS; the counts are always whole).
    sa.Column("items", sa.Text),
    sa.Index("ix_purge_runs_created_at", "created_at"),
)

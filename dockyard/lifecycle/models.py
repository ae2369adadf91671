"""Tables of the lifecycle room (recycle bin, purge schedules, garbage-collection runs)."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import BIGINT, TIMESTAMP, metadata

# -- recycle bin (soft delete) and retention of untagged manifests ----------------------------------

#: Soft-deleted manifests: the row a delete removed from ``manifests``, byte-exact, with the tag
#: names it had. Keyed by repository *name*: the repository itself may be gone.
recycled_manifests = sa.Table(
    "recycled_manifests",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("repository", sa.String(255), nullable=False),
    sa.Column("digest", sa.String(200), nullable=False),
    sa.Column("media_type", sa.String(255), nullable=False),
    sa.Column("artifact_type", sa.String(255)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("total_size", sa.BigInteger, nullable=False),
    sa.Column("subject_digest", sa.String(200)),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    #: Tag names that pointed at the manifest when it was deleted (a JSON list).
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("deleted_at", TIMESTAMP, nullable=False),
    sa.UniqueConstraint("repository", "digest"),
    sa.Index("ix_recycled_manifests_deleted_at", "deleted_at"),
)

#: Blobs a soft-deleted manifest referenced: garbage collection keeps them while it is in the bin.
recycled_blobs = sa.Table(
    "recycled_blobs",
    metadata,
    sa.Column(
        "recycled_id", BIGINT, sa.ForeignKey("recycled_manifests.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("digest", sa.String(200), primary_key=True),
    sa.Index("ix_recycled_blobs_digest", "digest"),
)

#: Manifests that lost their last tag while the retention policy was on, and when they go.
retention_due = sa.Table(
    "retention_due",
    metadata,
    sa.Column("manifest_id", BIGINT, sa.ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("untagged_at", TIMESTAMP, nullable=False),
    sa.Column("due_at", TIMESTAMP, nullable=False),
    sa.Index("ix_retention_due_due_at", "due_at"),
)

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

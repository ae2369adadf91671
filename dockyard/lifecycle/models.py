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

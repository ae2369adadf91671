"""Tables of the OCI data plane: repositories, blobs, manifests, tags, uploads."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import BIGINT, TIMESTAMP, metadata


def lock_columns() -> list[sa.Column[bool]]:
    """ACR's changeableAttributes: what may be done to a repository, tag or manifest (all true by default)."""
    return [
        sa.Column(name, sa.Boolean, nullable=False, server_default=sa.true())
        for name in ("read_enabled", "write_enabled", "delete_enabled", "list_enabled")
    ]


def ordered_string(length: int) -> sa.types.TypeEngine[str]:
    """A string column that sorts byte-wise ("ASCIIbetical") on every engine, as the spec lists."""
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


repositories = sa.Table(
    "repositories",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("name", ordered_string(255), nullable=False, unique=True),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    #: Bumped by every change to the repository's tags; lets processes cache tag lists safely.
    sa.Column("tag_version", sa.BigInteger, nullable=False, server_default="0"),
    *lock_columns(),
    #: Write-once tags: None follows the registry-wide default (settings), else on or off.
    sa.Column("immutable_tags", sa.Boolean),
    #: Tag names (fnmatch patterns) exempt from immutability, e.g. ["latest"]; None = the default's.
    sa.Column("immutable_exemptions", sa.JSON(none_as_null=True)),
)

#: Blobs the store holds, registry-wide; a repository sees one only through repository_blobs.
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("digest", sa.String(200), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    #: Where the store keeps the bytes when not at the digest's own place (what commit returned).
    sa.Column("location", sa.String(1024)),
    #: 'live' (readable), 'deleting' (garbage collection is removing the bytes) or 'gone' (a
    #: tombstone: the bytes were deleted); only 'live' rows exist for readers (docs/lifecycle.md).
    sa.Column("state", sa.String(16), nullable=False, server_default="live"),
    #: Bumped each time garbage collection marks the row, so a linker sees it was marked meanwhile.
    sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
    #: When ``state`` last changed to 'deleting' or 'gone' (tombstones are pruned a day later).
    sa.Column("state_at", TIMESTAMP),
    sa.Index("ix_blobs_location", "location"),
)

repository_blobs = sa.Table(
    "repository_blobs",
    metadata,
    sa.Column(
        "repository_id", BIGINT, sa.ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("digest", sa.String(200), sa.ForeignKey("blobs.digest"), primary_key=True),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Index("ix_repository_blobs_digest", "digest"),
)

manifests = sa.Table(
    "manifests",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("repository_id", BIGINT, sa.ForeignKey("repositories.id", ondelete="CASCADE"), nullable=False),
    sa.Column("digest", sa.String(200), nullable=False),
    sa.Column("media_type", sa.String(255), nullable=False),
    sa.Column("artifact_type", sa.String(255)),
    sa.Column("config_media_type", sa.String(255)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("total_size", sa.BigInteger, nullable=False),
    sa.Column("architecture", sa.String(64)),
    sa.Column("os", sa.String(64)),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("subject_digest", sa.String(200)),
    sa.Column("annotations", sa.JSON(none_as_null=True)),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    *lock_columns(),
    sa.UniqueConstraint("repository_id", "digest"),
    sa.Index("ix_manifests_subject", "repository_id", "subject_digest"),
)

#: Blobs (config and layers) each manifest needs; what GC keeps alive.
manifest_blobs = sa.Table(
    "manifest_blobs",
    metadata,
    sa.Column("manifest_id", BIGINT, sa.ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("digest", sa.String(200), primary_key=True),
    sa.Column("media_type", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Index("ix_manifest_blobs_digest", "digest"),
)

#: Child manifests of an index, with the platform each is for.
manifest_children = sa.Table(
    "manifest_children",
    metadata,
    sa.Column("manifest_id", BIGINT, sa.ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("child_digest", sa.String(200), primary_key=True),
    sa.Column("architecture", sa.String(64)),
    sa.Column("os", sa.String(64)),
    sa.Column("variant", sa.String(64)),
    sa.Index("ix_manifest_children_child", "child_digest"),
)

tags = sa.Table(
    "tags",
    metadata,
    sa.Column(
        "repository_id", BIGINT, sa.ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("name", ordered_string(128), primary_key=True),
    sa.Column("manifest_id", BIGINT, sa.ForeignKey("manifests.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    *lock_columns(),
    sa.Index("ix_tags_manifest_id", "manifest_id"),
)

#: Upload sessions: any process can continue any upload; a lease keeps one writer at a time.
uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("repository", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("lease_token", sa.String(64)),
    sa.Column("lease_until", TIMESTAMP),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    #: The store's state for the recorded ``size`` bytes (None: nothing written yet).
    sa.Column("store_state", sa.Text),
    #: The running digest of those bytes (dockyard.oci.resumable format), so any process resumes it.
    sa.Column("hash_state", sa.LargeBinary),
    sa.Index("ix_uploads_updated_at", "updated_at"),
)

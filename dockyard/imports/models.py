"""The imports room's table: one row per requested import, with its progress."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import TIMESTAMP, metadata

imports = sa.Table(
    "imports",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    #: queued | running | succeeded | failed
    sa.Column("status", sa.String(16), nullable=False),
    #: As given: registry/repository[:tag|@digest].
    sa.Column("source", sa.String(1024), nullable=False),
    #: ``repository`` or ``repository:tag`` targets (a JSON list).
    sa.Column("targets", sa.JSON, nullable=False),
    sa.Column("force", sa.Boolean, nullable=False),
    sa.Column("include_referrers", sa.Boolean, nullable=False),
    sa.Column("username", sa.String(255)),
    #: Kept only while the import needs it; NULL once it has ended. Never returned.
    sa.Column("password", sa.String(4096)),
    sa.Column("requested_by", sa.String(255)),
    #: The source manifest's digest, once resolved.
    sa.Column("digest", sa.String(200)),
    sa.Column("manifests_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("manifests_total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_total", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("error", sa.String(2048)),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("started_at", TIMESTAMP),
    sa.Column("finished_at", TIMESTAMP),
    sa.Index("ix_imports_created_at", "created_at"),
)

"""Tables of the cache room: credential sets, cache rules and when each cached tag was last checked."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import BIGINT, TIMESTAMP, metadata

#: Credentials for an upstream registry. The password is stored as given (no encryption at rest
#: yet, docs/cache.md) and never returned by the API or written to a log.
credential_sets = sa.Table(
    "credential_sets",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("login_server", sa.String(255), nullable=False),
    sa.Column("username", sa.String(255), nullable=False),
    sa.Column("password", sa.String(4096), nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

#: A cache rule: pulls of ``target_repo`` (or ``prefix/*``) come from ``source_repo`` upstream.
cache_rules = sa.Table(
    "cache_rules",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("source_repo", sa.String(512), nullable=False),
    sa.Column("target_repo", sa.String(255), nullable=False, unique=True),
    sa.Column(
        "credential_set_id", BIGINT, sa.ForeignKey("credential_sets.id", ondelete="RESTRICT"), nullable=True
    ),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    sa.Index("ix_cache_rules_credential_set_id", "credential_set_id"),
)

#: When a cached tag was last confirmed against its upstream (the TTL counts from here).
cache_tags = sa.Table(
    "cache_tags",
    metadata,
    sa.Column("repository", sa.String(255), primary_key=True),
    sa.Column("tag", sa.String(128), primary_key=True),
    sa.Column("digest", sa.String(200), nullable=False),
    sa.Column("checked_at", TIMESTAMP, nullable=False),
)

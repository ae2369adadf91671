"""The repository event log, which is also the outbox other rooms (webhooks) dispatch from."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import BIGINT, TIMESTAMP, metadata

repository_events = sa.Table(
    "repository_events",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("uid", sa.String(36), nullable=False, unique=True),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("repository", sa.String(255), nullable=False),
    sa.Column("tag", sa.String(128)),
    sa.Column("digest", sa.String(200)),
    sa.Column("media_type", sa.String(255)),
    sa.Column("artifact_type", sa.String(255)),
    sa.Column("size", sa.BigInteger),
    #: How many identical events this row stands for (pulls are aggregated per batch).
    sa.Column("count", sa.Integer, nullable=False, server_default="1"),
    sa.Column("actor", sa.String(128)),
    sa.Column("client_ip", sa.String(64)),
    sa.Column("request_id", sa.String(64)),
    sa.Column("request_host", sa.String(255)),
    sa.Column("request_method", sa.String(16)),
    sa.Column("user_agent", sa.String(512)),
    #: False until the dispatcher has fanned the event out to subscribers (webhooks).
    sa.Column("dispatched", sa.Boolean, nullable=False),
    sa.Index("ix_repository_events_pending", "dispatched", "id"),
    sa.Index("ix_repository_events_repository", "repository", "id"),
    sa.Index("ix_repository_events_created_at", "created_at"),
)

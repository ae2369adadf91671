"""The repository event log, and the job runtime's tables: jobs, event cursors, schedules."""

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
    #: PostgreSQL only: the id of the transaction that wrote the row (a server default,
    #: ``pg_current_xact_id()``). Consumers read in (txid, id) order and only below the oldest
    #: running transaction, so an event committed late never falls behind a cursor. NULL on SQLite.
    sa.Column("txid", sa.BigInteger),
    sa.Index("ix_repository_events_repository", "repository", "id"),
    sa.Index("ix_repository_events_created_at", "created_at"),
    sa.Index("ix_repository_events_txid", "txid", "id"),
)

#: Work to do once, with leases, retries (backoff with jitter) and a dead-letter state.
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # JSON
    sa.Column("status", sa.String(16), nullable=False),  # queued | running | succeeded | dead
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("run_at", TIMESTAMP, nullable=False),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", TIMESTAMP),
    sa.Column("last_error", sa.String(2048)),
    #: Held while the job is queued: enqueueing the same key again adds nothing.
    sa.Column("dedupe_key", sa.String(255), unique=True),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    sa.Index("ix_jobs_due", "status", "run_at"),
)

#: How far each consumer has read the event log (every consumer reads every event).
event_cursors = sa.Table(
    "event_cursors",
    metadata,
    sa.Column("consumer", sa.String(64), primary_key=True),
    sa.Column("last_event_id", sa.BigInteger, nullable=False),
    #: PostgreSQL: the txid of that event (the cursor is the pair); NULL on SQLite.
    sa.Column("last_txid", sa.BigInteger),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

#: Periodic work that runs once per registry, whichever process claims it first.
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("interval_seconds", sa.Float, nullable=False),
    sa.Column("next_run_at", TIMESTAMP, nullable=False),
    sa.Column("last_run_at", TIMESTAMP),
    sa.Column("last_status", sa.String(16)),
    sa.Column("last_error", sa.String(2048)),
)

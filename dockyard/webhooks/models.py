"""Webhook subscriptions, their pending deliveries, and every delivery attempt."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import BIGINT, TIMESTAMP, metadata

webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(50), nullable=False, unique=True),
    sa.Column("uri", sa.String(2048), nullable=False),
    sa.Column("actions", sa.JSON, nullable=False),
    sa.Column("scope", sa.String(300)),
    sa.Column("headers", sa.JSON, nullable=False),
    #: The HMAC key signing each delivery; it must be kept to sign, so it is not hashed.
    sa.Column("secret", sa.String(256)),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("payload_format", sa.String(16), nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

#: One event (or ping) to send to one webhook, until it succeeds or its retry window closes.
deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", BIGINT, sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("event_uid", sa.String(36), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivering | succeeded | dead
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
    sa.Column("retry_until", TIMESTAMP, nullable=False),
    sa.Column("lease_until", TIMESTAMP),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.String(1024)),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
)

delivery_attempts = sa.Table(
    "webhook_delivery_attempts",
    metadata,
    sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id", BIGINT, sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("started_at", TIMESTAMP, nullable=False),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("request_uri", sa.String(2048), nullable=False),
    sa.Column("request_headers", sa.JSON, nullable=False),
    sa.Column("response_status", sa.Integer),
    sa.Column("response_headers", sa.JSON),
    sa.Column("response_body", sa.Text),
    sa.Column("error", sa.String(1024)),
    sa.Index("ix_webhook_delivery_attempts_delivery", "delivery_id", "id"),
)

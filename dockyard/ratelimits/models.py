"""The ratelimits room's table: one shared token bucket per key (category, registry or identity)."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import metadata

#: A bucket's tokens as of ``updated_at`` (Unix seconds); refill is computed from it on each lease.
#: A missing row is a full bucket, so idle rows are pruned.
rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("key", sa.String(160), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False, index=True),
)

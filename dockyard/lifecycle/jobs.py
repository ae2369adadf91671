"""Background work of the lifecycle room (garbage collection, recycle-bin expiry, retention, purge)."""

from __future__ import annotations

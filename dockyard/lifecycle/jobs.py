"""Background work of the lifecycle room (garbage collection, recycle-bin expiry, retention, purge)."""

from __future__ import annotations

import logging

from dockyard.lifecycle.services import RecycleServices

log = logging.getLogger(__name__)

#: How often expired recycle-bin entries are forgotten, and due untagged manifests deleted.
EXPIRE_RECYCLE_BIN_EVERY = 3600.0
RETENTION_EVERY = 300.0


def expire_recycle_bin(recycle: RecycleServices) -> None:
    """Forget soft-deleted manifests past the policy's days (their blobs become collectable)."""
    forgotten = recycle.bin.purge_expired()
    if forgotten:
        log.info("recycle bin: %d expired manifests purged", forgotten)


def apply_retention(recycle: RecycleServices) -> None:
    """Delete untagged manifests whose retention period ended."""
    run = recycle.retention.run()
    if run.deleted:
        log.info("retention: deleted %d untagged manifests", len(run.deleted))

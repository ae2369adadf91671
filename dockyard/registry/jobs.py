"""Background work of the registry room."""

from __future__ import annotations

import logging

from dockyard.registry.services import RegistryServices

log = logging.getLogger(__name__)

#: How often stale upload sessions are looked for (a schedule: once per registry).
EXPIRE_UPLOADS_EVERY = 600.0


def expire_uploads(services: RegistryServices) -> int:
    """Cancel idle upload sessions and remove upload data nobody owns."""
    removed = services.uploads.expire()
    if removed:
        log.info("expired %d stale uploads", removed)
    return removed

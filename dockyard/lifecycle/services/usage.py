"""Storage and resource usage, as `az acr show-usage` reports it, and per-repository sizes."""

from __future__ import annotations

import sqlalchemy as sa

from dockyard.db import Database
from dockyard.registry.models import manifest_blobs, manifests, repositories
from dockyard.tiers.services import TierService, Usage

__all__ = ["Usage", "UsageService"]


class UsageService:
    """Counts what the registry holds."""

    def __init__(self, db: Database, tiers: TierService) -> None:
        self._db = db
        self._tiers = tiers

    def registry(self) -> list[Usage]:
        """The tier's limits with current use: Size (each live blob once, plus each distinct manifest
        once), Webhooks, Tokens, ScopeMaps, IPRules, Geo-replications, CacheRules."""
        return self._tiers.usage()

    def repository(self, name: str) -> dict[str, int] | None:
        """A repository's size: each blob its manifests reference counted once, plus its manifests."""
        with self._db.read() as conn:
            repo_id = conn.execute(sa.select(repositories.c.id).where(repositories.c.name == name)).scalar()
            if repo_id is None:
                return None
            layers = (
                sa.select(manifest_blobs.c.digest, manifest_blobs.c.size)
                .select_from(manifest_blobs.join(manifests))
                .where(manifests.c.repository_id == repo_id)
                .distinct()
                .subquery()
            )
            blob_bytes = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(layers.c.size), 0))).scalar_one()
            count, manifest_bytes = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(manifests.c.size), 0)).where(
                    manifests.c.repository_id == repo_id
                )
            ).one()
        return {
            "sizeBytes": int(blob_bytes) + int(manifest_bytes),
            "blobBytes": int(blob_bytes),
            "manifestBytes": int(manifest_bytes),
            "manifestCount": int(count),
        }

"""Storage and resource usage, as `az acr show-usage` reports it, and per-repository sizes."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from dockyard.access.models import identities, scope_maps
from dockyard.db import Database
from dockyard.registry.models import blobs, manifest_blobs, manifests, repositories
from dockyard.registry.services.blobstate import LIVE
from dockyard.webhooks.models import webhooks


@dataclass(frozen=True)
class Usage:
    name: str
    limit: int | None
    current: int
    unit: str


class UsageService:
    """Counts what the registry holds."""

    def __init__(self, db: Database, *, storage_limit: int | None, webhook_limit: int) -> None:
        self._db = db
        self._storage_limit = storage_limit
        self._webhook_limit = webhook_limit

    def registry(self) -> list[Usage]:
        """Size (each live blob once, plus each distinct manifest once), webhooks, scope maps, tokens."""
        distinct_manifests = sa.select(manifests.c.digest, manifests.c.size).distinct().subquery()
        with self._db.read() as conn:
            blob_bytes = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(blobs.c.size), 0)).where(blobs.c.state == LIVE)
            ).scalar_one()
            manifest_bytes = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(distinct_manifests.c.size), 0))
            ).scalar_one()
            hooks = conn.execute(sa.select(sa.func.count()).select_from(webhooks)).scalar_one()
            maps = conn.execute(
                sa.select(sa.func.count()).select_from(scope_maps).where(scope_maps.c.system.is_(False))
            ).scalar_one()
            tokens = conn.execute(
                sa.select(sa.func.count()).select_from(identities).where(identities.c.kind == "token")
            ).scalar_one()
        return [
            Usage("Size", self._storage_limit, int(blob_bytes) + int(manifest_bytes), "Bytes"),
            Usage("Webhooks", self._webhook_limit, int(hooks), "Count"),
            Usage("ScopeMaps", None, int(maps), "Count"),
            Usage("Tokens", None, int(tokens), "Count"),
        ]

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

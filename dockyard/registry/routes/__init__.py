"""HTTP faces of the registry: the OCI /v2 API and ACR's /acr/v1 metadata API."""

from __future__ import annotations

from starlette.routing import BaseRoute

from dockyard.access.policy import Policy
from dockyard.registry.routes.acr import AcrRoutes
from dockyard.registry.routes.blobs import BlobRoutes
from dockyard.registry.routes.listing import ListingRoutes
from dockyard.registry.routes.manifests import ManifestRoutes
from dockyard.registry.routes.policies import PolicyRoutes
from dockyard.registry.services import RegistryServices


def build_routes(services: RegistryServices, policy: Policy) -> list[BaseRoute]:
    """Every registry route, in matching order, each guarded by what it needs."""
    # The hottest first. Each /v2/<name>/… route is told apart by its fixed tail
    # (/manifests/<ref>, /blobs/<digest>, /blobs/uploads/…, /tags/list), so the order
    # changes how soon a path finds its route, never which route it finds.
    return [
        *ManifestRoutes(services, policy).routes(),
        *BlobRoutes(services, policy).routes(),
        *ListingRoutes(services, policy).routes(),
        *AcrRoutes(services, policy).routes(),
        *PolicyRoutes(services, policy).routes(),
    ]

"""Liveness and readiness for load balancers and Kubernetes probes: ``/healthz`` and ``/readyz``.

Neither needs credentials nor touches data: ``/healthz`` says the process answers; ``/readyz``
also checks that the database answers a query and the blob store answers a lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from dockyard.access.policy import Policy
from dockyard.asgi import run_sync
from dockyard.db import Database
from dockyard.rooms import Dockyard, Room
from dockyard.storage import BlobStore

log = logging.getLogger(__name__)

#: A digest no blob has: looking it up proves the store answers, without reading anything.
PROBE_DIGEST = "sha256:" + "0" * 64


class HealthRoutes:
    """``/healthz`` (alive) and ``/readyz`` (database and storage reachable)."""

    def __init__(self, db: Database, store: BlobStore) -> None:
        self.db = db
        self.store = store

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self.alive, methods=["GET", "HEAD"]),
            Route("/readyz", self.ready, methods=["GET", "HEAD"]),
        ]

    async def alive(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        checks = {
            "database": await run_sync(self._check, "database", self._database),
            "storage": await run_sync(self._check, "storage", self._storage),
        }
        ready = all(result == "ok" for result in checks.values())
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
        )

    def _database(self) -> None:
        with self.db.read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def _storage(self) -> None:
        self.store.stat(PROBE_DIGEST)

    @staticmethod
    def _check(name: str, probe: Callable[[], None]) -> str:
        try:
            probe()
        except Exception as exc:  # any failure means not ready: say which and why
            log.warning("readiness: %s is unavailable: %s", name, (str(exc) or repr(exc)).splitlines()[0])
            return f"unavailable: {type(exc).__name__}"
        return "ok"


def _routes(parts: Dockyard, policy: Policy) -> Sequence[BaseRoute]:
    return HealthRoutes(parts.db, parts.store).routes()


ROOM = Room("health", routes=_routes)

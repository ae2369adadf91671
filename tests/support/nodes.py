"""Registry nodes for tests that need two processes on one database: their settings, and a wait
until a PostgreSQL node's change listener has seen every notification committed so far."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dockyard.app import Dockyard
from dockyard.config import Settings
from tests.support.auth import ADMIN_PASSWORD
from tests.support.polling import eventually


def node_settings(tmp_path: Path, url: str, **update: Any) -> Settings:
    """A node's settings on database ``url``, its data under ``tmp_path`` (``update`` overrides)."""
    return Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "database_url": url,
            "access_log": False,
            "admin_password": ADMIN_PASSWORD,
            **update,
        }
    )


def settled(node: Dockyard, timeout: float = 10.0) -> None:
    """Wait until the listener is connected and has received every notification committed so far.

    A sentinel notification sent while the listener reconnects is lost, so send one again
    until one arrives.
    """
    listener = node.registry.listener
    assert listener is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sentinel = f"sentinel-{uuid.uuid4()}"
        with node.db.write() as conn:
            conn.execute(sa.text("SELECT pg_notify('dockyard_content', :payload)"), {"payload": sentinel})
        with contextlib.suppress(AssertionError):
            eventually(lambda: listener.last_notice == sentinel, "the sentinel", timeout=0.5)  # noqa: B023
            return
    raise AssertionError("the change listener received no sentinel notification")


@contextlib.contextmanager
def listener_stalled(
    node: Dockyard, monkeypatch: pytest.MonkeyPatch, timeout: float = 20.0
) -> Iterator[None]:
    """Within the block ``node``'s change listener reads notices but applies none (its thread waits,
    as one the GIL starves would); it applies them once the block ends."""
    listener = node.registry.listener
    assert listener is not None
    release = threading.Event()
    original = listener._apply

    def stalled_apply(pgconn: Any) -> None:
        release.wait(timeout)
        original(pgconn)

    monkeypatch.setattr(listener, "_apply", stalled_apply)
    try:
        yield
    finally:
        release.set()


def kill_listeners(node: Dockyard) -> int:
    """Terminate every node's change-listener connection (as a failover or a network cut would),
    through ``node``'s database; how many were killed."""
    with node.db.write() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN dockyard_content%'"
            )
        ).scalar()

"""Network rules through the whole app: configured CIDRs with host bits, X-Forwarded-For hops with
ports and brackets, and a connection without a peer address."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from dockyard.access.services import bootstrap
from dockyard.app import build, create_app
from dockyard.config import Settings
from tests.support.auth import ADMIN, ADMIN_PASSWORD

PROXY = "192.0.2.77"


@pytest.fixture
def make_app(tmp_path: Path, sqlite_template: Path) -> Iterator[Callable[..., Starlette]]:
    """An app on a fresh SQLite copy, with ``settings`` overrides (as the environment would give them)."""
    disposers = []

    def make(**overrides: object) -> Starlette:
        database = tmp_path / "dockyard.db"
        shutil.copy(sqlite_template, database)
        settings = Settings.model_validate(
            {
                "data_dir": tmp_path / "data",
                "database_url": f"sqlite:///{database}",
                "access_log": False,
                "admin_password": ADMIN_PASSWORD,
                **overrides,
            }
        )
        parts = build(settings)
        bootstrap(settings, parts.access)
        disposers.append(parts.db.dispose)
        return create_app(settings, parts, background_jobs=False)

    yield make
    for dispose in disposers:
        dispose()


def test_forwarded_hops_with_ports_and_brackets_behind_a_proxy_range_with_host_bits(
    make_app: Callable[..., Starlette],
) -> None:
    app = make_app(trusted_proxies="192.0.2.5/24", private_networks="")
    with TestClient(app, headers=ADMIN, client=(PROXY, 1)) as proxy:
        rules = {"defaultAction": "Deny", "ipRules": ["2001:db8::/32", "198.51.100.7/24"]}
        updated = proxy.patch("/api/v1/registry", json={"networkRuleSet": rules})
        assert updated.status_code == 200, updated.text
        values = [rule["value"] for rule in updated.json()["networkRuleSet"]["ipRules"]]
        assert sorted(values) == ["198.51.100.0/24", "2001:db8::/32"]

        for hop in ("[2001:db8::1]:51234", "[2001:db8::1]", "2001:db8::1", "198.51.100.9:443"):
            assert proxy.get("/v2/", headers={"X-Forwarded-For": hop}).status_code == 200, hop
        refused = proxy.get("/v2/", headers={"X-Forwarded-For": "[2001:dead::1]:51234"})
        assert refused.status_code == 403
        assert refused.json()["errors"][0]["message"] == "client with IP '2001:dead::1' is not allowed access"
        # Without a forwarded client the proxy itself is the client, and no rule allows it.
        assert proxy.get("/v2/").status_code == 403


def test_a_connection_without_a_peer_address_is_served(make_app: Callable[..., Starlette]) -> None:
    app = make_app()
    with TestClient(app, headers=ADMIN, client=("127.0.0.1", 1)) as local:
        closed = {"publicNetworkAccess": "Disabled", "networkRuleSet": {"defaultAction": "Deny"}}
        assert local.patch("/api/v1/registry", json=closed).status_code == 200
    # A Unix socket or an in-process client has no address: a local transport, allowed.
    with TestClient(app, headers=ADMIN, client=None) as no_peer:  # type: ignore[arg-type]
        assert no_peer.get("/v2/").status_code == 200
        assert no_peer.get("/v2/", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 200
    with TestClient(app, headers=ADMIN, client=("203.0.113.9", 1)) as public:
        assert public.get("/v2/").status_code == 403

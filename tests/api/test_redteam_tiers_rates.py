"""Red-team attacks on the issue #10 surfaces: tiers and the storage quota, request-rate limits
(the upstream client, import and the pull-through cache are in test_redteam_tiers_cache.py).

``test_hole_…`` tests reproduce attacks that worked when they were written (each failed until its
hole was closed); ``test_refused_…`` tests are attacks that were correctly refused and guard
against regressions. Every test's docstring names the attack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from dockyard.access.services import bootstrap
from dockyard.app import Dockyard, build, create_app
from tests.support.auth import ADMIN, ADMIN_USERNAME, basic
from tests.support.images import OCI_MANIFEST, make_artifact
from tests.support.registry import push_blob, push_manifest

# =================================================================================================
# D. TIERS AND THE STORAGE QUOTA
# =================================================================================================


def test_hole_manifest_only_pushes_pass_the_quota_without_bound(settings, tmp_path, database_url):
    """HOLE (fixed). Attack: at a 5,000-byte quota, push 8 distinct ~1 MiB manifests (one tiny blob,
    huge annotations). Expected: refused once the registry is past its quota."""
    limited = settings.model_copy(update={"tiers": {"Premium": {"storage_bytes": 5000}}})
    parts = build(limited)
    bootstrap(limited, parts.access)
    try:
        with TestClient(create_app(limited, parts, background_jobs=False), headers=ADMIN) as admin:
            push_blob(admin, "fill", b"{}")
            push_blob(admin, "fill", b"x")
            statuses = []
            for n in range(8):
                artifact = make_artifact(
                    "a/b", b"x", annotations={"pad": hashlib.sha256(bytes([n])).hexdigest() * 30000}
                )
                statuses.append(
                    push_manifest(admin, "fill", f"v{n}", artifact.manifest, OCI_MANIFEST).status_code
                )
        assert statuses.count(201) <= 1, statuses
    finally:
        parts.db.dispose()


# =================================================================================================
# E. RATE LIMITS
# =================================================================================================

TINY = {"read": {"registry": 600, "identity": 2}, "oauth": {"registry": 3}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def limited(settings, tmp_path) -> Iterator[tuple[Dockyard, TestClient, Clock]]:
    rated = settings.model_copy(update={"tiers": {"Premium": {"rates": TINY}}})
    parts = build(rated)
    bootstrap(rated, parts.access)
    clock = Clock()
    parts.service("ratelimits").clock = clock
    try:
        with TestClient(create_app(rated, parts, background_jobs=False), headers=ADMIN) as admin:
            yield parts, admin, clock
    finally:
        parts.db.dispose()


def test_refused_a_throttled_flood_writes_nothing(limited, statements_of):
    """Refused. Attack: keep hammering after the first 429. Expected: no database write per refused
    request (the refusal is remembered in memory), Retry-After sane, nothing leaked in the body."""
    parts, admin, _ = limited
    assert [admin.get("/v2/").status_code for _ in range(2)] == [200, 200]
    with statements_of(parts) as seen:
        refused = [admin.get("/v2/") for _ in range(50)]
    assert {r.status_code for r in refused} == {429}
    writes = [s for s in seen if s.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE")]
    assert writes == [], writes[:5]
    assert 1 <= int(refused[-1].headers["Retry-After"]) <= 60
    body = refused[-1].json()["errors"][0]
    assert body["code"] == "TOOMANYREQUESTS"
    assert ADMIN_USERNAME not in body["message"]


def test_refused_bogus_bearer_tokens_do_not_spend_a_bucket(limited):
    """Refused. Attack: a flood of forged Bearer tokens (and wrong Basic passwords). Expected: 401
    each, and the identities' and anonymous buckets are untouched."""
    _parts, admin, _ = limited
    forged = "eyJhbGciOiJFUzI1NiIsImtpZCI6Ing.eyJzdWIiOiJkb2NreWFyZCJ9.c2ln"
    for _ in range(10):
        assert admin.get("/v2/", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert [admin.get("/v2/").status_code for _ in range(2)] == [200, 200]


def test_hole_strangers_drain_the_token_bucket_for_everyone(limited):
    """HOLE (fixed). Attack: with no valid credentials, from one address, request /oauth2/token until
    429. Expected: a user at another address can still get a token (one address may use at most
    half of the registry's token rate), and the stranger is told it is throttled as a client."""
    _parts, admin, _ = limited
    stranger_headers = basic("nobody", "wrong")
    with TestClient(admin.app, client=("203.0.113.9", 40000)) as stranger:
        answers = [
            stranger.get("/oauth2/token", params={"service": "dockyard"}, headers=stranger_headers)
            for _ in range(5)
        ]
    assert answers[0].status_code == 401
    assert {a.status_code for a in answers[1:]} == {429}
    assert "this client" in answers[-1].json()["errors"][0]["message"]
    assert admin.get("/oauth2/token", params={"service": "dockyard"}).status_code == 200

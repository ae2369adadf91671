"""Request-rate limits through the HTTP API, with small rates and a hand-driven clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from dockyard.app import build, create_app
from dockyard.config import Settings
from dockyard.rooms import Dockyard
from tests.support.auth import ADMIN, ADMIN_USERNAME, access_token, basic, bearer, create_user
from tests.support.registry import error_codes

DIGEST = "sha256:" + "ab" * 32

#: Tiny per-minute rates: read 3 per identity and 6 for the registry (one token per 20 s and 10 s).
RATES = {
    "read": {"registry": 6, "identity": 3},
    "write": {"registry": 60, "identity": 2},
    "delete": {"registry": 60, "identity": 1},
    "referrers": {"registry": 100, "identity": 2},
    "oauth": {"registry": 2},
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"tiers": {"Premium": {"rates": RATES}}})


@pytest.fixture
def clock(dockyard: Dockyard) -> Clock:
    clock = Clock()
    dockyard.service("ratelimits").clock = clock
    return clock


@pytest.fixture
def connect(app, clock) -> Iterator:
    """``connect(headers, address)``: another client of the same app."""
    clients: list[TestClient] = []

    def make(headers: dict[str, str] | None = None, address: str = "testclient") -> TestClient:
        made = TestClient(app, headers=headers or {}, client=(address, 50000))
        clients.append(made)
        return made

    yield make
    for made in clients:
        made.close()


def statuses(client: TestClient, path: str, count: int) -> list[int]:
    return [client.get(path).status_code for _ in range(count)]


def test_over_the_limit_is_429_with_retry_after_counting_down(client, clock):
    assert statuses(client, "/v2/", 3) == [200, 200, 200]
    refused = client.get("/v2/")
    assert refused.status_code == 429
    assert error_codes(refused) == ["TOOMANYREQUESTS"]
    assert "read requests for this identity (limit 3 per minute)" in refused.json()["errors"][0]["message"]
    assert refused.headers["Retry-After"] == "20"  # 3 a minute: the next token in 20 s
    assert refused.headers["content-type"].startswith("application/json")
    clock.now += 10
    assert client.get("/v2/").headers["Retry-After"] == "10"
    clock.now += 9.5
    assert client.get("/v2/").headers["Retry-After"] == "1"
    clock.now += 0.5
    assert statuses(client, "/v2/", 2) == [200, 429]  # one token refilled
    clock.now += 60
    assert statuses(client, "/v2/", 4) == [200, 200, 200, 429]  # refilled to one minute's worth, no more


def test_head_is_a_read_and_the_429_has_no_body(client, clock):
    assert [client.head("/v2/").status_code for _ in range(4)] == [200, 200, 200, 429]
    refused = client.head("/v2/")
    assert refused.content == b""
    assert refused.headers["Retry-After"] == "20"


def test_identity_then_registry(client, connect, clock):
    alice = connect(create_user(client, "alice", "AcrPull"))
    bob = connect(create_user(client, "bob", "AcrPull"))
    assert statuses(client, "/v2/", 3) == [200, 200, 200]
    # Refused by the admin's own bucket: the registry's is untouched.
    assert statuses(client, "/v2/", 5) == [429] * 5
    assert statuses(alice, "/v2/", 3) == [200, 200, 200]  # 6 of the registry's 6 now spent
    refused = bob.get("/v2/")
    assert refused.status_code == 429
    assert "for the registry (limit 6 per minute)" in refused.json()["errors"][0]["message"]
    assert refused.headers["Retry-After"] == "10"
    clock.now += 10
    assert statuses(bob, "/v2/", 2) == [200, 429]


def test_idle_buckets_are_pruned_and_start_full(client, dockyard, clock):
    assert statuses(client, "/v2/", 4)[-1] == 429
    limiter = dockyard.service("ratelimits")
    clock.now += 599
    assert limiter.prune() == 0  # touched within ten minutes: kept
    clock.now += 2
    assert limiter.prune() == 2  # the admin's read bucket and the registry's
    with dockyard.db.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM rate_buckets")).scalar_one() == 0
    assert statuses(client, "/v2/", 4) == [200, 200, 200, 429]


def test_writes_and_deletes_have_buckets_of_their_own(client, clock):
    assert [client.post("/v2/app/blobs/uploads/").status_code for _ in range(3)] == [202, 202, 429]
    refused = client.patch("/v2/app/blobs/uploads/whatever")
    assert refused.status_code == 429
    assert "too many write requests" in refused.json()["errors"][0]["message"]
    assert refused.headers["Retry-After"] == "30"
    manifest = f"/v2/app/manifests/{DIGEST}"
    assert [client.delete(manifest).status_code for _ in range(2)] == [404, 429]
    assert statuses(client, "/v2/", 3) == [200, 200, 200]  # reads are counted apart


def test_management_api_is_not_limited(client, clock):
    assert statuses(client, "/v2/", 4)[-1] == 429
    assert statuses(client, "/api/v1/registry", 10) == [200] * 10
    assert [client.get("/api/v1/purge/runs/nope").status_code for _ in range(4)] == [404] * 4  # need None


def test_the_admin_passwords_share_one_bucket(client, connect, clock):
    renewed = client.post("/api/v1/registry/credentials/renew", json={"name": "password2"}).json()
    password2 = next(p["value"] for p in renewed["passwords"] if p["name"] == "password2")
    second = connect(basic(ADMIN_USERNAME, password2))
    assert statuses(client, "/v2/", 2) == [200, 200]
    assert statuses(second, "/v2/", 2) == [200, 429]
    assert client.get("/v2/").status_code == 429


def test_a_bearer_token_draws_from_its_identity(client, connect, clock):
    token = access_token(client, ADMIN)  # an oauth request, not a read
    bearer_client = connect(bearer(token))
    assert statuses(bearer_client, "/v2/", 2) == [200, 200]
    assert statuses(client, "/v2/", 2) == [200, 429]


def test_anonymous_callers_share_one_bucket(client, connect, clock):
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    one = connect(address="198.51.100.1")
    other = connect(address="198.51.100.2")
    assert one.get("/v2/").status_code == 401  # no credentials: asked for some, not counted
    assert statuses(one, "/v2/app/tags/list", 2) == [404, 404]
    assert statuses(other, "/v2/app/tags/list", 2) == [404, 429]
    anonymous_token = one.get("/oauth2/token", params={"service": "dockyard"}).json()["access_token"]
    assert connect(bearer(anonymous_token)).get("/v2/").status_code == 429  # an anonymous token too
    assert statuses(client, "/v2/", 3) == [200, 200, 200]  # the admin has a bucket of its own


def test_unauthenticated_requests_are_refused_before_counting(client, connect, clock):
    stranger = connect(basic("nobody", "wrong"))
    assert statuses(stranger, "/v2/", 5) == [401] * 5
    assert statuses(client, "/v2/", 3) == [200, 200, 200]


def test_referrers_count_as_read_and_referrers(client, clock):
    path = f"/v2/app/referrers/{DIGEST}"
    assert [status != 429 for status in statuses(client, path, 2)] == [True, True]
    refused = client.get(path)  # the identity's 2 referrers per minute are spent
    assert refused.status_code == 429
    assert "referrers requests" in refused.json()["errors"][0]["message"]
    assert refused.headers["Retry-After"] == "30"
    # The refused request gave its read token back: one read of the identity's three is left.
    assert statuses(client, "/v2/", 2) == [200, 429]


def test_token_requests_are_limited_per_registry(client, connect, clock):
    alice = create_user(client, "alice", "AcrPull")
    offline = client.get("/oauth2/token", params={"service": "dockyard", "offline_token": "true"})
    assert offline.status_code == 200
    elsewhere = connect(address="198.51.100.7")  # one address may use half the registry's token rate
    assert elsewhere.get("/oauth2/token", params={"service": "dockyard"}, headers=alice).status_code == 200
    bob = create_user(client, "bob", "AcrPull")
    refused = connect(address="198.51.100.8").get(
        "/oauth2/token", params={"service": "dockyard"}, headers=bob
    )
    assert refused.status_code == 429
    assert error_codes(refused) == ["TOOMANYREQUESTS"]
    assert "for the registry" in refused.json()["errors"][0]["message"]
    assert refused.headers["Retry-After"] == "30"
    exchange = {"grant_type": "refresh_token", "refresh_token": offline.json()["refresh_token"]}
    assert client.post("/oauth2/exchange", data=exchange).status_code == 429
    # a caller without credentials is refused as such; it draws nothing from the registry's rate
    stranger = connect(address="198.51.100.9").post("/oauth2/token", data={"grant_type": "password"})
    assert stranger.status_code == 401
    assert statuses(client, "/v2/", 3) == [200, 200, 200]  # token requests are not reads
    clock.now += 30  # the registry's bucket has a token again (an address's or identity's share needs 60 s)
    fresh = connect(address="198.51.100.10")
    assert fresh.get("/oauth2/token", params={"service": "dockyard"}, headers=bob).status_code == 200


def test_strangers_from_many_addresses_leave_the_token_rate_to_those_who_sign_in(client, connect, clock):
    """A flood of token requests without valid credentials, each address within its share, never
    draws from the registry's bucket: a signed-in user still gets a token (red team, helper-57)."""
    for number in range(12):
        stranger = connect(address=f"203.0.113.{number}")
        assert stranger.get("/oauth2/token", params={"service": "dockyard"}).status_code == 401
        refresh = {"grant_type": "refresh_token", "refresh_token": "not-a-token"}
        assert stranger.post("/oauth2/exchange", data=refresh).status_code in (401, 429)
    assert client.get("/oauth2/token", params={"service": "dockyard"}).status_code == 200
    alice = create_user(client, "alice", "AcrPull")
    second = connect(alice, address="198.51.100.30")  # the registry's second token this minute
    assert second.get("/oauth2/token", params={"service": "dockyard"}).status_code == 200


def test_one_identity_gets_at_most_half_of_the_token_rate_from_any_number_of_addresses(
    client, connect, clock
):
    """Red team (helper-58): one signed-in identity, from a few addresses, took every token of the
    minute, so everyone else got 429. Its share is half the registry's."""
    alice = create_user(client, "alice", "AcrPull")
    first = connect(alice, address="198.51.100.40").get("/oauth2/token", params={"service": "dockyard"})
    assert first.status_code == 200
    refused = connect(alice, address="198.51.100.41").get("/oauth2/token", params={"service": "dockyard"})
    assert refused.status_code == 429
    assert "this identity" in refused.json()["errors"][0]["message"]
    assert client.get("/oauth2/token", params={"service": "dockyard"}).status_code == 200  # the other half


def test_anonymous_token_requests_together_get_half_of_the_token_rate(client, connect, clock):
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    assert (
        connect(address="203.0.113.20").get("/oauth2/token", params={"service": "dockyard"}).status_code
        == 200
    )
    refused = connect(address="203.0.113.21").get("/oauth2/token", params={"service": "dockyard"})
    assert refused.status_code == 429  # the anonymous share (1 a minute) is spent, whatever the address
    assert client.get("/oauth2/token", params={"service": "dockyard"}).status_code == 200  # the rest


def test_one_address_gets_at_most_half_of_the_token_rate(client, connect, clock):
    stranger = connect(address="203.0.113.5")  # no credentials: admitted by the limits, then a 401
    assert stranger.get("/oauth2/token", params={"service": "dockyard"}).status_code == 401
    refused = stranger.get("/oauth2/token", params={"service": "dockyard"})
    assert refused.status_code == 429
    assert "this client" in refused.json()["errors"][0]["message"]
    assert refused.headers["Retry-After"] == "60"
    assert client.get("/oauth2/token", params={"service": "dockyard"}).status_code == 200  # others still can
    clock.now += 60
    assert stranger.get("/oauth2/token", params={"service": "dockyard"}).status_code == 401


def test_throttled_requests_are_counted_by_category(client, clock):
    statuses(client, "/v2/", 5)
    scraped = client.get("/metrics").text
    assert 'dockyard_rate_limited_requests_total{category="read"} 2.0' in scraped


def test_leases_batch_tokens_so_requests_do_not_write_each(settings, dockyard, clock):
    roomy = settings.model_copy(
        update={"tiers": {"Premium": {"rates": {"read": {"registry": 6000, "identity": 3000}}}}}
    )
    parts = build(roomy)  # the same database, its admin made by the ``dockyard`` fixture
    limiter = parts.service("ratelimits")
    limiter.clock = clock
    try:
        with TestClient(create_app(roomy, parts, background_jobs=False), headers=ADMIN) as client:
            assert statuses(client, "/v2/", 100) == [200] * 100
    finally:
        parts.db.dispose()
    # Batches of 2% of the bucket: 60 identity and 120 registry tokens a lease.
    assert limiter.leases_taken == 3
    with dockyard.db.read() as conn:
        rows = dict(conn.execute(sa.text("SELECT key, tokens FROM rate_buckets")).all())
    assert rows["read:registry"] == 6000 - 120
    assert rows[next(k for k in rows if k.startswith("read:identity:"))] == 3000 - 120


def test_a_database_error_fails_open(client, clock, dockyard, monkeypatch, caplog):
    limiter = dockyard.service("ratelimits")

    def broken(*args: object) -> None:
        raise sa.exc.OperationalError("UPDATE rate_buckets", {}, Exception("database is down"))

    monkeypatch.setattr(limiter, "_lease", broken)
    assert statuses(client, "/v2/", 5) == [200] * 5
    assert "fail open" in caplog.text
    scraped = client.get("/metrics").text
    # An attempt admits up to a bucket's capacity: the identity's 3 took two attempts, the registry's 6 one.
    assert "dockyard_rate_limit_errors_total 3.0" in scraped


def test_an_unreadable_tier_fails_open_and_the_last_one_is_kept(client, clock, dockyard, monkeypatch):
    limiter = dockyard.service("ratelimits")

    def broken() -> None:
        raise sa.exc.OperationalError("SELECT registry_settings", {}, Exception("database is down"))

    source = limiter._tier_source
    monkeypatch.setattr(limiter, "_tier_source", broken)
    assert statuses(client, "/v2/", 5) == [200] * 5  # no tier read yet: no limits
    monkeypatch.setattr(limiter, "_tier_source", source)
    clock.now += 5
    assert statuses(client, "/v2/", 4) == [200, 200, 200, 429]
    monkeypatch.setattr(limiter, "_tier_source", broken)
    clock.now += 5
    assert client.get("/v2/").status_code == 429  # the tier read before still applies


def test_limits_can_be_switched_off(settings, dockyard):
    switched_off = settings.model_copy(update={"rate_limits_enabled": False})
    parts = build(switched_off)
    try:
        with TestClient(create_app(switched_off, parts, background_jobs=False), headers=ADMIN) as client:
            assert statuses(client, "/v2/", 10) == [200] * 10
            assert "dockyard_rate_limited_requests" not in client.get("/metrics").text
    finally:
        parts.db.dispose()
    assert parts.service("ratelimits").leases_taken == 0

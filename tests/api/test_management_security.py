"""Attacks on the management API and the token service that once worked (issue: security fixes).

Each test names the hole it closes: tokens trusted by their subject's name, exchange widening
scope, a Contributor becoming Owner, sign-in floods writing to the database, brute force, and
bodies that crashed the server.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import jwt
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from dockyard.access import passwords
from dockyard.access.models import signing_keys
from dockyard.access.services.authentication import CREDENTIALS_CHECKED
from dockyard.access.services.identities import NULL_GUID
from dockyard.access.tokens import InvalidToken
from dockyard.app import build, create_app
from tests.support.auth import ADMIN, ADMIN_PASSWORD, ADMIN_USERNAME, basic, bearer, create_user
from tests.support.auth import access_token as token

# -- 1. the management API authorises the verified identity ---------------------------------------


@pytest.mark.parametrize("name", ["anonymous", "Anonymous", "system", NULL_GUID])
def test_system_names_are_reserved(client, name):
    response = client.post("/api/v1/users", json={"name": name})
    assert response.status_code == 400
    assert (
        client.post("/api/v1/tokens", json={"name": name, "scopeMap": "_repositories_pull"}).status_code
        == 400
    )


def test_anonymous_callers_never_reach_the_management_api(client, anonymous):
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    anonymous_token = anonymous.get("/oauth2/token", params={"scope": "repository:team/a:pull"}).json()
    assert (
        jwt.decode(anonymous_token["access_token"], options={"verify_signature": False})["sub"] == "anonymous"
    )
    for path in ("/api/v1/registry", "/api/v1/registry/credentials", "/api/v1/users"):
        assert anonymous.get(path).status_code == 401
        assert anonymous.get(path, headers=bearer(anonymous_token["access_token"])).status_code in (401, 403)
    renew = anonymous.post(
        "/api/v1/registry/credentials/renew",
        json={"name": "password"},
        headers=bearer(anonymous_token["access_token"]),
    )
    assert renew.status_code in (401, 403)
    assert "value" not in renew.text


def test_repository_scoped_access_tokens_cannot_manage(client, anonymous):
    scoped = token(anonymous, ADMIN, "repository:team/a:pull")
    response = anonymous.get("/api/v1/users", headers=bearer(scoped))
    assert response.status_code == 403
    assert "scoped to repositories" in response.json()["errors"][0]["message"]
    assert anonymous.post("/api/v1/users", json={"name": "x"}, headers=bearer(scoped)).status_code == 403


def test_repository_scoped_tokens_cannot_manage_with_their_passwords(client, anonymous):
    created = client.post("/api/v1/tokens", json={"name": "ci", "scopeMap": "_repositories_admin"}).json()
    login = basic("ci", created["credentials"][0]["value"])
    assert anonymous.get("/v2/", headers=login).status_code == 200
    assert anonymous.get("/api/v1/users", headers=login).status_code == 403
    assert anonymous.get("/api/v1/users", headers=bearer(token(anonymous, login))).status_code == 403


def test_identity_tokens_manage_until_revoked(client, anonymous):
    owner = create_user(client, "boss", "Owner")
    identity = token(anonymous, owner)
    assert anonymous.get("/api/v1/users", headers=bearer(identity)).status_code == 200
    client.post("/api/v1/users/boss/credentials", json={})  # renewed: the old token stops at once
    assert anonymous.get("/api/v1/users", headers=bearer(identity)).status_code == 401

    owner = create_user(client, "boss2", "Owner")
    identity = token(anonymous, owner)
    client.delete("/api/v1/users/boss2")
    create_user(client, "boss2", "Owner")  # same name, another identity
    assert anonymous.get("/api/v1/users", headers=bearer(identity)).status_code == 401


def test_identity_tokens_carry_the_roles_of_now(client, anonymous):
    reader = create_user(client, "reader", "Reader")
    identity = token(anonymous, reader)
    assert anonymous.get("/api/v1/users", headers=bearer(identity)).status_code == 200
    assert anonymous.post("/api/v1/users", json={"name": "y"}, headers=bearer(identity)).status_code == 403


# -- 2. /oauth2/exchange never widens a token ---------------------------------------------------


def exchange(client: TestClient, grant: str, **form: str):
    return client.post("/oauth2/exchange", data={"grant_type": grant, "service": "dockyard", **form})


def test_exchange_refuses_scoped_and_anonymous_access_tokens(client, anonymous):
    scoped = token(anonymous, ADMIN, "repository:team/a:pull")
    assert exchange(anonymous, "access_token", access_token=scoped).status_code == 401
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    anonymous_token = anonymous.get("/oauth2/token").json()["access_token"]
    assert exchange(anonymous, "access_token", access_token=anonymous_token).status_code == 401
    assert exchange(anonymous, "access_token", access_token=token(anonymous, ADMIN)).status_code == 200


def test_a_refresh_token_is_not_an_access_token_and_vice_versa(anonymous):
    identity = token(anonymous, ADMIN)
    refresh = exchange(anonymous, "access_token", access_token=identity).json()["refresh_token"]
    assert exchange(anonymous, "access_token", access_token=refresh).status_code == 401
    assert exchange(anonymous, "refresh_token", refresh_token=identity).status_code == 401
    assert exchange(anonymous, "refresh_token", refresh_token=refresh).status_code == 200


def test_a_chain_of_refresh_tokens_ends(dockyard, anonymous):
    tokens = dockyard.access.tokens
    principal = dockyard.access.authenticator.login(ADMIN_USERNAME, ADMIN_PASSWORD)
    assert principal is not None
    assert principal.auth_time is not None
    near_end = replace(principal, auth_time=int(time.time()) - tokens.refresh_chain + 120)
    refresh = tokens.issue_refresh(near_end)
    assert refresh.expires_in <= 120
    renewed = exchange(anonymous, "refresh_token", refresh_token=refresh.token)
    assert renewed.status_code == 200
    claims = jwt.decode(renewed.json()["refresh_token"], options={"verify_signature": False})
    assert claims["auth_time"] == near_end.auth_time
    assert claims["exp"] <= near_end.auth_time + tokens.refresh_chain
    with pytest.raises(InvalidToken):
        tokens.issue_refresh(replace(principal, auth_time=int(time.time()) - tokens.refresh_chain))


def test_a_build_runs_credential_never_becomes_a_longer_lived_token(dockyard, anonymous):
    """Attack: exchange a leaked build run's credential (a ``system:tasks`` refresh token living the
    run's timeout plus 10 min) for a normal 3-hour refresh token, and that again, for 24 h of
    registry-wide push. Every door that issues a refresh token declines it; the token flow the
    builders use (GET /oauth2/token with the null GUID, the refresh grant) still works."""
    run = dockyard.service("builds").credentials.mint("dytest3", 60)
    run_login = basic(run.username, run.password)
    for grant in ("refresh_token", "access_token_refresh_token"):
        refused = exchange(anonymous, grant, refresh_token=run.password)
        assert refused.status_code == 401, refused.text
        assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
    identity = token(anonymous, run_login)
    assert exchange(anonymous, "access_token", access_token=identity).status_code == 401
    offline = {"service": "dockyard", "scope": "registry:catalog:*", "offline_token": "true"}
    granted = anonymous.get("/oauth2/token", params=offline, headers=run_login)
    assert granted.status_code == 200
    assert "refresh_token" not in granted.json()
    form = {
        "grant_type": "password",
        "username": NULL_GUID,
        "password": run.password,
        "access_type": "offline",
    }
    assert "refresh_token" not in anonymous.post("/oauth2/token", data=form).json()
    # What builders do: an access token from the run's credential, then push with it.
    push = token(anonymous, run_login, "repository:built/app:pull,push")
    assert jwt.decode(push, options={"verify_signature": False})["access"][0]["actions"] == ["pull", "push"]
    assert anonymous.post("/v2/built/app/blobs/uploads/", headers=bearer(push)).status_code == 202
    form = {"grant_type": "refresh_token", "refresh_token": run.password, "scope": "registry:catalog:*"}
    refreshed = anonymous.post("/oauth2/token", data=form)
    assert refreshed.status_code == 200
    catalog = bearer(refreshed.json()["access_token"])
    assert anonymous.get("/v2/_catalog", headers=catalog).status_code == 200


# -- 3. a Contributor cannot become Owner -------------------------------------------------------


def test_contributor_cannot_take_over_an_owner_or_the_admin(client, anonymous):
    contributor = create_user(client, "contrib", "Contributor")
    create_user(client, "owner", "Owner")
    as_contributor = {"headers": contributor}
    refused = anonymous.post("/api/v1/users/owner/credentials", json={}, **as_contributor)
    assert refused.status_code == 403
    assert "assign roles" in refused.json()["errors"][0]["message"]
    admin = anonymous.post("/api/v1/registry/credentials/renew", json={"name": "password"}, **as_contributor)
    assert admin.status_code == 403
    assert "value" not in admin.text
    assert anonymous.get("/v2/", headers=ADMIN).status_code == 200  # the admin password still works
    # Its own secret, and a service principal without roles, a Contributor may renew.
    assert anonymous.post("/api/v1/users/contrib/credentials", json={}, **as_contributor).status_code == 201
    client.post("/api/v1/service-principals", json={"name": "fresh-sp"})
    contributor = basic("contrib", client.post("/api/v1/users/contrib/credentials", json={}).json()["value"])
    assert (
        anonymous.post(
            "/api/v1/service-principals/fresh-sp/credentials", json={}, headers=contributor
        ).status_code
        == 201
    )
    # An Owner may renew anyone's.
    assert client.post("/api/v1/users/owner/credentials", json={}).status_code == 201


# -- 5. clients without valid credentials cause no database write ------------------------------


def test_floods_without_valid_credentials_write_nothing(anonymous, dockyard, statements):
    good = token(anonymous, ADMIN, "repository:team/a:pull")
    header, payload, signature = good.split(".")
    statements.clear()
    for _ in range(30):
        forged = jwt.encode({"sub": "x"}, "k" * 64, algorithm="HS256", headers={"kid": uuid.uuid4().hex})
        assert anonymous.get("/v2/", headers=bearer(forged)).status_code == 401
        assert anonymous.get("/v2/", headers=bearer(f"{header}.{payload}x.{signature}")).status_code == 401
    assert statements.count("SELECT") <= 1  # 60 made-up tokens: at most one key reload
    for _ in range(5):
        assert anonymous.get("/v2/", headers=basic("nobody", "wrong")).status_code == 401
    writes = [s for s in statements if s in ("INSERT", "UPDATE", "DELETE")]
    assert writes == []
    assert statements.count("SELECT") <= 1 + 5 * 2  # each sign-in: the access generation and the identity


def test_an_audit_write_that_fails_never_fails_the_request(client, anonymous, dockyard, monkeypatch):
    def disk_full(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("database or disk is full"))

    monkeypatch.setattr(dockyard.access.audit._db, "run_write", disk_full)
    assert anonymous.get("/v2/", headers=basic(ADMIN_USERNAME, "wrong")).status_code == 401
    assert (
        anonymous.get("/oauth2/token", params={"scope": "repository:a:pull"}, headers=ADMIN).status_code
        == 200
    )
    assert dockyard.access.audit.flush() == 0  # logged, not raised
    monkeypatch.undo()
    assert client.post("/api/v1/users", json={"name": "after-the-disk-filled"}).status_code == 201


def test_audit_records_are_pruned(client, dockyard):
    client.post("/api/v1/users", json={"name": "old-news"})
    assert dockyard.access.audit.list(action="user.create")
    from datetime import timedelta

    from dockyard.db import utcnow

    assert dockyard.access.audit.prune(utcnow() + timedelta(seconds=1)) >= 1
    assert dockyard.access.audit.list(action="user.create") == []


def test_failure_groups_are_bounded(dockyard):
    audit = dockyard.access.audit
    for n in range(1200):
        audit.count("login", "failure", client_ip=f"10.0.{n // 256}.{n % 256}", name="admin")
    assert audit.flush() == 1001  # 1000 groups and one for every other client
    overflow = audit.list(action="login", limit=2000)[-1]
    assert overflow.client_ip == "(other clients)"
    assert overflow.detail["count"] == 200


# -- 6. brute force and user enumeration --------------------------------------------------------


def test_failed_sign_ins_are_throttled_then_the_right_password_waits_too(anonymous):
    for _ in range(10):
        assert anonymous.get("/v2/", headers=basic(ADMIN_USERNAME, "guess")).status_code == 401
    throttled = anonymous.get("/v2/", headers=basic(ADMIN_USERNAME, "guess"))
    assert throttled.status_code == 429
    assert throttled.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert int(throttled.headers["retry-after"]) >= 1
    assert anonymous.get("/v2/", headers=ADMIN).status_code == 429
    form = {"grant_type": "password", "username": ADMIN_USERNAME, "password": "guess", "service": "dockyard"}
    assert anonymous.post("/oauth2/token", data=form).status_code == 429


def test_unknown_and_known_users_cost_the_same(dockyard, monkeypatch):
    checks: list[str] = []
    real = passwords.verify_secret

    def counting(secret_hash: str, secret: str) -> bool:
        checks.append(secret_hash)
        return real(secret_hash, secret)

    monkeypatch.setattr("dockyard.access.services.authentication.verify_secret", counting)
    authenticator = dockyard.access.authenticator
    assert authenticator.login(ADMIN_USERNAME, "wrong") is None
    known = len(checks)
    checks.clear()
    assert authenticator.login("nobody-at-all", "wrong") is None
    assert len(checks) == known == CREDENTIALS_CHECKED
    dockyard.access.identities.set_admin_enabled(False)
    checks.clear()
    assert authenticator.login(ADMIN_USERNAME, ADMIN_PASSWORD) is None
    assert len(checks) == CREDENTIALS_CHECKED


def test_guesses_at_a_user_name_do_not_lock_out_its_signed_in_clients(settings, dockyard, client):
    """Attack: keep a user name's sign-in bucket empty with wrong passwords from one address, so that
    its owner's clients (which sign in again with the password every few minutes, once the 30-s
    cached login has lapsed) get 429. Credentials that signed in before from the same client are
    not counted there; from any other client a right password is held up like a wrong one, so
    the exemption tells an attacker nothing (session 22's re-attack found that oracle)."""
    drains_alone = create_app(
        settings.model_copy(update={"login_failures_per_client": 50}), dockyard, background_jobs=False
    )
    victim = create_user(client, "victim")
    create_user(client, "bystander")
    with TestClient(drains_alone, client=("10.1.1.4", 40000)) as owner:
        assert owner.get("/v2/", headers=victim).status_code == 200
    with TestClient(drains_alone, client=("198.51.100.88", 40000)) as attacker:
        for name in ("victim", "bystander"):
            for _ in range(20):
                assert attacker.get("/v2/", headers=basic(name, "guess")).status_code == 401
            assert attacker.get("/v2/", headers=basic(name, "guess")).status_code == 429
        # the right password, though cached: as refused as a wrong one, from the attacker's address
        assert attacker.get("/v2/", headers=victim).status_code == 429
    dockyard.access.authenticator.forget()  # the owner's cached login lapsed: the password is checked
    with TestClient(drains_alone, client=("10.1.1.4", 40000)) as owner:
        assert owner.get("/v2/", headers=victim).status_code == 200
        assert owner.get("/v2/", headers=basic("victim", "guess")).status_code == 429
    with TestClient(drains_alone, client=("192.0.2.9", 40000)) as stranger:
        assert stranger.get("/v2/", headers=victim).status_code == 429  # the device, not the password
    # Remembering skips the count, never the check: a renewed password is refused, then counted.
    renewed = client.post("/api/v1/users/victim/credentials", json={})
    assert renewed.status_code == 201, renewed.text
    with TestClient(drains_alone, client=("10.1.1.4", 40000)) as owner:
        assert owner.get("/v2/", headers=victim).status_code == 401
        assert owner.get("/v2/", headers=victim).status_code == 429


def test_a_neighbour_behind_the_owners_address_gets_no_oracle(settings, dockyard, client):
    """Attack (session 22's second re-attack): from the owner's own NAT address, guess while the
    user name's bucket is empty; the remembered right password answered 200 where wrong ones got
    429, at any rate. Now every guess costs the shared client bucket, and once it is empty the
    right password waits like a wrong one."""
    app = create_app(settings, dockyard, background_jobs=False)
    victim = create_user(client, "victim")
    with TestClient(app, client=("10.1.1.4", 40000)) as owner:
        assert owner.get("/v2/", headers=victim).status_code == 200
    for address in ("198.51.100.88", "198.51.100.89"):  # 10 guesses each empty the name's 20
        with TestClient(app, client=(address, 40000)) as attacker:
            assert {
                attacker.get("/v2/", headers=basic("victim", "guess")).status_code for _ in range(10)
            } == {401}
    dockyard.access.authenticator.forget()
    with TestClient(app, client=("10.1.1.4", 40001)) as neighbour:
        answers = [neighbour.get("/v2/", headers=basic("victim", "guess")) for _ in range(10)]
        assert {a.status_code for a in answers} == {429}
        wrong = neighbour.get("/v2/", headers=basic("victim", "guess"))
        right = neighbour.get("/v2/", headers=victim)
    assert (wrong.status_code, right.status_code) == (429, 429)
    assert wrong.content == right.content


# -- 7. bodies that crashed the server ----------------------------------------------------------


def test_deeply_nested_json_is_a_400(client):
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/api/v1/users", "/api/v1/webhooks", "/api/v1/scope-maps"):
        response = client.post(path, content=deep, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, path
        assert response.json()["errors"][0]["code"] == "INVALID_REQUEST"
    response = client.patch("/api/v1/registry", content=deep, headers={"Content-Type": "application/json"})
    assert response.status_code == 400


@pytest.mark.parametrize("days", [10**6, 2**63, 10**30, 0, -1])
def test_huge_or_negative_expiries_are_400s(client, days):
    assert (
        client.post(
            "/api/v1/tokens", json={"name": "t", "scopeMap": "_repositories_pull", "expiresInDays": days}
        ).status_code
        == 400
    )
    client.post("/api/v1/users", json={"name": "u"})
    assert client.post("/api/v1/users/u/credentials", json={"expiresInDays": days}).status_code == 400


def test_openapi_names_every_path_parameter(client):
    document = client.get("/api/v1/openapi.json").json()
    for path, operations in document["paths"].items():
        for operation in operations.values():
            named = {p["name"] for p in operation.get("parameters", [])}
            expected = {part[1:-1] for part in path.split("/") if part.startswith("{")}
            assert named == expected, path


# -- 8. token lifetimes and retired keys ----------------------------------------------------------


def _signing_key(dockyard) -> tuple[str, str]:
    with dockyard.db.read() as conn:
        row = conn.execute(sa.select(signing_keys).where(signing_keys.c.retired_at.is_(None))).first()
    return row.kid, row.private_key


def test_a_token_counts_only_up_to_the_configured_lifetime(anonymous, dockyard):
    good = jwt.decode(token(anonymous, ADMIN, "repository:team/a:pull"), options={"verify_signature": False})
    kid, pem = _signing_key(dockyard)
    now = int(time.time())
    lifetime = dockyard.access.tokens.access_lifetime
    long_lived = {**good, "iat": now - lifetime - 1, "nbf": now - lifetime - 1, "exp": now + 86_400}
    forged = jwt.encode(long_lived, pem, algorithm="ES256", headers={"kid": kid})
    assert anonymous.get("/v2/", headers=bearer(forged)).status_code == 401
    fresh = jwt.encode({**long_lived, "iat": now - 5}, pem, algorithm="ES256", headers={"kid": kid})
    assert anonymous.get("/v2/", headers=bearer(fresh)).status_code == 200


def test_a_cached_token_stops_verifying_when_its_key_is_retired(anonymous, dockyard):
    issued = token(anonymous, ADMIN, "repository:team/a:pull")
    assert anonymous.get("/v2/", headers=bearer(issued)).status_code == 200  # verified and cached
    kid, _ = _signing_key(dockyard)
    long_ago = dockyard.access.tokens.key_list()[0]["createdTime"].replace(year=2000)
    dockyard.db.run_write(
        lambda conn: conn.execute(
            signing_keys.update().where(signing_keys.c.kid == kid).values(retired_at=long_ago)
        )
    )
    dockyard.access.tokens._load_keys(force=True)  # what every process does each minute
    assert anonymous.get("/v2/", headers=bearer(issued)).status_code == 401


# -- a change to an identity reaches every process at once -------------------------------------


def test_enabling_the_admin_elsewhere_counts_at_once(settings, dockyard, anonymous):
    other = build(settings)  # a second process on the same database
    try:
        with TestClient(create_app(settings, other, background_jobs=False)) as elsewhere:
            assert elsewhere.get("/v2/", headers=ADMIN).status_code == 200  # cached there now
            dockyard.access.identities.set_admin_enabled(False)
            assert elsewhere.get("/v2/", headers=ADMIN).status_code == 401
            dockyard.access.identities.set_admin_enabled(True)
            assert elsewhere.get("/v2/", headers=ADMIN).status_code == 200
            renewed = dockyard.access.identities.new_credential(ADMIN_USERNAME, "password", kind="admin")
            assert elsewhere.get("/v2/", headers=ADMIN).status_code == 401
            assert elsewhere.get("/v2/", headers=basic(ADMIN_USERNAME, renewed.value)).status_code == 200
    finally:
        other.db.dispose()

"""Red-team attacks on the access layer (management API, token service, throttling, audit).

Two groups:

* ``HOLE`` tests (section A) reproduce attacks that worked when they were written; each failed
  until its hole was closed.
* ``REFUSED`` tests (section B) are attacks that were correctly refused; they pass and guard
  against regressions.

Every test's docstring names the attack.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.routing import Route
from starlette.testclient import TestClient

from dockyard.access.models import signing_keys
from dockyard.access.services.identities import NULL_GUID
from tests.support.auth import ADMIN, ADMIN_PASSWORD, ADMIN_USERNAME, access_token, basic, bearer, create_user


def create_token(client: TestClient, name: str, scope_map: str = "_repositories_admin") -> dict[str, str]:
    created = client.post("/api/v1/tokens", json={"name": name, "scopeMap": scope_map})
    assert created.status_code == 201, created.text
    return basic(name, created.json()["credentials"][0]["value"])


def exchange(client: TestClient, grant: str, **form: str):
    return client.post("/oauth2/exchange", data={"grant_type": grant, "service": "dockyard", **form})


def refresh_token(client: TestClient, headers: dict[str, str]) -> str:
    response = client.get(
        "/oauth2/token", params={"service": "dockyard", "offline_token": "true"}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()["refresh_token"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signing_row(dockyard) -> sa.Row:
    with dockyard.db.read() as conn:
        return conn.execute(sa.select(signing_keys).where(signing_keys.c.retired_at.is_(None))).first()


def writes(seen: list[str]) -> list[str]:
    return [s for s in seen if s in ("INSERT", "UPDATE", "DELETE", "UPSERT", "REPLACE")]


# =================================================================================================
# A. HOLES — each of these FAILS today
# =================================================================================================


def test_hole_concurrent_guesses_all_pass_the_throttle(anonymous):
    """HOLE (closed). Attack: send many wrong-password sign-ins AT ONCE. ``Policy.sign_in``
    checks ``throttle.retry_after`` before the ~40 ms argon2 check and only records the failure
    after it, so every request of a concurrent wave passes the check before any failure is
    counted. After each refill (one token per 6 s) the next wave gets through whole: guessing runs
    at argon2 speed, not at the documented refill rate. Expected: at most the burst (10) checked."""
    with ThreadPoolExecutor(40) as pool:
        codes = list(
            pool.map(
                lambda _: anonymous.get("/v2/", headers=basic(ADMIN_USERNAME, "guess")).status_code, range(40)
            )
        )
    assert set(codes) <= {401, 429}
    assert codes.count(401) <= 10, f"{codes.count(401)} guesses were checked, the burst is 10"


def test_hole_ipv6_address_rotation_dodges_the_per_client_throttle(app):
    """HOLE (closed; hardening — confirm it is wanted). Attack: password spraying from one
    IPv6 /64 (any home connection has 2^64 addresses), one source address per few guesses. The
    per-client bucket is keyed by the full 128-bit address, so it never fills. Expected: IPv6
    clients bucketed by /64 — the 11th failure from the same /64 gets 429."""
    codes = []
    for n in range(12):
        with TestClient(app, client=(f"2001:db8:1:2::{n + 1:x}", 40000)) as attacker:
            codes.append(attacker.get("/v2/", headers=basic(f"victim-{n}", "guess")).status_code)
    assert codes[-1] == 429, codes


def test_hole_contributor_deletes_an_owner(client, anonymous):
    """HOLE (closed). Attack: a Contributor (no roles/write) DELETEs a user holding Owner.
    That removes the Owner's role assignments — a role change only an Owner may make — and can
    lock every Owner out; the Contributor can then recreate the same name and hold its secret.
    Expected: deleting (like renewing) an identity that holds roles needs Owner: 403."""
    contributor = create_user(client, "contrib", "Contributor")
    create_user(client, "boss", "Owner")
    response = anonymous.delete("/api/v1/users/boss", headers=contributor)
    assert response.status_code == 403
    assert [a["assignee"] for a in client.get("/api/v1/role-assignments?assignee=boss").json()["value"]] == [
        "boss"
    ]


def test_hole_contributor_disables_an_owner(client, anonymous):
    """HOLE (closed). Attack: a Contributor PATCHes an Owner user to ``disabled``: the Owner
    can no longer sign in or assign roles (and the Contributor decides when it comes back).
    Expected: changing the status of an identity holding roles needs Owner: 403."""
    contributor = create_user(client, "contrib", "Contributor")
    owner = create_user(client, "boss", "Owner")
    response = anonymous.patch("/api/v1/users/boss", json={"status": "disabled"}, headers=contributor)
    assert response.status_code == 403
    assert anonymous.get("/api/v1/users", headers=owner).status_code == 200


def test_hole_contributor_toggles_the_admin_user(client, anonymous):
    """HOLE (closed). Attack: a Contributor PATCHes ``adminUserEnabled``. Disabling locks out
    the admin (the registry's only Owner-equivalent by default); enabling an admin an Owner turned
    off lets anyone who ever saw its passwords (shown once at first start) become Owner again.
    Expected: like renewing the admin's passwords, this needs Owner: 403 and the admin unchanged."""
    contributor = create_user(client, "contrib", "Contributor")
    response = anonymous.patch("/api/v1/registry", json={"adminUserEnabled": False}, headers=contributor)
    assert response.status_code == 403
    assert anonymous.get("/v2/", headers=ADMIN).status_code == 200


def test_hole_reader_reads_webhook_secret_headers(client, anonymous):
    """HOLE (closed). Attack: a Reader (read-only control plane) GETs
    ``/api/v1/webhooks/{name}/config`` and gets the webhook's custom headers verbatim — typically
    the receiver's ``Authorization`` secret. ACR's Reader lacks ``webhooks/getCallbackConfig``.
    Expected: the callback config needs registry/write (Contributor): 403 for a Reader."""
    created = client.post(
        "/api/v1/webhooks",
        json={
            "name": "deploy",
            "serviceUri": "http://203.0.113.5:9/hook",
            "actions": ["push"],
            "customHeaders": {"Authorization": "Bearer receiver-secret"},
        },
    )
    assert created.status_code == 201, created.text
    reader = create_user(client, "auditor", "Reader")
    response = anonymous.get("/api/v1/webhooks/deploy/config", headers=reader)
    assert "receiver-secret" not in response.text
    assert response.status_code == 403


def test_hole_webhook_changes_leave_no_audit_record(client, dockyard):
    """HOLE (closed). Attack: a Contributor adds a webhook that ships every push event
    (repository, digest, actor, client address) to a server it controls, then deletes it —
    nothing reaches the audit log, though docs/access.md says every management change is recorded.
    Expected: webhook create/update/delete are audited like the other management changes."""
    created = client.post(
        "/api/v1/webhooks",
        json={"name": "exfil", "serviceUri": "http://203.0.113.5:9/x", "actions": ["push"]},
    )
    assert created.status_code == 201, created.text
    assert client.delete("/api/v1/webhooks/exfil").status_code == 204
    actions = [e.action for e in dockyard.access.audit.list(limit=1000)]
    assert any(a.startswith("webhook") for a in actions), actions


def test_hole_nul_in_a_user_name_is_a_500_on_postgresql(app):
    """HOLE (closed; was open on PostgreSQL). Attack: an UNAUTHENTICATED client
    sends Basic credentials whose user name holds a NUL byte (also the password grant's
    ``username``, an ``/api/v1/users/a%00b`` path, ``?assignee=a%00b``). psycopg refuses NUL in
    text, the DataError escapes ``Authenticator._verify_login`` as a 500 with a traceback in the
    log (log flooding), and the failure is never counted by the throttle.
    Expected: 401 (a name with NUL exists nowhere) and 404/400 on the management API."""
    with (
        TestClient(app, raise_server_exceptions=False) as anonymous,
        TestClient(app, headers=ADMIN, raise_server_exceptions=False) as client,
    ):
        assert anonymous.get("/v2/", headers=basic("dock\x00yard", "x")).status_code == 401
        form = {"grant_type": "password", "username": "a\x00b", "password": "x", "service": "dockyard"}
        assert anonymous.post("/oauth2/token", data=form).status_code == 401
        assert client.get("/api/v1/users/a%00b").status_code in (400, 404)
        assert client.get("/api/v1/role-assignments", params={"assignee": "a\x00b"}).status_code in (200, 400)


def test_hole_out_of_range_since_is_a_500(app):
    """HOLE (closed; low severity, needs Reader). Attack: ``GET /api/v1/audit?since=`` (or
    ``/api/v1/events``) with a valid ISO time whose UTC conversion leaves datetime's range:
    ``as_utc`` raises OverflowError in ``common.query_time``. Expected: 400 INVALID_REQUEST."""
    with TestClient(app, headers=ADMIN, raise_server_exceptions=False) as client:
        for path in ("/api/v1/audit", "/api/v1/events"):
            for since in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
                assert client.get(path, params={"since": since}).status_code == 400, (path, since)


def test_hole_huge_content_length_is_a_500(app):
    """HOLE (closed; low severity: in-process, granian may refuse such a header first).
    Attack: an UNAUTHENTICATED POST /oauth2/token with a 5,000-digit Content-Length:
    ``asgi.content_length`` calls ``int()`` past Python's 4,300-digit limit → ValueError → 500.
    Expected: 400/413 like any other malformed or oversized Content-Length."""
    with TestClient(app, raise_server_exceptions=False) as anonymous:
        response = anonymous.post("/oauth2/token", content=b"x", headers={"Content-Length": "9" * 5000})
        assert response.status_code in (400, 413)


# =================================================================================================
# B. REFUSED — attacks that failed, as they should (these pass)
# =================================================================================================


def _management_calls(app) -> list[tuple[str, str]]:
    """Every (method, concrete path) of the management API, path parameters filled in."""
    calls = []
    for route in app.routes:
        if not isinstance(route, Route) or not route.path.startswith("/api/v1") or "openapi" in route.path:
            continue
        path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: "1" if m.group(1) == "delivery" else "x", route.path)
        calls += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return calls


def _forged_tokens(dockyard, good: str) -> dict[str, str]:
    """Tokens an attacker can make without the private key, from a real one's claims."""
    claims = jwt.decode(good, options={"verify_signature": False})
    claims.update(access=[], use="identity", sub=ADMIN_USERNAME, kind="admin")
    kid = _signing_row(dockyard).kid
    public_pem = (
        serialization.load_pem_private_key(_signing_row(dockyard).private_key.encode(), None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    attacker = ec.generate_private_key(ec.SECP256R1())
    numbers = attacker.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }
    body = _b64(json.dumps(claims).encode())
    forged = {
        "alg-none": f"{_b64(json.dumps({'alg': 'none', 'kid': kid}).encode())}.{body}.",
        "alg-none-uppercase": f"{_b64(json.dumps({'alg': 'NONE', 'kid': kid}).encode())}.{body}.",
        "own-key-embedded-jwk": jwt.encode(
            claims, attacker, algorithm="ES256", headers={"kid": kid, "jwk": jwk}
        ),
        "own-key-jku": jwt.encode(
            claims, attacker, algorithm="ES256", headers={"kid": kid, "jku": "http://127.0.0.1:9/k"}
        ),
        "tampered-payload": f"{good.partition('.')[0]}.{body}.{good.rpartition('.')[2]}",
    }
    # HS256 signed with the public key's PEM (the classic key-confusion attack).
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    signature = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged["hs256-public-key"] = f"{header}.{body}.{_b64(signature)}"
    for name, bad_kid in {
        "kid-path": "../../../../etc/passwd",
        "kid-sql": "x' OR '1'='1",
        "kid-none": None,
        "kid-int": 7,
        "kid-upper": kid.upper(),
        "kid-trailing-newline": kid + "\n",
    }.items():
        header = {"alg": "ES256", "typ": "JWT", **({"kid": bad_kid} if bad_kid is not None else {})}
        forged[name] = f"{_b64(json.dumps(header).encode())}.{body}.{_b64(bytes(64))}"
    return forged


def test_refused_every_management_endpoint_against_every_non_identity_caller(
    client, anonymous, app, dockyard
):
    """REFUSED. Attack: on every /api/v1 method and path (access, webhooks, events), call as:
    anonymous (also with anonymous pull on), a repository-scoped access token of the admin, an
    anonymous access token, a repository-scoped token's own password and its identity token, a
    NULL-GUID login with that token's refresh token, an AcrPush user and an AcrPush user's identity
    token. None may manage: 401 (anonymous) or 403."""
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    token_login = create_token(client, "ci")
    pusher = create_user(client, "pusher", "AcrPush")
    callers = {
        "scoped-admin-token": bearer(access_token(anonymous, ADMIN, "repository:team/a:pull,push")),
        "anonymous-access-token": bearer(anonymous.get("/oauth2/token").json()["access_token"]),
        "token-password": token_login,
        "token-identity-token": bearer(access_token(anonymous, token_login)),
        "token-refresh-null-guid": basic(NULL_GUID, refresh_token(anonymous, token_login)),
        "acrpush-basic": pusher,
        "acrpush-identity-token": bearer(access_token(anonymous, pusher)),
    }
    calls = _management_calls(app)
    assert len(calls) >= 40  # the route table is where we think it is
    for method, path in calls:
        refused = anonymous.request(method, path, json={})
        assert refused.status_code == 401, (method, path, refused.status_code)
        for name, headers in callers.items():
            response = anonymous.request(method, path, json={}, headers=headers)
            # build triggers take no registry credentials at all: only the task's trigger secret
            expected = 401 if "/triggers/" in path else 403
            assert response.status_code == expected, (name, method, path, response.status_code, response.text)


def test_refused_forged_tokens_on_the_management_api_and_the_registry(anonymous, dockyard, statements):
    """REFUSED. Attack: tokens the attacker makes itself, each claiming the admin's identity token:
    alg=none (any case), HS256 keyed with the registry's public key, its own EC key with the
    real kid plus an embedded ``jwk`` or a ``jku``, a tampered payload under a real signature, and
    kid injection (path traversal, SQL, missing, integer, upper case, trailing newline). All 401,
    and none causes a database write."""
    good = access_token(anonymous, ADMIN)
    forgeries = _forged_tokens(dockyard, good)
    statements.clear()
    for name, forged in forgeries.items():
        for path in ("/api/v1/users", "/api/v1/registry/credentials", "/v2/"):
            assert anonymous.get(path, headers=bearer(forged)).status_code == 401, (name, path)
        assert exchange(anonymous, "access_token", access_token=forged).status_code == 401, name
        assert exchange(anonymous, "refresh_token", refresh_token=forged).status_code == 401, name
        assert anonymous.get("/v2/", headers=basic(NULL_GUID, forged)).status_code in (401, 429), name
    assert writes(statements) == []


def test_refused_null_guid_and_exchange_with_the_wrong_kind_of_token(client, anonymous):
    """REFUSED. Attack: present an identity token (or a scoped access token) where a refresh token
    belongs — the NULL-GUID Basic login, the password grant with the NULL GUID, the refresh grant
    of /oauth2/token, exchange's ``refresh_token`` and ``access_token_refresh_token`` grants —
    and a refresh token where an identity token belongs (exchange ``access_token``, Bearer on
    /api/v1). All refused; the real refresh token works in each place."""
    identity = access_token(anonymous, ADMIN)
    scoped = access_token(anonymous, ADMIN, "repository:a:pull")
    refresh = refresh_token(anonymous, ADMIN)
    for wrong in (identity, scoped):
        assert anonymous.get("/api/v1/users", headers=basic(NULL_GUID, wrong)).status_code == 401
        form = {"grant_type": "password", "username": NULL_GUID, "password": wrong, "service": "dockyard"}
        assert anonymous.post("/oauth2/token", data=form).status_code == 401
        form = {"grant_type": "refresh_token", "refresh_token": wrong, "service": "dockyard"}
        assert anonymous.post("/oauth2/token", data=form).status_code == 401
        assert exchange(anonymous, "refresh_token", refresh_token=wrong).status_code == 401
        assert exchange(anonymous, "access_token_refresh_token", access_token=wrong).status_code == 401
    assert exchange(anonymous, "access_token", access_token=refresh).status_code == 401
    assert anonymous.get("/api/v1/users", headers=bearer(refresh)).status_code == 401
    assert anonymous.get("/api/v1/users", headers=basic(NULL_GUID, refresh)).status_code == 200
    assert exchange(anonymous, "access_token_refresh_token", access_token=refresh).status_code == 200
    assert (
        exchange(anonymous, "password", username=ADMIN_USERNAME, password=ADMIN_PASSWORD).status_code == 400
    )


def test_refused_token_identity_refresh_tokens_end_with_its_password(client, anonymous):
    """REFUSED. Attack: a repository-scoped token identity turns its identity token into a refresh
    token (exchange) to outlive its password, then tries the NULL-GUID login on /api/v1. The
    management API says 403, and renewing (or disabling) the token ends the refresh token."""
    login = create_token(client, "ci-robot")
    refresh = exchange(anonymous, "access_token", access_token=access_token(anonymous, login)).json()[
        "refresh_token"
    ]
    assert anonymous.get("/api/v1/tokens", headers=basic(NULL_GUID, refresh)).status_code == 403
    assert anonymous.get("/v2/", headers=basic(NULL_GUID, refresh)).status_code == 200
    assert client.post("/api/v1/tokens/ci-robot/credentials", json={"name": "password"}).status_code == 201
    assert anonymous.get("/v2/", headers=basic(NULL_GUID, refresh)).status_code == 401
    refresh = refresh_token(
        anonymous,
        basic(
            "ci-robot",
            client.post("/api/v1/tokens/ci-robot/credentials", json={"name": "password"}).json()["value"],
        ),
    )
    assert client.patch("/api/v1/tokens/ci-robot", json={"status": "disabled"}).status_code == 200
    assert exchange(anonymous, "refresh_token", refresh_token=refresh).status_code == 401


def test_refused_contributor_escalations(client, anonymous):
    """REFUSED. Attack: a Contributor tries to become Owner: assign itself (or a user it creates)
    Owner, delete someone's role assignment, create a `_repositories_admin` token / a wide scope
    map and use that token (Basic, identity token, refresh token) on /api/v1, renew the admin's
    passwords. A Reader tries to write. All 403; role assignments unchanged."""
    contributor = create_user(client, "contrib", "Contributor")
    create_user(client, "boss", "Owner")
    reader = create_user(client, "auditor", "Reader")
    for assignee in ("contrib", "boss"):
        body = {"assignee": assignee, "role": "Owner", "scope": "registry"}
        assert anonymous.post("/api/v1/role-assignments", json=body, headers=contributor).status_code == 403
    made = anonymous.post("/api/v1/users", json={"name": "sidekick"}, headers=contributor)
    assert made.status_code == 201
    assert (
        anonymous.post(
            "/api/v1/role-assignments", json={"assignee": "sidekick", "role": "Owner"}, headers=contributor
        ).status_code
        == 403
    )
    boss_role = client.get("/api/v1/role-assignments?assignee=boss").json()["value"][0]["id"]
    assert anonymous.delete(f"/api/v1/role-assignments/{boss_role}", headers=contributor).status_code == 403
    wide = anonymous.post(
        "/api/v1/scope-maps",
        json={
            "name": "wide",
            "actions": {
                "*": ["content/read", "content/write", "content/delete", "metadata/read", "metadata/write"]
            },
        },
        headers=contributor,
    )
    assert wide.status_code == 201, wide.text
    created = anonymous.post(
        "/api/v1/tokens", json={"name": "escape", "scopeMap": "wide"}, headers=contributor
    )
    assert created.status_code == 201
    escape = basic("escape", created.json()["credentials"][0]["value"])
    assert anonymous.get("/api/v1/users", headers=escape).status_code == 403
    assert anonymous.get("/api/v1/users", headers=bearer(access_token(anonymous, escape))).status_code == 403
    assert (
        anonymous.get("/api/v1/users", headers=basic(NULL_GUID, refresh_token(anonymous, escape))).status_code
        == 403
    )
    assert anonymous.get("/v2/_catalog", headers=escape).status_code in (401, 403)
    assert (
        anonymous.post(
            "/api/v1/registry/credentials/renew", json={"name": "password2"}, headers=contributor
        ).status_code
        == 403
    )
    assert anonymous.post("/api/v1/users", json={"name": "x"}, headers=reader).status_code == 403
    assert anonymous.post("/api/v1/signing-keys/rotate", headers=reader).status_code == 403
    roles = {(a["assignee"], a["role"]) for a in client.get("/api/v1/role-assignments").json()["value"]}
    assert roles == {("contrib", "Contributor"), ("boss", "Owner"), ("auditor", "Reader")}


def test_refused_roles_for_the_admin_tokens_and_case_variants(client, anonymous):
    """REFUSED. Attack: assign a role to the admin user or to a repository-scoped token (so a token
    would gain control rights), and use case variants of names: create ``BOSS`` next to Owner
    ``boss`` and renew ``BOSS``'s secret hoping to act as ``boss``; reach the admin through the
    users path. Nothing crosses identities."""
    create_token(client, "ci")
    for assignee in (ADMIN_USERNAME, "ci", ADMIN_USERNAME.upper()):
        assert (
            client.post("/api/v1/role-assignments", json={"assignee": assignee, "role": "Owner"}).status_code
            == 400
        )
    contributor = create_user(client, "contrib", "Contributor")
    create_user(client, "boss", "Owner")
    assert anonymous.post("/api/v1/users", json={"name": "BOSS"}, headers=contributor).status_code == 201
    renewed = anonymous.post("/api/v1/users/BOSS/credentials", json={}, headers=contributor)
    assert renewed.status_code == 201
    impostor = basic("BOSS", renewed.json()["value"])
    assert anonymous.get("/api/v1/users", headers=impostor).status_code == 403
    assert anonymous.get("/api/v1/users", headers=basic("boss", renewed.json()["value"])).status_code == 401
    assert (
        anonymous.post(
            f"/api/v1/users/{ADMIN_USERNAME}/credentials", json={}, headers=contributor
        ).status_code
        == 404
    )
    assert anonymous.delete(f"/api/v1/users/{ADMIN_USERNAME}", headers=contributor).status_code == 404
    assert (
        anonymous.patch(
            f"/api/v1/tokens/{ADMIN_USERNAME}", json={"status": "disabled"}, headers=contributor
        ).status_code
        == 404
    )


def test_refused_x_forwarded_for_does_not_dodge_the_client_throttle(app):
    """REFUSED. Attack: after 10 failures from one address, keep guessing with a fresh
    ``X-Forwarded-For`` (and ``X-Real-IP``) each time; trusted proxies are off by default, so the
    header is ignored and the guesses get 429."""
    with TestClient(app, client=("203.0.113.7", 40000)) as attacker:
        for n in range(10):
            assert attacker.get("/v2/", headers=basic(f"user{n}", "guess")).status_code == 401
        for n in range(5):
            spoof = {"X-Forwarded-For": f"198.51.100.{n}", "X-Real-IP": f"198.51.100.{n}"}
            assert attacker.get("/v2/", headers={**basic(f"other{n}", "guess"), **spoof}).status_code == 429


def test_refused_throttle_bypass_through_other_sign_in_paths(app, client):
    """REFUSED. Attack: once a client is throttled on Basic, keep guessing through the other doors:
    the password grant of POST /oauth2/token, its refresh grant, the NULL-GUID Basic login (with a
    valid refresh token too), GET /oauth2/token. All 429. And once a user name is throttled (20
    failures from 20 addresses), its right password from a fresh address also gets 429 — unless that
    exact password was already verified by this process (a cached login proves nothing new)."""
    refresh = refresh_token(client, ADMIN)
    with TestClient(app, client=("203.0.113.8", 40000)) as attacker:
        for _ in range(10):
            attacker.get("/v2/", headers=basic("nobody", "guess"))
        form = {"grant_type": "password", "username": "someone", "password": "guess", "service": "dockyard"}
        assert attacker.post("/oauth2/token", data=form).status_code == 429
        form = {"grant_type": "refresh_token", "refresh_token": "garbage", "service": "dockyard"}
        assert attacker.post("/oauth2/token", data=form).status_code == 429
        assert attacker.get("/v2/", headers=basic(NULL_GUID, "garbage")).status_code == 429
        assert attacker.get("/v2/", headers=basic(NULL_GUID, refresh)).status_code == 429
        assert attacker.get("/oauth2/token", headers=basic("someone", "guess")).status_code == 429
    victim = client.post("/api/v1/users", json={"name": "victim"}).json()["credentials"][0]["value"]
    for n in range(20):
        with TestClient(app, client=(f"198.51.100.{n + 1}", 40000)) as spray:
            assert spray.get("/v2/", headers=basic("victim", "guess")).status_code == 401
    with TestClient(app, client=("192.0.2.200", 40000)) as fresh:
        assert fresh.get("/v2/", headers=basic("victim", victim)).status_code == 429
        assert fresh.get("/v2/", headers=basic("VICTIM", "guess")).status_code == 429
        # A password this process has already verified is no guess: it is not held up (no lock-out).
        assert fresh.get("/v2/", headers=ADMIN).status_code == 200


def test_refused_refresh_chains_do_not_restart(dockyard, anonymous):
    """REFUSED. Attack: restart a refresh chain near its end without a real sign-in, by each route
    that turns a refresh token into something else: the refresh grant (no scope → identity token)
    then exchange of that identity token; the NULL-GUID login with ``offline_token=true``; the
    password grant with the NULL GUID and ``access_type=offline``. Every new token keeps the old
    ``auth_time`` and ends by ``auth_time + refresh_chain_seconds``."""
    tokens = dockyard.access.tokens
    principal = dockyard.access.authenticator.login(ADMIN_USERNAME, ADMIN_PASSWORD)
    near_end = replace(principal, auth_time=int(time.time()) - tokens.refresh_chain + 120)
    old = tokens.issue_refresh(near_end).token
    form = {"grant_type": "refresh_token", "refresh_token": old, "service": "dockyard"}
    identity = anonymous.post("/oauth2/token", data=form).json()["access_token"]
    via_identity = exchange(anonymous, "access_token", access_token=identity).json()["refresh_token"]
    via_null_guid = refresh_token(anonymous, basic(NULL_GUID, old))
    form = {
        "grant_type": "password",
        "username": NULL_GUID,
        "password": old,
        "access_type": "offline",
        "service": "dockyard",
    }
    via_password_grant = anonymous.post("/oauth2/token", data=form).json()["refresh_token"]
    assert jwt.decode(identity, options={"verify_signature": False})["auth_time"] == near_end.auth_time
    for renewed in (via_identity, via_null_guid, via_password_grant):
        claims = jwt.decode(renewed, options={"verify_signature": False})
        assert claims["grant_type"] == "refresh_token"
        assert claims["auth_time"] == near_end.auth_time
        assert claims["exp"] <= near_end.auth_time + tokens.refresh_chain


def test_refused_floods_that_should_not_write(app, dockyard):
    """REFUSED. Attack: floods meant to make the database write per request: garbage refresh tokens
    at the refresh grant and at exchange, NULL-GUID logins with garbage, made-up kids, and also
    valid sign-ins issuing tokens and exchanges (audited in aggregate). No INSERT/UPDATE/DELETE,
    but for the request-rate limiter's leases: one write per bucket per lease (a second), never
    one per request."""
    written: list[str] = []

    def record(conn, cursor, statement, *args):
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE", "UPSERT", "REPLACE"):
            written.append("lease" if "rate_buckets" in statement else statement)

    with (
        TestClient(app, client=("203.0.113.9", 40000)) as attacker,
        TestClient(app, client=("192.0.2.10", 40000)) as user,
    ):
        identity = access_token(user, ADMIN)
        sa.event.listen(dockyard.db.engine, "before_cursor_execute", record)
        started = time.monotonic()
        try:
            for n in range(20):
                attacker.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": f"x{n}"})
                exchange(attacker, "refresh_token", refresh_token=f"x{n}")
                exchange(attacker, "access_token", access_token=f"y{n}")
            for _ in range(5):
                assert attacker.get("/v2/", headers=basic(NULL_GUID, "garbage")).status_code in (401, 429)
            for _ in range(20):
                scoped = user.get("/oauth2/token", params={"scope": "repository:a:pull"}, headers=ADMIN)
                assert scoped.status_code == 200
                assert exchange(user, "access_token", access_token=identity).status_code == 200
        finally:
            sa.event.remove(dockyard.db.engine, "before_cursor_execute", record)
        elapsed = time.monotonic() - started
    assert [w for w in written if w != "lease"] == []
    # 105 requests; at most a lease per bucket (the registry's, each client's) per second
    assert written.count("lease") <= 3 * (int(elapsed) + 1) < 105


def test_refused_audit_aggregator_overflow(dockyard):
    """REFUSED. Attack: overflow the in-memory audit aggregator with many clients, long names and
    reasons, and many principals. Groups stay bounded and each sample is truncated."""
    audit = dockyard.access.audit
    for n in range(3000):
        audit.count(
            "login",
            "failure",
            client_ip=f"10.{n // 65536}.{n // 256 % 256}.{n % 256}",
            name="n" * 10_000 + str(n),
            sample="r" * 10_000 + str(n),
        )
        audit.count("token", "success", client_ip="10.0.0.1", principal=f"p{n}")
    assert len(audit._groups) <= 1000 + 2
    assert all(len(x) <= 200 for g in audit._groups.values() for x in g.samples + g.names)
    assert audit.flush() <= 1002


def test_refused_one_ipv6_host_cannot_write_a_group_per_address(dockyard):
    """REFUSED. Attack: fail a sign-in from 1,500 addresses of one IPv6 /64 (the throttle counts
    them as one client); the audit log counts them as one group too, not 1,000 rows a minute."""
    audit = dockyard.access.audit
    for n in range(1500):
        audit.count("login", "failure", client_ip=f"2001:db8:1:1::{n + 1:x}", name="dockyard")
    audit.count("login", "failure", client_ip="2001:db8:1:2::1", name="dockyard")  # another /64
    assert audit.flush() == 2
    counts = {e.client_ip: e.detail["count"] for e in audit.list() if e.action == "login"}
    assert counts == {"2001:db8:1:1::/64": 1500, "2001:db8:1:2::/64": 1}


def test_refused_a_token_update_cannot_write_its_own_audit_record(client, dockyard):
    """REFUSED. Attack: PATCH a token with a ``name`` (and other keys) in the body; the audit
    record named whatever the body said. It now names the token changed and what was applied."""
    create_token(client, "robot")
    body = {"name": "FORGED-NAME", "status": "disabled", "note": "x" * 1000}
    assert client.patch("/api/v1/tokens/robot", json=body).status_code == 200
    updates = [e.detail for e in dockyard.access.audit.list() if e.action == "token.update"]
    assert updates == [{"name": "robot", "status": "disabled"}]

"""The token flow: challenges, Basic auth, /oauth2/token (GET and POST), /oauth2/exchange, JWT checks."""

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from dockyard.access.services.identities import NULL_GUID
from tests.support.auth import ADMIN, ADMIN_PASSWORD, ADMIN_USERNAME, basic
from tests.support.images import make_image
from tests.support.registry import error_codes, push_image


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_for(client, scope: str, headers=ADMIN) -> str:
    response = client.get("/oauth2/token", params={"service": "dockyard", "scope": scope}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.fixture
def image(client):
    image = make_image("auth")
    push_image(client, "team/a", image, "v1")
    push_image(client, "team/b", image, "v1")
    return image


def test_unauthenticated_requests_get_a_bearer_challenge(anonymous, image):
    response = anonymous.get("/v2/team/a/manifests/v1")
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert ", " not in challenge  # the azure SDK parses no spaces after commas
    assert 'realm="http://testserver/oauth2/token"' in challenge
    assert 'service="dockyard"' in challenge
    assert 'scope="repository:team/a:pull"' in challenge
    body = response.json()["errors"][0]
    assert body["code"] == "UNAUTHORIZED"
    assert body["detail"] == [{"Type": "repository", "Name": "team/a", "Action": "pull"}]
    version = anonymous.get("/v2/")
    assert version.status_code == 401
    assert 'scope="' not in version.headers["www-authenticate"]
    push = anonymous.post("/v2/team/a/blobs/uploads/")
    assert 'scope="repository:team/a:pull,push"' in push.headers["www-authenticate"]
    catalog = anonymous.get("/v2/_catalog")
    assert 'scope="registry:catalog:*"' in catalog.headers["www-authenticate"]


def test_basic_auth_directly_on_v2(anonymous, image):
    assert anonymous.get("/v2/", headers=ADMIN).status_code == 200
    assert anonymous.get("/v2/team/a/manifests/v1", headers=ADMIN).status_code == 200
    wrong = anonymous.get("/v2/", headers=basic(ADMIN_USERNAME, "wrong"))
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    garbage = anonymous.get("/v2/", headers={"Authorization": "Basic !!!not-base64"})
    assert garbage.status_code == 401
    unknown_scheme = anonymous.get("/v2/", headers={"Authorization": "Digest x"})
    assert unknown_scheme.status_code == 401


def test_failed_logins_are_audited_in_aggregate(anonymous, dockyard):
    before = len(dockyard.access.audit.list(action="login"))
    for _ in range(3):
        anonymous.get("/v2/", headers=basic(ADMIN_USERNAME, "wrong"))
    anonymous.get("/v2/", headers=basic("someone-else", "wrong"))
    assert len(dockyard.access.audit.list(action="login")) == before  # nothing written per request
    assert dockyard.access.audit.flush() == 1
    events = dockyard.access.audit.list(action="login")
    assert len(events) == before + 1
    event = events[-1]
    assert event.outcome == "failure"
    assert event.principal is None  # a claimed name is not a verified principal
    assert event.detail["count"] == 4
    assert event.detail["names"] == [ADMIN_USERNAME, "someone-else"]
    assert "wrong credentials" in event.detail["reasons"][0]


def test_get_token_grants_requested_scopes(anonymous, image):
    response = anonymous.get(
        "/oauth2/token",
        params=[
            ("service", "dockyard"),
            ("scope", "repository:team/a:pull,push"),
            ("scope", "registry:catalog:*"),
        ],
        headers=ADMIN,
    )
    body = response.json()
    assert response.headers["cache-control"] == "no-store"
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert "refresh_token" not in body
    access = claims(body["token"])["access"]
    assert {"type": "repository", "name": "team/a", "actions": ["pull", "push"]} in access
    assert {"type": "registry", "name": "catalog", "actions": ["*"]} in access
    token = body["token"]
    assert anonymous.get("/v2/team/a/manifests/v1", headers=bearer(token)).status_code == 200
    assert anonymous.get("/v2/_catalog", headers=bearer(token)).status_code == 200
    other = anonymous.get("/v2/team/b/manifests/v1", headers=bearer(token))
    assert other.status_code == 401
    assert 'error="insufficient_scope"' in other.headers["www-authenticate"]


def test_pull_token_cannot_push_or_delete(anonymous, image):
    token = token_for(anonymous, "repository:team/a:pull")
    assert anonymous.post("/v2/team/a/blobs/uploads/", headers=bearer(token)).status_code == 401
    deleted = anonymous.delete(f"/v2/team/a/manifests/{image.digest}", headers=bearer(token))
    assert deleted.status_code == 401
    assert anonymous.get("/v2/team/a/tags/list", headers=bearer(token)).json()["tags"] == ["v1"]


def test_offline_token_and_refresh_grant(anonymous, image):
    response = anonymous.get(
        "/oauth2/token", params={"scope": "repository:team/a:pull", "offline_token": "true"}, headers=ADMIN
    )
    refresh = response.json()["refresh_token"]
    payload = refresh.split(".")[1]
    assert "-" not in payload
    assert "_" not in payload
    assert claims(refresh)["exp"] - time.time() > 300
    refreshed = anonymous.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "service": "dockyard",
            "scope": "repository:team/a:pull",
            "refresh_token": refresh,
        },
    )
    assert refreshed.status_code == 200
    token = refreshed.json()["access_token"]
    assert anonymous.get("/v2/team/a/manifests/v1", headers=bearer(token)).status_code == 200
    # docker login with the null GUID and a refresh token as the password
    assert anonymous.get("/v2/team/a/manifests/v1", headers=basic(NULL_GUID, refresh)).status_code == 200
    bad = anonymous.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": token})
    assert bad.status_code == 401  # an access token is not a refresh token


def test_password_grant(anonymous, image):
    response = anonymous.post(
        "/oauth2/token",
        data={
            "grant_type": "password",
            "username": ADMIN_USERNAME,
            "password": ADMIN_PASSWORD,
            "scope": "repository:team/a:pull",
            "service": "dockyard",
            "access_type": "offline",
            "client_id": "containerd",
        },
    )
    assert response.status_code == 200
    assert "refresh_token" in response.json()
    wrong = anonymous.post(
        "/oauth2/token", data={"grant_type": "password", "username": ADMIN_USERNAME, "password": "nope"}
    )
    assert wrong.status_code == 401
    unsupported = anonymous.post("/oauth2/token", data={"grant_type": "client_credentials"})
    assert unsupported.status_code == 400


def test_exchange_turns_an_identity_token_into_a_refresh_token(anonymous, image):
    identity_token = token_for(anonymous, "")
    response = anonymous.post(
        "/oauth2/exchange",
        data={"grant_type": "access_token", "service": "dockyard", "access_token": identity_token},
    )
    assert response.status_code == 200
    refresh = response.json()["refresh_token"]
    token = anonymous.post(
        "/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "service": "dockyard",
            "scope": "repository:team/a:metadata_read",
            "refresh_token": refresh,
        },
    ).json()["access_token"]
    assert anonymous.get("/acr/v1/team/a/_tags", headers=bearer(token)).status_code == 200
    refused = anonymous.post(
        "/oauth2/exchange", data={"grant_type": "access_token", "access_token": "garbage"}
    )
    assert refused.status_code == 401


def test_tampered_foreign_and_unsigned_tokens_are_refused(anonymous, image, dockyard):
    good = token_for(anonymous, "repository:team/a:pull")
    header, payload, signature = good.split(".")
    document = json.loads(base64.urlsafe_b64decode(payload + "=="))
    document["access"] = [{"type": "repository", "name": "team/b", "actions": ["pull", "push"]}]
    forged = base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    foreign = jwt.encode(document, foreign_key, algorithm="ES256", headers={"kid": claims_kid(good)})
    unsigned = jwt.encode(document, None, algorithm="none")
    for token in (f"{header}.{forged}.{signature}", foreign, unsigned, "not.a.jwt", ""):
        response = anonymous.get("/v2/team/b/manifests/v1", headers=bearer(token))
        assert response.status_code == 401, token
        assert 'error="invalid_token"' in response.headers["www-authenticate"] or not token


def claims_kid(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def test_expired_tokens_are_refused(anonymous, image, dockyard):
    tokens = dockyard.access.tokens
    expired = tokens._claims(ADMIN_USERNAME, "admin", "access_token", lifetime=-60)
    expired["access"] = [{"type": "repository", "name": "team/a", "actions": ["pull"]}]
    token = tokens._sign(expired)
    assert anonymous.get("/v2/team/a/manifests/v1", headers=bearer(token)).status_code == 401
    old_refresh = tokens._sign(tokens._claims(ADMIN_USERNAME, "admin", "refresh_token", lifetime=-1))
    assert anonymous.get("/v2/", headers=basic(NULL_GUID, old_refresh)).status_code == 401


def test_key_rotation_keeps_issued_tokens_valid(anonymous, image, client):
    before = token_for(anonymous, "repository:team/a:pull")
    rotated = client.post("/api/v1/signing-keys/rotate")
    assert rotated.status_code == 201
    after = token_for(anonymous, "repository:team/a:pull")
    assert claims_kid(after) == rotated.json()["kid"] != claims_kid(before)
    for token in (before, after):
        assert anonymous.get("/v2/team/a/manifests/v1", headers=bearer(token)).status_code == 200
    keys = client.get("/api/v1/signing-keys").json()["keys"]
    assert [k["retiredTime"] is None for k in keys] == [False, True]


def test_tokens_for_a_scope_map_and_crafted_scopes(client, anonymous, image):
    client.post("/api/v1/scope-maps", json={"name": "team-a-pull", "actions": {"team/a": ["content/read"]}})
    created = client.post("/api/v1/tokens", json={"name": "ci-a", "scopeMap": "team-a-pull"}).json()
    password = created["credentials"][0]["value"]
    login = basic("ci-a", password)
    crafted = [
        "repository:team/a:pull,push,delete,*",
        "repository:team/b:pull",
        "repository:team/a/../b:pull",
        "registry:catalog:*",
        "repository::pull",
        "garbage",
    ]
    response = anonymous.get("/oauth2/token", params=[("scope", s) for s in crafted], headers=login)
    assert claims(response.json()["access_token"])["access"] == [
        {"type": "repository", "name": "team/a", "actions": ["pull"]}
    ]
    assert anonymous.get("/v2/team/a/manifests/v1", headers=login).status_code == 200
    assert anonymous.get("/v2/team/b/manifests/v1", headers=login).status_code == 403
    assert anonymous.post("/v2/team/a/blobs/uploads/", headers=login).status_code == 403
    assert anonymous.get("/v2/_catalog", headers=login).status_code == 403
    assert anonymous.get("/api/v1/registry", headers=login).status_code == 403


def test_anonymous_pull(client, anonymous, image):
    assert anonymous.get("/v2/team/a/manifests/v1").status_code == 401
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": True})
    # GET /v2/ still asks for credentials: clients decide from it whether to sign in for a push
    version_check = anonymous.get("/v2/")
    assert version_check.status_code == 401
    assert version_check.headers["WWW-Authenticate"].startswith("Bearer ")
    assert anonymous.get("/v2/team/a/manifests/v1").status_code == 200
    assert anonymous.get("/v2/team/b/tags/list").json()["tags"] == ["v1"]
    assert anonymous.post("/v2/team/a/blobs/uploads/").status_code == 401
    assert anonymous.get("/v2/_catalog").status_code == 401
    token = anonymous.get("/oauth2/token", params={"scope": "repository:team/a:pull,push"}).json()
    assert claims(token["access_token"])["access"] == [
        {"type": "repository", "name": "team/a", "actions": ["pull"]}
    ]
    assert "refresh_token" not in token
    assert anonymous.get("/v2/", headers=bearer(token["access_token"])).status_code == 200
    client.patch("/api/v1/registry", json={"anonymousPullEnabled": False})
    assert anonymous.get("/v2/team/a/manifests/v1").status_code == 401


def test_disabled_admin_cannot_sign_in(client, anonymous, dockyard):
    dockyard.access.identities.set_admin_enabled(False)
    response = anonymous.get("/v2/", headers=ADMIN)
    assert response.status_code == 401
    assert error_codes(response) == ["UNAUTHORIZED"]


def test_refresh_tokens_are_revoked_by_renewal_disabling_and_recreation(client, anonymous):
    user = client.post("/api/v1/users", json={"name": "revocable"}).json()
    login = basic("revocable", user["credentials"][0]["value"])

    def refresh_token() -> str:
        response = anonymous.get("/oauth2/token", params={"offline_token": "true"}, headers=login)
        return response.json()["refresh_token"]

    def works(token: str) -> bool:
        return anonymous.get("/v2/", headers=basic(NULL_GUID, token)).status_code == 200

    first = refresh_token()
    assert works(first)
    renewed = client.post("/api/v1/users/revocable/credentials", json={}).json()
    assert not works(first)  # a leaked login stops working when its secret is renewed
    login = basic("revocable", renewed["value"])
    second = refresh_token()
    client.patch("/api/v1/users/revocable", json={"status": "disabled"})
    client.patch("/api/v1/users/revocable", json={"status": "enabled"})
    assert not works(second)
    third = refresh_token()
    client.delete("/api/v1/users/revocable")
    client.post("/api/v1/users", json={"name": "revocable"})
    assert not works(third)  # a new identity with the same name is someone else
    exchanged = anonymous.post("/oauth2/exchange", data={"grant_type": "access_token", "access_token": third})
    assert exchanged.status_code == 401


def test_renewing_one_admin_password_revokes_only_logins_made_with_it(anonymous, client):
    with_first = anonymous.get("/oauth2/token", params={"offline_token": "true"}, headers=ADMIN).json()
    renewed = client.post("/api/v1/registry/credentials/renew", json={"name": "password2"}).json()
    password2 = next(p["value"] for p in renewed["passwords"] if p["name"] == "password2")
    with_second = anonymous.get(
        "/oauth2/token", params={"offline_token": "true"}, headers=basic(ADMIN_USERNAME, password2)
    ).json()
    assert anonymous.get("/v2/", headers=basic(NULL_GUID, with_second["refresh_token"])).status_code == 200
    client.post("/api/v1/registry/credentials/renew", json={"name": "password2"})
    assert anonymous.get("/v2/", headers=basic(NULL_GUID, with_second["refresh_token"])).status_code == 401
    assert anonymous.get("/v2/", headers=basic(NULL_GUID, with_first["refresh_token"])).status_code == 200

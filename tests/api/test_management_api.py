"""The management API: registry properties, admin credentials, users, roles, scope maps, tokens, audit."""

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dockyard.access.models import credentials, identities
from dockyard.db import utcnow
from tests.support.auth import ADMIN_PASSWORD, ADMIN_USERNAME, basic
from tests.support.registry import error_codes


def test_registry_properties_and_updates(client):
    shown = client.get("/api/v1/registry").json()
    assert shown["name"] == "dockyard"
    assert shown["adminUserEnabled"] is True
    assert shown["anonymousPullEnabled"] is False
    assert shown["publicNetworkAccess"] == "Enabled"
    assert shown["networkRuleSet"] == {"defaultAction": "Allow", "ipRules": []}
    updated = client.patch(
        "/api/v1/registry",
        json={
            "anonymousPullEnabled": True,
            "networkRuleSet": {
                "defaultAction": "Deny",
                "ipRules": [{"value": "203.0.113.7/24"}, "2001:db8::1"],
            },
        },
    ).json()
    assert updated["anonymousPullEnabled"] is True
    assert updated["networkRuleSet"]["ipRules"] == [
        {"action": "Allow", "value": "2001:db8::1/128"},
        {"action": "Allow", "value": "203.0.113.0/24"},
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"anonymousPullEnabled": "yes"},
        {"publicNetworkAccess": "Sometimes"},
        {"networkRuleSet": {"defaultAction": "Maybe"}},
        {"networkRuleSet": {"ipRules": ["300.1.1.1"]}},
        {"networkRuleSet": {"ipRules": [{"value": 5}]}},
    ],
)
def test_invalid_registry_updates(client, body):
    response = client.patch("/api/v1/registry", json=body)
    assert response.status_code == 400
    assert error_codes(response) == ["INVALID_REQUEST"]


def test_too_many_ip_rules(client):
    rules = [f"198.51.{i // 256}.{i % 256}" for i in range(201)]
    response = client.patch("/api/v1/registry", json={"networkRuleSet": {"ipRules": rules}})
    assert response.status_code == 409
    assert error_codes(response) == ["LIMIT_EXCEEDED"]


def test_malformed_json_is_400(client):
    for body in (b"{not json", b"[1, 2]"):
        response = client.patch(
            "/api/v1/registry", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400


def test_admin_credentials_are_never_shown_only_renewed(client, anonymous):
    shown = client.get("/api/v1/registry/credentials").json()
    assert shown["username"] == ADMIN_USERNAME
    assert [p["name"] for p in shown["passwords"]] == ["password", "password2"]
    assert all("value" not in p for p in shown["passwords"])
    renewed = client.post("/api/v1/registry/credentials/renew", json={"name": "password"}).json()
    new_password = next(p["value"] for p in renewed["passwords"] if p["name"] == "password")
    assert anonymous.get("/v2/", headers=basic(ADMIN_USERNAME, ADMIN_PASSWORD)).status_code == 401
    assert anonymous.get("/v2/", headers=basic(ADMIN_USERNAME, new_password)).status_code == 200
    renewed_admin = basic(ADMIN_USERNAME, new_password)
    bad = anonymous.post(
        "/api/v1/registry/credentials/renew", json={"name": "password3"}, headers=renewed_admin
    )
    assert bad.status_code == 400


def test_admin_can_be_disabled_and_enabled(client, anonymous):
    new = client.post("/api/v1/registry/credentials/renew", json={"name": "password2"}).json()
    password2 = next(p["value"] for p in new["passwords"] if p["name"] == "password2")
    other_admin = basic(ADMIN_USERNAME, password2)
    assert (
        client.patch("/api/v1/registry", json={"adminUserEnabled": False}).json()["adminUserEnabled"] is False
    )
    assert anonymous.get("/v2/", headers=other_admin).status_code == 401


def test_users_service_principals_and_role_assignments(client, anonymous):
    user = client.post("/api/v1/users", json={"name": "alice", "description": "dev"})
    assert user.status_code == 201
    secret = user.json()["credentials"][0]["value"]
    alice = basic("alice", secret)
    assert anonymous.get("/v2/_catalog", headers=alice).status_code == 403
    assignment = client.post(
        "/api/v1/role-assignments", json={"assignee": "alice", "role": "AcrPull", "scope": "registry"}
    ).json()
    assert anonymous.get("/v2/_catalog", headers=alice).status_code == 200
    listed = client.get("/api/v1/role-assignments", params={"assignee": "alice"}).json()["value"]
    assert [(a["role"], a["scope"]) for a in listed] == [("AcrPull", "registry")]
    assert (
        client.post("/api/v1/role-assignments", json={"assignee": "alice", "role": "AcrPull"}).status_code
        == 409
    )
    assert client.delete(f"/api/v1/role-assignments/{assignment['id']}").status_code == 204
    assert anonymous.get("/v2/_catalog", headers=alice).status_code == 403

    sp = client.post("/api/v1/service-principals", json={}).json()
    assert sp["kind"] == "service_principal"
    assert len(sp["name"]) == 36  # a generated app id
    reset = client.post(f"/api/v1/service-principals/{sp['name']}/credentials", json={}).json()
    assert anonymous.get("/v2/", headers=basic(sp["name"], reset["value"])).status_code == 200
    assert anonymous.get("/v2/", headers=basic(sp["name"], sp["credentials"][0]["value"])).status_code == 401

    assert client.patch("/api/v1/users/alice", json={"status": "disabled"}).json()["status"] == "disabled"
    assert anonymous.get("/v2/", headers=alice).status_code == 401
    assert client.delete("/api/v1/users/alice").status_code == 204
    assert client.get("/api/v1/users/alice").status_code == 404
    assert [u["name"] for u in client.get("/api/v1/users").json()["value"]] == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"assignee": "ghost", "role": "AcrPull"}, 400),
        ({"assignee": "bob", "role": "Superuser"}, 400),
        ({"assignee": "bob", "role": "AcrPull", "scope": "repository:Bad Name"}, 400),
        ({"assignee": "bob", "role": "AcrPull", "scope": "repository:a/*/b"}, 400),
        ({"assignee": "bob"}, 400),
    ],
)
def test_invalid_role_assignments(client, body, status):
    client.post("/api/v1/users", json={"name": "bob"})
    assert client.post("/api/v1/role-assignments", json=body).status_code == status


def test_identity_names_are_validated_and_unique(client):
    assert client.post("/api/v1/users", json={"name": "dockyard"}).status_code == 409
    assert client.post("/api/v1/users", json={"name": "-bad"}).status_code == 400
    assert (
        client.post("/api/v1/users", json={"name": "00000000-0000-0000-0000-000000000000"}).status_code == 400
    )
    assert client.delete("/api/v1/users/dockyard").status_code == 404  # the admin is not a user


def test_scope_maps(client):
    system = {
        m["name"] for m in client.get("/api/v1/scope-maps").json()["value"] if m["type"] == "SystemDefined"
    }
    assert system == {"_repositories_admin", "_repositories_pull", "_repositories_push"}
    created = client.post(
        "/api/v1/scope-maps",
        json={
            "name": "team",
            "description": "team",
            "actions": {"team/*": ["content/read", "metadata/read"]},
        },
    )
    assert created.status_code == 201
    assert created.json()["actions"] == {"team/*": ["content/read", "metadata/read"]}
    updated = client.patch(
        "/api/v1/scope-maps/team",
        json={"add": {"team/app": ["content/write"]}, "remove": {"team/*": ["metadata/read"]}},
    ).json()
    assert updated["actions"] == {"team/*": ["content/read"], "team/app": ["content/write"]}
    for body in (
        {"name": "x", "actions": {"team/**": ["content/read"]}},
        {"name": "x", "actions": {"team": ["content/execute"]}},
        {"name": "x", "actions": {}},
        {"name": "bad name!", "actions": {"a": ["content/read"]}},
    ):
        assert client.post("/api/v1/scope-maps", json=body).status_code == 400, body
    assert (
        client.post(
            "/api/v1/scope-maps", json={"name": "team", "actions": {"a": ["content/read"]}}
        ).status_code
        == 409
    )
    assert (
        client.patch(
            "/api/v1/scope-maps/_repositories_pull", json={"add": {"a": ["content/write"]}}
        ).status_code
        == 403
    )
    assert client.delete("/api/v1/scope-maps/_repositories_admin").status_code == 403
    client.post("/api/v1/tokens", json={"name": "uses-team", "scopeMap": "team"})
    assert client.delete("/api/v1/scope-maps/team").status_code == 409
    client.delete("/api/v1/tokens/uses-team")
    assert client.delete("/api/v1/scope-maps/team").status_code == 204
    assert client.get("/api/v1/scope-maps/team").status_code == 404


def test_scope_map_changes_apply_at_once_to_tokens(client, anonymous):
    client.post("/api/v1/scope-maps", json={"name": "narrow", "actions": {"team/a": ["content/read"]}})
    token = client.post("/api/v1/tokens", json={"name": "live", "scopeMap": "narrow"}).json()
    login = basic("live", token["credentials"][1]["value"])
    client.post("/v2/team/b/blobs/uploads/")  # any request: team/b need not exist for the check
    assert anonymous.get("/v2/team/b/tags/list", headers=login).status_code == 403
    client.patch("/api/v1/scope-maps/narrow", json={"add": {"team/b": ["metadata/read"]}})
    assert anonymous.get("/v2/team/b/tags/list", headers=login).status_code == 404  # allowed, just unknown


def test_tokens_passwords_status_and_expiry(client, anonymous, dockyard):
    created = client.post(
        "/api/v1/tokens", json={"name": "ci", "scopeMap": "_repositories_pull", "expiresInDays": 30}
    ).json()
    assert created["status"] == "enabled"
    assert created["scopeMap"] == "_repositories_pull"
    first, second = created["credentials"]
    assert first["expiry"] is not None
    for password in (first["value"], second["value"]):
        assert anonymous.get("/v2/", headers=basic("ci", password)).status_code == 200
    assert "value" not in client.get("/api/v1/tokens/ci").json()["credentials"][0]
    regenerated = client.post("/api/v1/tokens/ci/credentials", json={"name": "password"}).json()
    assert anonymous.get("/v2/", headers=basic("ci", first["value"])).status_code == 401
    assert anonymous.get("/v2/", headers=basic("ci", regenerated["value"])).status_code == 200
    with dockyard.db.write() as conn:
        token_id = conn.execute(sa.select(identities.c.id).where(identities.c.name == "ci")).scalar_one()
        conn.execute(
            credentials.update()
            .where(credentials.c.identity_id == token_id, credentials.c.name == "password2")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    dockyard.access.authenticator.forget()
    assert anonymous.get("/v2/", headers=basic("ci", second["value"])).status_code == 401
    assert client.patch("/api/v1/tokens/ci", json={"status": "disabled"}).json()["status"] == "disabled"
    assert anonymous.get("/v2/", headers=basic("ci", regenerated["value"])).status_code == 401
    assert client.post("/api/v1/tokens", json={"name": "x", "scopeMap": "missing"}).status_code == 404
    assert client.post("/api/v1/tokens/ci/credentials", json={"name": "secret"}).status_code == 400
    assert client.delete("/api/v1/tokens/ci").status_code == 204
    assert client.get("/api/v1/tokens").json()["value"] == []


def test_audit_log(client, anonymous, dockyard):
    anonymous.get("/v2/", headers=basic(ADMIN_USERNAME, "nope"))
    client.post("/api/v1/users", json={"name": "audited"})
    client.get("/oauth2/token", params={"scope": "repository:x:pull"})
    dockyard.access.audit.flush()  # failures and grants are written in aggregate, once per window
    events = client.get("/api/v1/audit", params={"limit": 50}).json()["events"]
    actions = [(e["action"], e["outcome"]) for e in events]
    assert ("login", "failure") in actions
    assert ("user.create", "success") in actions
    assert ("token", "success") in actions
    only_logins = client.get("/api/v1/audit", params={"action": "login"}).json()["events"]
    assert {e["action"] for e in only_logins} == {"login"}
    assert client.get("/api/v1/audit", params={"since": "yesterday"}).status_code == 400


def test_openapi_describes_every_management_route(anonymous, app):
    document = anonymous.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    routed = {
        (re.sub(r":\w+\}", "}", route.path), method)  # {name:path} is documented as {name}
        for route in app.routes
        if getattr(route, "path", "").startswith("/api/v1/") and route.path != "/api/v1/openapi.json"
        for method in route.methods - {"HEAD"}
    }
    assert routed == described

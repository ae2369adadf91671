"""`dockyard scope-map|token|user|sp|role assignment` round trips, and logging in as what they create."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import Cli
from tests.e2e.support import DockyardServer, push_image
from tests.support.images import make_image

pytestmark = pytest.mark.e2e


def _token_works(server: DockyardServer, username: str, password: str) -> bool:
    response = httpx.get(f"{server.url}/oauth2/token", auth=(username, password), timeout=10)
    return response.status_code == 200


def test_scope_map_round_trip(admin: Cli) -> None:
    created = admin.json(
        "scope-map", "create", "--name", "cli-map", "--description", "CI pulls",
        "--repository", "cli-scope/app", "content/read", "metadata/read",
        "--repository", "cli-scope/team/*=content/write",
    )  # fmt: skip
    assert created["name"] == "cli-map"
    assert created["type"] == "UserDefined"
    assert created["description"] == "CI pulls"
    assert created["actions"] == {
        "cli-scope/app": ["content/read", "metadata/read"],
        "cli-scope/team/*": ["content/write"],
    }

    names = [m["name"] for m in admin.json("scope-map", "list")]
    assert "cli-map" in names
    assert {"_repositories_admin", "_repositories_pull", "_repositories_push"} <= set(names)
    assert admin.json("scope-map", "show", "--name", "cli-map") == created

    updated = admin.json(
        "scope-map", "update", "--name", "cli-map",
        "--add-repository", "cli-scope/other", "content/read", "content/delete",
        "--remove-repository", "cli-scope/app", "metadata/read",
        "--description", "CI",
    )  # fmt: skip
    assert updated["actions"] == {
        "cli-scope/app": ["content/read"],
        "cli-scope/other": ["content/delete", "content/read"],
        "cli-scope/team/*": ["content/write"],
    }
    assert updated["description"] == "CI"
    assert admin.json("scope-map", "show", "--name", "cli-map")["actions"] == updated["actions"]

    bad = admin.fails("scope-map", "create", "--name", "cli-bad", "--repository", "x", "content/fly")
    assert "unknown action 'content/fly'" in bad.stderr
    assert admin.fails("scope-map", "create", "--name", "cli-bad", "--repository", "x", code=2).exit_code == 2
    system = admin.fails("scope-map", "delete", "--name", "_repositories_pull", "--yes")
    assert "cannot be deleted" in system.stderr

    assert admin.json("scope-map", "delete", "--name", "cli-map", "--yes") == {"deleted": "cli-map"}
    assert "cli-map" not in [m["name"] for m in admin.json("scope-map", "list")]
    gone = admin.fails("scope-map", "show", "--name", "cli-map")
    assert "not found" in gone.stderr


def test_delete_asks_unless_yes(admin: Cli) -> None:
    admin.json("scope-map", "create", "--name", "cli-ask", "--repository", "cli-ask/app=content/read")
    declined = admin.run("scope-map", "delete", "--name", "cli-ask", input="n\n")
    assert declined.exit_code == 0, "declining is an answer, not an error (as in az acr)"
    assert "Not deleted: scope map cli-ask." in declined.stderr
    assert admin.json("scope-map", "show", "--name", "cli-ask")["name"] == "cli-ask"
    assert admin.ok("scope-map", "delete", "--name", "cli-ask", input="y\n").exit_code == 0
    assert admin.fails("scope-map", "show", "--name", "cli-ask").exit_code == 1


def test_token_round_trip_and_repository_scoped_login(
    admin: Cli, registry: DockyardServer, tmp_path: Path
) -> None:
    with registry.http(timeout=30) as http:
        push_image(http, "cli-token/allowed", "v1", make_image("cli-token-allowed"))
        push_image(http, "cli-token/other", "v1", make_image("cli-token-other"))
    admin.json(
        "scope-map", "create", "--name", "cli-token-map",
        "--repository", "cli-token/allowed", "content/read", "metadata/read",
    )  # fmt: skip

    created = admin.json("token", "create", "--name", "cli-ci", "--scope-map", "cli-token-map")
    assert (created["name"], created["status"], created["scopeMap"]) == ("cli-ci", "enabled", "cli-token-map")
    passwords = {c["name"]: c["value"] for c in created["credentials"]}
    assert set(passwords) == {"password", "password2"}
    assert all(c["expiry"] is None for c in created["credentials"])
    assert "Shown only now" in admin.ok(
        "token", "create", "--name", "cli-ci-2", "--scope-map", "cli-token-map", "--status", "disabled",
        "--expiration-in-days", "30",
    ).stderr  # fmt: skip

    listed = {t["name"]: t for t in admin.json("token", "list")}
    assert listed["cli-ci"]["status"] == "enabled"
    assert listed["cli-ci-2"]["status"] == "disabled"
    assert all(c["expiry"] for c in listed["cli-ci-2"]["credentials"])
    shown = admin.json("token", "show", "--name", "cli-ci")
    assert shown["scopeMap"] == "cli-token-map"
    assert all("value" not in c for c in shown["credentials"])

    # The token logs in with the CLI, in its own credential files.
    token_cli = admin.another(tmp_path / "token")
    token_cli.login("cli-ci", passwords["password"])
    refused = token_cli.fails("repository", "list")
    assert "DENIED" in refused.stderr
    assert token_cli.json("repository", "show-tags", "--repository", "cli-token/allowed") == ["v1"]
    other = token_cli.fails("repository", "show-tags", "--repository", "cli-token/other")
    assert "DENIED" in other.stderr or "UNAUTHORIZED" in other.stderr
    assert token_cli.fails("token", "list").exit_code == 1, "a token cannot use the management API"

    regenerated = admin.json("token", "credential", "generate", "--name", "cli-ci", "--password1")
    assert regenerated["username"] == "cli-ci"
    assert [p["name"] for p in regenerated["passwords"]] == ["password"]
    assert not _token_works(registry, "cli-ci", passwords["password"])
    assert _token_works(registry, "cli-ci", regenerated["passwords"][0]["value"])
    assert _token_works(registry, "cli-ci", passwords["password2"])
    both = admin.json("token", "credential", "generate", "--name", "cli-ci", "--expiration-in-days", "7")
    assert [p["name"] for p in both["passwords"]] == ["password", "password2"]
    assert all(p["expiry"] for p in both["passwords"])

    disabled = admin.json("token", "update", "--name", "cli-ci", "--status", "disabled")
    assert disabled["status"] == "disabled"
    assert not _token_works(registry, "cli-ci", both["passwords"][1]["value"])
    rebound = admin.json("token", "update", "--name", "cli-ci", "--scope-map", "_repositories_pull")
    assert rebound["scopeMap"] == "_repositories_pull"
    assert admin.fails("token", "update", "--name", "cli-ci", code=2).exit_code == 2

    in_use = admin.fails("scope-map", "delete", "--name", "cli-token-map", "--yes")
    assert "still uses" in in_use.stderr
    assert admin.json("token", "delete", "--name", "cli-ci", "--yes") == {"deleted": "cli-ci"}
    admin.json("token", "delete", "--name", "cli-ci-2", "--yes")
    assert not {"cli-ci", "cli-ci-2"} & {t["name"] for t in admin.json("token", "list")}
    admin.json("scope-map", "delete", "--name", "cli-token-map", "--yes")

    # the token's saved login no longer works, and the CLI says what to do
    after = token_cli.fails("repository", "show-tags", "--repository", "cli-token/allowed")
    assert "again" in after.stderr


@pytest.mark.parametrize(("group", "kind"), [("user", "user"), ("sp", "service_principal")])
def test_users_and_service_principals_round_trip(
    admin: Cli, registry: DockyardServer, group: str, kind: str, tmp_path: Path
) -> None:
    name = f"cli-{group}-alice"
    args = ["--name", name] if group == "user" else []
    created = admin.json(group, "create", *args, "--description", "builds")
    name = created["name"]
    if group == "sp":
        assert len(name) == 36, "a service principal without --name gets a generated app id"
    assert (created["kind"], created["status"], created["description"]) == (kind, "enabled", "builds")
    secret = next(c["value"] for c in created["credentials"] if c["name"] == "secret")
    assert _token_works(registry, name, secret)

    assert name in [i["name"] for i in admin.json(group, "list")]
    assert admin.json(group, "show", "--name", name)["roles"] == []

    assigned = admin.json(
        "role",
        "assignment",
        "create",
        "--assignee",
        name,
        "--role",
        "AcrPush",
        "--scope",
        "repository:cli-role/*",
    )
    assert (assigned["assignee"], assigned["role"], assigned["scope"]) == (
        name,
        "AcrPush",
        "repository:cli-role/*",
    )
    reader = admin.json("role", "assignment", "create", "--assignee", name, "--role", "Reader")
    assert reader["scope"] == "registry"
    mine = admin.json("role", "assignment", "list", "--assignee", name)
    assert {a["id"] for a in mine} == {assigned["id"], reader["id"]}
    assert {a["id"] for a in admin.json(group, "show", "--name", name)["roles"]} == {
        assigned["id"],
        reader["id"],
    }
    assert {assigned["id"], reader["id"]} <= {a["id"] for a in admin.json("role", "assignment", "list")}

    # the identity logs in and reads what its roles allow
    own = admin.another(tmp_path / group)
    own.login(name, secret)
    assert own.json("show")["name"] == "dockyard", "Reader on the registry reads its properties"
    assert own.fails("token", "create", "--name", "x", "--scope-map", "_repositories_pull").exit_code == 1

    assert admin.json("role", "assignment", "delete", "--id", assigned["id"]) == {"deleted": [assigned["id"]]}
    assert admin.json("role", "assignment", "delete", "--assignee", name, "--role", "Reader") == {
        "deleted": [reader["id"]]
    }
    assert admin.json("role", "assignment", "list", "--assignee", name) == []
    assert admin.fails("role", "assignment", "delete", "--assignee", name, "--role", "Reader").exit_code == 1
    bad_role = admin.fails("role", "assignment", "create", "--assignee", name, "--role", "Janitor")
    assert "unknown role" in bad_role.stderr

    reset = admin.json(group, "credential", "reset", "--name", name)
    new_secret = reset["passwords"][0]["value"]
    assert not _token_works(registry, name, secret)
    assert _token_works(registry, name, new_secret)

    disabled = admin.json(group, "update", "--name", name, "--status", "disabled")
    assert disabled["status"] == "disabled"
    assert not _token_works(registry, name, new_secret)
    assert admin.json(group, "update", "--name", name, "--status", "enabled")["status"] == "enabled"

    assert admin.json(group, "delete", "--name", name, "--yes") == {"deleted": name}
    assert name not in [i["name"] for i in admin.json(group, "list")]
    assert admin.fails(group, "show", "--name", name).exit_code == 1


def test_user_create_needs_a_name(admin: Cli) -> None:
    result = admin.fails("user", "create", code=2)
    assert "--name is required" in result.stderr

"""Cache rules and credential sets through /api/v1: validation, ACR's limits, the write-only password."""

import contextlib

from starlette.testclient import TestClient

from dockyard.access.services import bootstrap
from dockyard.app import build, create_app
from dockyard.config import Settings
from tests.support.auth import ADMIN, ADMIN_PASSWORD, create_user
from tests.support.images import make_image
from tests.support.registry import error_codes, push_image

SECRET = "s3cret-password-never-shown"


def make_set(client, name="hubcreds", server="docker.io"):
    body = {"name": name, "loginServer": server, "username": "someone", "password": SECRET}
    return client.post("/api/v1/credential-sets", json=body)


def make_rule(client, name, source, target, cred=None):
    body = {"name": name, "sourceRepository": source, "targetRepository": target}
    if cred:
        body["credentialSetName"] = cred
    return client.post("/api/v1/cache-rules", json=body)


def test_credential_sets_never_show_the_password(client, dockyard):
    created = make_set(client)
    assert created.status_code == 201, created.text
    assert created.json()["loginServer"] == "registry-1.docker.io"
    for answer in (
        created,
        client.get("/api/v1/credential-sets"),
        client.get("/api/v1/credential-sets/hubcreds"),
    ):
        assert SECRET not in answer.text
        assert "password" not in answer.text
    changed = client.patch("/api/v1/credential-sets/hubcreds", json={"password": "another-secret"})
    assert changed.status_code == 200
    assert "another-secret" not in changed.text
    audit = client.get("/api/v1/audit", params={"action": "credential-set.update"})
    assert audit.status_code == 200
    assert "hubcreds" in audit.text
    audit = audit.text + client.get("/api/v1/audit").text
    assert SECRET not in audit
    assert "another-secret" not in audit
    assert make_set(client).status_code == 409
    assert client.get("/api/v1/credential-sets/missing").status_code == 404
    assert client.delete("/api/v1/credential-sets/hubcreds").status_code == 204
    assert client.get("/api/v1/credential-sets").json()["value"] == []


def test_rules_are_created_listed_updated_and_deleted(client):
    assert make_set(client).status_code == 201
    assert make_set(client, "othercreds", "registry.example:5000").status_code == 201
    created = make_rule(client, "ubuntu-rule", "docker.io/library/ubuntu", "ubuntu", "hubcreds")
    assert created.status_code == 201, created.text
    shown = client.get("/api/v1/cache-rules/ubuntu-rule").json()
    assert shown["sourceRepository"] == "docker.io/library/ubuntu"
    assert shown["targetRepository"] == "ubuntu"
    assert shown["credentialSetName"] == "hubcreds"
    assert [r["name"] for r in client.get("/api/v1/cache-rules").json()["value"]] == ["ubuntu-rule"]
    # a credential set for another login server does not fit the rule
    wrong = client.patch("/api/v1/cache-rules/ubuntu-rule", json={"credentialSetName": "othercreds"})
    assert wrong.status_code == 400
    # a set in use is not deleted
    assert client.delete("/api/v1/credential-sets/hubcreds").status_code == 409
    removed = client.patch("/api/v1/cache-rules/ubuntu-rule", json={"credentialSetName": None})
    assert removed.status_code == 200
    assert removed.json()["credentialSetName"] is None
    assert client.delete("/api/v1/credential-sets/hubcreds").status_code == 204
    assert client.delete("/api/v1/cache-rules/ubuntu-rule").status_code == 204
    assert client.get("/api/v1/cache-rules/ubuntu-rule").status_code == 404


def test_targets_are_unique_and_a_static_rule_may_overlap_a_wildcard(client):
    assert make_rule(client, "team-wide", "registry.example:5000/team/*", "hub/*").status_code == 201
    assert make_rule(client, "team-exact", "docker.io/library/nginx", "hub/nginx").status_code == 201
    clash = make_rule(client, "team-again", "other.example/x/*", "hub/*")
    assert clash.status_code == 409
    assert error_codes(clash) == ["ALREADY_EXISTS"]
    assert make_rule(client, "team-wide", "other.example/y", "y").status_code == 409  # same name
    mixed = make_rule(client, "mixed-rule", "docker.io/library/nginx", "mixed/*")
    assert mixed.status_code == 400
    missing = make_rule(client, "needs-set", "docker.io/library/nginx", "nginx", "nosuchset")
    assert missing.status_code == 404
    assert make_rule(client, "abc", "docker.io/library/nginx", "nginx").status_code == 400  # name too short


def test_a_target_with_pushed_content_is_refused(client):
    push_image(client, "pushed/app", make_image(seed=3), "v1")
    refused = make_rule(client, "pushed-rule", "registry.example/app", "pushed/app")
    assert refused.status_code == 409
    assert "already holds content" in refused.text
    wildcard = make_rule(client, "pushed-wild", "registry.example/team/*", "pushed/*")
    assert wildcard.status_code == 409


def test_pushes_into_a_cache_target_are_refused_and_others_keep_working(client):
    assert make_rule(client, "cache-rule", "registry.example/team/*", "cached/*").status_code == 201
    image = make_image(seed=4)
    started = client.post("/v2/cached/app/blobs/uploads/")
    assert started.status_code == 403
    assert error_codes(started) == ["DENIED"]
    put = client.put(
        "/v2/cached/app/manifests/v1", content=image.manifest, headers={"Content-Type": image.media_type}
    )
    assert put.status_code == 403
    assert error_codes(put) == ["DENIED"]
    push_image(client, "plain/app", image, "v1")  # not under the rule
    push_image(client, "cached", image, "v1")  # the wildcard covers cached/…, not cached itself


def test_readers_read_rules_and_only_writers_change_them(client, anonymous):
    reader = create_user(client, "readerone", "Reader")
    assert make_rule(client, "cache-rule", "registry.example/app", "app").status_code == 201
    assert anonymous.get("/api/v1/cache-rules", headers=reader).status_code == 200
    assert anonymous.get("/api/v1/credential-sets", headers=reader).status_code == 200
    assert make_rule(anonymous, "other-rule", "registry.example/b", "b").status_code == 401
    denied = anonymous.post(
        "/api/v1/cache-rules",
        json={"name": "other-rule", "sourceRepository": "registry.example/b", "targetRepository": "b"},
        headers=reader,
    )
    assert denied.status_code == 403
    assert anonymous.delete("/api/v1/cache-rules/cache-rule", headers=reader).status_code == 403


@contextlib.contextmanager
def client_with(tmp_path, database_url, store_settings, **extra):
    """A signed-in client of a registry built with ``extra`` settings."""
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "access_log": False,
            "admin_password": ADMIN_PASSWORD,
            **store_settings,
            **extra,
        }
    )
    parts = build(settings)
    bootstrap(settings, parts.access)
    try:
        with TestClient(create_app(settings, parts, background_jobs=False), headers=ADMIN) as client:
            yield client
    finally:
        parts.db.dispose()


def test_the_basic_tier_has_no_cache_rules(tmp_path, database_url, store_settings):
    with client_with(tmp_path, database_url, store_settings, sku="Basic") as client:
        refused = make_rule(client, "cache-rule", "registry.example/app", "app")
        assert refused.status_code == 409, refused.text
        assert "Basic" in refused.text
        assert error_codes(refused) == ["LIMIT_EXCEEDED"]


def test_the_tier_limit_counts_existing_rules(tmp_path, database_url, store_settings):
    limited = {"tiers": {"Premium": {"cache_rules": 2}}}
    with client_with(tmp_path, database_url, store_settings, **limited) as client:
        assert make_rule(client, "rule-one", "registry.example/one", "one").status_code == 201
        assert make_rule(client, "rule-two", "registry.example/two", "two").status_code == 201
        third = make_rule(client, "rule-three", "registry.example/three", "three")
        assert third.status_code == 409
        assert error_codes(third) == ["LIMIT_EXCEEDED"]
        assert client.delete("/api/v1/cache-rules/rule-one").status_code == 204
        assert make_rule(client, "rule-three", "registry.example/three", "three").status_code == 201

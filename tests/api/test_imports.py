"""POST /api/v1/imports and the imports.run job, against a real upstream (CNCF Distribution)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from dockyard.app import Dockyard
from dockyard.config import Settings
from dockyard.imports.models import imports
from dockyard.imports.services import ImportService
from dockyard.oci.mediatypes import MANIFEST_TYPES
from dockyard.upstream.client import open_upstream
from tests.support.auth import create_user
from tests.support.distribution import Distribution, distribution, push_to, put_raw
from tests.support.images import OCI_INDEX, make_artifact, make_image, make_index, sha256
from tests.support.registry import push_image

AMD = make_image("import-amd", architecture="amd64", layers=2)
ARM = make_image("import-arm", architecture="arm64", layers=2)
INDEX = make_index([AMD, ARM])
SIGNATURE = make_artifact(
    "application/vnd.example.sig",
    b"signature",
    subject={"mediaType": OCI_INDEX, "digest": sha256(INDEX), "size": len(INDEX)},
)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    """Distribution holding team/app:v1 (a two-platform index) and a signature in the tag schema."""
    with distribution(tmp_path_factory.mktemp("upstream")) as server:
        with httpx.Client(base_url=server.url) as http:
            for image in (AMD, ARM):
                push_to(http, "team/app", image.digest, image)
            put_raw(http, "team/app", "v1", INDEX, OCI_INDEX)
            push_to(http, "team/app", SIGNATURE.digest, SIGNATURE)
            fallback = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [SIGNATURE.descriptor(artifactType="application/vnd.example.sig")],
            }
            put_raw(
                http, "team/app", sha256(INDEX).replace(":", "-"), json.dumps(fallback).encode(), OCI_INDEX
            )
        yield server


@pytest.fixture
def settings(settings: Settings, upstream: Distribution) -> Settings:
    return settings.model_copy(
        update={
            "insecure_upstreams": [upstream.host],
            "upstream_allowed_networks": ["127.0.0.0/8"],
            "upstream_timeout_seconds": 5.0,
        }
    )


def run_import(client, dockyard: Dockyard, body: dict) -> dict:
    created = client.post("/api/v1/imports", json=body)
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "queued"
    assert dockyard.runtime.run_jobs() == 1
    found = client.get(f"/api/v1/imports/{created.json()['id']}")
    assert found.status_code == 200
    return found.json()


def tag_digest(client, repository: str, tag: str) -> str | None:
    response = client.head(f"/v2/{repository}/manifests/{tag}", headers={"Accept": ", ".join(MANIFEST_TYPES)})
    return response.headers["Docker-Content-Digest"] if response.status_code == 200 else None


def test_import_an_index_by_tag(client, dockyard: Dockyard, upstream: Distribution) -> None:
    done = run_import(
        client,
        dockyard,
        {"source": f"{upstream.host}/team/app:v1", "targetTags": ["mirror/app:v1", "mirror/app:stable"]},
    )
    assert done["status"] == "succeeded", done["error"]
    assert done["digest"] == sha256(INDEX)
    progress = done["progress"]
    assert progress["manifestsTotal"] == progress["manifestsDone"] == 3
    total = sum(len(b.data) for image in (AMD, ARM) for b in image.blobs)
    assert progress["bytesTotal"] == progress["bytesDone"] == total
    for tag in ("v1", "stable"):
        assert tag_digest(client, "mirror/app", tag) == sha256(INDEX)
    for image in (AMD, ARM):
        got = client.get(f"/v2/mirror/app/manifests/{image.digest}", headers={"Accept": image.media_type})
        assert got.content == image.manifest
        for blob in image.blobs:
            assert sha256(client.get(f"/v2/mirror/app/blobs/{blob.digest}").content) == blob.digest
    # referrers were not asked for
    assert client.get(f"/v2/mirror/app/manifests/{SIGNATURE.digest}").status_code == 404


def test_import_by_digest_untagged_with_referrers(client, dockyard: Dockyard, upstream: Distribution) -> None:
    done = run_import(
        client,
        dockyard,
        {
            "source": f"{upstream.host}/team/app@{sha256(INDEX)}",
            "repository": "bydigest/app",
            "includeReferrers": True,
        },
    )
    assert done["status"] == "succeeded", done["error"]
    assert done["repositories"] == ["bydigest/app"]
    assert done["progress"]["manifestsDone"] == 4  # index, two images, the signature
    assert client.get("/v2/bydigest/app/tags/list").json()["tags"] in (None, [])
    referrers = client.get(f"/v2/bydigest/app/referrers/{sha256(INDEX)}").json()["manifests"]
    assert [r["digest"] for r in referrers] == [SIGNATURE.digest]


def test_existing_tag_is_refused_unless_forced(client, dockyard: Dockyard, upstream: Distribution) -> None:
    other = make_image("already-here")
    push_image(client, "taken/app", other, tag="v1")
    body = {"source": f"{upstream.host}/team/app:v1", "targetTags": ["taken/app:v1"]}
    refused = run_import(client, dockyard, body)
    assert refused["status"] == "failed"
    assert "taken/app:v1 exists" in refused["error"]
    assert tag_digest(client, "taken/app", "v1") == other.digest
    forced = run_import(client, dockyard, {**body, "force": True})
    assert forced["status"] == "succeeded", forced["error"]
    assert tag_digest(client, "taken/app", "v1") == sha256(INDEX)


def test_missing_tag_and_blobs_already_present(client, dockyard: Dockyard, upstream: Distribution) -> None:
    missing = run_import(
        client, dockyard, {"source": f"{upstream.host}/team/app:nope", "targetTags": ["m/app:x"]}
    )
    assert missing["status"] == "failed"
    assert "not found" in missing["error"]
    assert client.get("/v2/m/app/tags/list").status_code == 404
    # a second import into another repository links the blobs it already has elsewhere
    first = run_import(
        client, dockyard, {"source": f"{upstream.host}/team/app:v1", "targetTags": ["a/app:v1"]}
    )
    second = run_import(
        client, dockyard, {"source": f"{upstream.host}/team/app:v1", "targetTags": ["b/app:v1"]}
    )
    assert first["status"] == second["status"] == "succeeded"
    assert tag_digest(client, "b/app", "v1") == sha256(INDEX)


def test_password_is_scrubbed_and_never_returned(client, dockyard: Dockyard, upstream: Distribution) -> None:
    # Distribution has no authentication: the credentials are simply never asked for
    done = run_import(
        client,
        dockyard,
        {
            "source": f"{upstream.host}/team/app:v1",
            "targetTags": ["cred/app:v1"],
            "username": "u",
            "password": "s3cret",
        },
    )
    assert done["status"] == "succeeded"
    assert done["username"] == "u"
    assert "s3cret" not in json.dumps(done)
    listed = client.get("/api/v1/imports").json()["value"]
    assert "s3cret" not in json.dumps(listed)
    with dockyard.db.read() as conn:
        assert conn.execute(sa.select(imports.c.password).where(imports.c.id == done["id"])).scalar() is None


@pytest.mark.parametrize("last_attempt", [False, True])
def test_the_last_attempt_holds_the_password_in_memory_only(
    client, dockyard: Dockyard, upstream: Distribution, last_attempt: bool
) -> None:
    """A worker killed during the job's last attempt must not leave the password in the row."""
    service: ImportService = dockyard.service("imports")
    created = client.post(
        "/api/v1/imports",
        json={
            "source": f"{upstream.host}/team/app:v1",
            "targetTags": [f"held/app:{int(last_attempt)}"],
            "username": "u",
            "password": "s3cret",
        },
    ).json()
    stored_while_running: list[str | None] = []
    given: list[str | None] = []

    def spying(registry, credentials, settings):
        given.append(credentials.password if credentials else None)
        with dockyard.db.read() as conn:
            stored = conn.execute(sa.select(imports.c.password).where(imports.c.id == created["id"]))
            stored_while_running.append(stored.scalar())
        return open_upstream(registry, credentials, settings)

    service._open = spying
    assert service.execute(created["id"], last_attempt=last_attempt).status == "succeeded"
    assert given == ["s3cret"]  # the run itself still has it
    assert stored_while_running == [None if last_attempt else "s3cret"]


def test_upstream_down_midway_tags_nothing(
    client, dockyard: Dockyard, upstream: Distribution, tmp_path: Path
) -> None:
    """The upstream stops after the plan fetched the manifests: the import fails, no tag is written."""
    service: ImportService = dockyard.service("imports")

    def stopping(registry, credentials, settings):
        real = open_upstream(registry, credentials, settings)
        opened = real.open_blob

        def open_blob(repository: str, digest: str):
            upstream.stop()  # a real shutdown: the connection is refused from here on
            return opened(repository, digest)

        real.open_blob = open_blob  # type: ignore[method-assign]
        return real

    service._open = stopping
    try:
        done = run_import(
            client, dockyard, {"source": f"{upstream.host}/team/app:v1", "targetTags": ["down/app:v1"]}
        )
    finally:
        upstream.start()
    assert done["status"] == "failed"
    assert "unavailable" in done["error"]
    assert tag_digest(client, "down/app", "v1") is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"source": "nginx:latest"},
        {"source": "reg.io/a:v1", "targetTags": ["no-tag"]},
        {"source": "reg.io/a:v1", "targetTags": ["Bad/Name:v1"]},
        {"source": "reg.io/a:v1", "username": "only-user"},
        {"source": "reg.io/a:v1", "force": "yes"},
        {"source": "reg.io/a:v1", "targetTags": [f"r/a:t{i}" for i in range(51)]},
    ],
)
def test_bad_requests(client, body: dict) -> None:
    response = client.post("/api/v1/imports", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["code"] == "INVALID_REQUEST"


def test_import_needs_control_plane_write(client, upstream: Distribution) -> None:
    reader = create_user(client, "import-reader", "Reader")
    refused = client.post("/api/v1/imports", json={"source": f"{upstream.host}/team/app:v1"}, headers=reader)
    assert refused.status_code == 403
    assert client.get("/api/v1/imports", headers=reader).status_code == 200
    assert client.get("/api/v1/imports/nope").status_code == 404

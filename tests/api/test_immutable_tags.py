"""Write-once tags: the repository policy, its exemptions, the registry-wide default, and lock races."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.testclient import TestClient

from dockyard.app import build, create_app
from dockyard.oci.errors import RegistryError
from tests.support.auth import ADMIN, create_user
from tests.support.images import make_image
from tests.support.registry import error_codes, push_image

REPO = "team/app"
POLICY = f"/api/v1/repositories/{REPO}/immutability"


def _put(client, reference, image):
    return client.put(
        f"/v2/{REPO}/manifests/{reference}",
        content=image.manifest,
        headers={"Content-Type": image.media_type},
    )


def _refused(response):
    assert response.status_code == 403, response.text
    assert error_codes(response) == ["DENIED"]
    assert "immutable" in response.json()["errors"][0]["message"]


@pytest.fixture
def images(client):
    one, two = make_image("immutable-one"), make_image("immutable-two")
    push_image(client, REPO, one, "v1")
    push_image(client, REPO, one, "latest")
    push_image(client, REPO, two)
    return one, two


def test_policy_makes_tags_write_once_except_exemptions(client, images):
    one, two = images
    assert client.get(POLICY).json() == {"enabled": False, "exemptions": [], "inherited": True}
    set_policy = client.put(POLICY, json={"enabled": True, "exemptions": ["latest", "dev-*"]})
    assert set_policy.status_code == 200, set_policy.text
    assert set_policy.json() == {"enabled": True, "exemptions": ["latest", "dev-*"], "inherited": False}
    _refused(_put(client, "v1", two))
    assert _put(client, "v1", one).status_code == 201  # the same digest is no move
    assert _put(client, "latest", two).status_code == 201
    assert _put(client, "dev-7", two).status_code == 201
    assert _put(client, "dev-7", one).status_code == 201
    assert _put(client, "v2", two).status_code == 201  # a new tag is written once
    _refused(_put(client, "v2", one))
    _refused(client.delete("/v2/team/app/manifests/v1"))  # deleting would let it be re-pushed
    _refused(client.delete(f"/v2/team/app/manifests/{one.digest}"))
    _refused(client.delete("/acr/v1/team/app"))
    assert client.get("/acr/v1/team/app").json()["tagImmutability"]["enabled"] is True
    assert client.put(POLICY, json={"enabled": False}).json()["enabled"] is False
    assert _put(client, "v1", two).status_code == 201


def test_policy_requests_are_checked(client, images):
    assert client.put(POLICY, json={"exemptions": ["latest"]}).status_code == 400
    assert client.put(POLICY, json={"enabled": "yes"}).status_code == 400
    assert client.put(POLICY, json={"enabled": True, "exemptions": ["bad tag!"]}).status_code == 400
    assert error_codes(client.get("/api/v1/repositories/none/immutability")) == ["NAME_UNKNOWN"]


def test_policy_needs_control_plane_write(client, app, images):
    reader = create_user(client, "reader", "Reader")
    pusher = create_user(client, "pusher", "AcrPush")
    with TestClient(app) as other:
        assert other.get(POLICY, headers=reader).status_code == 200
        assert other.put(POLICY, json={"enabled": True}, headers=reader).status_code == 403
        assert other.put(POLICY, json={"enabled": True}, headers=pusher).status_code == 403
    assert client.get(POLICY).json()["enabled"] is False


def test_registry_wide_default_and_reset(settings, images):
    one, two = images
    strict = settings.model_copy(update={"immutable_tags": True, "immutable_tags_exempt": ["latest"]})
    parts = build(strict)
    try:
        with TestClient(create_app(strict, parts, background_jobs=False), headers=ADMIN) as client:
            assert client.get(POLICY).json() == {"enabled": True, "exemptions": ["latest"], "inherited": True}
            _refused(_put(client, "v1", two))
            assert _put(client, "latest", two).status_code == 201
            assert client.put(POLICY, json={"enabled": False}).status_code == 200
            assert _put(client, "v1", two).status_code == 201
            reset = client.put(POLICY, json={"enabled": None})
            assert reset.json() == {"enabled": True, "exemptions": ["latest"], "inherited": True}
            _refused(_put(client, "v1", one))
    finally:
        parts.db.dispose()


ROUNDS = 12


def test_a_lock_and_a_push_to_the_same_tag_never_both_win(settings, dockyard):
    """Once the lock has answered, the tag no longer moves: a push that succeeded came before it."""
    one, two = make_image("race-one"), make_image("race-two")
    registry = dockyard.registry
    for image in (one, two):
        for blob in image.blobs:
            registry.uploads.upload_whole(REPO, blob.digest, iter([blob.data]))
        registry.manifests.put(REPO, image.digest, image.manifest, image.media_type)
    nodes = [build(settings) for _ in range(2)]
    try:
        for round_ in range(ROUNDS):
            tag = f"r{round_}"
            registry.manifests.put(REPO, tag, one.manifest, one.media_type)
            start = threading.Barrier(2)

            def lock(node, tag=tag, start=start):
                start.wait()
                node.registry.locks.update_tag(REPO, tag, {"write_enabled": False})
                return node.registry.repositories.tag_detail(REPO, tag).digest

            def push(node, tag=tag, start=start):
                start.wait()
                try:
                    node.registry.manifests.put(REPO, tag, two.manifest, two.media_type)
                except RegistryError as error:
                    return error.code.name
                return "pushed"

            with ThreadPoolExecutor(2) as pool:
                seen_after_lock = pool.submit(lock, nodes[0])
                pushed = pool.submit(push, nodes[1])
                after_lock, moved = seen_after_lock.result(), pushed.result()
            final = registry.repositories.tag_detail(REPO, tag).digest
            assert final == after_lock, f"round {round_}: the tag moved after the lock answered"
            assert moved in ("pushed", "DENIED")
            assert final == (two.digest if moved == "pushed" else one.digest)
    finally:
        for node in nodes:
            node.db.dispose()


def test_pushes_racing_for_a_new_write_once_tag_leave_one_winner(settings, dockyard):
    """Pushes into one repository run together; their tag moves do not: exactly one creates the tag."""
    racers = [make_image(f"write-once-{i}") for i in range(6)]
    for image in racers:
        for blob in image.blobs:
            dockyard.registry.uploads.upload_whole(REPO, blob.digest, iter([blob.data]))
    strict = settings.model_copy(update={"immutable_tags": True})
    nodes = [build(strict) for _ in racers]
    try:
        for round_ in range(4):
            tag = f"once-{round_}"
            start = threading.Barrier(len(nodes))

            def push(node, image, tag=tag, start=start):
                start.wait()
                try:
                    return node.registry.manifests.put(REPO, tag, image.manifest, image.media_type).digest
                except RegistryError as error:
                    return error.code.name

            with ThreadPoolExecutor(len(nodes)) as pool:
                outcomes = list(pool.map(push, nodes, racers))
            winners = [outcome for outcome in outcomes if outcome != "DENIED"]
            assert len(winners) == 1, f"round {round_}: {outcomes}"
            assert dockyard.registry.repositories.tag_detail(REPO, tag).digest == winners[0]
    finally:
        for node in nodes:
            node.db.dispose()

"""The pull-through cache's read path against real upstreams (CNCF Distribution), through the real client."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dockyard.cache.pull import RETRY_SECONDS
from tests.support.cache_upstreams import UpstreamProxy, push_upstream, put_upstream_manifest
from tests.support.distribution import Distribution
from tests.support.images import make_image, make_index
from tests.support.registry import error_codes, push_image, push_manifest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = {
    "Accept": ", ".join(
        [
            "application/vnd.oci.image.manifest.v1+json",
            OCI_INDEX,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ]
    )
}


@pytest.fixture
def settings(settings):
    return settings.model_copy(
        update={
            "cache_ttl_seconds": 3600.0,
            "insecure_upstreams": ["127.0.0.1"],  # the upstreams speak plain HTTP on loopback
            "upstream_allowed_networks": ["127.0.0.0/8"],
        }
    )


@pytest.fixture
def upstream(tmp_path):
    running = Distribution(tmp_path / "upstream").start()
    yield running
    running.stop()


@pytest.fixture
def upstream_http(upstream):
    with httpx.Client(base_url=upstream.url, timeout=30) as http:
        yield http


def make_rule(client, name, source, target):
    body = {"name": name, "sourceRepository": source, "targetRepository": target}
    created = client.post("/api/v1/cache-rules", json=body)
    assert created.status_code == 201, created.text


def pull(client, repository, reference):
    return client.get(f"/v2/{repository}/manifests/{reference}", headers=ACCEPT)


def pull_image(client, repository, reference, image):
    """Pull a manifest and each of its blobs; the X-Dockyard-Origin of each answer."""
    answer = pull(client, repository, reference)
    assert answer.status_code == 200, answer.text
    assert answer.content == image.manifest
    origins = [answer.headers.get("x-dockyard-origin")]
    for blob in image.blobs:
        got = client.get(f"/v2/{repository}/blobs/{blob.digest}")
        assert got.status_code == 200, got.text
        assert got.content == blob.data
        origins.append(got.headers.get("x-dockyard-origin"))
    return origins


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"


def test_a_first_pull_stores_the_image_and_later_pulls_need_no_upstream(
    client, dockyard, upstream, upstream_http
):
    image = make_image("cached-one", layers=2)
    push_upstream(upstream_http, "team/app", image, "v1")
    make_rule(client, "team-rule", f"{upstream.host}/team/*", "hub/*")
    assert pull_image(client, "hub/app", "v1", image) == ["upstream"] * 4
    upstream.stop()
    assert pull_image(client, "hub/app", "v1", image) == [None] * 4
    assert pull(client, "hub/app", image.digest).status_code == 200  # by digest: local
    # the arrival is a push by the rule, so webhooks fire
    events = client.get("/api/v1/events", params={"repository": "hub/app"}).json()["value"]
    pushes = [e for e in events if e["action"] == "push"]
    assert pushes, events
    assert "cache-rule:team-rule" in str(pushes[0])
    # pushes into the target stay refused, a plain repository takes them
    refused = push_manifest(client, "hub/app", "v2", image.manifest, image.media_type)
    assert refused.status_code == 403
    assert error_codes(refused) == ["DENIED"]


def test_an_unknown_tag_upstream_is_manifest_unknown(client, upstream):
    make_rule(client, "team-rule", f"{upstream.host}/team/*", "hub/*")
    missing = pull(client, "hub/nothing", "v1")
    assert missing.status_code == 404
    assert error_codes(missing)[0] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
    assert client.get("/v2/hub/nothing/blobs/sha256:" + "0" * 64).status_code == 404


def test_a_missing_tag_is_asked_for_again_only_after_the_retry_window(
    client, dockyard, upstream_http, proxied
):
    cache = dockyard.service("cache").pull
    now = [1000.0]
    cache._clock = lambda: now[0]
    make_rule(client, "team-rule", f"{proxied.host}/team/*", "hub/*")
    assert pull(client, "hub/app", "later").status_code == 404
    image = make_image("later")
    push_upstream(upstream_http, "team/app", image, "later")
    proxied.requests.clear()
    assert pull(client, "hub/app", "later").status_code == 404  # the upstream's 404 still stands
    assert proxied.requests == []
    now[0] += RETRY_SECONDS + 0.1
    assert pull_image(client, "hub/app", "later", image)[0] == "upstream"


def test_an_index_fetches_each_child_on_its_own_read(client, upstream, upstream_http):
    amd = make_image("multi", architecture="amd64")
    arm = make_image("multi", architecture="arm64")
    for image in (amd, arm):
        push_upstream(upstream_http, "team/multi", image)
    index = make_index([amd, arm])
    put_upstream_manifest(upstream_http, "team/multi", "v1", index, OCI_INDEX)
    make_rule(client, "team-rule", f"{upstream.host}/team/*", "hub/*")
    fetched = pull(client, "hub/multi", "v1")
    assert fetched.status_code == 200
    assert fetched.content == index
    assert fetched.headers["x-dockyard-origin"] == "upstream"
    # the children are not fetched with the index
    listed = client.get("/acr/v1/hub/multi/_manifests").json()
    assert [m["digest"] for m in listed["manifests"]] == [fetched.headers["docker-content-digest"]]
    assert pull_image(client, "hub/multi", arm.digest, arm) == ["upstream"] * 3
    assert pull_image(client, "hub/multi", arm.digest, arm) == [None] * 3
    upstream.stop()
    assert pull(client, "hub/multi", amd.digest).status_code >= 500  # never fetched, upstream gone
    assert pull(client, "hub/multi", "v1").status_code == 200


def test_a_client_without_index_support_gets_the_amd64_image(client, upstream, upstream_http):
    amd = make_image("plain", architecture="amd64")
    arm = make_image("plain", architecture="arm64")
    for image in (amd, arm):
        push_upstream(upstream_http, "team/multi", image)
    put_upstream_manifest(upstream_http, "team/multi", "v1", make_index([amd, arm]), OCI_INDEX)
    make_rule(client, "team-rule", f"{upstream.host}/team/*", "hub/*")
    only_images = {"Accept": amd.media_type}
    answer = client.get("/v2/hub/multi/manifests/v1", headers=only_images)
    assert answer.status_code == 200, answer.text
    assert answer.content == amd.manifest
    assert answer.headers["x-dockyard-origin"] == "upstream"


@pytest.fixture
def proxied(upstream):
    with UpstreamProxy(upstream.port) as proxy:
        yield proxy


def ttl(dockyard, seconds):
    dockyard.service("cache").pull._ttl = seconds


def test_a_moved_tag_is_refreshed_after_the_ttl_with_one_head(client, dockyard, upstream_http, proxied):
    first, second = make_image("first"), make_image("second")
    push_upstream(upstream_http, "team/app", first, "v1")
    make_rule(client, "team-rule", f"{proxied.host}/team/*", "hub/*")
    ttl(dockyard, 2.0)  # the next pull must come within it, even on a loaded CI machine
    assert pull_image(client, "hub/app", "v1", first)[0] == "upstream"
    # within the TTL nothing goes upstream
    proxied.requests.clear()
    assert pull(client, "hub/app", "v1").status_code == 200
    assert proxied.requests == []
    # past it, one HEAD finds the same digest: no manifest GET
    wait_until(lambda: dockyard.service("cache").pull._fresh.get(("hub/app", "v1"), 0) < time.monotonic())
    answer = pull(client, "hub/app", "v1")
    assert answer.content == first.manifest
    assert [method for method, _ in proxied.requests] == ["HEAD"]
    push_upstream(upstream_http, "team/app", second, "v1")
    wait_until(lambda: pull(client, "hub/app", "v1").content == second.manifest)
    assert pull_image(client, "hub/app", "v1", second)[0] is None


@pytest.mark.parametrize("mode", ["429", "503", "down"])
def test_a_failing_upstream_serves_the_cached_copy(client, dockyard, upstream, upstream_http, proxied, mode):
    image = make_image("stale")
    push_upstream(upstream_http, "team/app", image, "v1")
    make_rule(client, "team-rule", f"{proxied.host}/team/*", "hub/*")
    ttl(dockyard, 0.0)  # every tag read asks the upstream
    assert pull_image(client, "hub/app", "v1", image)[0] == "upstream"
    if mode == "down":
        upstream.stop()
    else:
        proxied.mode = mode
    stats = dockyard.service("cache").pull.stats
    before = stats["stale_served"]
    assert pull_image(client, "hub/app", "v1", image) == [None] * 3
    assert stats["stale_served"] == before + 1
    assert 'dockyard_cache_upstream_total{outcome="stale_served"} 1.0' in client.get("/metrics").text
    # what was never cached fails with the upstream's reason
    missing = pull(client, "hub/other", "v1")
    if mode == "429":
        assert missing.status_code == 429
        assert error_codes(missing) == ["TOOMANYREQUESTS"]
    else:
        assert missing.status_code == 502


def test_two_rules_on_two_upstreams(client, tmp_path, upstream, upstream_http):
    other = Distribution(tmp_path / "other").start()
    try:
        one, two = make_image("one"), make_image("two")
        push_upstream(upstream_http, "team/app", one, "v1")
        with httpx.Client(base_url=other.url, timeout=30) as http:
            push_upstream(http, "library/tool", two, "v2")
        make_rule(client, "rule-one", f"{upstream.host}/team/*", "one/*")
        make_rule(client, "rule-two", f"{other.host}/library/tool", "tool")
        assert pull_image(client, "one/app", "v1", one)[0] == "upstream"
        assert pull_image(client, "tool", "v2", two)[0] == "upstream"
        assert pull(client, "one/tool", "v2").status_code == 404
    finally:
        other.stop()


def test_anonymous_pull_of_a_cached_repository(client, anonymous, upstream, upstream_http):
    image = make_image("anon")
    push_upstream(upstream_http, "team/app", image, "v1")
    make_rule(client, "team-rule", f"{upstream.host}/team/*", "hub/*")
    assert pull(anonymous, "hub/app", "v1").status_code == 401
    assert client.patch("/api/v1/registry", json={"anonymousPullEnabled": True}).status_code == 200
    assert pull_image(anonymous, "hub/app", "v1", image)[0] == "upstream"
    started = anonymous.post("/v2/hub/app/blobs/uploads/")
    assert started.status_code == 401


def test_concurrent_pulls_of_a_missing_blob_fetch_it_once(client, upstream_http, proxied):
    image = make_image("together", layer_size=256 * 1024)
    push_upstream(upstream_http, "team/app", image, "v1")
    make_rule(client, "team-rule", f"{proxied.host}/team/*", "hub/*")
    assert pull(client, "hub/app", "v1").status_code == 200
    layer = image.layers[0]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.get(f"/v2/hub/app/blobs/{layer.digest}"), range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert all(a.content == layer.data for a in answers)
    fetches = [path for method, path in proxied.requests if method == "GET" and layer.digest in path]
    assert len(fetches) == 1, proxied.requests


def test_a_moved_tag_that_cannot_be_stored_serves_the_cached_copy(client, dockyard, upstream, upstream_http):
    first, second = make_image("locked-one"), make_image("locked-two")
    push_upstream(upstream_http, "team/app", first, "v1")
    make_rule(client, "team-rule", f"{upstream.host}/team/*", "hub/*")
    ttl(dockyard, 0.0)
    assert pull(client, "hub/app", "v1").content == first.manifest
    assert client.patch("/acr/v1/hub/app", json={"writeEnabled": False}).status_code == 200
    push_upstream(upstream_http, "team/app", second, "v1")
    answer = pull(client, "hub/app", "v1")
    assert answer.status_code == 200
    assert answer.content == first.manifest
    assert dockyard.service("cache").pull.stats["stale_served"] == 1


def test_blobs_the_registry_already_has_are_linked_not_fetched(client, upstream_http, proxied):
    image = make_image("shared-layers", layers=2)
    push_upstream(upstream_http, "team/app", image, "v1")
    make_rule(client, "team-rule", f"{proxied.host}/team/*", "hub/*")
    make_rule(client, "mirror-rule", f"{proxied.host}/team/app", "mirror")
    assert pull_image(client, "hub/app", "v1", image) == ["upstream"] * 4
    proxied.requests.clear()
    assert pull_image(client, "mirror", "v1", image) == ["upstream", None, None, None]
    fetched = [path for method, path in proxied.requests if "/blobs/" in path]
    assert fetched == []  # the manifest came from upstream; its blobs were linked
    # a digest no manifest here names is not linked from elsewhere: it is asked of the upstream
    own = make_image("own-content")
    push_image(client, "private/app", own, "v1")
    assert client.get(f"/v2/mirror/blobs/{own.layers[0].digest}").status_code == 404

"""Tag lists and the catalog: byte order, n/last pagination, Link headers."""

import pytest

from tests.support.auth import ADMIN
from tests.support.images import make_image
from tests.support.polling import eventually
from tests.support.registry import error_codes, push_blob, push_image

TAGS = ["v10", "v2", "B", "a", "1.0", "_x", "latest"]


@pytest.fixture
def tagged(client):
    image = make_image("listing")
    for tag in TAGS:
        push_image(client, "team/app", image, tag)
    return sorted(TAGS)


def test_tags_are_listed_in_byte_order(client, tagged):
    response = client.get("/v2/team/app/tags/list")
    assert response.status_code == 200
    assert response.json() == {"name": "team/app", "tags": tagged}
    assert tagged == ["1.0", "B", "_x", "a", "latest", "v10", "v2"]
    assert "link" not in response.headers


def test_tags_pagination_follows_link_headers(client, tagged):
    seen = []
    url = "/v2/team/app/tags/list?n=3"
    pages = 0
    while url:
        response = client.get(url)
        page = response.json()["tags"]
        assert len(page) <= 3
        seen.extend(page)
        pages += 1
        link = response.headers.get("link")
        url = link[1 : link.index(">")] if link else None
        if link:
            assert link.endswith('; rel="next"')
    assert seen == tagged
    assert pages == 3


def test_tags_n_and_last(client, tagged):
    assert client.get("/v2/team/app/tags/list", params={"n": 2, "last": "B"}).json()["tags"] == ["_x", "a"]
    assert client.get("/v2/team/app/tags/list", params={"last": "latest"}).json()["tags"] == ["v10", "v2"]
    assert client.get("/v2/team/app/tags/list", params={"last": "zzz"}).json()["tags"] == []
    exact = client.get("/v2/team/app/tags/list", params={"n": len(tagged)})
    assert exact.json()["tags"] == tagged
    assert "link" not in exact.headers


def test_tags_n_zero_is_empty_without_link(client, tagged):
    response = client.get("/v2/team/app/tags/list", params={"n": 0})
    assert response.json()["tags"] == []
    assert "link" not in response.headers


def test_tags_bad_n(client, tagged):
    assert client.get("/v2/team/app/tags/list", params={"n": "-1"}).status_code == 400
    assert client.get("/v2/team/app/tags/list", params={"n": "many"}).status_code == 400


def test_repository_without_tags_has_an_empty_list(client):
    push_blob(client, "team/blobs-only", b"data")
    assert client.get("/v2/team/blobs-only/tags/list").json() == {"name": "team/blobs-only", "tags": []}


def test_unknown_repository_tags_is_name_unknown(client):
    response = client.get("/v2/nobody/tags/list")
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]


def test_catalog_sorted_and_paginated(client):
    names = ["zeta", "alpha/beta", "alpha", "team/app/api", "m.n_o"]
    for name in names:
        push_blob(client, name, b"x")
    assert client.get("/v2/_catalog").json() == {"repositories": sorted(names)}
    first = client.get("/v2/_catalog", params={"n": 2})
    assert first.json()["repositories"] == sorted(names)[:2]
    link = first.headers["link"]
    assert link.startswith("</v2/_catalog?")
    assert link.endswith('>; rel="next"')
    second = client.get(link[1 : link.index(">")])
    assert second.json()["repositories"] == sorted(names)[2:4]
    assert client.get("/v2/_catalog", params={"n": 0}).json() == {"repositories": []}


def test_catalog_page_size_is_capped(client, dockyard):
    dockyard.registry.repositories.catalog_page_size = 2
    for name in ["a", "b", "c"]:
        push_blob(client, name, b"x")
    response = client.get("/v2/_catalog", params={"n": 100})
    assert response.json()["repositories"] == ["a", "b"]
    assert "link" in response.headers


def test_cached_tag_lists_see_changes_made_by_other_processes(client, settings):
    from starlette.testclient import TestClient

    from dockyard.app import create_app

    image = make_image("cache")
    push_image(client, "team/cache", image, "one")
    with TestClient(create_app(settings, background_jobs=False), headers=ADMIN) as other:
        assert other.get("/v2/team/cache/tags/list").json()["tags"] == ["one"]

        def others_tags(**params: int) -> list[str]:
            return other.get("/v2/team/cache/tags/list", params=params).json()["tags"]

        # PostgreSQL: once the change's notification reaches the other process (milliseconds;
        # nothing bounds it on a loaded machine). SQLite: at once (data_version).
        push_image(client, "team/cache", image, "two")
        eventually(lambda: others_tags() == ["one", "two"], "the new tag in the other's list")
        client.delete("/v2/team/cache/manifests/one")
        eventually(lambda: others_tags() == ["two"], "the deleted tag gone from the other's list")
        assert others_tags(n=5) == ["two"]

"""Blob GET/HEAD (with Range) and DELETE."""

import pytest

from tests.support.images import make_image, sha256
from tests.support.registry import error_codes, push_blob, push_image

DATA = bytes(range(256)) * 8  # 2 KiB


@pytest.fixture
def digest(client):
    return push_blob(client, "team/app", DATA)


def test_get_returns_bytes_and_headers(client, digest):
    response = client.get(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["docker-content-digest"] == digest
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["accept-ranges"] == "bytes"


def test_head_has_length_and_no_body(client, digest):
    response = client.head(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["docker-content-digest"] == digest


def test_unknown_blob_is_404(client, digest):
    unknown = sha256(b"nope")
    response = client.get(f"/v2/team/app/blobs/{unknown}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]
    assert client.head(f"/v2/team/app/blobs/{unknown}").status_code == 404


def test_a_blob_is_visible_only_in_repositories_that_have_it(client, digest):
    assert client.get(f"/v2/other/app/blobs/{digest}").status_code == 404


def test_invalid_digest_in_path_is_400(client):
    response = client.get("/v2/team/app/blobs/sha256:xyz")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=100-", 100, len(DATA) - 1),
        ("bytes=-5", len(DATA) - 5, len(DATA) - 1),
        ("bytes=0-999999", 0, len(DATA) - 1),
    ],
)
def test_range_requests_are_206(client, digest, header, start, end):
    response = client.get(f"/v2/team/app/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 206
    assert response.content == DATA[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.headers["content-length"] == str(end - start + 1)


@pytest.mark.parametrize("header", [f"bytes={len(DATA)}-", "bytes=5000-6000", "bytes=-0", "bytes=20-10"])
def test_unsatisfiable_range_is_416(client, digest, header):
    response = client.get(f"/v2/team/app/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=-1", "bytes=0-", "bytes=0-0"])
def test_no_range_of_an_empty_blob_is_satisfiable(client, header):
    location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
    assert client.put(location, params={"digest": sha256(b"")}, content=b"").status_code == 201
    response = client.get(f"/v2/team/app/blobs/{sha256(b'')}", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */0"
    assert client.get(f"/v2/team/app/blobs/{sha256(b'')}").content == b""


def test_multiple_ranges_get_the_whole_blob(client, digest):
    response = client.get(f"/v2/team/app/blobs/{digest}", headers={"Range": "bytes=0-1,5-6"})
    assert response.status_code == 200
    assert response.content == DATA


def test_delete_blob(client, digest):
    response = client.delete(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 202
    assert client.head(f"/v2/team/app/blobs/{digest}").status_code == 404
    again = client.delete(f"/v2/team/app/blobs/{digest}")
    assert again.status_code == 404
    assert error_codes(again) == ["BLOB_UNKNOWN"]


def test_delete_blob_keeps_other_repositories_copy(client, digest):
    push_blob(client, "other/app", DATA)
    assert client.delete(f"/v2/team/app/blobs/{digest}").status_code == 202
    assert client.get(f"/v2/other/app/blobs/{digest}").content == DATA


def test_delete_blob_in_unknown_repository(client):
    response = client.delete(f"/v2/never/pushed/blobs/{sha256(b'x')}")
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]


def test_delete_blob_a_manifest_needs_is_refused(client):
    image = make_image("needed")
    push_image(client, "team/app", image, "v1")
    response = client.delete(f"/v2/team/app/blobs/{image.layers[0].digest}")
    assert response.status_code == 409
    assert error_codes(response) == ["DENIED"]
    assert client.get(f"/v2/team/app/blobs/{image.layers[0].digest}").status_code == 200

"""Answers given before the request body was read (401, 413) reach clients that send the whole body
first, over HTTP/1.1 and HTTP/2 with TLS: the server reads and discards the rest of the body."""

from __future__ import annotations

import os
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.support import ADMIN, HttpsServer

pytestmark = pytest.mark.e2e

BODY = os.urandom(5 * 1024 * 1024)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
UPLOAD = "/v2/team/app/blobs/uploads/0b8e4fbe-6f0d-4d5e-9a56-4a54e2b9f1aa"


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_answers_before_the_body_reach_the_client(
    start_https_server: Callable[..., HttpsServer], tmp_path, http2: bool
) -> None:
    server = start_https_server(data_dir=tmp_path / "data")
    options = {"verify": server.trusting_ca(), "http1": not http2, "http2": http2, "timeout": 60}
    version = "HTTP/2" if http2 else "HTTP/1.1"
    with httpx.Client(base_url=server.url, **options) as http:  # type: ignore[arg-type]
        for method, params in (("PATCH", None), ("PUT", {"digest": "sha256:" + "0" * 64})) * 2:
            response = http.request(
                method,
                UPLOAD,
                params=params,
                content=BODY,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert (response.http_version, response.status_code) == (version, 401)
            assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
            assert response.headers["www-authenticate"].startswith("Bearer ")
    with httpx.Client(base_url=server.url, auth=ADMIN, **options) as http:  # type: ignore[arg-type]
        for _ in range(2):
            response = http.put(
                "/v2/team/app/manifests/huge", content=BODY, headers={"Content-Type": OCI_MANIFEST}
            )
            assert (response.http_version, response.status_code) == (version, 413)
            assert "larger than" in response.json()["errors"][0]["message"]
        assert http.get("/v2/").status_code == 200

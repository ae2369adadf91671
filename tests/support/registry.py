"""Push and pull helpers over the registry HTTP API, for API tests (any httpx-like client)."""

from __future__ import annotations

from typing import Any

from tests.support.images import Image, sha256


def push_blob(client: Any, repository: str, data: bytes) -> str:
    """POST then PUT the blob monolithically; return its digest."""
    digest = sha256(data)
    started = client.post(f"/v2/{repository}/blobs/uploads/")
    assert started.status_code == 202, started.text
    finished = client.put(started.headers["location"], params={"digest": digest}, content=data)
    assert finished.status_code == 201, finished.text
    return digest


def push_image(client: Any, repository: str, image: Image, tag: str | None = None) -> str:
    """Push every blob of ``image`` then its manifest (by tag or digest); return the digest."""
    for blob in image.blobs:
        push_blob(client, repository, blob.data)
    reference = tag or image.digest
    response = client.put(
        f"/v2/{repository}/manifests/{reference}",
        content=image.manifest,
        headers={"Content-Type": image.media_type},
    )
    assert response.status_code == 201, response.text
    assert response.headers["docker-content-digest"] == image.digest
    return image.digest


def push_manifest(client: Any, repository: str, reference: str, payload: bytes, media_type: str) -> Any:
    return client.put(
        f"/v2/{repository}/manifests/{reference}", content=payload, headers={"Content-Type": media_type}
    )


def error_codes(response: Any) -> list[str]:
    """The OCI error codes in a response body."""
    return [error["code"] for error in response.json()["errors"]]


def fast_webhook_settings(settings: Any, allowed_networks: list[str]) -> Any:
    """``settings`` with webhook retries and timeouts short enough for tests, allowing these networks."""
    return settings.model_copy(
        update={
            "webhook_retry_base_seconds": 0.01,
            "webhook_retry_max_seconds": 0.02,
            "webhook_timeout_seconds": 1.0,
            "webhook_allowed_networks": allowed_networks,
        }
    )

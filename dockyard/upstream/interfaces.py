"""What import and the pull-through cache need from another registry: the contract of the upstream client.

The client speaks the OCI distribution API as a *client* (the Docker token flow, Basic credentials,
``docker.io`` naming) and is synchronous: callers run it in worker threads or jobs, never on the
event loop, and never inside a database transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class UpstreamRef:
    """``registry/repository[:tag|@digest]`` as ``az acr import --source`` takes it.

    ``registry`` is ``host[:port]`` (``docker.io`` is normalised to ``registry-1.docker.io`` and a
    one-part Docker Hub repository gets ``library/``); ``reference`` is a tag or a digest.
    """

    registry: str
    repository: str
    reference: str

    @property
    def is_digest(self) -> bool:
        return ":" in self.reference


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for an upstream registry."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"


@dataclass(frozen=True)
class ManifestHead:
    """What a HEAD of a manifest tells: its digest, media type and size."""

    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest's bytes as the upstream served them; ``digest`` is verified against them."""

    digest: str
    media_type: str
    payload: bytes


@dataclass(frozen=True)
class BlobStream:
    """An open blob download: ``size`` from Content-Length, ``chunks`` the bytes (not yet verified)."""

    size: int | None
    chunks: Iterator[bytes]


class UpstreamError(Exception):
    """The upstream refused or failed. ``status`` is the HTTP status (``None``: no answer at all)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class UpstreamNotFound(UpstreamError):
    """404 / MANIFEST_UNKNOWN / BLOB_UNKNOWN / NAME_UNKNOWN."""


class UpstreamDenied(UpstreamError):
    """401/403 after the token flow: wrong or missing credentials."""


class UpstreamUnavailable(UpstreamError):
    """No answer, a 5xx, or 429: try later (a cache serves its stale copy). ``retry_after`` in seconds."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class UpstreamClient(Protocol):
    """One upstream registry, with its credentials; tokens are fetched and reused per scope."""

    def head_manifest(self, repository: str, reference: str, accept: tuple[str, ...]) -> ManifestHead: ...

    def get_manifest(self, repository: str, reference: str, accept: tuple[str, ...]) -> FetchedManifest: ...

    def open_blob(self, repository: str, digest: str) -> AbstractContextManager[BlobStream]: ...

    def referrers(self, repository: str, digest: str) -> list[dict[str, Any]]:
        """The subject's referrers (descriptors): the referrers API, else the tag schema fallback."""
        ...

    def list_tags(self, repository: str) -> list[str]: ...

    def close(self) -> None: ...

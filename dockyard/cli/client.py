"""A small HTTP client for the registry's /acr/v1 API, used by the CLI commands."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from dockyard.cli.output import fail

DEFAULT_REGISTRY = "http://127.0.0.1:5000"


def registry_url(value: str | None) -> str:
    """--registry, else DOCKYARD_REGISTRY, else the local default; a bare host gets https://."""
    url = value or os.environ.get("DOCKYARD_REGISTRY") or DEFAULT_REGISTRY
    if "://" not in url:
        url = f"https://{url}"
    return url.rstrip("/")


def _next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if not link or 'rel="next"' not in link:
        return None
    return link[link.index("<") + 1 : link.index(">")]


class RegistryClient:
    """Calls one registry; turns its JSON errors into CLI errors."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise fail(self._error_message(response))
        return response

    @staticmethod
    def _error_message(response: httpx.Response) -> str:
        try:
            errors = response.json().get("errors") or []
        except ValueError:
            errors = []
        if errors:
            return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        return f"HTTP {response.status_code} from {response.request.url}"

    def pages(self, path: str, key: str, params: dict[str, Any], top: int | None = None) -> Iterator[Any]:
        """Items under ``key`` across every page, following Link headers, at most ``top``."""
        url: str | None = path
        count = 0
        while url:
            response = self.request("GET", url, params=params if url == path else None)
            for item in response.json().get(key, []):
                yield item
                count += 1
                if top is not None and count >= top:
                    return
            url = _next_link(response)

    @staticmethod
    def repo_path(repository: str) -> str:
        return quote(repository, safe="/")

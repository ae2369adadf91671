"""A small HTTP client for the registry's APIs, used by the CLI commands.

Every request carries the caller's credentials as HTTP Basic: DOCKYARD_USERNAME and
DOCKYARD_PASSWORD when set, else what `dockyard login` stored for the registry's host
(the null GUID and a refresh token).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import typer

from dockyard.cli.credentials import (
    ENV_PASSWORD,
    ENV_USERNAME,
    NULL_GUID,
    Credentials,
    credentials_for,
    default_registry,
    token_claims,
)
from dockyard.cli.output import OutputFormat, emit, fail

if TYPE_CHECKING:  # httpx takes a quarter of a second to import: only commands that call a registry pay
    import httpx

DEFAULT_REGISTRY = "http://127.0.0.1:5000"


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def registry_url(value: str | None) -> str:
    """--registry, else DOCKYARD_REGISTRY, else the registry last logged in to, else the local default.

    A bare host gets https://, except a loopback one (localhost, 127.0.0.0/8, ::1), which
    gets http:// as docker treats it as insecure.
    """
    url = value or os.environ.get("DOCKYARD_REGISTRY") or default_registry() or DEFAULT_REGISTRY
    try:
        if "://" not in url:
            hostname = urlsplit(f"//{url}").hostname or ""
            url = f"{'http' if _is_loopback(hostname) else 'https'}://{url}"
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        raise fail(f"not a registry URL: {url!r} ({exc})", 2) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in parts.netloc:
        raise fail(f"not a registry URL: {url!r} (use https://HOST[:PORT] or HOST[:PORT])", 2)
    return url.rstrip("/")


def registry_host(url: str) -> str:
    """host[:port] of a registry URL: the key logins are stored under."""
    return urlsplit(url).netloc


def login_argument(url: str) -> str:
    """How to name this registry on the command line: the host when that means the same URL."""
    host = registry_host(url)
    return host if registry_url(host) == url else url


def unreachable(url: str, exc: Exception) -> str:
    """Why ``url`` could not be reached, with a hint when plain HTTP may be the wrong guess."""
    import httpx

    hint = ""
    if url.startswith("http://") and not isinstance(exc, httpx.ConnectError | httpx.TimeoutException):
        hint = f"; if the registry serves HTTPS, use https://{registry_host(url)}"
    return f"cannot reach {url}: {exc}{hint}"


def _next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if not link or 'rel="next"' not in link:
        return None
    return link[link.index("<") + 1 : link.index(">")]


def error_message(response: httpx.Response) -> str:
    """The registry's JSON errors as one line, else the status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    errors = (body.get("errors") or []) if isinstance(body, dict) else []
    if errors:
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    return f"HTTP {response.status_code} from {response.request.url}"


class RegistryClient:
    """Calls one registry with the caller's credentials; turns its JSON errors into CLI errors."""

    def __init__(
        self, base_url: str, *, credentials: Credentials | None = None, timeout: float = 30.0
    ) -> None:
        import httpx

        self.base_url = base_url
        self.credentials = credentials
        auth = httpx.BasicAuth(credentials.username, credentials.password) if credentials else None
        self._http = httpx.Client(base_url=base_url, timeout=timeout, auth=auth)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise fail(unreachable(self.base_url, exc)) from None
        if response.status_code == 401:
            raise fail(self._unauthorized_message(response))
        if response.status_code >= 400:
            raise fail(error_message(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def _unauthorized_message(self, response: httpx.Response) -> str:
        return refused_login_message(self.base_url, self.credentials, error_message(response))

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

    @staticmethod
    def segment(name: str) -> str:
        """One path segment (an identity, scope map or assignment id), escaped."""
        return quote(name, safe="@")


def refused_login_message(url: str, credentials: Credentials | None, detail: str) -> str:
    """Why the registry at ``url`` answered 401 to ``credentials``, and what to do about it.

    A saved login is a refresh token (a JWT): its own ``exp`` tells an expired login from one the
    registry refused while still valid (the identity was disabled or deleted, or the credential it
    was issued for was renewed or deleted).
    """
    again = f"dockyard login {login_argument(url)}"
    host = registry_host(url)
    if credentials is None:
        return f"not logged in to {host}: run `{again}` first ({detail})"
    if credentials.from_environment:
        return (
            f"{host} refused the credentials of {credentials.username!r} in {ENV_USERNAME}/{ENV_PASSWORD}: "
            f"wrong password, or the identity is disabled or deleted ({detail})"
        )
    claims = token_claims(credentials.password) if credentials.username == NULL_GUID else None
    if claims is None:
        return (
            f"{host} refused the login saved in {credentials.source} for {credentials.username!r}: "
            f"wrong password, or the identity is disabled or deleted; run `{again}` again ({detail})"
        )
    user = claims.get("sub", "?")
    expiry = claims.get("exp")
    if isinstance(expiry, int | float) and expiry <= time.time():
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expiry))
        return f"the saved login for {user!r} on {host} expired at {when}: run `{again}` again ({detail})"
    return (
        f"the registry {host} refused the saved login for {user!r}: the identity is disabled or deleted, "
        f"or its credential was renewed; run `{again}` again ({detail})"
    )


def connect(registry: str | None) -> RegistryClient:
    """A client for --registry (or its default) carrying the caller's credentials for that host."""
    url = registry_url(registry)
    return RegistryClient(url, credentials=credentials_for(registry_host(url)))


def delete_confirmed(
    registry: str | None,
    what: str,
    path: Callable[[RegistryClient], str],
    deleted: Any,
    *,
    yes: bool,
    output: OutputFormat,
) -> None:
    """Ask before deleting ``what`` (unless --yes), DELETE it, and print what was deleted."""
    confirm_delete(what, yes=yes)
    with connect(registry) as client:
        client.request("DELETE", path(client))
    emit({"deleted": deleted}, output)


def confirm_delete(what: str, *, yes: bool) -> None:
    """Ask before deleting ``what`` unless --yes; a "no" says so and exits 0, as `az acr` does."""
    if yes or typer.confirm(f"This deletes {what} and cannot be undone. Continue?"):
        return
    typer.echo(f"Not deleted: {what}.", err=True)
    raise typer.Exit(0)

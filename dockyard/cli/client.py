"""A small HTTP client for the registry's APIs, used by the CLI commands.

It speaks HTTP with the standard library's urllib: a command makes a request or two, and
importing an HTTP library (httpx: a quarter of a second, plus its certificate bundle) would
cost more than the requests. Every request carries the caller's credentials as HTTP Basic:
DOCKYARD_USERNAME and DOCKYARD_PASSWORD when set, else what `dockyard login` stored for the
registry's host (the null GUID and a refresh token)."""

from __future__ import annotations

import ipaddress
import json as jsonlib
import os
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import typer

from dockyard import __version__
from dockyard.cli.credentials import (
    ENV_PASSWORD,
    ENV_USERNAME,
    NULL_GUID,
    Credentials,
    credentials_for,
    default_registry,
    encode_auth,
    token_claims,
)
from dockyard.cli.output import OutputFormat, emit, fail

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
    reason = getattr(exc, "reason", exc)
    hint = ""
    if url.startswith("http://") and not isinstance(reason, ConnectionRefusedError | TimeoutError):
        hint = f"; if the registry serves HTTPS, use https://{registry_host(url)}"
    elif isinstance(reason, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(reason):
        hint = (
            "; the registry's certificate is not trusted here: with `dockyard serve --tls self-signed`, "
            "point SSL_CERT_FILE at its CA (DATA/tls/ca.crt; the start banner prints the path)"
        )
    return f"cannot reach {url}: {reason or type(reason).__name__}{hint}"


@dataclass(frozen=True)
class Response:
    """One answer from the registry, whatever its status."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    url: str

    def json(self) -> Any:
        return jsonlib.loads(self.content)


def _next_link(response: Response) -> str | None:
    link = response.headers.get("link")
    if not link or 'rel="next"' not in link:
        return None
    return link[link.index("<") + 1 : link.index(">")]


def error_message(response: Response) -> str:
    """The registry's JSON errors as one line, else the status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    errors = (body.get("errors") or []) if isinstance(body, dict) else []
    if errors:
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    return f"HTTP {response.status_code} from {response.url}"


def _opener() -> Any:
    """urllib without redirects: an answer is the registry's own, never another host's."""
    import urllib.request

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirects)


def send(
    url: str,
    method: str = "GET",
    *,
    credentials: Credentials | None = None,
    params: Mapping[str, Any] | None = None,
    json: Any = None,
    timeout: float = 30.0,
) -> Response:
    """One HTTP request with HTTP Basic ``credentials``; any status is returned, an unreachable URL fails."""
    import http.client
    import urllib.error

    try:
        return exchange(url, method, credentials=credentials, params=params, json=json, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        base = urlsplit(url)
        raise fail(unreachable(f"{base.scheme}://{base.netloc}", exc)) from None


def exchange(
    url: str,
    method: str = "GET",
    *,
    credentials: Credentials | None = None,
    params: Mapping[str, Any] | None = None,
    json: Any = None,
    timeout: float = 30.0,
) -> Response:
    """Like ``send``, but an unreachable URL raises (URLError, HTTPException or OSError)."""
    import urllib.error
    import urllib.request

    query = {k: v for k, v in (params or {}).items() if v is not None}
    if query:
        url += ("&" if "?" in url else "?") + urlencode(query, doseq=True)
    headers = {"Accept": "application/json", "User-Agent": f"dockyard-cli/{__version__}"}
    data = None
    if json is not None:
        data = jsonlib.dumps(json).encode()
        headers["Content-Type"] = "application/json"
    if credentials is not None:
        headers["Authorization"] = f"Basic {encode_auth(credentials.username, credentials.password)}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - http(s) only
    try:
        with _opener().open(request, timeout=timeout) as answer:
            return Response(answer.status, answer.headers, answer.read(), url)
    except urllib.error.HTTPError as exc:
        with exc:
            return Response(exc.code, exc.headers, exc.read(), url)


class RegistryClient:
    """Calls one registry with the caller's credentials; turns its JSON errors into CLI errors."""

    def __init__(
        self, base_url: str, *, credentials: Credentials | None = None, timeout: float = 30.0
    ) -> None:
        self.base_url = base_url
        self.credentials = credentials
        self.timeout = timeout

    def close(self) -> None:
        """Nothing to release: each request uses its own connection."""

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> Response:
        url = path if "://" in path else f"{self.base_url}{path}"
        response = send(
            url, method, credentials=self.credentials, params=params, json=json, timeout=self.timeout
        )
        if response.status_code == 401:
            raise fail(refused_login_message(self.base_url, self.credentials, error_message(response)))
        if response.status_code >= 300:
            raise fail(error_message(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise fail(f"{response.url} did not answer with JSON; is this a Dockyard registry?") from None

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

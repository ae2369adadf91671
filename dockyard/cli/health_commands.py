"""`dockyard check-health`: what `az acr check-health` checks, for a Dockyard registry.

In order: the local container clients, then the registry — its name resolves, a TCP connection
opens, TLS verifies (https only), ``/v2/`` answers with a token challenge, a token can be fetched
with the caller's credentials, and ``/readyz`` says the database and blob store answer. Each check
prints ✓ or ✗ (with a hint); as in az, the first failure stops the run unless --ignore-errors.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

import typer

from dockyard.cli.client import Response, exchange, refused_login_message, registry_host, registry_url
from dockyard.cli.credentials import Credentials, credentials_for
from dockyard.cli.options import RegistryOption, YesOption

#: Local clients checked for, in the order shown.
CLIENTS = ("podman", "skopeo", "docker", "buildah")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class Failed(Exception):
    """A check failed: ``str(exc)`` says what happened, ``hint`` what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass
class Run:
    """What the checks learn on the way (the registry's address, its challenge) and what they found."""

    url: str
    timeout: float
    credentials: Credentials | None
    challenge: dict[str, str] = field(default_factory=dict)
    failures: int = 0

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def get(self, path_or_url: str, credentials: Credentials | None = None) -> Response:
        url = path_or_url if "://" in path_or_url else f"{self.url}{path_or_url}"
        try:
            return exchange(url, credentials=credentials, timeout=self.timeout)
        except OSError as exc:  # URLError is an OSError
            raise Failed(f"no answer from {url}: {getattr(exc, 'reason', exc)}") from None


def _marks() -> tuple[str, str]:
    """✓ and ✗ where the terminal can show them, else ASCII."""
    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "OK", "FAIL"
    return "✓", "✗"


def check_clients(run: Run) -> str:
    found, missing = [], []
    for tool in CLIENTS:
        path = shutil.which(tool)
        if path is None:
            missing.append(tool)
            continue
        try:
            answer = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=run.timeout, check=False
            )
            version = (answer.stdout or answer.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            version = f"{tool} (version unknown)"
        found.append(version)
    if not found:
        raise Failed(f"none of {', '.join(CLIENTS)} is installed", "install podman, skopeo or docker")
    return "; ".join(found) + (f" (not installed: {', '.join(missing)})" if missing else "")


def check_dns(run: Run) -> str:
    try:
        infos = socket.getaddrinfo(run.host, run.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Failed(
            f"cannot resolve {run.host}: {exc.strerror}", "check the registry name and the DNS settings"
        ) from None
    addresses = sorted({str(info[4][0]) for info in infos})
    return f"{run.host} is {', '.join(addresses)}"


def check_tcp(run: Run) -> str:
    where = f"{run.host}:{run.port}"
    try:
        with socket.create_connection((run.host, run.port), timeout=run.timeout):
            return f"connected to {where}"
    except ConnectionRefusedError:
        raise Failed(
            f"connection to {where} refused",
            f"is `dockyard serve` running on port {run.port}? (it listens on 127.0.0.1 unless --host "
            "says otherwise; check firewalls and the load balancer)",
        ) from None
    except TimeoutError:
        raise Failed(f"connecting to {where} timed out", "check firewalls and network routes") from None
    except OSError as exc:
        raise Failed(f"cannot connect to {where}: {exc.strerror or exc}") from None


def check_tls(run: Run) -> str:
    if urlsplit(run.url).scheme != "https":
        return "not used (plain HTTP); container clients need it marked insecure (--tls-verify=false)"
    import ssl

    context = ssl.create_default_context()
    try:
        with (
            socket.create_connection((run.host, run.port), timeout=run.timeout) as raw,
            context.wrap_socket(raw, server_hostname=run.host) as tls,
        ):
            certificate = tls.getpeercert() or {}
            return f"{tls.version()}, certificate valid until {certificate.get('notAfter', '?')}"
    except ssl.SSLCertVerificationError as exc:
        raise Failed(
            f"the certificate of {run.host} is not trusted: {exc.verify_message}",
            "trust the registry's CA (`dockyard serve --tls self-signed` prints how) or point "
            "SSL_CERT_FILE at it",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise Failed(
            f"TLS handshake with {run.host}:{run.port} failed: {exc}",
            f"does the registry serve plain HTTP? then use http://{registry_host(run.url)}",
        ) from None


def check_challenge(run: Run) -> str:
    answer = run.get("/v2/")
    header = answer.headers.get("www-authenticate", "")
    if answer.status_code == 200:
        raise Failed(
            "GET /v2/ answers 200 without credentials: docker, podman and skopeo then never sign in, "
            "so their pushes fail",
            "is a proxy or another registry answering for Dockyard?",
        )
    if answer.status_code != 401 or not header.lower().startswith("bearer "):
        raise Failed(
            f"GET /v2/ answered {answer.status_code} without a Bearer challenge",
            "is this a Dockyard (OCI) registry? a proxy in front of it may rewrite the answer",
        )
    run.challenge = dict(_CHALLENGE_PARAM.findall(header))
    if "realm" not in run.challenge:
        raise Failed(f"the challenge names no token realm: {header}")
    return f"GET /v2/ asks for a token from {run.challenge['realm']}"


def check_token(run: Run) -> str:
    host = registry_host(run.url)
    if run.credentials is None:
        raise Failed(
            f"no credentials for {host}",
            f"run `dockyard login {host}` or set DOCKYARD_USERNAME and DOCKYARD_PASSWORD",
        )
    realm = run.challenge.get("realm") or f"{run.url}/oauth2/token"
    service = run.challenge.get("service")
    url = f"{realm}?service={service}" if service else realm
    answer = run.get(url, run.credentials)
    if answer.status_code == 401:
        raise Failed(refused_login_message(run.url, run.credentials, f"HTTP {answer.status_code}"))
    try:
        token = answer.json().get("access_token") or answer.json().get("token")
    except (ValueError, AttributeError):
        token = None
    if answer.status_code != 200 or not token:
        raise Failed(f"{realm} answered {answer.status_code} without a token")
    return f"a token was issued to the credentials from {run.credentials.source}"


def check_ready(run: Run) -> str:
    answer = run.get("/readyz")
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code == 200:
        return "GET /readyz: database and storage answer"
    down = [f"{name}: {state}" for name, state in (body.get("checks") or {}).items() if state != "ok"]
    raise Failed(
        f"GET /readyz answered {answer.status_code}" + (f" ({'; '.join(down)})" if down else ""),
        "see the registry's log for why the database or blob store does not answer",
    )


CHECKS: list[tuple[str, Callable[[Run], str]]] = [
    ("local clients", check_clients),
    ("DNS", check_dns),
    ("TCP", check_tcp),
    ("TLS", check_tls),
    ("registry API", check_challenge),
    ("token", check_token),
    ("readiness", check_ready),
]


def check_health(
    registry: RegistryOption = None,
    ignore_errors: Annotated[
        bool, typer.Option("--ignore-errors", help="Run every check even after one fails.")
    ] = False,
    yes: YesOption = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds allowed for each network step.")] = 10.0,
) -> None:
    """Check the local clients and the registry: DNS, TCP, TLS, /v2/ challenge, a token, /readyz.

    Prints ✓ or ✗ with a hint per check and exits 1 when one fails. --yes is accepted as by
    `az acr check-health`; this command never asks anything.
    """
    url = registry_url(registry)
    run = Run(url=url, timeout=timeout, credentials=credentials_for(registry_host(url)))
    good, bad = _marks()
    typer.echo(f"Checking {url}")
    for name, check in CHECKS:
        try:
            detail = check(run)
        except Failed as exc:
            run.failures += 1
            typer.echo(f"{bad} {name}: {exc}")
            if exc.hint:
                typer.echo(f"    hint: {exc.hint}")
            if not ignore_errors:
                break
        else:
            typer.echo(f"{good} {name}: {detail}")
    if run.failures:
        rest = "" if ignore_errors else "; --ignore-errors runs the remaining checks"
        typer.echo(f"{run.failures} check(s) failed{rest}", err=True)
        raise typer.Exit(1)
    typer.echo("The registry is healthy.")

"""`dockyard login` and `dockyard logout` (as `az acr login`, `docker login`)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from dockyard.cli import credentials as store
from dockyard.cli.client import error_message, registry_host, registry_url, send
from dockyard.cli.output import fail

RegistryArgument = Annotated[
    str | None,
    typer.Argument(
        help="Registry URL or host[:port] [env DOCKYARD_REGISTRY, default http://127.0.0.1:5000].",
        show_default=False,
    ),
]


def _request_token(url: str, username: str, password: str, *, offline: bool) -> dict[str, object]:
    """GET /oauth2/token with Basic auth; a refresh token too when ``offline``."""
    host = registry_host(url)
    params = {"offline_token": "true", "client_id": "dockyard-cli"} if offline else {}
    response = send(
        f"{url}/oauth2/token", params=params, credentials=store.Credentials(username, password, "login")
    )
    if response.status_code == 401:
        raise fail(f"login to {host} failed: wrong user name or password ({error_message(response)})")
    if response.status_code >= 300:
        raise fail(f"login to {host} failed: {error_message(response)}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise fail(f"{url}/oauth2/token did not answer with a token; is this a Dockyard registry?")
    return body


def _read_stdin() -> str:
    value = sys.stdin.read()
    return value.removesuffix("\n").removesuffix("\r")


def _credentials(
    host: str, username: str | None, password: str | None, password_stdin: bool, *, expose_token: bool
) -> tuple[str, str]:
    """-u/-p (or stdin), else the environment (else, for --expose-token, the stored login), else prompts."""
    if password is not None and password_stdin:
        raise fail("give --password or --password-stdin, not both", 2)
    if password_stdin:
        if not username:
            raise fail("--password-stdin needs --username", 2)
        password = _read_stdin()
        if not password:
            raise fail("--password-stdin: nothing was read from stdin", 2)
    elif password is not None:
        typer.echo(
            "WARNING: --password on the command line is visible to other users; use --password-stdin.",
            err=True,
        )
    if username is None and password is None:
        found = store.environment_credentials()
        if found is None and expose_token:
            found = store.stored_credentials(host)
        if found is not None:
            return found.username, found.password
    if not username:
        username = typer.prompt("Username")
    if not password:
        password = typer.prompt("Password", hide_input=True)
    return str(username), str(password)


def login(
    registry: RegistryArgument = None,
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="User, service principal or token.")
    ] = None,
    password: Annotated[
        str | None, typer.Option("--password", "-p", help="Password (prefer --password-stdin or the prompt).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    expose_token: Annotated[
        bool,
        typer.Option("--expose-token", "-t", help="Print an access token instead of storing the login."),
    ] = False,
) -> None:
    """Log in to a registry and store the login for docker, podman, skopeo, buildah and dockyard.

    Without -u/-p, DOCKYARD_USERNAME and DOCKYARD_PASSWORD are used when set; what is still
    missing is prompted for.
    """
    url = registry_url(registry)
    host = registry_host(url)
    username, password = _credentials(host, username, password, password_stdin, expose_token=expose_token)
    if expose_token:
        body = _request_token(url, username, password, offline=False)
        token = body.get("access_token") or body.get("token")
        if not isinstance(token, str):
            raise fail(f"{host} issued no access token")
        sys.stdout.write(json.dumps({"accessToken": token, "loginServer": host}, indent=2) + "\n")
        return

    body = _request_token(url, username, password, offline=True)
    refresh = body.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise fail(f"{host} issued no refresh token for {username!r}; nothing was stored")
    helper = store.credential_helper(host)
    if helper:
        typer.echo(
            f"WARNING: docker uses the credential helper {helper!r} for {host}; docker will not see "
            f"the login written to {store.docker_config_path()} (podman, skopeo and dockyard will).",
            err=True,
        )
    written = store.store(host, store.NULL_GUID, refresh)
    store.remember_registry(url)
    for path in written:
        typer.echo(f"Login for {host} saved in {path}", err=True)
    typer.echo(f"dockyard commands now default to {url} (--registry or DOCKYARD_REGISTRY override)", err=True)
    typer.echo("Login Succeeded")


def logout(registry: RegistryArgument = None) -> None:
    """Remove the stored login for a registry from docker's and the containers auth file."""
    url = registry_url(registry)
    host = registry_host(url)
    store.forget_registry(url)
    removed = store.remove(host)
    if not removed:
        typer.echo(f"Not logged in to {host}")
        return
    for path in removed:
        typer.echo(f"Removed login credentials for {host} from {path}")

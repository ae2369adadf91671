"""`dockyard cache …` and `dockyard credential-set …`: the pull-through cache (as `az acr cache`)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from dockyard.cli.client import RegistryClient, connect, delete_confirmed
from dockyard.cli.options import RegistryOption, YesOption
from dockyard.cli.output import OutputFormat, emit, fail, output_option

RULE_COLUMNS = ["name", "sourceRepository", "targetRepository", "credentialSetName", "creationDate"]
SET_COLUMNS = ["name", "loginServer", "username", "creationDate", "lastUpdatedDate"]

cache_app = typer.Typer(
    help="Manage cache rules: pulls of a target repository come from an upstream registry.",
    no_args_is_help=True,
)
credential_set_app = typer.Typer(
    help="Manage credential sets: the user name and password a cache rule signs in upstream with.",
    no_args_is_help=True,
)

RuleName = Annotated[str, typer.Option("--name", "-n", help="Rule name: 5-50 letters, digits and dashes.")]
SetName = Annotated[
    str, typer.Option("--name", "-n", help="Credential set name: 5-50 letters, digits, dashes.")
]
CredSetOption = Annotated[
    str | None, typer.Option("--cred-set", "-c", help="The credential set the rule signs in upstream with.")
]
PasswordOption = Annotated[
    str | None,
    typer.Option("--password", "-p", help="The upstream password or token; '-' reads it from stdin."),
]


def _rule_path(client: RegistryClient, name: str) -> str:
    return f"/api/v1/cache-rules/{client.segment(name)}"


def _set_path(client: RegistryClient, name: str) -> str:
    return f"/api/v1/credential-sets/{client.segment(name)}"


def _password(value: str | None, *, required: bool) -> str | None:
    """--password, or stdin for ``-`` or when it is required and not given."""
    if value is None and not required:
        return None
    if value is None or value == "-":
        value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
        if not value:
            raise fail("--password: give it, or pipe it on stdin with --password -", 2)
    return value


# -- cache rules ----------------------------------------------------------------------------------


@cache_app.command("create")
def create_rule(
    name: RuleName,
    source_repo: Annotated[
        str,
        typer.Option(
            "--source-repo",
            "-s",
            help="login-server/repository or login-server/prefix/* (e.g. docker.io/library/ubuntu).",
        ),
    ],
    target_repo: Annotated[
        str,
        typer.Option("--target-repo", "-t", help="The local repository, or prefix/* with a wildcard source."),
    ],
    cred_set: CredSetOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Create a cache rule."""
    body: dict[str, Any] = {"name": name, "sourceRepository": source_repo, "targetRepository": target_repo}
    if cred_set:
        body["credentialSetName"] = cred_set
    with connect(registry) as client:
        emit(client.json("POST", "/api/v1/cache-rules", json=body), output, RULE_COLUMNS)


@cache_app.command("update")
def update_rule(
    name: RuleName,
    cred_set: CredSetOption = None,
    remove_cred_set: Annotated[
        bool, typer.Option("--remove-cred-set", help="Pull anonymously from the upstream from now on.")
    ] = False,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Change a cache rule's credential set."""
    if cred_set is not None and remove_cred_set:
        raise fail("give --cred-set or --remove-cred-set, not both", 2)
    if cred_set is None and not remove_cred_set:
        raise fail("nothing to update: give --cred-set or --remove-cred-set", 2)
    body = {"credentialSetName": None if remove_cred_set else cred_set}
    with connect(registry) as client:
        emit(client.json("PATCH", _rule_path(client, name), json=body), output, RULE_COLUMNS)


@cache_app.command("show")
def show_rule(name: RuleName, registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Show a cache rule."""
    with connect(registry) as client:
        emit(client.json("GET", _rule_path(client, name)), output, RULE_COLUMNS)


@cache_app.command("list")
def list_rules(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """List cache rules."""
    with connect(registry) as client:
        emit(client.json("GET", "/api/v1/cache-rules")["value"], output, RULE_COLUMNS)


@cache_app.command("delete")
def delete_rule(
    name: RuleName,
    yes: YesOption = False,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Delete a cache rule; what it cached stays, and its repositories take pushes again."""
    delete_confirmed(
        registry, f"cache rule {name}", lambda c: _rule_path(c, name), name, yes=yes, output=output
    )


# -- credential sets ------------------------------------------------------------------------------


@credential_set_app.command("create")
def create_set(
    name: SetName,
    login_server: Annotated[
        str, typer.Option("--login-server", "-l", help="The upstream registry: host[:port].")
    ],
    username: Annotated[str, typer.Option("--username", "-u", help="The upstream user name.")],
    password: PasswordOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Create a credential set (without --password the password is read from stdin)."""
    body = {
        "name": name,
        "loginServer": login_server,
        "username": username,
        "password": _password(password, required=True),
    }
    with connect(registry) as client:
        emit(client.json("POST", "/api/v1/credential-sets", json=body), output, SET_COLUMNS)


@credential_set_app.command("update")
def update_set(
    name: SetName,
    login_server: Annotated[
        str | None, typer.Option("--login-server", "-l", help="A new login server.")
    ] = None,
    username: Annotated[str | None, typer.Option("--username", "-u", help="A new user name.")] = None,
    password: PasswordOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Change a credential set; options not given keep their values. A new --login-server needs
    --username and --password too: the stored password only goes to the server it was given for."""
    body: dict[str, Any] = {}
    if login_server is not None:
        body["loginServer"] = login_server
    if username is not None:
        body["username"] = username
    secret = _password(password, required=False)
    if secret is not None:
        body["password"] = secret
    if not body:
        raise fail("nothing to update: give --login-server, --username or --password", 2)
    with connect(registry) as client:
        emit(client.json("PATCH", _set_path(client, name), json=body), output, SET_COLUMNS)


@credential_set_app.command("show")
def show_set(name: SetName, registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Show a credential set (never its password)."""
    with connect(registry) as client:
        emit(client.json("GET", _set_path(client, name)), output, SET_COLUMNS)


@credential_set_app.command("list")
def list_sets(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """List credential sets."""
    with connect(registry) as client:
        emit(client.json("GET", "/api/v1/credential-sets")["value"], output, SET_COLUMNS)


@credential_set_app.command("delete")
def delete_set(
    name: SetName,
    yes: YesOption = False,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Delete a credential set no cache rule uses."""
    delete_confirmed(
        registry, f"credential set {name}", lambda c: _set_path(c, name), name, yes=yes, output=output
    )

"""`dockyard scope-map …` and `dockyard token …`: repository-scoped tokens (as `az acr scope-map|token`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand

from dockyard.cli.client import RegistryClient, connect, delete_confirmed
from dockyard.cli.options import ExpiryOption, RegistryOption, Status, YesOption, rewrite_variadic, shown_once
from dockyard.cli.output import OutputFormat, emit, fail, output_option

#: Options that take a repository followed by any number of actions, as az does.
REPOSITORY_OPTIONS = ("--repository", "--add-repository", "--remove-repository")
SCOPE_MAP_COLUMNS = ["name", "type", "description", "actions", "creationTime"]
TOKEN_COLUMNS = ["name", "status", "scopeMap", "creationTime"]
CREDENTIAL_COLUMNS = ["name", "value", "creationTime", "expiry"]


def join_repository_actions(args: Sequence[str]) -> list[str]:
    """Rewrite az's ``--repository REPO ACTION [ACTION…]`` into ``--repository REPO=ACTION,ACTION``.

    click options take a fixed number of values, so the actions after the repository are
    folded into one value before parsing. ``--repository REPO=ACTION,ACTION`` passes unchanged.
    """

    def fold(option: str, words: list[str]) -> list[str]:
        repository, actions = words[0], words[1:]
        if actions:
            repository += ("," if "=" in repository else "=") + ",".join(actions)
        return [option, repository]

    return rewrite_variadic(args, REPOSITORY_OPTIONS, fold)


class RepositoryActionsCommand(TyperCommand):
    """A command whose repository options accept ``REPO ACTION [ACTION…]``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_repository_actions(args))


def parse_repository_actions(values: Sequence[str] | None, option: str) -> dict[str, list[str]]:
    """``REPO=ACTION,ACTION`` values as {repository: [actions]} (repeats merge)."""
    rules: dict[str, list[str]] = {}
    for value in values or ():
        repository, _, actions = value.partition("=")
        names = [a.strip() for a in actions.split(",") if a.strip()]
        if not repository or not names:
            raise fail(f"{option} takes a repository and its actions: {option} REPO ACTION [ACTION…]", 2)
        merged = rules.setdefault(repository, [])
        merged += [a for a in names if a not in merged]
    return rules


def _emit_credentials(name: str, passwords: list[dict[str, Any]], output: OutputFormat) -> None:
    if output is OutputFormat.json:
        emit({"username": name, "passwords": passwords}, output)
    else:
        emit([{"username": name, **p} for p in passwords], output, ["username", *CREDENTIAL_COLUMNS])


# -- dockyard scope-map --------------------------------------------------------------------------

scope_map_app = typer.Typer(
    help="Manage scope maps: which repositories a token may use, and how.", no_args_is_help=True
)
ScopeMapName = Annotated[str, typer.Option("--name", "-n", help="Scope map name.")]
ACTIONS_HELP = "content/read, content/write, content/delete, metadata/read, metadata/write"


def _scope_map_path(client: RegistryClient, name: str) -> str:
    return f"/api/v1/scope-maps/{client.segment(name)}"


@scope_map_app.command("create", cls=RepositoryActionsCommand)
def scope_map_create(
    name: ScopeMapName,
    repository: Annotated[
        list[str],
        typer.Option(
            "--repository",
            metavar="REPO ACTION...",
            help=f"REPO ACTION [ACTION…] (repeatable; or REPO=ACTION,ACTION). REPO may be 'prefix/*' or '*'. "
            f"Actions: {ACTIONS_HELP}.",
        ),
    ],
    description: Annotated[str | None, typer.Option("--description", help="What the map is for.")] = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Create a scope map."""
    body: dict[str, Any] = {"name": name, "actions": parse_repository_actions(repository, "--repository")}
    if description is not None:
        body["description"] = description
    with connect(registry) as client:
        emit(client.json("POST", "/api/v1/scope-maps", json=body), output, SCOPE_MAP_COLUMNS)


@scope_map_app.command("update", cls=RepositoryActionsCommand)
def scope_map_update(
    name: ScopeMapName,
    add_repository: Annotated[
        list[str] | None,
        typer.Option(
            "--add-repository",
            metavar="REPO ACTION...",
            help="REPO ACTION [ACTION…] to add (repeatable; or REPO=ACTION,ACTION).",
        ),
    ] = None,
    remove_repository: Annotated[
        list[str] | None,
        typer.Option(
            "--remove-repository",
            metavar="REPO ACTION...",
            help="REPO ACTION [ACTION…] to remove (repeatable; or REPO=ACTION,ACTION).",
        ),
    ] = None,
    description: Annotated[str | None, typer.Option("--description", help="A new description.")] = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Add and remove repository actions; every token using the map sees the change at once."""
    body: dict[str, Any] = {
        "add": parse_repository_actions(add_repository, "--add-repository"),
        "remove": parse_repository_actions(remove_repository, "--remove-repository"),
    }
    if description is not None:
        body["description"] = description
    if not body["add"] and not body["remove"] and description is None:
        raise fail("nothing to update: give --add-repository, --remove-repository or --description", 2)
    with connect(registry) as client:
        emit(client.json("PATCH", _scope_map_path(client, name), json=body), output, SCOPE_MAP_COLUMNS)


@scope_map_app.command("list")
def scope_map_list(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """List scope maps, the built-in ones included."""
    with connect(registry) as client:
        emit(client.json("GET", "/api/v1/scope-maps")["value"], output, SCOPE_MAP_COLUMNS)


@scope_map_app.command("show")
def scope_map_show(
    name: ScopeMapName, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """Show a scope map."""
    with connect(registry) as client:
        emit(client.json("GET", _scope_map_path(client, name)), output, SCOPE_MAP_COLUMNS)


@scope_map_app.command("delete")
def scope_map_delete(
    name: ScopeMapName,
    yes: YesOption = False,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Delete a scope map no token uses."""
    delete_confirmed(
        registry, f"scope map {name}", lambda c: _scope_map_path(c, name), name, yes=yes, output=output
    )


# -- dockyard token ------------------------------------------------------------------------------

token_app = typer.Typer(
    help="Manage repository-scoped tokens (user name: the token's name).", no_args_is_help=True
)
token_credential_app = typer.Typer(help="Regenerate a token's passwords.", no_args_is_help=True)
token_app.add_typer(token_credential_app, name="credential")
TokenName = Annotated[str, typer.Option("--name", "-n", help="Token name (the user name it logs in with).")]


def _token_path(client: RegistryClient, name: str) -> str:
    return f"/api/v1/tokens/{client.segment(name)}"


@token_app.command("create")
def token_create(
    name: TokenName,
    scope_map: Annotated[
        str, typer.Option("--scope-map", help="The scope map that says what the token may do.")
    ],
    status: Annotated[
        Status, typer.Option("--status", help="Whether the token may log in.")
    ] = Status.enabled,
    expiration_in_days: ExpiryOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Create a token with two generated passwords (printed only now)."""
    body: dict[str, Any] = {"name": name, "scopeMap": scope_map, "status": status.value}
    if expiration_in_days is not None:
        body["expiresInDays"] = expiration_in_days
    with connect(registry) as client:
        created = client.json("POST", "/api/v1/tokens", json=body)
    shown_once("token's passwords")
    if output is OutputFormat.json:
        emit(created, output)
    else:
        _emit_credentials(created["name"], created.get("credentials", []), output)


@token_app.command("list")
def token_list(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """List tokens."""
    with connect(registry) as client:
        emit(client.json("GET", "/api/v1/tokens")["value"], output, TOKEN_COLUMNS)


@token_app.command("show")
def token_show(
    name: TokenName, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """Show a token (its passwords' dates, never their values)."""
    with connect(registry) as client:
        emit(client.json("GET", _token_path(client, name)), output, TOKEN_COLUMNS)


@token_app.command("update")
def token_update(
    name: TokenName,
    scope_map: Annotated[
        str | None, typer.Option("--scope-map", help="Bind the token to another scope map.")
    ] = None,
    status: Annotated[Status | None, typer.Option("--status", help="Enable or disable the token.")] = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Change a token's scope map or status."""
    body: dict[str, Any] = {}
    if scope_map is not None:
        body["scopeMap"] = scope_map
    if status is not None:
        body["status"] = status.value
    if not body:
        raise fail("nothing to update: give --scope-map or --status", 2)
    with connect(registry) as client:
        emit(client.json("PATCH", _token_path(client, name), json=body), output, TOKEN_COLUMNS)


@token_app.command("delete")
def token_delete(
    name: TokenName,
    yes: YesOption = False,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Delete a token; it can no longer log in."""
    delete_confirmed(registry, f"token {name}", lambda c: _token_path(c, name), name, yes=yes, output=output)


@token_credential_app.command("generate")
def token_credential_generate(
    name: TokenName,
    password1: Annotated[bool, typer.Option("--password1", help="Regenerate the first password.")] = False,
    password2: Annotated[bool, typer.Option("--password2", help="Regenerate the second password.")] = False,
    expiration_in_days: ExpiryOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Regenerate a token's passwords (both unless --password1 or --password2); printed only now."""
    names = [n for n, wanted in (("password", password1), ("password2", password2)) if wanted]
    extra = {} if expiration_in_days is None else {"expiresInDays": expiration_in_days}
    with connect(registry) as client:
        generated = [
            client.json("POST", f"{_token_path(client, name)}/credentials", json={"name": n, **extra})
            for n in names or ["password", "password2"]
        ]
    shown_once("new passwords")
    _emit_credentials(name, generated, output)

"""`dockyard user …`, `dockyard sp …` and `dockyard role assignment …`: identities with roles.

No ``from __future__ import annotations`` here: the user and service principal commands are
built by one factory whose option annotations use its arguments, so typer must see them
evaluated, not as strings.
"""

from typing import Annotated, Any

import typer

from dockyard.cli.client import RegistryClient, connect, delete_confirmed
from dockyard.cli.options import ExpiryOption, RegistryOption, Status, YesOption, shown_once
from dockyard.cli.output import OutputFormat, emit, fail, output_option

IDENTITY_COLUMNS = ["name", "kind", "status", "description", "roles", "creationTime"]
ROLE_COLUMNS = ["id", "assignee", "role", "scope", "createdTime"]
ROLES = ("AcrPull", "AcrPush", "AcrDelete", "AcrImageSigner", "Reader", "Contributor", "Owner")


def identity_app(path: str, noun: str, *, name_required: bool) -> typer.Typer:
    """The create/list/show/update/delete/credential reset commands of users or service principals."""
    app = typer.Typer(
        help=f"Manage {noun}s: identities that log in with a secret and get roles.", no_args_is_help=True
    )
    credential_app = typer.Typer(help=f"Reset a {noun}'s secret.", no_args_is_help=True)
    app.add_typer(credential_app, name="credential")
    name_option = Annotated[str, typer.Option("--name", "-n", help=f"The {noun}'s name (its user name).")]
    _add_create(app, path, noun, name_required)
    _add_read_update_delete(app, path, noun, name_option)
    _add_credential_reset(credential_app, path, noun, name_option)
    return app


def _item(client: RegistryClient, path: str, name: str) -> str:
    return f"/api/v1/{path}/{client.segment(name)}"


def _add_create(app: typer.Typer, path: str, noun: str, name_required: bool) -> None:
    name_help = f"The {noun}'s name" + (
        " (its user name)." if name_required else "; default: a generated app id (the user name)."
    )

    @app.command("create")
    def create(
        name: Annotated[str | None, typer.Option("--name", "-n", help=name_help)] = None,
        description: Annotated[str | None, typer.Option("--description", help="Who or what it is.")] = None,
        registry: RegistryOption = None,
        output: OutputFormat = output_option,
    ) -> None:
        if name_required and not name:
            raise fail("--name is required", 2)
        body: dict[str, Any] = {}
        if name:
            body["name"] = name
        if description is not None:
            body["description"] = description
        with connect(registry) as client:
            created = client.json("POST", f"/api/v1/{path}", json=body)
        shown_once(f"{noun}'s secret")
        if output is OutputFormat.json:
            emit(created, output)
        else:
            secret = next((c.get("value") for c in created.get("credentials", []) if c.get("value")), None)
            emit({"name": created["name"], "secret": secret}, output, ["name", "secret"])

    create.__doc__ = f"Create a {noun} with a generated secret (printed only now)."


def _add_read_update_delete(app: typer.Typer, path: str, noun: str, name_option: Any) -> None:
    @app.command("list")
    def list_(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
        with connect(registry) as client:
            emit(client.json("GET", f"/api/v1/{path}")["value"], output, IDENTITY_COLUMNS)

    @app.command("show")
    def show(
        name: name_option, registry: RegistryOption = None, output: OutputFormat = output_option
    ) -> None:
        with connect(registry) as client:
            emit(client.json("GET", _item(client, path, name)), output, IDENTITY_COLUMNS)

    @app.command("update")
    def update(
        name: name_option,
        status: Annotated[Status, typer.Option("--status", help="Enable or disable sign-in.")],
        registry: RegistryOption = None,
        output: OutputFormat = output_option,
    ) -> None:
        with connect(registry) as client:
            changed = client.json("PATCH", _item(client, path, name), json={"status": status.value})
        emit(changed, output, IDENTITY_COLUMNS)

    @app.command("delete")
    def delete(
        name: name_option,
        yes: YesOption = False,
        registry: RegistryOption = None,
        output: OutputFormat = output_option,
    ) -> None:
        delete_confirmed(
            registry,
            f"{noun} {name} and its role assignments",
            lambda c: _item(c, path, name),
            name,
            yes=yes,
            output=output,
        )

    list_.__doc__ = f"List {noun}s with their roles."
    show.__doc__ = f"Show a {noun}, its credentials' dates and its role assignments."
    update.__doc__ = f"Enable or disable a {noun}."
    delete.__doc__ = f"Delete a {noun} and its role assignments."


def _add_credential_reset(app: typer.Typer, path: str, noun: str, name_option: Any) -> None:
    @app.command("reset")
    def reset(
        name: name_option,
        expiration_in_days: ExpiryOption = None,
        registry: RegistryOption = None,
        output: OutputFormat = output_option,
    ) -> None:
        body: dict[str, Any] = {"name": "secret"}
        if expiration_in_days is not None:
            body["expiresInDays"] = expiration_in_days
        with connect(registry) as client:
            renewed = client.json("POST", f"{_item(client, path, name)}/credentials", json=body)
        shown_once("new secret")
        if output is OutputFormat.json:
            emit({"username": name, "passwords": [renewed]}, output)
        else:
            emit([{"username": name, **renewed}], output, ["username", "name", "value", "expiry"])

    reset.__doc__ = f"Generate a new secret for a {noun}; the old one stops working at once."


user_app = identity_app("users", "user", name_required=True)
sp_app = identity_app("service-principals", "service principal", name_required=False)

# -- dockyard role assignment --------------------------------------------------------------------

role_app = typer.Typer(help="Role-based access for users and service principals.", no_args_is_help=True)
assignment_app = typer.Typer(help="Assign roles, list and delete assignments.", no_args_is_help=True)
role_app.add_typer(assignment_app, name="assignment")
AssigneeOption = Annotated[str, typer.Option("--assignee", help="User or service principal name.")]
ScopeHelp = "registry, repository:NAME or repository:PREFIX/*"


@assignment_app.command("create")
def assignment_create(
    assignee: AssigneeOption,
    role: Annotated[str, typer.Option("--role", help=f"One of {', '.join(ROLES)}.")],
    scope: Annotated[str, typer.Option("--scope", help=ScopeHelp)] = "registry",
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Give a user or service principal a role on the registry or on repositories."""
    body = {"assignee": assignee, "role": role, "scope": scope}
    with connect(registry) as client:
        emit(client.json("POST", "/api/v1/role-assignments", json=body), output, ROLE_COLUMNS)


@assignment_app.command("list")
def assignment_list(
    assignee: Annotated[
        str | None, typer.Option("--assignee", help="Only this identity's assignments.")
    ] = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List role assignments."""
    params = {"assignee": assignee} if assignee else {}
    with connect(registry) as client:
        emit(client.json("GET", "/api/v1/role-assignments", params=params)["value"], output, ROLE_COLUMNS)


@assignment_app.command("delete")
def assignment_delete(
    assignment_id: Annotated[str | None, typer.Option("--id", help="The assignment's id.")] = None,
    assignee: Annotated[
        str | None, typer.Option("--assignee", help="With --role: delete by identity.")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", help="With --assignee: the role to remove.")] = None,
    scope: Annotated[str | None, typer.Option("--scope", help=f"With --assignee: {ScopeHelp}.")] = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Delete a role assignment by --id, or by --assignee and --role (and --scope, default any)."""
    if (assignment_id is None) == (assignee is None) or (assignee is not None and role is None):
        raise fail("give --id, or --assignee with --role [--scope]", 2)
    with connect(registry) as client:
        if assignment_id is not None:
            ids = [assignment_id]
        else:
            found = client.json("GET", "/api/v1/role-assignments", params={"assignee": assignee})["value"]
            ids = [a["id"] for a in found if a["role"] == role and (scope is None or a["scope"] == scope)]
            if not ids:
                raise fail(f"{assignee} has no {role} assignment" + (f" on {scope}" if scope else ""))
        for one in ids:
            client.request("DELETE", f"/api/v1/role-assignments/{client.segment(one)}")
    emit({"deleted": ids}, output)

"""Registry-wide commands: show, update, credential, network-rule, audit, signing-key (as `az acr`)."""

from __future__ import annotations

import enum
import ipaddress
from typing import Annotated, Any

import typer

from dockyard.cli.client import RegistryClient, connect, send
from dockyard.cli.options import RegistryOption, TopOption, TrueFalse, shown_once
from dockyard.cli.output import OutputFormat, emit, fail, output_option
from dockyard.tiers.table import Sku

REGISTRY = "/api/v1/registry"
PROPERTY_COLUMNS = [
    "name",
    "sku",
    "loginServer",
    "adminUserEnabled",
    "anonymousPullEnabled",
    "publicNetworkAccess",
    "networkRuleSet",
]
CREDENTIAL_COLUMNS = ["name", "value", "creationTime", "expiry"]


class DefaultAction(enum.StrEnum):
    Allow = "Allow"
    Deny = "Deny"


class PasswordName(enum.StrEnum):
    password = "password"  # noqa: S105 - a credential's name
    password2 = "password2"


class PasswordNumber(enum.StrEnum):
    one = "1"
    two = "2"


def show(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Show the registry's properties: SKU, login server, admin user, anonymous pull, network rules,
    policies."""
    with connect(registry) as client:
        emit(_with_policies(client, client.json("GET", REGISTRY)), output, PROPERTY_COLUMNS)


def _with_policies(client: RegistryClient, properties: dict[str, Any]) -> dict[str, Any]:
    """The properties with the lifecycle policies (ACR's ``policies`` object) added."""
    return {**properties, "policies": client.json("GET", f"{REGISTRY}/policies")}


def update(
    registry: RegistryOption = None,
    admin_enabled: Annotated[
        TrueFalse | None, typer.Option("--admin-enabled", help="Enable the admin user.")
    ] = None,
    anonymous_pull_enabled: Annotated[
        TrueFalse | None, typer.Option("--anonymous-pull-enabled", help="Let anyone pull without logging in.")
    ] = None,
    public_network_enabled: Annotated[
        TrueFalse | None,
        typer.Option("--public-network-enabled", help="Allow clients outside the private networks."),
    ] = None,
    default_action: Annotated[
        DefaultAction | None,
        typer.Option("--default-action", help="What happens to public clients no IP rule matches."),
    ] = None,
    sku: Annotated[
        Sku | None,
        typer.Option("--sku", help="The service tier; a downgrade is refused while the registry exceeds it."),
    ] = None,
    output: OutputFormat = output_option,
) -> None:
    """Change the registry's properties."""
    body: dict[str, Any] = {}
    if sku is not None:
        body["sku"] = {"name": sku.value}
    if admin_enabled is not None:
        body["adminUserEnabled"] = admin_enabled is TrueFalse.true
    if anonymous_pull_enabled is not None:
        body["anonymousPullEnabled"] = anonymous_pull_enabled is TrueFalse.true
    if public_network_enabled is not None:
        body["publicNetworkAccess"] = "Enabled" if public_network_enabled is TrueFalse.true else "Disabled"
    if default_action is not None:
        body["networkRuleSet"] = {"defaultAction": default_action.value}
    if not body:
        raise fail("nothing to update: give at least one property to change", 2)
    with connect(registry) as client:
        policies = client.json("GET", f"{REGISTRY}/policies")  # first: the change may end this login
        changed = client.json("PATCH", REGISTRY, json=body)
        emit({**changed, "policies": policies}, output, PROPERTY_COLUMNS)
        if body.get("adminUserEnabled") is False:
            _note_if_locked_out(client)


def _note_if_locked_out(client: RegistryClient) -> None:
    """Say so when disabling the admin user ended the login that did it, and how to undo it."""
    url = f"{client.base_url}{REGISTRY}"
    if send(url, credentials=client.credentials, timeout=client.timeout).status_code == 401:
        typer.echo(
            "NOTE: the admin user is disabled, and this login was the admin's: it no longer works. "
            "Sign in as another Owner, or run `dockyard admin enable --data-dir <folder>` "
            "(or with --database-url) where the registry's database is.",
            err=True,
        )


# -- dockyard credential -------------------------------------------------------------------------

credential_app = typer.Typer(help="Show and renew the admin user's passwords.", no_args_is_help=True)


def _emit_passwords(data: dict[str, Any], output: OutputFormat) -> None:
    if output is OutputFormat.json:
        emit(data, output)
    else:
        emit(
            [{"username": data.get("username"), **p} for p in data.get("passwords", [])],
            output,
            ["username", *CREDENTIAL_COLUMNS],
        )


@credential_app.command("show")
def credential_show(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Show the admin user's name and its passwords' dates (their values are never stored)."""
    with connect(registry) as client:
        _emit_passwords(client.json("GET", f"{REGISTRY}/credentials"), output)


@credential_app.command("renew")
def credential_renew(
    registry: RegistryOption = None,
    password_name: Annotated[
        PasswordName | None, typer.Option("--password-name", help="Which password to regenerate.")
    ] = None,
    password: Annotated[
        PasswordNumber | None, typer.Option("--password", help="Same as --password-name: 1 or 2.")
    ] = None,
    output: OutputFormat = output_option,
) -> None:
    """Regenerate one admin password; the old value stops working at once."""
    if (password_name is None) == (password is None):
        raise fail("give exactly one of --password-name password|password2 or --password 1|2", 2)
    name = (
        password_name.value
        if password_name
        else ("password" if password is PasswordNumber.one else "password2")
    )
    with connect(registry) as client:
        data = client.json("POST", f"{REGISTRY}/credentials/renew", json={"name": name})
    shown_once(f"new {name}")
    _emit_passwords(data, output)


# -- dockyard network-rule -----------------------------------------------------------------------

network_rule_app = typer.Typer(
    help="Manage the IP rules that let public clients in when the default action is Deny.",
    no_args_is_help=True,
)
IpOption = Annotated[str, typer.Option("--ip-address", help="An IPv4/IPv6 address or CIDR range.")]


def _rules(properties: dict[str, Any]) -> list[str]:
    return [rule["value"] for rule in (properties.get("networkRuleSet") or {}).get("ipRules") or []]


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise fail(f"{value!r} is not an IP address or CIDR range", 2) from None


def _change_rule(registry: str | None, rule: str, *, add: bool, output: OutputFormat) -> None:
    """Add or remove one rule (the server does it atomically); print the resulting rule set."""
    with connect(registry) as client:
        if add:
            updated = client.json("POST", f"{REGISTRY}/network-rules", json={"ipAddress": rule})
        else:
            updated = client.json("DELETE", f"{REGISTRY}/network-rules", params={"ipAddress": rule})
    rule_set = updated.get("networkRuleSet") or {}
    if output is OutputFormat.json:
        emit(rule_set, output)
    else:
        emit(rule_set.get("ipRules") or [], output, ["action", "value"])


@network_rule_app.command("list")
def network_rule_list(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """List the IP rules."""
    with connect(registry) as client:
        properties = client.json("GET", REGISTRY)
    emit((properties.get("networkRuleSet") or {}).get("ipRules") or [], output, ["action", "value"])


@network_rule_app.command("add")
def network_rule_add(
    ip_address: IpOption, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """Allow an address or range (rules apply while --default-action is Deny)."""
    _change_rule(registry, _network(ip_address), add=True, output=output)


@network_rule_app.command("remove")
def network_rule_remove(
    ip_address: IpOption, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """Remove an IP rule."""
    _change_rule(registry, _network(ip_address), add=False, output=output)


# -- dockyard audit ------------------------------------------------------------------------------

audit_app = typer.Typer(
    help="Read the audit log: sign-ins, failures and changes to access.", no_args_is_help=True
)


@audit_app.command("list")
def audit_list(
    registry: RegistryOption = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only events at or after this ISO 8601 time.")
    ] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only this action, e.g. login, token, user.create.")
    ] = None,
    top: TopOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List the newest audit events (oldest first; 100 unless --top)."""
    params: dict[str, Any] = {"limit": top or 100}
    if since:
        params["since"] = since
    if action:
        params["action"] = action
    with connect(registry) as client:
        events = client.json("GET", "/api/v1/audit", params=params)["events"]
    emit(events, output, ["id", "time", "action", "outcome", "principal", "clientIp", "detail"])


# -- dockyard signing-key ------------------------------------------------------------------------

signing_key_app = typer.Typer(help="The token service's signing keys.", no_args_is_help=True)


@signing_key_app.command("list")
def signing_key_list(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """List signing keys: the one without a retired time signs new tokens."""
    with connect(registry) as client:
        emit(
            client.json("GET", "/api/v1/signing-keys")["keys"], output, ["kid", "createdTime", "retiredTime"]
        )


@signing_key_app.command("rotate")
def signing_key_rotate(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Sign new tokens with a new key; tokens signed by older keys stay valid until they expire."""
    with connect(registry) as client:
        emit(client.json("POST", "/api/v1/signing-keys/rotate"), output, ["kid"])

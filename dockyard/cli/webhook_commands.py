"""`dockyard webhook …`: subscriptions that POST registry events to a URL (as `az acr webhook`)."""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand

from dockyard.cli.client import RegistryClient, connect, delete_confirmed
from dockyard.cli.options import RegistryOption, Status, TopOption, YesOption, rewrite_variadic
from dockyard.cli.output import OutputFormat, emit, fail, output_option

ACTIONS = ("push", "delete", "quarantine", "chart_push", "chart_delete", "build_succeeded", "build_failed")
#: Options that take several words, as az's do: ``--actions push delete``, ``--headers a=1 b=2``.
VARIADIC_OPTIONS = ("--actions", "--headers")
WEBHOOK_COLUMNS = ["name", "status", "actions", "scope", "payloadFormat", "hasSecret", "creationTime"]
DELIVERY_COLUMNS = [
    "id",
    "action",
    "status",
    "attempts",
    "results",
    "createdTime",
    "nextAttemptTime",
    "eventId",
]
PING_COLUMNS = ["id", "statusCode", "error", "durationMs"]


class PayloadFormat(enum.StrEnum):
    acr = "acr"
    cloudevents = "cloudevents"


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    delivering = "delivering"
    succeeded = "succeeded"
    dead = "dead"


def split_variadic(args: Sequence[str]) -> list[str]:
    """Rewrite ``--actions push delete`` into ``--actions push --actions delete`` (same for --headers).

    click options take a fixed number of values, so each word after one of these options, up
    to the next word that starts with ``-``, becomes a repetition of the option. Repeated
    options and ``--actions push,delete`` pass unchanged.
    """
    return rewrite_variadic(
        args, VARIADIC_OPTIONS, lambda option, words: [x for w in words for x in (option, w)]
    )


class VariadicCommand(TyperCommand):
    """A command whose --actions and --headers accept several words."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, split_variadic(args))


def parse_actions(values: Sequence[str] | None) -> list[str] | None:
    """``push delete`` / ``push,delete`` / repeated options → the actions (None when not given)."""
    if values is None:
        return None
    actions: list[str] = []
    for value in values:
        for action in re.split(r"[\s,]+", value.strip()):
            if action and action not in actions:
                actions.append(action)
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise fail(f"unknown action {unknown[0]!r}: use {', '.join(ACTIONS)}", 2)
    if not actions:
        raise fail(f"--actions needs at least one of {', '.join(ACTIONS)}", 2)
    return actions


def parse_headers(values: Sequence[str] | None) -> dict[str, str] | None:
    """``key[=value]`` words → a dict; ``--headers ""`` alone means no headers (None when not given)."""
    if values is None:
        return None
    headers: dict[str, str] = {}
    for value in values:
        if value == "":
            continue
        key, _, header_value = value.partition("=")
        if not key.strip():
            raise fail(f"--headers takes key=value words, not {value!r}", 2)
        headers[key.strip()] = header_value
    return headers


def read_secret(secret: str | None, secret_stdin: bool) -> str | None:
    """--secret or --secret-stdin (not both); None when neither is given."""
    if secret is not None and secret_stdin:
        raise fail("give --secret or --secret-stdin, not both", 2)
    if secret_stdin:
        value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
        if not value:
            raise fail("--secret-stdin: nothing was read from stdin", 2)
        return value
    if secret:
        typer.echo(
            "WARNING: --secret on the command line is visible to other users; use --secret-stdin.", err=True
        )
    return secret


def _path(client: RegistryClient, name: str, *rest: str) -> str:
    return "/".join([f"/api/v1/webhooks/{client.segment(name)}", *rest])


def _results(delivery: dict[str, Any]) -> str:
    """The attempts in one cell: each answer's status code, or ``error`` when there was none."""
    return ", ".join(
        str(a["statusCode"]) if a.get("statusCode") is not None else "error"
        for a in delivery.get("attemptLog") or []
    )


app = typer.Typer(
    help="Manage webhooks: POST registry events (push, delete, …) to a URL.", no_args_is_help=True
)
WebhookName = Annotated[str, typer.Option("--name", "-n", help="Webhook name: 5-50 letters and digits.")]
ActionsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--actions",
        metavar="ACTION...",
        help=f"Events to send (several words, repeated options or a comma list): {', '.join(ACTIONS)}.",
    ),
]
UriOption = Annotated[str | None, typer.Option("--uri", help="The http(s) URL events are POSTed to.")]
ScopeOption = Annotated[
    str | None,
    typer.Option(
        "--scope", help="repo:tag, repo:* or repo (= repo:latest); '*' wildcards. Default: every repository."
    ),
]
HeadersOption = Annotated[
    list[str] | None,
    typer.Option("--headers", metavar="KEY=VALUE...", help="Custom headers sent with every event."),
]
SecretOption = Annotated[
    str | None,
    typer.Option("--secret", help="HMAC key (16-256 characters) signing each body; prefer --secret-stdin."),
]
SecretStdinOption = Annotated[bool, typer.Option("--secret-stdin", help="Read the secret from stdin.")]
FormatOption = Annotated[
    PayloadFormat | None,
    typer.Option("--payload-format", help="acr: ACR's JSON; cloudevents: in a CloudEvents 1.0 envelope."),
]


def note_scope_without_tag(scope: str | None) -> None:
    """Say that a scope without ``:tag`` means ``:latest`` (ACR's rule), which surprises for ``team/*``."""
    if not scope:
        return
    repository, _, tag = scope.partition(":")
    if not tag:
        typer.echo(
            f"NOTE: the scope {scope!r} has no tag, so it means {repository + ':latest'!r} (as in ACR) and "
            f"matches only the tag 'latest'; use {repository + ':*'!r} for every tag.",
            err=True,
        )


@app.command("create", cls=VariadicCommand)
def create(
    name: WebhookName,
    uri: Annotated[str, typer.Option("--uri", help="The http(s) URL events are POSTed to.")],
    actions: ActionsOption = None,
    scope: ScopeOption = None,
    headers: HeadersOption = None,
    status: Annotated[Status, typer.Option("--status", help="Whether events are sent.")] = Status.enabled,
    secret: SecretOption = None,
    secret_stdin: SecretStdinOption = False,
    payload_format: FormatOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Create a webhook."""
    chosen = parse_actions(actions)
    if chosen is None:
        raise fail(f"--actions is required: one or more of {', '.join(ACTIONS)}", 2)
    body: dict[str, Any] = {"name": name, "serviceUri": uri, "actions": chosen, "status": status.value}
    if scope:
        body["scope"] = scope
    custom = parse_headers(headers)
    if custom:
        body["customHeaders"] = custom
    key = read_secret(secret, secret_stdin)
    if key:
        body["secret"] = key
    if payload_format is not None:
        body["payloadFormat"] = payload_format.value
    with connect(registry) as client:
        emit(client.json("POST", "/api/v1/webhooks", json=body), output, WEBHOOK_COLUMNS)
    note_scope_without_tag(scope)


@app.command("update", cls=VariadicCommand)
def update(
    name: WebhookName,
    uri: UriOption = None,
    actions: ActionsOption = None,
    scope: Annotated[
        str | None, typer.Option("--scope", help="A new scope; --scope '' sends every repository's events.")
    ] = None,
    headers: Annotated[
        list[str] | None,
        typer.Option(
            "--headers", metavar="KEY=VALUE...", help="Replace the custom headers; --headers '' removes them."
        ),
    ] = None,
    status: Annotated[Status | None, typer.Option("--status", help="Enable or disable the webhook.")] = None,
    secret: Annotated[
        str | None, typer.Option("--secret", help="A new HMAC key; --secret '' stops signing.")
    ] = None,
    secret_stdin: SecretStdinOption = False,
    payload_format: FormatOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Change a webhook; options not given keep their values."""
    body: dict[str, Any] = {}
    if uri is not None:
        body["serviceUri"] = uri
    chosen = parse_actions(actions)
    if chosen is not None:
        body["actions"] = chosen
    if scope is not None:
        body["scope"] = scope or None
    custom = parse_headers(headers)
    if custom is not None:
        body["customHeaders"] = custom
    if status is not None:
        body["status"] = status.value
    key = read_secret(secret, secret_stdin)
    if key is not None:
        body["secret"] = key or None
    if payload_format is not None:
        body["payloadFormat"] = payload_format.value
    if not body:
        raise fail(
            "nothing to update: give --uri, --actions, --scope, --headers, --status, --secret "
            "or --payload-format",
            2,
        )
    with connect(registry) as client:
        emit(client.json("PATCH", _path(client, name), json=body), output, WEBHOOK_COLUMNS)
    note_scope_without_tag(scope)


@app.command("delete")
def delete(
    name: WebhookName,
    yes: YesOption = False,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Delete a webhook with its delivery log; undelivered events are dropped."""
    delete_confirmed(
        registry,
        f"webhook {name} and its delivery log",
        lambda c: _path(c, name),
        name,
        yes=yes,
        output=output,
    )


@app.command("list")
def list_webhooks(registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """List webhooks."""
    with connect(registry) as client:
        emit(client.json("GET", "/api/v1/webhooks")["value"], output, WEBHOOK_COLUMNS)


@app.command("show")
def show(name: WebhookName, registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Show a webhook; `get-config` shows its URL and headers."""
    with connect(registry) as client:
        emit(client.json("GET", _path(client, name)), output, WEBHOOK_COLUMNS)


@app.command("get-config")
def get_config(
    name: WebhookName, registry: RegistryOption = None, output: OutputFormat = output_option
) -> None:
    """Show the URL a webhook posts to and its custom headers."""
    with connect(registry) as client:
        emit(client.json("GET", _path(client, name, "config")), output, ["serviceUri", "customHeaders"])


@app.command("ping")
def ping(name: WebhookName, registry: RegistryOption = None, output: OutputFormat = output_option) -> None:
    """Send a ping event now and report what the receiver answered (also in list-events)."""
    with connect(registry) as client:
        answer = client.json("POST", _path(client, name, "ping"))
    status = answer.get("statusCode")
    if status is None:
        typer.echo(f"WARNING: the ping was not delivered: {answer.get('error')}", err=True)
    elif not 200 <= status < 300:
        typer.echo(f"WARNING: the receiver answered HTTP {status}", err=True)
    emit(answer, output, PING_COLUMNS)


@app.command("list-events")
def list_events(
    name: WebhookName,
    status: Annotated[
        DeliveryStatus | None, typer.Option("--status", help="Only deliveries in this state.")
    ] = None,
    top: TopOption = None,
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """List a webhook's deliveries, newest first, each with its attempts (50 unless --top)."""
    params: dict[str, Any] = {"limit": top or 50}
    if status is not None:
        params["status"] = status.value
    with connect(registry) as client:
        found = client.json("GET", _path(client, name, "events"), params=params)["value"]
    if output is OutputFormat.json:
        emit(found, output)
    else:
        emit([{**d, "results": _results(d)} for d in found], output, DELIVERY_COLUMNS)


@app.command("redeliver")
def redeliver(
    name: WebhookName,
    delivery_id: Annotated[int, typer.Option("--id", min=1, help="The delivery's id (from list-events).")],
    registry: RegistryOption = None,
    output: OutputFormat = output_option,
) -> None:
    """Send a delivery again (a dead one, or one that succeeded), with a fresh retry window."""
    with connect(registry) as client:
        client.request("POST", _path(client, name, "events", str(delivery_id), "redeliver"))
    emit({"webhook": name, "id": delivery_id, "status": "pending"}, output, ["webhook", "id", "status"])

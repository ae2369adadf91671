"""`dockyard webhook …` and `dockyard event list` against a real `dockyard serve`, with a real receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dockyard.cli.webhook_commands import split_variadic
from tests.cli.conftest import Cli
from tests.e2e.support import DockyardServer, get_manifest, push_image, wait_for
from tests.support.images import OCI_MANIFEST, make_image
from tests.support.postgres import free_port
from tests.support.receiver import Receiver

pytestmark = pytest.mark.e2e

SECRET = "cli-webhook-secret-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def deliveries(cli: Cli, name: str, *args: str) -> list[dict]:
    return cli.json("webhook", "list-events", "--name", name, *args)


def json_with_stdin(cli: Cli, *args: str, stdin: str) -> dict:
    return json.loads(cli.ok(*args, "-o", "json", input=stdin).stdout)


def wait_received(receiver: Receiver, predicate, what: str, timeout: float = 30.0) -> None:
    """Block until ``predicate(received)`` holds (a condition, not a sleep)."""
    with receiver.lock:
        if not receiver.lock.wait_for(lambda: predicate(receiver.received), timeout):
            raise AssertionError(f"timed out waiting for {what}; got {len(receiver.received)} deliveries")


def test_variadic_options_become_repeated_options() -> None:
    assert split_variadic(["--actions", "push", "delete", "--headers", "a=1", "b=2,3", "-o", "json"]) == [
        "--actions", "push", "--actions", "delete", "--headers", "a=1", "--headers", "b=2,3", "-o", "json",
    ]  # fmt: skip
    assert split_variadic(["--actions=push", "delete", "--scope", "x"]) == [
        "--actions", "push", "--actions", "delete", "--scope", "x",
    ]  # fmt: skip
    assert split_variadic(["--actions", "push,delete", "--", "--actions", "x"]) == [
        "--actions", "push,delete", "--", "--actions", "x",
    ]  # fmt: skip
    assert split_variadic(["--name", "hook", "--actions"]) == ["--name", "hook", "--actions"]


def test_webhook_round_trip(admin: Cli, receiver: Receiver) -> None:
    created = json_with_stdin(
        admin, "webhook", "create", "--name", "cliHookOne", "--uri", receiver.url,
        "--actions", "push", "delete", "--scope", "cli-hook/app:*",
        "--headers", "X-Team=a", "X-Env=prod=1",
        "--secret-stdin", "--payload-format", "cloudevents",
        stdin=SECRET,
    )  # fmt: skip
    assert created == {
        **created,
        "name": "cliHookOne",
        "actions": ["delete", "push"],
        "scope": "cli-hook/app:*",
        "status": "enabled",
        "payloadFormat": "cloudevents",
        "hasSecret": True,
    }
    assert SECRET not in json.dumps(created)
    assert admin.json("webhook", "show", "--name", "cliHookOne") == created
    assert "cliHookOne" in [h["name"] for h in admin.json("webhook", "list")]
    assert admin.json("webhook", "get-config", "--name", "cliHookOne") == {
        "serviceUri": receiver.url,
        "customHeaders": {"X-Team": "a", "X-Env": "prod=1"},
    }
    table = admin.ok("webhook", "list", "-o", "table").stdout
    assert "cliHookOne" in table
    assert "cli-hook/app:*" in table

    # comma lists and repeated options, --headers '' and --secret '' clear
    updated = admin.json(
        "webhook", "update", "--name", "cliHookOne", "--actions", "push,chart_push",
        "--status", "disabled", "--headers", "", "--secret", "", "--payload-format", "acr", "--scope", "",
    )  # fmt: skip
    assert (updated["actions"], updated["status"], updated["hasSecret"]) == (
        ["chart_push", "push"],
        "disabled",
        False,
    )
    assert (updated["payloadFormat"], updated["scope"]) == ("acr", None)
    assert admin.json("webhook", "get-config", "--name", "cliHookOne")["customHeaders"] == {}
    updated = json_with_stdin(
        admin, "webhook", "update", "--name", "cliHookOne", "--actions", "push", "--actions", "delete",
        "--status", "enabled", "--headers", "X-Trace=1", "--secret-stdin", "--scope", "cli-hook/app",
        stdin=SECRET,
    )  # fmt: skip
    assert (updated["actions"], updated["status"], updated["hasSecret"]) == (
        ["delete", "push"],
        "enabled",
        True,
    )
    assert updated["scope"] == "cli-hook/app:latest"

    # ping reaches the receiver, signed, with the custom header; the delivery log shows it
    pinged = admin.json("webhook", "ping", "--name", "cliHookOne")
    assert pinged["statusCode"] == 200
    assert pinged["error"] is None
    (received,) = receiver.wait_for(1)
    assert received.json()["action"] == "ping"
    assert received.headers["X-Trace"] == "1"
    expected = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert received.headers["X-Dockyard-Signature-256"] == expected
    (delivery,) = deliveries(admin, "cliHookOne")
    assert delivery["id"] == pinged["id"]
    assert (delivery["action"], delivery["status"], delivery["attempts"]) == ("ping", "succeeded", 1)
    assert [a["statusCode"] for a in delivery["attemptLog"]] == [200]
    assert json.loads(delivery["eventRequestMessage"]["content"]) == received.json()
    assert delivery["eventRequestMessage"]["requestUri"] == receiver.url
    assert "X-Dockyard-Signature-256" not in delivery["eventRequestMessage"]["headers"]
    rows = admin.ok("webhook", "list-events", "--name", "cliHookOne", "-o", "tsv").stdout.splitlines()
    assert len(rows) == 1
    cells = rows[0].split("\t")
    assert cells[:5] == [str(pinged["id"]), "ping", "succeeded", "1", "200"]
    assert cells[-1] == delivery["eventId"]

    assert [d["id"] for d in deliveries(admin, "cliHookOne", "--status", "succeeded")] == [pinged["id"]]
    assert deliveries(admin, "cliHookOne", "--status", "dead") == []

    # redeliver sends the same bytes again, through the server's delivery worker
    redelivered = admin.json("webhook", "redeliver", "--name", "cliHookOne", "--id", str(pinged["id"]))
    assert redelivered == {"webhook": "cliHookOne", "id": pinged["id"], "status": "pending"}
    wait_received(receiver, lambda got: [r.body for r in got] == [received.body] * 2, "the redelivery")

    def attempted_twice() -> bool:
        (again,) = deliveries(admin, "cliHookOne")
        return again["status"] == "succeeded" and again["attempts"] == 2

    wait_for(attempted_twice, timeout=30, what="the redelivery to be logged")
    missing = admin.fails("webhook", "redeliver", "--name", "cliHookOne", "--id", "999999")
    assert "not found" in missing.stderr

    # a receiver that refuses: reported, not an error of the command
    receiver.script = [(503, {}, b"busy")]
    refused = admin.ok("webhook", "ping", "--name", "cliHookOne", "-o", "json")
    assert json.loads(refused.stdout)["statusCode"] == 503
    assert "the receiver answered HTTP 503" in refused.stderr
    (newest,) = deliveries(admin, "cliHookOne", "--top", "1")
    assert newest["id"] == json.loads(refused.stdout)["id"]
    assert newest["attemptLog"][0]["statusCode"] == 503

    declined = admin.run("webhook", "delete", "--name", "cliHookOne", input="n\n")
    assert declined.exit_code == 0
    assert "Not deleted: webhook cliHookOne and its delivery log." in declined.stderr
    assert admin.json("webhook", "delete", "--name", "cliHookOne", "--yes") == {"deleted": "cliHookOne"}
    assert "not found" in admin.fails("webhook", "show", "--name", "cliHookOne").stderr


def test_ping_to_nobody_reports_the_error(admin: Cli) -> None:
    admin.json(
        "webhook", "create", "-n", "cliNobody", "--uri", f"http://127.0.0.1:{free_port()}/hook",
        "--actions", "push",
    )  # fmt: skip
    result = admin.ok("webhook", "ping", "-n", "cliNobody", "-o", "json")
    answer = json.loads(result.stdout)
    assert answer["statusCode"] is None
    assert "Connect" in answer["error"]
    assert "the ping was not delivered" in result.stderr
    (delivery,) = deliveries(admin, "cliNobody")
    assert delivery["status"] in ("pending", "delivering")  # retried later by the worker
    assert delivery["attemptLog"][0]["error"] == answer["error"]
    admin.json("webhook", "delete", "-n", "cliNobody", "--yes")


def test_bad_command_lines_and_refusals(admin: Cli, receiver: Receiver) -> None:
    unknown = admin.fails(
        "webhook", "create", "-n", "cliBadOne", "--uri", receiver.url, "--actions", "pull", code=2
    )
    assert "unknown action 'pull'" in unknown.stderr
    assert admin.fails("webhook", "create", "-n", "cliBadOne", "--uri", receiver.url, code=2).exit_code == 2
    both = admin.run(
        "webhook", "create", "-n", "cliBadOne", "--uri", receiver.url, "--actions", "push",
        "--secret", "x" * 20, "--secret-stdin", input="y" * 20,
    )  # fmt: skip
    assert both.exit_code == 2
    assert admin.fails("webhook", "update", "-n", "cliBadOne", code=2).exit_code == 2
    assert admin.fails("webhook", "create", "-n", "cliBadOne", "--uri", receiver.url, "--actions", "push",
                       "--headers", "=v", code=2).exit_code == 2  # fmt: skip

    short = admin.fails("webhook", "create", "-n", "abc", "--uri", receiver.url, "--actions", "push")
    assert "INVALID_REQUEST" in short.stderr
    weak = admin.fails(
        "webhook", "create", "-n", "cliBadOne", "--uri", receiver.url, "--actions", "push",
        "--secret", "short",
    )  # fmt: skip
    assert "16 to 256" in weak.stderr
    assert "visible to other users" in weak.stderr
    reserved = admin.fails(
        "webhook", "create", "-n", "cliBadOne", "--uri", receiver.url, "--actions", "push",
        "--headers", "Host=x",
    )  # fmt: skip
    assert "cannot be set" in reserved.stderr

    admin.json("webhook", "create", "-n", "cliTwice", "--uri", receiver.url, "--actions", "push")
    twice = admin.fails("webhook", "create", "-n", "cliTwice", "--uri", receiver.url, "--actions", "push")
    assert "ALREADY_EXISTS" in twice.stderr
    admin.json("webhook", "delete", "-n", "cliTwice", "--yes")
    for command in ("show", "get-config", "ping", "list-events"):
        assert "not found" in admin.fails("webhook", command, "-n", "cliMissing").stderr


def test_events_reach_the_receiver_and_the_event_log(
    admin: Cli, registry: DockyardServer, receiver: Receiver
) -> None:
    admin.json(
        "webhook", "create", "-n", "cliEvents", "--uri", receiver.url, "--actions", "push", "delete",
        "--scope", "cli-hook/events:*",
    )  # fmt: skip
    image = make_image("cli-webhook-events")
    with registry.http(timeout=30) as http:
        push_image(http, "cli-hook/other", "v1", make_image("cli-webhook-other"))  # out of scope
        digest = push_image(http, "cli-hook/events", "v1", image)
        assert get_manifest(http, "cli-hook/events", "v1").status_code == 200
    (received,) = receiver.wait_for(1)
    pushed = received.json()
    assert pushed["action"] == "push"
    assert pushed["target"] == {
        "mediaType": OCI_MANIFEST,
        "size": len(image.manifest),
        "digest": digest,
        "length": len(image.manifest),
        "repository": "cli-hook/events",
        "tag": "v1",
    }

    logged = admin.json("event", "list", "--repository", "cli-hook/events")
    assert [e["action"] for e in logged] == ["push", "pull"]
    assert logged[0]["id"] == pushed["id"]
    assert logged[0]["time"] == pushed["timestamp"]
    assert (logged[0]["digest"], logged[0]["tag"], logged[0]["actor"]) == (digest, "v1", "dockyard")
    assert logged[0]["userAgent"] == pushed["request"]["useragent"]
    assert [e["repository"] for e in admin.json("event", "list", "--action", "pull", "--top", "1")] == [
        "cli-hook/events"
    ]
    pushes = admin.json("event", "list", "--action", "push", "--since", logged[0]["time"])
    assert pushes[0]["id"] == pushed["id"]
    assert all(e["action"] == "push" and e["time"] >= logged[0]["time"] for e in pushes)
    assert admin.json("event", "list", "--since", "2999-01-01T00:00:00Z") == []
    # the same instant written with an offset selects the same events
    pushed_at = datetime.fromisoformat(logged[0]["time"]).astimezone(timezone(timedelta(hours=2)))
    assert pushed_at.isoformat().endswith("+02:00")
    with_offset = admin.json(
        "event", "list", "--repository", "cli-hook/events", "--since", pushed_at.isoformat()
    )
    assert [e["action"] for e in with_offset] == ["push", "pull"]
    later = (pushed_at + timedelta(microseconds=1)).isoformat()
    assert [
        e["action"] for e in admin.json("event", "list", "--repository", "cli-hook/events", "--since", later)
    ] == ["pull"]
    table = admin.ok("event", "list", "--repository", "cli-hook/events", "-o", "tsv").stdout.splitlines()
    assert [row.split("\t")[2] for row in table] == ["push", "pull"]
    assert admin.fails("event", "list", "--action", "fly", code=2).exit_code == 2
    assert "since must be an ISO 8601 time" in admin.fails("event", "list", "--since", "yesterday").stderr

    (delivery,) = deliveries(admin, "cliEvents")
    assert (delivery["eventId"], delivery["status"]) == (pushed["id"], "succeeded")
    admin.json("webhook", "delete", "-n", "cliEvents", "--yes")


def test_worker_refuses_a_missing_database(cli: Cli, tmp_path: Path) -> None:
    result = cli.fails("worker", "--data-dir", str(tmp_path / "nothing"), registry=False)
    assert f"no data folder at {tmp_path / 'nothing'}" in result.stderr
    (tmp_path / "empty").mkdir()
    empty = cli.fails("worker", "--data-dir", str(tmp_path / "empty"), registry=False)
    assert f"no database at {tmp_path / 'empty' / 'dockyard.db'}" in empty.stderr
    assert not (tmp_path / "nothing").exists()


def test_a_scope_without_a_tag_is_explained(admin: Cli, receiver: Receiver) -> None:
    created = admin.ok(
        "webhook", "create", "-n", "cliScopeNote", "--uri", receiver.url, "--actions", "push",
        "--scope", "team/*", "-o", "json",
    )  # fmt: skip
    assert json.loads(created.stdout)["scope"] == "team/*:latest"
    assert (
        "NOTE: the scope 'team/*' has no tag, so it means 'team/*:latest' (as in ACR) and matches only "
        "the tag 'latest'; use 'team/*:*' for every tag." in created.stderr
    )
    tagged = admin.ok("webhook", "update", "-n", "cliScopeNote", "--scope", "team/*:*", "-o", "json")
    assert json.loads(tagged.stdout)["scope"] == "team/*:*"
    assert "NOTE" not in tagged.stderr
    admin.json("webhook", "delete", "-n", "cliScopeNote", "--yes")


def test_build_actions_can_be_subscribed(admin: Cli, receiver: Receiver) -> None:
    created = admin.json(
        "webhook", "create", "--name", "buildHook", "--uri", receiver.url,
        "--actions", "build_succeeded", "build_failed",
    )  # fmt: skip
    assert created["actions"] == ["build_failed", "build_succeeded"]

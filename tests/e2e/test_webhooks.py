"""Webhooks against real `dockyard serve` processes (issue #4): skopeo's pushes and deletes arrive as ACR's
payloads, failing receivers get retries, deliveries survive SIGKILL, signatures verify, pings answer,
scopes filter, and `dockyard worker` delivers for a server that runs without one."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServerFactory, server_group
from tests.e2e.support import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    ContainerTools,
    DockyardServer,
    clean_environment,
    dockyard_command,
    push_image,
    run,
    wait_for,
)
from tests.support.images import OCI_MANIFEST, make_image, write_oci_layout
from tests.support.postgres import free_port
from tests.support.receiver import Receiver

pytestmark = pytest.mark.e2e

#: Small retry delays and a quick poll, so retries take well under a few seconds.
FAST = {
    "DOCKYARD_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "DOCKYARD_WEBHOOK_RETRY_MAX_SECONDS": "0.4",
    "DOCKYARD_WEBHOOK_POLL_SECONDS": "0.1",
    "DOCKYARD_WEBHOOK_TIMEOUT_SECONDS": "2",
}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
SECRET = "e2e-webhook-signing-secret"

# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hook_server(tmp_path_factory: pytest.TempPathFactory, e2e_logs: Path) -> Iterator[DockyardServer]:
    """One registry with fast retries for the tests of this module that need no restart."""
    server = DockyardServer(
        log_dir=e2e_logs,
        port=free_port(),
        data_dir=tmp_path_factory.mktemp("webhooks") / "data",
        owner=__name__.replace(".", "/") + ".py",
        env=FAST,
    )
    with server_group() as group:
        yield group.start(server)


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory, hook_server: DockyardServer) -> Iterator[ContainerTools]:
    container_tools = ContainerTools(tmp_path_factory.mktemp("webhook-tools"))
    container_tools.authorize(hook_server.host)
    yield container_tools
    container_tools.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def receiver_on(port: int) -> Receiver:
    """A Receiver on ``port``: the support class picks a free port, a restart test needs a fixed one."""
    receiver = Receiver()
    handler = receiver.server.RequestHandlerClass
    receiver.server.server_close()
    receiver.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    receiver.server.daemon_threads = True
    receiver.thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    return receiver


def cli(
    server: DockyardServer, *args: str, stdin: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The real `dockyard` command, signed in through DOCKYARD_USERNAME/DOCKYARD_PASSWORD."""
    env = clean_environment(DOCKYARD_USERNAME=ADMIN_USERNAME, DOCKYARD_PASSWORD=ADMIN_PASSWORD)
    return run(
        dockyard_command(*args, "--registry", server.url), timeout=60, env=env, stdin=stdin, check=check
    )


def cli_json(server: DockyardServer, *args: str, stdin: str = "") -> Any:
    return json.loads(cli(server, *args, "-o", "json", stdin=stdin).stdout)


def deliveries(server: DockyardServer, name: str) -> list[dict[str, Any]]:
    with server.http(timeout=30) as http:
        response = http.get(f"/api/v1/webhooks/{name}/events")
    assert response.status_code == 200, response.text
    return response.json()["value"]


def settled(server: DockyardServer, name: str, count: int) -> list[dict[str, Any]]:
    """Wait until the webhook has ``count`` deliveries and none is waiting or in flight; return them."""

    def done() -> list[dict[str, Any]] | None:
        found = deliveries(server, name)
        if len(found) == count and all(d["status"] in ("succeeded", "dead") for d in found):
            return found
        return None

    return wait_for(done, timeout=30, what=f"{count} settled deliveries of webhook {name}")  # type: ignore[return-value]


def events(server: DockyardServer, **params: str) -> list[dict[str, Any]]:
    with server.http(timeout=30) as http:
        response = http.get("/api/v1/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()["value"]


def skopeo_user_agent() -> str:
    """What skopeo puts in User-Agent: ``skopeo/<version>``, the version from `skopeo --version`."""
    version = run(["skopeo", "--version"], timeout=30).stdout.split()[-1]
    return f"skopeo/{version}"


def split_request_id(payload: dict[str, Any]) -> str:
    """Check and remove the request id (a UUID the registry makes up per request); return it."""
    request_id = payload["request"].pop("id")
    assert UUID.match(request_id), request_id
    return request_id


def verify(secret: str, body: bytes, header: str) -> bool:
    """How a receiver checks X-Dockyard-Signature-256 (as docs/webhooks.md shows)."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


# -- the tests --------------------------------------------------------------------------------------


def test_skopeo_push_and_delete_send_acrs_payloads(
    hook_server: DockyardServer, tools: ContainerTools, receiver: Receiver, tmp_path: Path
) -> None:
    cli_json(
        hook_server, "webhook", "create", "--name", "e2epayload", "--uri", receiver.url,
        "--actions", "push", "delete", "--scope", "e2e/payload:*",
    )  # fmt: skip
    image = make_image("e2e-webhook-payload", layers=2)
    write_oci_layout(tmp_path / "layout", {"v1": image})
    reference = f"docker://{hook_server.host}/e2e/payload:v1"
    user_agent = skopeo_user_agent()

    tools.skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", reference)
    (pushed,) = receiver.wait_for(1)
    (push_event,) = events(hook_server, repository="e2e/payload", action="push")
    payload = pushed.json()
    push_request_id = split_request_id(payload)
    assert payload == {
        "id": push_event["id"],
        "timestamp": push_event["time"],
        "action": "push",
        "target": {
            "mediaType": OCI_MANIFEST,
            "size": len(image.manifest),
            "digest": image.digest,
            "length": len(image.manifest),
            "repository": "e2e/payload",
            "tag": "v1",
        },
        "request": {"host": hook_server.host, "method": "PUT", "useragent": user_agent},
    }
    assert pushed.headers["Content-Type"] == "application/json"
    assert pushed.headers["User-Agent"] == "Dockyard-Webhook/1.0"
    assert "X-Dockyard-Signature-256" not in pushed.headers  # no secret, no signature

    tools.skopeo("delete", "--tls-verify=false", reference)
    deleted = receiver.wait_for(2)[1]
    (delete_event,) = events(hook_server, repository="e2e/payload", action="delete")
    payload = deleted.json()
    assert split_request_id(payload) != push_request_id
    assert payload == {
        "id": delete_event["id"],
        "timestamp": delete_event["time"],
        "action": "delete",
        "target": {"mediaType": OCI_MANIFEST, "digest": image.digest, "repository": "e2e/payload"},
        "request": {"host": hook_server.host, "method": "DELETE", "useragent": user_agent},
    }

    # exactly these two: one delivery each, one attempt each, nothing else sent
    log = settled(hook_server, "e2epayload", 2)
    assert [(d["action"], d["status"], d["attempts"]) for d in log] == [
        ("delete", "succeeded", 1),
        ("push", "succeeded", 1),
    ]
    assert [d["eventId"] for d in log] == [delete_event["id"], push_event["id"]]
    assert [r.body for r in receiver.received] == [pushed.body, deleted.body]
    cli(hook_server, "webhook", "delete", "--name", "e2epayload", "--yes")


def test_a_receiver_that_fails_twice_gets_the_event_on_the_third_attempt(
    hook_server: DockyardServer, receiver: Receiver
) -> None:
    receiver.script = [(500, {}, b"boom"), (503, {}, b"busy")]
    cli_json(
        hook_server, "webhook", "create", "-n", "e2eretry", "--uri", receiver.url,
        "--actions", "push", "--scope", "e2e/retry:*",
    )  # fmt: skip
    image = make_image("e2e-webhook-retry")
    started = time.monotonic()
    with hook_server.http(timeout=30) as http:
        digest = push_image(http, "e2e/retry", "v1", image)
    got = receiver.wait_for(3, timeout=20)
    assert time.monotonic() - started < 5
    assert got[0].body == got[1].body == got[2].body  # the same event, byte for byte
    assert got[0].json()["target"]["digest"] == digest
    # backoff: base 0.2 s then 0.4 s, each with jitter of ±50 %
    assert got[1].time - got[0].time >= 0.1
    assert got[2].time - got[1].time >= 0.2

    (delivery,) = settled(hook_server, "e2eretry", 1)
    shown = cli_json(hook_server, "webhook", "list-events", "--name", "e2eretry")
    assert shown == [delivery]
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 3)
    assert [a["statusCode"] for a in delivery["attemptLog"]] == [500, 503, 200]
    assert delivery["eventResponseMessage"]["statusCode"] == 200
    assert delivery["eventId"] == got[0].json()["id"]
    table = cli(hook_server, "webhook", "list-events", "--name", "e2eretry", "-o", "table").stdout
    assert "500, 503, 200" in table
    assert len(receiver.received) == 3
    cli(hook_server, "webhook", "delete", "--name", "e2eretry", "--yes")


def test_the_signature_verifies_with_the_secret(hook_server: DockyardServer, receiver: Receiver) -> None:
    created = cli_json(
        hook_server, "webhook", "create", "-n", "e2esigned", "--uri", receiver.url,
        "--actions", "push", "--scope", "e2e/signed:*", "--secret-stdin",
        stdin=SECRET,
    )  # fmt: skip
    assert created["hasSecret"] is True
    shown = cli(hook_server, "webhook", "show", "-n", "e2esigned").stdout
    config = cli(hook_server, "webhook", "get-config", "-n", "e2esigned").stdout
    assert SECRET not in shown + config
    with hook_server.http(timeout=30) as http:
        push_image(http, "e2e/signed", "v1", make_image("e2e-webhook-signed"))
    (received,) = receiver.wait_for(1)
    header = received.headers["X-Dockyard-Signature-256"]
    assert header.startswith("sha256=")
    assert verify(SECRET, received.body, header)
    assert not verify(SECRET + "x", received.body, header)
    assert not verify(SECRET, received.body + b" ", header)
    cli(hook_server, "webhook", "delete", "--name", "e2esigned", "--yes")


def test_ping_reports_the_receivers_answer(hook_server: DockyardServer, receiver: Receiver) -> None:
    cli_json(hook_server, "webhook", "create", "-n", "e2epinged", "--uri", receiver.url, "--actions", "push")
    answered = cli_json(hook_server, "webhook", "ping", "-n", "e2epinged")
    assert answered["statusCode"] == 200
    assert answered["error"] is None
    (ping,) = receiver.wait_for(1)
    assert ping.json()["action"] == "ping"

    receiver.script = [(503, {}, b"down for maintenance")]
    refused = cli(hook_server, "webhook", "ping", "-n", "e2epinged", "-o", "json")
    assert json.loads(refused.stdout)["statusCode"] == 503
    assert "the receiver answered HTTP 503" in refused.stderr
    newest = deliveries(hook_server, "e2epinged")[0]
    assert (newest["action"], newest["attemptLog"][0]["statusCode"]) == ("ping", 503)
    cli(hook_server, "webhook", "delete", "--name", "e2epinged", "--yes")


def test_the_service_uri_never_reaches_the_server_log(
    hook_server: DockyardServer, receiver: Receiver
) -> None:
    """A URI often carries a credential (Azure Functions' ``?code=``): the delivery log, the audit log
    and ``show`` hide it, and so must the server's own log (httpx logs each request's URL)."""
    uri = f"{receiver.url}?code=e2e-uri-credential"
    cli_json(hook_server, "webhook", "create", "-n", "e2equiet", "--uri", uri, "--actions", "push")
    assert cli_json(hook_server, "webhook", "ping", "-n", "e2equiet")["statusCode"] == 200
    (ping,) = receiver.wait_for(1)
    assert ping.path.endswith("?code=e2e-uri-credential")
    cli(hook_server, "webhook", "delete", "--name", "e2equiet", "--yes")
    assert "/api/v1/webhooks/e2equiet/ping" in hook_server.stderr()  # the access log is there
    assert "e2e-uri-credential" not in hook_server.stderr()


def test_scopes_select_the_events(hook_server: DockyardServer) -> None:
    scopes = {"e2eall": None, "e2escopea": "e2e/a:*", "e2elatest": "e2e/a", "e2ev1tags": "e2e/*:v1"}
    with (
        Receiver() as every,
        Receiver() as only_a,
        Receiver() as latest,
        Receiver() as v1_tags,
    ):
        receivers = {"e2eall": every, "e2escopea": only_a, "e2elatest": latest, "e2ev1tags": v1_tags}
        for name, scope in scopes.items():
            args = ["--scope", scope] if scope else []
            created = cli_json(
                hook_server, "webhook", "create", "-n", name, "--uri", receivers[name].url,
                "--actions", "push", "delete", *args,
            )  # fmt: skip
            assert created["scope"] == {"e2e/a": "e2e/a:latest"}.get(scope, scope)
        with hook_server.http(timeout=30) as http:
            a_v1 = push_image(http, "e2e/a", "v1", make_image("e2e-scope-a-v1"))
            push_image(http, "e2e/a", "latest", make_image("e2e-scope-a-latest"))
            push_image(http, "e2e/b", "v1", make_image("e2e-scope-b-v1"))
            assert http.delete(f"/v2/e2e/a/manifests/{a_v1}").status_code == 202

        def seen(receiver: Receiver) -> list[str]:
            out = []
            for received in receiver.received:
                target = received.json()["target"]
                out.append(f"{received.json()['action']} {target['repository']}:{target.get('tag', '')}")
            return sorted(out)

        # every event of this test reached the unscoped webhook, so every delivery has been created
        wait_for(lambda: len(seen(every)) >= 4, timeout=30, what="the unscoped webhook's four events")
        for name, count in (("e2eall", 4), ("e2escopea", 3), ("e2elatest", 1), ("e2ev1tags", 2)):
            settled(hook_server, name, count)
        assert seen(every) == ["delete e2e/a:", "push e2e/a:latest", "push e2e/a:v1", "push e2e/b:v1"]
        assert seen(only_a) == ["delete e2e/a:", "push e2e/a:latest", "push e2e/a:v1"]
        assert seen(latest) == ["push e2e/a:latest"]
        assert seen(v1_tags) == ["push e2e/a:v1", "push e2e/b:v1"]
    for name in scopes:
        cli(hook_server, "webhook", "delete", "--name", name, "--yes")


def test_undelivered_events_survive_sigkill(start_server: ServerFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = {**FAST, "DOCKYARD_WEBHOOK_TIMEOUT_SECONDS": "1"}  # a lease left by the kill expires in 3 s
    server = start_server(data_dir=data_dir, env=settings)
    port = free_port()  # nothing listens here yet
    cli_json(
        server, "webhook", "create", "-n", "e2ecrash", "--uri", f"http://127.0.0.1:{port}/hook",
        "--actions", "push",
    )  # fmt: skip
    image = make_image("e2e-webhook-crash")
    with server.http(timeout=30) as http:
        digest = push_image(http, "e2e/crash", "v1", image)

    def failing_and_waiting() -> bool:
        found = deliveries(server, "e2ecrash")
        return bool(found) and found[0]["status"] == "pending" and found[0]["attempts"] >= 1

    wait_for(failing_and_waiting, timeout=30, what="a failed attempt to the closed port")
    (failed,) = deliveries(server, "e2ecrash")
    assert failed["attemptLog"][0]["statusCode"] is None
    assert "Connect" in failed["attemptLog"][0]["error"]
    (push_event,) = events(server, repository="e2e/crash", action="push")
    assert failed["eventId"] == push_event["id"]
    server.kill()

    with receiver_on(port) as receiver:
        restarted = start_server(data_dir=data_dir, env=settings)
        (received,) = receiver.wait_for(1, timeout=30)
        payload = received.json()
        assert payload["id"] == push_event["id"]
        assert (payload["action"], payload["target"]["digest"], payload["target"]["tag"]) == (
            "push",
            digest,
            "v1",
        )
        assert received.path == "/hook"
        (delivery,) = settled(restarted, "e2ecrash", 1)
        assert delivery["id"] == failed["id"]
        assert delivery["status"] == "succeeded"
        assert delivery["attempts"] >= 2
        assert delivery["attemptLog"][-1]["statusCode"] == 200
        assert all(a["statusCode"] is None for a in delivery["attemptLog"][:-1])
        assert len(receiver.received) == 1


def test_dockyard_worker_delivers_for_a_server_without_one(
    start_server: ServerFactory, tmp_path: Path, e2e_logs: Path, receiver: Receiver
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir, env={**FAST, "DOCKYARD_RUN_WORKER": "false"})
    cli_json(server, "webhook", "create", "-n", "e2eworker", "--uri", receiver.url, "--actions", "push")
    with server.http(timeout=30) as http:
        first = push_image(http, "e2e/worker", "v1", make_image("e2e-worker-first"))
    logged = cli_json(server, "event", "list", "--repository", "e2e/worker", "--action", "push")
    assert [e["digest"] for e in logged] == [first]
    assert deliveries(server, "e2eworker") == []  # nothing in `serve` turns events into deliveries
    assert receiver.received == []

    log_path = e2e_logs / f"worker-{server.port}.log"
    worker_started = datetime.now().astimezone()
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            dockyard_command("worker", "--data-dir", str(data_dir)),
            env=clean_environment(**FAST),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        (received,) = receiver.wait_for(1, timeout=30)
        assert received.json()["id"] == logged[0]["id"]
        (delivery,) = settled(server, "e2eworker", 1)
        created = datetime.fromisoformat(delivery["createdTime"].replace("Z", "+00:00"))
        assert created >= worker_started, "the server dispatched the event before the worker started"

        # the worker keeps polling: an event written by the server later is delivered too
        with server.http(timeout=30) as http:
            second = push_image(http, "e2e/worker", "v2", make_image("e2e-worker-second"))
        assert receiver.wait_for(2, timeout=30)[1].json()["target"]["digest"] == second

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    output = log_path.read_text()
    assert f"from sqlite:///{(data_dir / 'dockyard.db').resolve()}" in output, output
    assert "SIGTERM: finishing the work in flight" in output
    assert "dockyard worker stopped" in output
    assert "Traceback" not in output
    with httpx.Client(timeout=10) as http:  # the server is still serving, alone
        assert http.get(f"{server.url}/v2/", auth=(ADMIN_USERNAME, ADMIN_PASSWORD)).status_code == 200


def test_by_default_webhooks_are_not_sent_to_loopback(
    start_server: ServerFactory, tmp_path: Path, receiver: Receiver
) -> None:
    data_dir = tmp_path / "data"
    allowing = start_server(data_dir=data_dir, env=FAST)  # the suite allows 127.0.0.0/8
    cli_json(allowing, "webhook", "create", "-n", "e2elocal", "--uri", receiver.url, "--actions", "push")
    allowing.stop()

    server = start_server(data_dir=data_dir, env={**FAST, "DOCKYARD_WEBHOOK_ALLOWED_NETWORKS": ""})
    with server.http(timeout=30) as http:
        created = http.post(
            "/api/v1/webhooks", json={"name": "e2eother", "serviceUri": receiver.url, "actions": ["push"]}
        )
        assert created.status_code == 400
        assert "127.0.0.1 is a loopback address" in created.json()["errors"][0]["message"]
        push_image(http, "e2e/local", "v1", make_image("e2e-loopback"))

    def refused_attempt() -> dict[str, Any] | None:
        found = deliveries(server, "e2elocal")
        return found[0] if found and found[0]["attemptLog"] else None

    delivery = wait_for(refused_attempt, timeout=30, what="a refused delivery attempt")
    assert delivery["attemptLog"][0]["error"] == (  # type: ignore[index]
        "not sent: 127.0.0.1 is a loopback address (webhook_allowed_networks can allow it)"
    )
    assert receiver.received == []

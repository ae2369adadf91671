"""Webhooks end to end inside one process: events from real pushes, deliveries to a real receiver."""

import hashlib
import hmac
import json
import time

import anyio
import pytest
import sqlalchemy as sa

from dockyard.webhooks.delivery import TRUNCATED, new_client
from dockyard.webhooks.jobs import DeliveryWorker
from tests.support.auth import basic
from tests.support.images import canonical, make_image, make_index
from tests.support.receiver import Receiver
from tests.support.registry import error_codes, fast_webhook_settings, push_blob, push_image

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


@pytest.fixture
def settings(settings):
    return fast_webhook_settings(settings, ["127.0.0.0/8"])  # the receivers listen on 127.0.0.1


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def deliver(dockyard, rounds: int = 20) -> None:
    """Run the webhooks consumer and the real delivery worker round after round until nothing is due."""
    worker = DeliveryWorker(dockyard.webhooks, concurrency=8, timeout_seconds=1.0, poll_seconds=0.01)

    async def run() -> None:
        async with new_client(1.0, dockyard.webhooks.allowed_networks) as client:
            for _ in range(rounds):
                dockyard.runtime.consume()
                async with anyio.create_task_group() as group:
                    started = await worker.step(client, group)
                if not started:
                    return

    anyio.run(run)


def deliver_until(dockyard, predicate, timeout: float = 10.0) -> None:
    """Deliver rounds until ``predicate()`` holds (retries come due after their backoff)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "deliveries did not settle in time"
        deliver(dockyard)


def first_status(client, name="hookone"):
    log = client.get(f"/api/v1/webhooks/{name}/events").json()["value"]
    return log[0]["status"] if log else None


def create(client, name="hookone", **body):
    response = client.post("/api/v1/webhooks", json={"name": name, **body})
    assert response.status_code == 201, response.text
    return response.json()


def test_create_show_config_update_delete(client, receiver):
    hook = create(
        client,
        serviceUri=receiver.url,
        actions=["push", "delete"],
        customHeaders={"X-Team": "a"},
        scope="team/a:*",
    )
    assert hook == {
        **hook,
        "name": "hookone",
        "actions": ["delete", "push"],
        "scope": "team/a:*",
        "status": "enabled",
        "payloadFormat": "acr",
        "hasSecret": False,
    }
    assert "customHeaders" not in client.get("/api/v1/webhooks/hookone").json()
    assert client.get("/api/v1/webhooks/hookone/config").json() == {
        "serviceUri": receiver.url,
        "customHeaders": {"X-Team": "a"},
    }
    updated = client.patch("/api/v1/webhooks/hookone", json={"status": "disabled", "scope": "team/b"}).json()
    assert updated["status"] == "disabled"
    assert updated["scope"] == "team/b:latest"
    assert [h["name"] for h in client.get("/api/v1/webhooks").json()["value"]] == ["hookone"]
    assert client.delete("/api/v1/webhooks/hookone").status_code == 204
    assert client.get("/api/v1/webhooks/hookone").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"name": "abc", "serviceUri": "http://x.example/h", "actions": ["push"]},
        {"name": "has-dash", "serviceUri": "http://x.example/h", "actions": ["push"]},
        {"name": "okname", "serviceUri": "ftp://x.example/h", "actions": ["push"]},
        {"name": "okname", "serviceUri": "/relative", "actions": ["push"]},
        {"name": "okname", "serviceUri": "http://x.example/h", "actions": []},
        {"name": "okname", "serviceUri": "http://x.example/h", "actions": ["pull"]},
        {
            "name": "okname",
            "serviceUri": "http://x.example/h",
            "actions": ["push"],
            "customHeaders": {"Host": "x"},
        },
        {
            "name": "okname",
            "serviceUri": "http://x.example/h",
            "actions": ["push"],
            "customHeaders": {"X-A": "line\r\nbreak"},
        },
        {
            "name": "okname",
            "serviceUri": "http://x.example/h",
            "actions": ["push"],
            "customHeaders": {"bad name": "v"},
        },
        {"name": "okname", "serviceUri": "http://x.example/h", "actions": ["push"], "scope": "Bad Scope"},
        {"name": "okname", "serviceUri": "http://x.example/h", "actions": ["push"], "secret": "short"},
        {"name": "okname", "serviceUri": "http://x.example/h", "actions": ["push"], "payloadFormat": "xml"},
    ],
)
def test_invalid_webhooks_are_refused_at_creation(client, body):
    response = client.post("/api/v1/webhooks", json=body)
    assert response.status_code == 400, body
    assert error_codes(response) == ["INVALID_REQUEST"]


def test_the_webhook_limit_is_the_tiers(client):
    assert client.patch("/api/v1/registry", json={"sku": {"name": "Basic"}}).status_code == 200
    for name in ("first1", "second2"):
        create(client, name, serviceUri="http://x.example/h", actions=["push"])
    response = client.post(
        "/api/v1/webhooks", json={"name": "third3", "serviceUri": "http://x.example/h", "actions": ["push"]}
    )
    assert response.status_code == 409
    assert error_codes(response) == ["LIMIT_EXCEEDED"]
    assert "the Basic tier allows 2 webhooks" in response.json()["errors"][0]["message"]


def test_push_and_delete_payloads_are_acrs(client, dockyard, receiver):
    create(client, serviceUri=receiver.url, actions=["push", "delete"], customHeaders={"X-Token": "abc"})
    image = make_image("payload")
    push_image(client, "team/app", image, "v1")
    client.delete(f"/v2/team/app/manifests/{image.digest}", headers={"User-Agent": "cleanup/1.0"})
    deliver(dockyard)
    by_action = {r.json()["action"]: r.json() for r in receiver.wait_for(2)}  # sent concurrently: any order
    pushed, deleted = by_action["push"], by_action["delete"]
    assert set(pushed) == {"id", "timestamp", "action", "target", "request"}
    assert pushed["action"] == "push"
    assert pushed["timestamp"].endswith("Z")
    assert pushed["target"] == {
        "mediaType": image.media_type,
        "size": len(image.manifest),
        "digest": image.digest,
        "length": len(image.manifest),
        "repository": "team/app",
        "tag": "v1",
    }
    assert pushed["request"]["method"] == "PUT"
    assert pushed["request"]["host"] == "testserver"
    assert set(pushed["request"]) == {"id", "host", "method", "useragent"}
    assert deleted["action"] == "delete"
    assert deleted["target"] == {
        "mediaType": image.media_type,
        "digest": image.digest,
        "repository": "team/app",
    }
    assert deleted["request"]["method"] == "DELETE"
    assert deleted["request"]["useragent"] == "cleanup/1.0"
    for received in receiver.received:
        assert received.headers["Content-Type"] == "application/json"
        assert received.headers["X-Token"] == "abc"


def test_no_event_for_a_push_that_failed(client, dockyard, receiver):
    create(client, serviceUri=receiver.url, actions=["push"])
    image = make_image("never")
    response = client.put(
        "/v2/team/app/manifests/v1", content=image.manifest, headers={"Content-Type": image.media_type}
    )
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    deliver(dockyard)
    assert receiver.received == []
    assert dockyard.events.list() == []


def test_untag_and_pull_are_logged_but_not_sent(client, dockyard, receiver):
    create(client, serviceUri=receiver.url, actions=["push", "delete"])
    push_image(client, "team/app", make_image("log"), "v1")
    assert client.get("/v2/team/app/manifests/v1").status_code == 200
    client.delete("/v2/team/app/manifests/v1")
    deliver(dockyard)
    assert [r.json()["action"] for r in receiver.received] == ["push"]
    events = client.get("/api/v1/events", params={"repository": "team/app"}).json()["value"]
    assert [e["action"] for e in events] == ["push", "pull", "untag"]
    assert {e["actor"] for e in events} == {"dockyard"}
    assert events[1]["tag"] == "v1"
    assert [e["action"] for e in client.get("/api/v1/events", params={"action": "pull"}).json()["value"]] == [
        "pull"
    ]


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (None, ["team/a:v1", "team/a:latest", "team/b:v1"]),
        ("team/a:*", ["team/a:v1", "team/a:latest"]),
        ("team/a:v1", ["team/a:v1"]),
        ("team/a", ["team/a:latest"]),
        ("team/*:v1", ["team/a:v1", "team/b:v1"]),
    ],
)
def test_scope_filters(client, dockyard, receiver, scope, expected):
    create(client, serviceUri=receiver.url, actions=["push"], **({"scope": scope} if scope else {}))
    image = make_image("scoped")
    for repository, tag in (("team/a", "v1"), ("team/a", "latest"), ("team/b", "v1")):
        push_image(client, repository, image, tag)
    deliver(dockyard)
    got = [f"{r.json()['target']['repository']}:{r.json()['target']['tag']}" for r in receiver.received]
    assert sorted(got) == sorted(expected)


def test_helm_charts_raise_chart_events(client, dockyard, receiver):
    create(client, "charts", serviceUri=receiver.url, actions=["chart_push", "chart_delete"])
    create(client, "images", serviceUri=receiver.url + "/images", actions=["push"])
    config = push_blob(client, "charts/app", b'{"name":"app","version":"1.2.3"}')
    layer = push_blob(client, "charts/app", b"chart tarball")
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": HELM_CONFIG, "digest": config, "size": 32},
            "layers": [{"mediaType": HELM_LAYER, "digest": layer, "size": 13}],
        }
    )
    assert (
        client.put(
            "/v2/charts/app/manifests/1.2.3",
            content=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        ).status_code
        == 201
    )
    digest = client.head("/v2/charts/app/manifests/1.2.3").headers["docker-content-digest"]
    client.delete(f"/v2/charts/app/manifests/{digest}")
    deliver(dockyard)
    bodies = {r.json()["action"]: r.json() for r in receiver.received}
    assert sorted(bodies) == ["chart_delete", "chart_push"]
    assert bodies["chart_push"]["target"]["mediaType"] == "application/vnd.acr.helm.chart"
    assert bodies["chart_push"]["target"]["name"] == "app"
    assert bodies["chart_push"]["target"]["version"] == "1.2.3"
    assert all(r.path == "/hook" for r in receiver.received)


def test_a_receiver_that_fails_twice_gets_the_event_on_the_third_attempt(client, dockyard, receiver):
    create(client, serviceUri=receiver.url, actions=["push"])
    receiver.script = [(500, {}, b"boom"), (503, {}, b"busy")]
    push_image(client, "team/app", make_image("retry"), "v1")
    deliver_until(dockyard, lambda: len(receiver.received) >= 3)
    bodies = [r.body for r in receiver.received]
    assert bodies[0] == bodies[1] == bodies[2]  # the same event, byte for byte
    (delivery,) = client.get("/api/v1/webhooks/hookone/events").json()["value"]
    assert delivery["status"] == "succeeded"
    assert delivery["attempts"] == 3
    assert [a["statusCode"] for a in delivery["attemptLog"]] == [500, 503, 200]
    assert delivery["eventResponseMessage"]["statusCode"] == 200
    assert json.loads(delivery["eventRequestMessage"]["content"])["action"] == "push"


def test_dead_letter_and_redelivery(client, dockyard, receiver):
    dockyard.webhooks._window = dockyard.webhooks._window.__class__(seconds=0.05)
    create(client, serviceUri=receiver.url, actions=["push"])
    receiver.script = [(500, {}, b"down")] * 50
    push_image(client, "team/app", make_image("dead"), "v1")
    deliver_until(dockyard, lambda: first_status(client) == "dead")
    (dead,) = client.get("/api/v1/webhooks/hookone/events", params={"status": "dead"}).json()["value"]
    receiver.script = []
    assert client.post(f"/api/v1/webhooks/hookone/events/{dead['id']}/redeliver").status_code == 202
    deliver_until(dockyard, lambda: first_status(client) == "succeeded")
    assert receiver.received[-1].body == receiver.received[0].body


def test_signature_verifies(client, dockyard, receiver):
    secret = "a-shared-secret-of-some-length"
    create(client, serviceUri=receiver.url, actions=["push"], secret=secret)
    push_image(client, "team/app", make_image("signed"), "v1")
    deliver(dockyard)
    (received,) = receiver.wait_for(1)
    expected = "sha256=" + hmac.new(secret.encode(), received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received.headers["X-Dockyard-Signature-256"], expected)


def test_cloudevents_envelope(client, dockyard, receiver):
    create(client, serviceUri=receiver.url, actions=["push"], payloadFormat="cloudevents")
    image = make_image("cloud")
    push_image(client, "team/app", image, "v1")
    deliver(dockyard)
    (received,) = receiver.wait_for(1)
    assert received.headers["Content-Type"] == "application/cloudevents+json"
    event = received.json()
    assert event["specversion"] == "1.0"
    assert event["type"] == "Microsoft.ContainerRegistry.ImagePushed"
    assert event["source"] == "/registries/dockyard"
    assert event["subject"] == "team/app:v1"
    assert event["data"]["target"]["digest"] == image.digest
    assert event["id"] == event["data"]["id"]


def test_ping(client, receiver):
    create(client, serviceUri=receiver.url, actions=["push"])
    answered = client.post("/api/v1/webhooks/hookone/ping").json()
    assert answered["statusCode"] == 200
    (received,) = receiver.wait_for(1)
    assert received.json()["action"] == "ping"
    log = client.get("/api/v1/webhooks/hookone/events").json()["value"]
    assert [(d["action"], d["status"]) for d in log] == [("ping", "succeeded")]


def test_misbehaving_receivers_are_bounded_and_recorded(client, dockyard, receiver):
    create(client, "redirect", serviceUri=receiver.url, actions=["push"])
    create(client, "hugebody", serviceUri=receiver.url, actions=["push"])
    create(client, "nobodyhome", serviceUri="http://127.0.0.1:9/hook", actions=["push"])
    metadata = "http://169.254.169.254/latest/meta-data/"
    receiver.script = [(302, {"Location": metadata}, b""), (500, {}, b"x" * 100_000)]
    push_image(client, "team/app", make_image("misbehaving"), "v1")
    deliver(dockyard, rounds=1)
    receiver.wait_for(2)
    logs = {
        name: client.get(f"/api/v1/webhooks/{name}/events").json()["value"][0]
        for name in ("redirect", "hugebody", "nobodyhome")
    }
    statuses = sorted(log["attemptLog"][0]["statusCode"] or 0 for log in logs.values())
    assert statuses == [0, 302, 500]  # the redirect is not followed
    assert len(receiver.received) == 2
    assert all(log["status"] == "pending" for log in logs.values())
    big = next(log for log in logs.values() if log["attemptLog"][0]["statusCode"] == 500)
    assert big["eventResponseMessage"]["content"] == "x" * 1024 + TRUNCATED
    refused = logs["nobodyhome"]["eventResponseMessage"]
    assert refused["statusCode"] is None
    assert "Connect" in refused["error"]


def test_a_hanging_receiver_does_not_delay_the_others(client, dockyard, receiver):
    with Receiver() as slow:
        slow.script = [slow.hang]
        create(client, "slowone", serviceUri=slow.url, actions=["push"])
        create(client, "fastone", serviceUri=receiver.url, actions=["push"])
        push_image(client, "team/app", make_image("parallel"), "v1")
        started = time.time()
        deliver(dockyard, rounds=1)
        (fast,) = receiver.wait_for(1)
        assert fast.time - started < 0.9  # well before the slow one's 1 s timeout
        slow_log = client.get("/api/v1/webhooks/slowone/events").json()["value"][0]
        assert "within 1s" in slow_log["eventResponseMessage"]["error"]


def test_index_push_and_disabled_webhooks(client, dockyard, receiver):
    create(client, serviceUri=receiver.url, actions=["push"], status="disabled")
    amd = make_image("idx")
    push_image(client, "team/app", amd)
    client.put(
        "/v2/team/app/manifests/multi",
        content=make_index([amd]),
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    deliver(dockyard)
    assert receiver.received == []
    assert [e.action for e in dockyard.events.list()] == ["push", "push"]


def test_pushes_before_the_first_webhook_are_passed_over_unread(client, dockyard, receiver):
    """With no webhook, the consumer moves its cursor past events without reading them; a webhook
    created afterwards gets only what is pushed after it."""
    for tag in ("v1", "v2"):
        push_image(client, "team/app", make_image(tag), tag)
    statements: list[str] = []
    engine = dockyard.db.engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        assert dockyard.runtime.consume() >= 2
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    assert not any("repository_events.uid" in sql for sql in statements), "an event row was read"
    create(client, serviceUri=receiver.url, actions=["push"])
    push_image(client, "team/app", make_image("v3"), "v3")
    deliver(dockyard)
    assert [r.json()["target"]["tag"] for r in receiver.wait_for(1)] == ["v3"]


def test_disabled_webhooks_hold_queued_deliveries(client, dockyard, receiver):
    create(client, serviceUri=receiver.url, actions=["push"])
    push_image(client, "team/app", make_image("held"), "v1")
    dockyard.runtime.consume()
    client.patch("/api/v1/webhooks/hookone", json={"status": "disabled"})
    deliver(dockyard)
    assert receiver.received == []
    assert first_status(client) == "pending"
    client.patch("/api/v1/webhooks/hookone", json={"status": "enabled"})
    deliver(dockyard)
    assert [r.json()["action"] for r in receiver.wait_for(1)] == ["push"]


def test_old_events_and_finished_deliveries_are_pruned(client, dockyard, receiver):
    from datetime import timedelta

    from dockyard.db import utcnow

    create(client, serviceUri=receiver.url, actions=["push"])
    push_image(client, "team/app", make_image("pruned"), "v1")
    deliver(dockyard)
    receiver.wait_for(1)
    push_image(client, "team/app", make_image("unread"), "v2")  # not yet read by the consumer
    assert dockyard.events.prune(utcnow() - timedelta(days=1), ["webhooks"]) == 0
    assert dockyard.webhooks.prune(utcnow() - timedelta(days=1)) == 0
    later = utcnow() + timedelta(seconds=1)
    assert dockyard.events.prune(later, ["webhooks"]) == 1  # the event the consumer has read
    assert [e.tag for e in dockyard.events.list()] == ["v2"]
    assert dockyard.webhooks.prune(later) == 1
    assert client.get("/api/v1/webhooks/hookone/events").json()["value"] == []
    deliver(dockyard)
    receiver.wait_for(2)
    # the newest event always stays: SQLite would hand out its id again to the next one
    assert dockyard.events.prune(utcnow() + timedelta(seconds=1), ["webhooks"]) == 0


def test_since_is_compared_in_utc(client, dockyard):
    from datetime import timedelta, timezone

    push_image(client, "team/app", make_image("since"), "v1")
    (event,) = dockyard.events.list()
    plus_five = timezone(timedelta(hours=5))
    just_before = (event.time - timedelta(seconds=1)).astimezone(plus_five).isoformat()
    just_after = (event.time + timedelta(seconds=1)).astimezone(plus_five).isoformat()
    assert len(client.get("/api/v1/events", params={"since": just_before}).json()["value"]) == 1
    assert client.get("/api/v1/events", params={"since": just_after}).json()["value"] == []


def test_identical_pulls_are_logged_as_one_counted_row(client, dockyard):
    push_image(client, "team/app", make_image("popular"), "v1")
    for _ in range(5):
        assert client.get("/v2/team/app/manifests/v1").status_code == 200
    client.get("/v2/team/app/manifests/v1", headers={"User-Agent": "another-client/1.0"})
    pulls = client.get("/api/v1/events", params={"action": "pull"}).json()["value"]
    assert sorted((p["userAgent"], p["count"]) for p in pulls) == [
        ("another-client/1.0", 1),
        ("testclient", 5),
    ]


# -- who may read what ---------------------------------------------------------------------------

HEADER_VALUE = "Bearer header-value-only-contributors-see"
URI_SECRET = "uri-secret-only-contributors-see"
SECRET = "hmac-secret-nobody-reads-back"


def secrets_in(text: str) -> list[str]:
    return [secret for secret in (HEADER_VALUE, URI_SECRET, SECRET) if secret in text]


def user_with_role(client, name: str, role: str) -> dict[str, str]:
    """A new user holding ``role`` on the registry; its Authorization header."""
    created = client.post("/api/v1/users", json={"name": name})
    assert created.status_code == 201, created.text
    assigned = client.post(
        "/api/v1/role-assignments", json={"assignee": name, "role": role, "scope": "registry"}
    )
    assert assigned.status_code == 201, assigned.text
    return basic(name, created.json()["credentials"][0]["value"])


def test_a_reader_sees_no_header_values_and_cannot_read_config_or_events(client, anonymous, receiver):
    uri = f"{receiver.url}?key={URI_SECRET}"
    create(
        client, serviceUri=uri, actions=["push"], customHeaders={"Authorization": HEADER_VALUE}, secret=SECRET
    )
    assert client.post("/api/v1/webhooks/hookone/ping").json()["statusCode"] == 200
    reader = user_with_role(client, "readerone", "Reader")
    contributor = user_with_role(client, "contributorone", "Contributor")

    for path in ("/api/v1/webhooks", "/api/v1/webhooks/hookone"):
        shown = anonymous.get(path, headers=reader)
        assert shown.status_code == 200
        assert secrets_in(shown.text) == []
    for path in ("/api/v1/webhooks/hookone/config", "/api/v1/webhooks/hookone/events"):
        assert anonymous.get(path, headers=reader).status_code == 403
    assert anonymous.post("/api/v1/webhooks/hookone/ping", headers=reader).status_code == 403

    config = anonymous.get("/api/v1/webhooks/hookone/config", headers=contributor)
    assert config.json() == {"serviceUri": uri, "customHeaders": {"Authorization": HEADER_VALUE}}
    (ping,) = anonymous.get("/api/v1/webhooks/hookone/events", headers=contributor).json()["value"]
    assert ping["eventRequestMessage"]["headers"]["Authorization"] == HEADER_VALUE
    assert ping["eventRequestMessage"]["requestUri"] == uri


def test_only_the_first_kib_of_an_answer_is_kept_and_truncation_is_said(client, receiver):
    create(client, serviceUri=receiver.url, actions=["push"])
    receiver.script = [(200, {}, b"y" * 1024), (200, {"X-Long": "v" * 1000}, b"z" * 1025)]
    client.post("/api/v1/webhooks/hookone/ping")
    client.post("/api/v1/webhooks/hookone/ping")
    longer, exact = client.get("/api/v1/webhooks/hookone/events").json()["value"]
    assert exact["eventResponseMessage"]["content"] == "y" * 1024
    assert longer["eventResponseMessage"]["content"] == "z" * 1024 + TRUNCATED
    assert longer["eventResponseMessage"]["headers"]["x-long"] == "v" * 256


# -- auditing --------------------------------------------------------------------------------------


def test_webhook_changes_are_audited_without_secrets(client, receiver):
    create(
        client,
        serviceUri=f"{receiver.url}?key={URI_SECRET}",
        actions=["push"],
        customHeaders={"Authorization": HEADER_VALUE},
        secret=SECRET,
    )
    client.patch(
        "/api/v1/webhooks/hookone",
        json={"customHeaders": {"Authorization": HEADER_VALUE + "2"}, "status": "disabled", "scope": None},
    )
    ping = client.post("/api/v1/webhooks/hookone/ping").json()
    assert client.post(f"/api/v1/webhooks/hookone/events/{ping['id']}/redeliver").status_code == 202
    assert client.delete("/api/v1/webhooks/hookone").status_code == 204
    events = [e for e in client.get("/api/v1/audit").json()["events"] if e["action"].startswith("webhook.")]
    assert [(e["action"], e["outcome"], e["principal"], e["detail"]) for e in events] == [
        ("webhook.create", "success", "dockyard", {"webhook": "hookone", "actions": ["push"], "scope": None}),
        (
            "webhook.update",
            "success",
            "dockyard",
            {"webhook": "hookone", "changed": ["customHeaders", "scope", "status"]},
        ),
        ("webhook.ping", "success", "dockyard", {"webhook": "hookone", "delivery": ping["id"]}),
        ("webhook.redeliver", "success", "dockyard", {"webhook": "hookone", "delivery": ping["id"]}),
        ("webhook.delete", "success", "dockyard", {"webhook": "hookone"}),
    ]
    text = json.dumps(events)
    assert secrets_in(text) == []


def test_refused_changes_are_not_audited(client):
    response = client.post(
        "/api/v1/webhooks", json={"name": "nope1", "serviceUri": "http:///x", "actions": ["push"]}
    )
    assert response.status_code == 400
    assert client.get("/api/v1/audit", params={"action": "webhook.create"}).json()["events"] == []


# -- bad input is a 400, never a 500 -----------------------------------------------------------------

GOOD = {"serviceUri": "http://192.0.2.10/hook", "actions": ["push"]}
BAD_CHANGES = [
    {"customHeaders": {"X-A": 1}},
    {"customHeaders": {"X-A": None}},
    {"customHeaders": {"X-A": ["v"]}},
    {"customHeaders": {"X-A": {"v": "w"}}},
    {"customHeaders": {"X-A": True}},
    {"customHeaders": ["X-A: v"]},
    {"customHeaders": "X-A: v"},
    {"customHeaders": {f"X-H{i}": "v" for i in range(51)}},
    {"customHeaders": {"X-A": "v" * 4097}},
    {"customHeaders": {"X" * 129: "v"}},
    {"customHeaders": {"X-A": "nul\u0000byte"}},
    {"serviceUri": "http://192.0.2.10/" + "p" * 2031},
    {"serviceUri": "http:///hook"},
    {"serviceUri": "http://:8080/hook"},
    {"serviceUri": "https://user@/hook"},
    {"serviceUri": "http://[::1/hook"},
    {"serviceUri": "http://192.0.2.10:99999/hook"},
    {"serviceUri": "http://192.0.2.10:0/hook"},
    {"serviceUri": "http://bad host/hook"},
    {"serviceUri": "http://exa%20mple/hook"},
    {"serviceUri": "http://192.0.2.10/\u0000"},
    {"serviceUri": 12},
    {"actions": [1]},
    {"actions": "push"},
    {"actions": [["push"]]},
    {"scope": 5},
    {"secret": 1234567890123456},
    {"payloadFormat": 1},
    {"status": "paused"},
]


@pytest.mark.parametrize("change", BAD_CHANGES)
def test_bad_input_is_a_400_on_create_and_update(client, change):
    response = client.post("/api/v1/webhooks", json={"name": "badone", **GOOD, **change})
    assert response.status_code == 400, response.text
    assert error_codes(response) == ["INVALID_REQUEST"]
    create(client, **GOOD)
    response = client.patch("/api/v1/webhooks/hookone", json=change)
    assert response.status_code == 400, response.text
    assert error_codes(response) == ["INVALID_REQUEST"]


def test_the_limits_themselves_are_accepted(client):
    hook = create(
        client,
        serviceUri="http://192.0.2.10/" + "p" * (2048 - len("http://192.0.2.10/")),
        actions=["push"],
        customHeaders={f"X-H{i}": "v" * 4096 for i in range(50)},
    )
    assert hook["name"] == "hookone"
    config = client.get("/api/v1/webhooks/hookone/config").json()
    assert len(config["serviceUri"]) == 2048
    assert len(config["customHeaders"]) == 50


def test_wants_reads_the_subscriptions_once_and_again_after_a_change_here(dockyard, receiver):
    hooks = dockyard.webhooks
    selects: list[str] = []

    def record(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT WEBHOOKS.ACTIONS"):
            selects.append(statement)

    sa.event.listen(dockyard.db.engine, "before_cursor_execute", record)
    try:
        with dockyard.db.read() as conn:
            assert not hooks.wants(conn, "push")
            assert not hooks.wants(conn, "delete")
        assert len(selects) == 1  # the second answer came from what the first read
        hooks.create("hookwants", receiver.url, ["delete"])
        with dockyard.db.read() as conn:
            assert hooks.wants(conn, "delete")  # at once after this process's change
            assert not hooks.wants(conn, "push")
        hooks.update("hookwants", enabled=False)
        with dockyard.db.read() as conn:
            assert not hooks.wants(conn, "delete")
        hooks.update("hookwants", enabled=True)
        hooks.delete("hookwants")
        with dockyard.db.read() as conn:
            assert not hooks.wants(conn, "delete")
    finally:
        sa.event.remove(dockyard.db.engine, "before_cursor_execute", record)
    assert len(selects) == 4


def test_an_idle_delivery_worker_waits_longer_but_never_past_the_next_attempt_due(client, dockyard, receiver):
    """While its rounds start nothing, the worker's wait doubles up to the idle poll, but a retry
    due sooner cuts it: the wait ends when that attempt comes due (``seconds_until_due``)."""
    from datetime import timedelta

    from dockyard.db import utcnow
    from dockyard.webhooks.models import deliveries

    service = dockyard.webhooks
    worker = DeliveryWorker(service, concurrency=1, timeout_seconds=1, poll_seconds=0.5, idle_poll_seconds=60)
    assert service.seconds_until_due() is None
    assert anyio.run(worker._pause, 10) == 60  # nothing pending: the whole idle wait
    create(client, serviceUri=receiver.url, actions=["push"])
    push_image(client, "team/app", make_image("idle-worker"), "v1")
    dockyard.runtime.consume()  # the delivery is queued
    with dockyard.db.write() as conn:
        conn.execute(deliveries.update().values(next_attempt_at=utcnow() + timedelta(seconds=5)))
    due = service.seconds_until_due()
    assert due is not None
    assert 3 < due <= 5
    assert 3 < anyio.run(worker._pause, 10) <= 5  # cut to the retry
    assert anyio.run(worker._pause, 0) == 0.5  # not idle: the poll
    with dockyard.db.write() as conn:
        conn.execute(deliveries.update().values(next_attempt_at=utcnow() - timedelta(seconds=5)))
    assert anyio.run(worker._pause, 10) == 0.5  # due already (leased elsewhere, say): never below the poll

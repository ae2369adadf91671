"""Where webhooks may be sent: loopback, link-local, metadata and unspecified addresses are
refused unless ``webhook_allowed_networks`` lists them, at creation, on change, and at delivery."""

import pytest

from tests.api.test_webhooks import create, deliver
from tests.support.images import make_image
from tests.support.receiver import Receiver
from tests.support.registry import error_codes, fast_webhook_settings, push_image


@pytest.fixture
def settings(settings):
    return fast_webhook_settings(settings, ["127.0.0.0/8"])  # the receivers listen on 127.0.0.1


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


REFUSED_URIS = [
    ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
    ("http://127.9.9.9/hook", "127.9.9.9 is a loopback address"),
    ("http://[::1]:8080/hook", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1 is a loopback address"),
    ("http://localhost:8080/hook", "localhost resolves to 127.0.0.1, which is a loopback address"),
    ("http://2130706433/hook", "2130706433 resolves to 127.0.0.1, which is a loopback address"),
    ("http://169.254.10.1/hook", "169.254.10.1 is a link-local address"),
    ("http://[fe80::1]/hook", "fe80::1 is a link-local address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a cloud metadata address"),
    ("http://100.100.100.200/latest/meta-data/", "100.100.100.200 is a cloud metadata address"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal is a cloud metadata"),
    ("https://0.0.0.0/hook", "0.0.0.0 is an unspecified address"),
    ("http://[::]/hook", ":: is an unspecified address"),
]


@pytest.mark.parametrize(("uri", "reason"), REFUSED_URIS)
def test_refused_destinations_by_default(client, dockyard, uri, reason):
    dockyard.webhooks.allowed_networks = ()  # the default setting
    response = client.post(
        "/api/v1/webhooks", json={"name": "refused", "serviceUri": uri, "actions": ["push"]}
    )
    assert response.status_code == 400
    assert error_codes(response) == ["INVALID_REQUEST"]
    assert reason in response.json()["errors"][0]["message"]
    create(client, serviceUri="http://192.0.2.10/hook", actions=["push"])
    changed = client.patch("/api/v1/webhooks/hookone", json={"serviceUri": uri})
    assert changed.status_code == 400
    assert reason in changed.json()["errors"][0]["message"]
    assert client.get("/api/v1/webhooks/hookone/config").json()["serviceUri"] == "http://192.0.2.10/hook"


def test_the_setting_allows_only_the_networks_it_lists(client, receiver):
    create(client, serviceUri=receiver.url, actions=["push"])  # 127.0.0.0/8 is allowed in this module
    for uri in ("http://[::1]/hook", "http://169.254.169.254/", "http://0.0.0.0/"):
        response = client.post(
            "/api/v1/webhooks", json={"name": "other", "serviceUri": uri, "actions": ["push"]}
        )
        assert response.status_code == 400, uri
    assert client.post("/api/v1/webhooks/hookone/ping").json()["statusCode"] == 200


def test_a_name_that_resolves_to_loopback_at_delivery_is_not_sent(client, dockyard, receiver):
    dockyard.webhooks.allowed_networks = ()
    dockyard.webhooks._resolve = lambda host, port: ["192.0.2.10"]  # at creation the name looked public
    port = receiver.server.server_address[1]
    create(client, serviceUri=f"http://localhost:{port}/hook", actions=["push"])
    push_image(client, "team/app", make_image("rebound"), "v1")
    deliver(dockyard, rounds=1)
    (delivery,) = client.get("/api/v1/webhooks/hookone/events").json()["value"]
    assert receiver.received == []
    assert delivery["status"] == "pending"  # retried later, checked again then
    error = delivery["attemptLog"][0]["error"]
    assert error.startswith("not sent: localhost resolves to ")
    assert "a loopback address" in error


def test_a_destination_refused_since_creation_is_not_pinged(client, dockyard, receiver):
    create(client, serviceUri=receiver.url, actions=["push"])
    dockyard.webhooks.allowed_networks = ()  # the operator removed the setting
    answered = client.post("/api/v1/webhooks/hookone/ping").json()
    assert answered["statusCode"] is None
    assert answered["error"] == (
        "not sent: 127.0.0.1 is a loopback address (webhook_allowed_networks can allow it)"
    )
    assert receiver.received == []

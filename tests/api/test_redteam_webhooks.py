"""Red-team attacks on where webhooks may be sent (SSRF): HOLE_ tests failed before their fix, refused_ pass.

Every receiver is a server this module starts on a loopback address; name resolution is
stubbed (as the webhook tests do), so no test sends anything off the machine.
"""

import errno
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import anyio
import httpx
import pytest
from starlette.testclient import TestClient

from tests.api.test_webhooks import create, deliver, user_with_role
from tests.support.auth import ADMIN, access_token, bearer
from tests.support.images import make_image
from tests.support.receiver import Receiver
from tests.support.registry import error_codes, fast_webhook_settings, push_image

PUBLIC = "192.0.2.10"  # TEST-NET-1: never reached, the tests only check where deliveries would go


@pytest.fixture
def settings(settings):
    return fast_webhook_settings(settings, [])  # the default: nothing refused is allowed


@pytest.fixture
def lenient(app) -> Iterator[TestClient]:
    """The admin's client, answering a server error with its 500 instead of raising it."""
    with TestClient(app, headers=ADMIN, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def receiver_on(host: str, port: int = 0) -> Receiver:
    """A Receiver listening on ``host`` (another loopback address than 127.0.0.1)."""
    made = Receiver()
    handler = made.server.RequestHandlerClass
    made.server.server_close()
    made.server = ThreadingHTTPServer((host, port), handler)
    made.server.daemon_threads = True
    made.thread = threading.Thread(target=made.server.serve_forever, daemon=True)
    return made


def receivers_sharing_a_port(first: str, second: str) -> tuple[Receiver, Receiver]:
    """Two Receivers on one port at two addresses, choosing another port while parallel tests hold one."""
    for _ in range(20):
        one = receiver_on(first)
        try:
            return one, receiver_on(second, one.server.server_address[1])
        except OSError as refused:
            one.server.server_close()
            if refused.errno != errno.EADDRINUSE:
                raise
    raise AssertionError(f"no port free on both {first} and {second} after 20 tries")


def glibc_like(names: dict[str, list[str]]):
    """A resolver as the system's: numeric spellings as inet_aton reads them, ``names`` from a table."""

    def resolve(host: str, port: int) -> list[str]:
        if host.lower().rstrip(".") in names:
            return names[host.lower().rstrip(".")]
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except OSError:
            return []
        return [info[4][0] for info in found]

    return resolve


def refused_at_creation(client, uri: str) -> str:
    response = client.post(
        "/api/v1/webhooks", json={"name": "attack", "serviceUri": uri, "actions": ["push"]}
    )
    assert response.status_code == 400, (uri, response.status_code, response.text)
    assert error_codes(response) == ["INVALID_REQUEST"]
    return response.json()["errors"][0]["message"]


# -- holes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["http://xn--localhost-/hook", "http://xn--/hook", "http://xn--ls8h/hook"])
def test_HOLE_invalid_punycode_host_is_a_500(lenient, uri):
    """Attack: a host with a malformed or disallowed IDNA A-label (``xn--…``).

    rules.check_uri reads ``url.host``, which idna-decodes the A-label outside its try block;
    the IDNAError escapes as a 500 on create and on update instead of a 400.
    """
    response = lenient.post(
        "/api/v1/webhooks", json={"name": "punycode", "serviceUri": uri, "actions": ["push"]}
    )
    assert response.status_code == 400, response.text
    create(lenient, serviceUri=f"http://{PUBLIC}/hook", actions=["push"])
    response = lenient.patch("/api/v1/webhooks/hookone", json={"serviceUri": uri})
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    "uri",
    [
        "http://[::127.0.0.1]/hook",  # IPv4-compatible loopback (deprecated, RFC 4291)
        "http://[::a9fe:a9fe]/latest/meta-data/",  # IPv4-compatible metadata address
        "http://[::ffff:0:127.0.0.1]/hook",  # SIIT IPv4-translated (RFC 2765)
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64 well-known prefix (RFC 6052) to metadata
        "http://[64:ff9b::7f00:1]/hook",  # NAT64 to loopback
        "http://[2002:a9fe:a9fe::]/latest/meta-data/",  # 6to4 (RFC 3056) embedding the metadata address
    ],
)
def test_HOLE_ipv6_forms_embedding_a_refused_ipv4_address_are_accepted(client, uri):
    """Attack: an IPv6 literal that embeds a refused IPv4 address other than as ::ffff:a.b.c.d.

    addresses.parse_address only unwraps IPv4-mapped addresses. On a network with a NAT64
    gateway (e.g. DNS64/NAT64 in a cloud VPC) 64:ff9b::a9fe:a9fe is translated to
    169.254.169.254; the other forms are the same embedding under other transition schemes.
    (On this host's own stack they do not reach 127.0.0.1: low severity, defence in depth.)
    """
    refused_at_creation(client, uri)


# -- refused: spellings of a refused address -----------------------------------------------------------

ALIASES = {"localhost": ["127.0.0.1", "::1"], "foo.localhost": ["127.0.0.1"]}


@pytest.mark.parametrize(
    "uri",
    [
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "http://0x7f000001/hook",
        "http://127.1/hook",
        "http://0/hook",
        "http://2852039166/latest/meta-data/",  # 169.254.169.254 in decimal
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:7f00:1]/hook",
        "http://[0:0:0:0:0:ffff:127.0.0.1]/hook",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "http://[::ffff:0.0.0.0]/hook",
        "http://[fe80::1%25eth0]/hook",
        "http://[::1%25lo]/hook",
        "http://localhost./hook",
        "http://LOCALHOST/hook",
        "http://foo.localhost/hook",
        "http://169.254.169.254./latest/meta-data/",
        "http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/",
        "http://metadata.goog/computeMetadata/v1/",
        "http://evil@127.0.0.1/hook",
        "http://evil:pw@127.0.0.1/hook",
        "http://evil.example\\@127.0.0.1/hook",
        "http://127\u30020\u30020\u30021/hook",  # ideographic full stops normalise to 127.0.0.1
        "http://0.0.0.0./hook",
    ],
)
def test_refused_alternative_spellings_on_create_and_update(client, dockyard, uri):
    """Attack: other spellings of loopback / metadata / unspecified hosts (all refused with a 400)."""
    dockyard.webhooks._resolve = glibc_like(ALIASES)
    assert "webhooks cannot be sent there" in refused_at_creation(client, uri)
    create(client, serviceUri=f"http://{PUBLIC}/hook", actions=["push"])
    changed = client.patch("/api/v1/webhooks/hookone", json={"serviceUri": uri})
    assert changed.status_code == 400, changed.text
    assert client.get("/api/v1/webhooks/hookone/config").json()["serviceUri"] == f"http://{PUBLIC}/hook"


@pytest.mark.parametrize(
    "uri",
    [
        "http://0177.0.0.1/hook",  # octal: httpx refuses leading zeros
        "http://127.000.000.001/hook",
        "http://%31%32%37.0.0.1/hook",
        "http://127%2E0%2E0%2E1/hook",
        "http://\uff11\uff12\uff17.0.0.1/hook",  # full-width digits
        "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/hook",  # full-width "localhost"
        "http://127.0.0.1:0/hook",
        "http://127.0.0.1:65536/hook",
        "http://127.0.0.1 /hook",
        "http://127.0.0.1\r\nHost: x/hook",
        "http://example.com\t/hook",
    ],
)
def test_refused_malformed_hosts_and_ports(client, uri):
    """Attack: spellings the URL parser itself refuses (still a 400, never stored)."""
    refused_at_creation(client, uri)


def test_refused_a_name_with_a_public_and_a_loopback_address(client, dockyard):
    """Attack: a name resolving to both a public and a loopback address (at creation)."""
    dockyard.webhooks._resolve = glibc_like({"both.example": [PUBLIC, "127.0.0.1"]})
    assert "resolves to 127.0.0.1" in refused_at_creation(client, "http://both.example/hook")


# -- refused: at delivery --------------------------------------------------------------------------


def stub_resolution(monkeypatch, answers) -> list[str]:
    """socket.getaddrinfo answering ``answers(host)`` for names; numeric hosts as the system would."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        try:
            return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except OSError:
            asked.append(name)
        found = []
        for address in answers(name):
            af = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if af == socket.AF_INET6 else (address, port)
            found.append((af, socket.SOCK_STREAM, 6, "", sockaddr))
        return found

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


def test_refused_public_and_loopback_at_delivery(client, dockyard, receiver, monkeypatch):
    """Attack: the name looks public at creation, then resolves to a public and a loopback address."""
    dockyard.webhooks._resolve = lambda host, port: [PUBLIC]
    port = receiver.server.server_address[1]
    create(client, serviceUri=f"http://both.example:{port}/hook", actions=["push"])
    stub_resolution(monkeypatch, lambda host: ["127.0.0.1", PUBLIC])
    answered = client.post("/api/v1/webhooks/hookone/ping").json()
    assert answered["statusCode"] is None
    assert "resolves to 127.0.0.1, which is a loopback address" in answered["error"]
    assert receiver.received == []


def test_refused_dns_rebinding_the_connection_goes_to_the_checked_address(client, dockyard, monkeypatch):
    """Attack: DNS rebinding between the check and the connect (first answer allowed, later ones not).

    127.0.0.2 is allowed, 127.0.0.1 is not; the name answers 127.0.0.2 once and 127.0.0.1
    afterwards. The ping must reach the 127.0.0.2 receiver, never the 127.0.0.1 one.
    """
    dockyard.webhooks.allowed_networks = (ipaddress.ip_network("127.0.0.2/32"),)
    victim, checked = receivers_sharing_a_port("127.0.0.1", "127.0.0.2")
    port = victim.server.server_address[1]
    with victim, checked:
        answers = iter([["127.0.0.2"]])
        dockyard.webhooks._resolve = lambda host, p: ["127.0.0.2"]
        create(client, serviceUri=f"http://rebind.example:{port}/hook", actions=["push"])
        stub_resolution(monkeypatch, lambda host: next(answers, ["127.0.0.1"]))
        answered = client.post("/api/v1/webhooks/hookone/ping").json()
        assert answered["statusCode"] == 200, answered
        assert len(checked.received) == 1
        assert victim.received == []


def test_refused_redirect_to_loopback_is_not_followed(client, dockyard, receiver):
    """Attack: an allowed receiver answers 302 to a loopback receiver."""
    dockyard.webhooks.allowed_networks = (ipaddress.ip_network("127.0.0.1/32"),)
    with Receiver() as target:
        create(client, serviceUri=receiver.url, actions=["push"])
        receiver.script = [(302, {"Location": target.url}, b""), (307, {"Location": target.url}, b"")]
        assert client.post("/api/v1/webhooks/hookone/ping").json()["statusCode"] == 302
        assert client.post("/api/v1/webhooks/hookone/ping").json()["statusCode"] == 307
        assert target.received == []
        assert len(receiver.received) == 2


def test_refused_redeliver_and_pushes_to_a_destination_refused_since(client, dockyard, receiver):
    """Attack: a webhook created while allowed; after the setting is removed, redeliver and push."""
    dockyard.webhooks.allowed_networks = (ipaddress.ip_network("127.0.0.1/32"),)
    create(client, serviceUri=receiver.url, actions=["push"])
    ping = client.post("/api/v1/webhooks/hookone/ping").json()
    assert ping["statusCode"] == 200
    dockyard.webhooks.allowed_networks = ()
    assert client.post(f"/api/v1/webhooks/hookone/events/{ping['id']}/redeliver").status_code == 202
    push_image(client, "team/app", make_image("refusedsince"), "v1")
    deliver(dockyard, rounds=1)
    log = client.get("/api/v1/webhooks/hookone/events").json()["value"]
    assert len(receiver.received) == 1  # only the first ping
    assert all(d["status"] == "pending" for d in log), log
    assert all("a loopback address" in d["attemptLog"][-1]["error"] for d in log)


def test_refused_a_reader_cannot_ping_redeliver_change_or_read_the_log(client, anonymous, receiver, dockyard):
    """Attack: a Reader probes receivers through ping/redeliver or reads answers from the log."""
    dockyard.webhooks.allowed_networks = (ipaddress.ip_network("127.0.0.1/32"),)
    create(client, serviceUri=receiver.url, actions=["push"])
    ping = client.post("/api/v1/webhooks/hookone/ping").json()
    reader = user_with_role(client, "readerone", "Reader")
    assert anonymous.post("/api/v1/webhooks/hookone/ping", headers=reader).status_code == 403
    redeliver = f"/api/v1/webhooks/hookone/events/{ping['id']}/redeliver"
    assert anonymous.post(redeliver, headers=reader).status_code == 403
    assert anonymous.get("/api/v1/webhooks/hookone/events", headers=reader).status_code == 403
    assert anonymous.get("/api/v1/webhooks/hookone/config", headers=reader).status_code == 403
    patched = anonymous.patch("/api/v1/webhooks/hookone", headers=reader, json={"serviceUri": receiver.url})
    assert patched.status_code == 403
    assert anonymous.get("/api/v1/webhooks/hookone/config").status_code == 401
    assert len(receiver.received) == 1


def test_HOLE_slow_name_resolution_at_creation_stalls_the_whole_registry(app, client, dockyard, monkeypatch):
    """Attack: a Contributor creates webhooks whose host names resolve slowly (an authoritative DNS
    server the attacker runs and never answers: 10-30 s per name with the usual resolver timeouts).

    WebhookService._validated called the blocking system resolver without a timeout inside
    run_sync, i.e. on anyio's shared 40-thread pool every request handler uses. 45 concurrent
    creates took every thread, and even listing webhooks (GET /api/v1/webhooks) waited for them.
    Now at most four creates resolve at once, each for at most RESOLVE_SECONDS.
    """
    headers = bearer(access_token(client, ADMIN))
    resolving = [0]
    lock = threading.Lock()

    def slow(host: str, port: int) -> list[str]:
        with lock:
            resolving[0] += 1
        time.sleep(1)  # stands in for a resolver waiting on a name server that does not answer
        with lock:
            resolving[0] -= 1
        return [PUBLIC]

    monkeypatch.setattr("dockyard.webhooks.addresses._lookup", slow)  # under the real, bounded resolver
    monkeypatch.setattr("dockyard.webhooks.addresses.RESOLVE_SECONDS", 0.3)

    async def attack() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=headers, timeout=30
        ) as http:

            async def create_one(i: int) -> None:
                body = {"name": f"slow{i:04d}", "serviceUri": f"http://slow{i}.example/", "actions": ["push"]}
                await http.post("/api/v1/webhooks", json=body)

            async with anyio.create_task_group() as group:
                for i in range(45):
                    group.start_soon(create_one, i)
                with anyio.fail_after(5):
                    while resolving[0] < 1:  # the attack is under way
                        await anyio.sleep(0.01)
                clock = time.monotonic()
                assert (await http.get("/api/v1/webhooks")).status_code == 200
                return time.monotonic() - clock

    waited = anyio.run(attack)
    assert waited < 1.0, f"GET /api/v1/webhooks waited {waited:.1f}s behind webhook name resolution"


def test_refused_header_values_an_http_client_cannot_send(client):
    """Attack: a header value that is not ASCII was accepted and then made every delivery a 500."""
    response = client.post(
        "/api/v1/webhooks",
        json={
            "name": "hookone",
            "serviceUri": "https://hooks.example/x",
            "actions": ["push"],
            "customHeaders": {"X-A": "é"},
        },
    )
    assert response.status_code == 400
    assert "printable ASCII" in response.json()["errors"][0]["message"]


def test_a_stored_header_value_that_cannot_be_sent_is_a_failed_attempt_not_a_500(client, dockyard, receiver):
    import sqlalchemy as sa

    from dockyard.webhooks.models import webhooks

    dockyard.webhooks.allowed_networks = (ipaddress.ip_network("127.0.0.1/32"),)
    create(client, serviceUri=receiver.url, actions=["push"])
    with dockyard.db.write() as conn:  # as a registry from before the rule may hold it
        conn.execute(sa.update(webhooks).where(webhooks.c.name == "hookone").values(headers={"X-A": "é"}))
    ping = client.post("/api/v1/webhooks/hookone/ping")
    assert ping.status_code == 200
    assert ping.json()["statusCode"] is None
    assert "a custom header cannot be sent" in ping.json()["error"]
    assert receiver.received == []


def test_refused_an_address_of_the_registrys_own_host(client, monkeypatch):
    """Attack: a service bound to 0.0.0.0 on the registry's host, reached through the host's own
    (non-loopback) address, with the answer read back from the delivery log."""
    from dockyard.webhooks import addresses

    monkeypatch.setattr(addresses, "own_addresses", lambda: frozenset({ipaddress.ip_address("203.0.113.7")}))
    message = refused_at_creation(client, "http://203.0.113.7:5098/internal")
    assert "203.0.113.7 is an address of this host" in message

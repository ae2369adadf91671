"""Where webhooks may be sent: address classes, the setting, checks at creation and at connection."""

import threading
import time
from ipaddress import ip_address

import anyio
import httpx
import pytest
from pydantic import ValidationError

from dockyard.config import Settings
from dockyard.oci.errors import RegistryError
from dockyard.webhooks import addresses
from dockyard.webhooks.addresses import (
    BoundedResolver,
    GuardedBackend,
    GuardedTransport,
    RefusedAddress,
    check_destination,
    host_refusal,
    networks,
    parse_address,
    read_own_addresses,
    refusal,
)
from tests.support.receiver import Receiver

LOOPBACK = networks(["127.0.0.0/8"])


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.255.255", "a loopback address"),
        ("::1", "a loopback address"),
        ("169.254.0.1", "a link-local address"),
        ("169.254.255.255", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("febf::1", "a link-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("0.0.0.0", "an unspecified address"),
        ("0.255.255.255", "an unspecified address"),
        ("::", "an unspecified address"),
        # neighbours that are fine, and private networks (internal receivers are a normal use)
        ("126.255.255.255", None),
        ("128.0.0.0", None),
        ("169.253.255.255", None),
        ("169.255.0.0", None),
        ("100.100.100.201", None),
        ("fd00:ec2::253", None),
        ("fec0::1", None),
        ("::2", None),
        ("1.0.0.0", None),
        ("10.0.0.1", None),
        ("192.168.1.1", None),
        ("fd12::1", None),
        ("2001:db8::1", None),
    ],
)
def test_refused_address_classes(address, reason):
    assert refusal(ip_address(address)) == reason


def test_allowed_networks_allow_exactly_what_they_cover():
    assert refusal(ip_address("127.0.0.1"), LOOPBACK) is None
    assert refusal(ip_address("::1"), LOOPBACK) == "a loopback address"
    assert refusal(ip_address("169.254.169.254"), LOOPBACK) == "a cloud metadata address"
    assert refusal(ip_address("169.254.169.254"), networks(["169.254.0.0/16"])) is None
    assert refusal(ip_address("::1"), networks(["::1/128", "127.0.0.1/32"])) is None
    assert refusal(ip_address("127.0.0.2"), networks(["127.0.0.1/32"])) == "a loopback address"


@pytest.mark.parametrize(
    ("host", "parsed"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("hooks.example.com", None),
        ("2130706433", None),
    ],
)
def test_parse_address(host, parsed):
    assert parse_address(host) == (ip_address(parsed) if parsed else None)


def test_host_refusal():
    assert host_refusal("127.0.0.1", []) == "127.0.0.1 is a loopback address"
    assert (
        host_refusal("127.0.0.1", ["192.0.2.1"]) == "127.0.0.1 is a loopback address"
    )  # a literal is itself
    assert host_refusal("127.0.0.1", [], LOOPBACK) is None
    assert host_refusal("hooks.example", []) is None
    assert host_refusal("hooks.example", ["192.0.2.1", "2001:db8::1"]) is None
    assert host_refusal("hooks.example", ["192.0.2.1", "not-an-address", "127.0.0.1"]) == (
        "hooks.example resolves to 127.0.0.1, which is a loopback address"
    )  # one safe address does not make the others safe
    assert host_refusal("hooks.example", ["127.0.0.1"], LOOPBACK) is None
    for name in ("metadata.google.internal", "Metadata.Google.Internal.", "metadata", "instance-data"):
        assert host_refusal(name, ["192.0.2.1"], LOOPBACK) == f"{name} is a cloud metadata address"


def test_check_destination_resolves_names_on_the_uris_port():
    asked = []

    def resolve(host, port):
        asked.append((host, port))
        return ["192.0.2.1"]

    check_destination("https://hooks.example/x", (), resolve)
    check_destination("http://hooks.example/x", (), resolve)
    check_destination("http://Hooks.Example:8080/x", (), resolve)
    check_destination("http://192.0.2.7/x", (), resolve)  # an address is not resolved
    assert asked == [("hooks.example", 443), ("hooks.example", 80), ("hooks.example", 8080)]


def test_check_destination_refuses_with_a_400():
    with pytest.raises(RegistryError) as raised:
        check_destination("http://rebind.example/x", (), lambda host, port: ["169.254.169.254"])
    assert raised.value.status == 400
    assert raised.value.message == (
        "webhooks cannot be sent there: rebind.example resolves to 169.254.169.254, which is a cloud "
        "metadata address (webhook_allowed_networks can allow it)"
    )
    check_destination(
        "http://rebind.example/x", networks(["169.254.169.254/32"]), lambda h, p: ["169.254.169.254"]
    )


def test_the_system_resolver():
    resolve = BoundedResolver()
    assert "127.0.0.1" in resolve("localhost", 80)
    assert resolve("no-such-host.invalid", 80) == []  # checked again at delivery
    resolve.close()


def test_a_slow_name_server_costs_at_most_the_deadline(monkeypatch):
    release = threading.Event()

    def silent(host: str, port: int) -> list[str]:
        release.wait(5)
        return ["127.0.0.1"]

    monkeypatch.setattr("dockyard.webhooks.addresses._lookup", silent)
    monkeypatch.setattr("dockyard.webhooks.addresses.RESOLVE_SECONDS", 0.2)
    resolve = BoundedResolver(threads=1)
    started = time.monotonic()
    assert resolve("slow.example", 80) == []  # not resolved in time: checked at delivery
    assert resolve("slow.example", 80) == []  # queued behind the first: still bounded
    assert time.monotonic() - started < 2
    release.set()
    resolve.close()


def test_the_setting(monkeypatch, tmp_path):
    assert Settings(data_dir=tmp_path).webhook_allowed_networks == []
    monkeypatch.setenv("DOCKYARD_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8, ::1/128")
    assert Settings(data_dir=tmp_path).webhook_allowed_networks == ["127.0.0.0/8", "::1/128"]
    monkeypatch.setenv("DOCKYARD_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,not-a-network")
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path)


# -- at connection time ----------------------------------------------------------------------------


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def post(url: str, allowed, resolve) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = GuardedTransport(allowed, httpx.Limits(), resolve)
        async with httpx.AsyncClient(transport=transport, follow_redirects=False) as client:
            return await client.post(url, content=b"event")

    return anyio.run(run)


def resolving_to(*addresses: str):
    asked = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return list(addresses)

    resolve.asked = asked
    return resolve


def test_the_connection_goes_to_the_checked_address_under_the_hosts_name(receiver):
    port = receiver.server.server_address[1]
    resolve = resolving_to("127.0.0.1")
    assert post(f"http://hooks.example:{port}/hook", LOOPBACK, resolve).status_code == 200
    assert resolve.asked == [("hooks.example", port)]
    (received,) = receiver.received
    assert received.headers["Host"] == f"hooks.example:{port}"
    assert received.body == b"event"


def test_the_next_checked_address_is_tried_when_one_does_not_answer(receiver):
    port = receiver.server.server_address[1]
    assert (
        post(
            f"http://hooks.example:{port}/hook", LOOPBACK, resolving_to("127.0.0.2", "127.0.0.1")
        ).status_code
        == 200
    )
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    ("addresses", "reason"),
    [
        (["127.0.0.1"], "hooks.example resolves to 127.0.0.1, which is a loopback address"),
        (
            ["192.0.2.1", "169.254.169.254"],
            "hooks.example resolves to 169.254.169.254, which is a cloud metadata address",
        ),
    ],
)
def test_a_name_that_now_resolves_to_a_refused_address_is_not_connected(receiver, addresses, reason):
    port = receiver.server.server_address[1]
    with pytest.raises(httpx.ConnectError) as raised:
        post(f"http://hooks.example:{port}/hook", (), resolving_to(*addresses))
    assert isinstance(raised.value.__cause__, RefusedAddress)
    assert str(raised.value.__cause__) == f"not sent: {reason} (webhook_allowed_networks can allow it)"
    assert receiver.received == []


def test_a_refused_literal_address_is_not_connected(receiver):
    port = receiver.server.server_address[1]
    resolve = resolving_to("192.0.2.1")
    with pytest.raises(httpx.ConnectError) as raised:
        post(f"http://127.0.0.1:{port}/hook", (), resolve)
    assert isinstance(raised.value.__cause__, RefusedAddress)
    assert resolve.asked == []
    assert receiver.received == []


def test_names_that_do_not_resolve_fail_to_connect():
    async def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(httpx.ConnectError) as raised:
        post("http://hooks.example/hook", (), fails)
    assert str(raised.value) == "cannot resolve hooks.example: Name or service not known"
    with pytest.raises(httpx.ConnectError) as raised:
        post("http://hooks.example/hook", (), resolving_to())
    assert str(raised.value) == "cannot resolve hooks.example: no addresses"


def test_unix_sockets_are_refused():
    with pytest.raises(RefusedAddress):
        anyio.run(GuardedBackend(()).connect_unix_socket, "/run/docker.sock")


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 192.0.2.0/24 2 0 2
        |-- 192.0.2.0
           /24 link UNICAST
        |-- 192.0.2.2
           /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 10.1.0.0/16 2 0 2
     |-- 10.1.2.3
        /32 host LOCAL
"""
IF_INET6 = """fd000000000000000000000000000002 04 40 00 82     eth0
00000000000000000000000000000001 01 80 10 80       lo
"""


def test_the_hosts_own_addresses_are_read_from_proc() -> None:
    assert read_own_addresses(FIB_TRIE, IF_INET6) == {
        ip_address("192.0.2.2"),
        ip_address("10.1.2.3"),
        ip_address("fd00::2"),
        ip_address("::1"),
    }
    assert read_own_addresses("", "") == frozenset()


def test_an_address_of_this_host_is_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    own = ip_address("192.0.2.2")
    monkeypatch.setattr(addresses, "own_addresses", lambda: frozenset({own}))
    assert refusal(own) == "an address of this host"
    assert refusal(ip_address("192.0.2.3")) is None
    assert refusal(own, networks(["192.0.2.0/24"])) is None


def test_this_machines_interface_addresses_are_found() -> None:
    found = addresses.OwnAddresses()()
    assert ip_address("127.0.0.1") in found  # every Linux host has it, and it is read like the others

"""Where webhooks may be sent: never to loopback, link-local, cloud metadata or unspecified addresses,
nor to any address of the registry's own host.

The service URI's host is checked when a webhook is created or changed (resolved, when it is
a name), and again at every connection, on the addresses the name resolves to *then*: a name
that later resolves elsewhere (DNS rebinding) is still refused, and the connection goes to the
very address that was checked. An operator can allow more with ``webhook_allowed_networks``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import itertools
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import anyio
import httpcore
import httpx

from dockyard.oci.errors import ErrorCode, RegistryError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str, int], list[str]]
AsyncResolver = Callable[[str, int], Awaitable[list[str]]]

METADATA = "a cloud metadata address"
#: Refused unless an allowed network covers them; the first match names the reason.
REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in (
        ("169.254.169.254/32", METADATA),  # AWS, Azure, GCP, OpenStack, Oracle
        ("fd00:ec2::254/128", METADATA),  # AWS over IPv6
        ("100.100.100.200/32", METADATA),  # Alibaba Cloud
        ("127.0.0.0/8", "a loopback address"),
        ("::1/128", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("fe80::/10", "a link-local address"),
        ("0.0.0.0/8", "an unspecified address"),
        ("::/128", "an unspecified address"),
    )
)
#: Cloud metadata services by name: refused whatever they resolve to.
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)


def networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDRs (as the ``webhook_allowed_networks`` setting lists them)."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def parse_address(host: str) -> IPAddress | None:
    """``host`` as an IP address (brackets and an IPv6 zone dropped), or None for a name."""
    try:
        address = ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return embedded
    return address


#: IPv6 ranges whose last 32 bits are an IPv4 address a packet may reach: IPv4-compatible
#: (::a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d) and NAT64 (64:ff9b::/96, 64:ff9b:1::/48).
_EMBEDDING = tuple(
    ipaddress.IPv6Network(net) for net in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, translated, NAT64, 6to4,
    Teredo's client), or None. ``::`` and ``::1`` carry none: they are IPv6's own."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if int(address) > 1 and any(address in net for net in _EMBEDDING):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


OWN_ADDRESS = "an address of this host"
#: How long the host's own addresses are remembered before they are read again.
OWN_ADDRESSES_SECONDS = 30.0


def read_own_addresses(fib_trie: str, if_inet6: str) -> frozenset[IPAddress]:
    """The addresses assigned to this host's interfaces, from Linux's /proc/net/fib_trie (IPv4:
    a ``|-- address`` line followed by ``/32 host LOCAL``) and /proc/net/if_inet6 (IPv6)."""
    found: set[IPAddress] = set()
    lines = fib_trie.splitlines()
    for line, following in itertools.pairwise(lines):
        if "|--" in line and "/32 host LOCAL" in following:
            with contextlib.suppress(ValueError):
                found.add(IPv4Address(line.split("|--", 1)[1].strip()))
    for line in if_inet6.splitlines():
        field = line.split(maxsplit=1)[0] if line.strip() else ""
        if len(field) == 32:
            with contextlib.suppress(ValueError):
                found.add(IPv6Address(int(field, 16)))
    return frozenset(found)


class OwnAddresses:
    """This host's interface addresses, read again every OWN_ADDRESSES_SECONDS (none off Linux)."""

    def __init__(self) -> None:
        self._read_at = -OWN_ADDRESSES_SECONDS
        self._addresses: frozenset[IPAddress] = frozenset()

    def __call__(self) -> frozenset[IPAddress]:
        if time.monotonic() - self._read_at >= OWN_ADDRESSES_SECONDS:
            texts = []
            for path in ("/proc/net/fib_trie", "/proc/net/if_inet6"):
                try:
                    with open(path, encoding="ascii", errors="replace") as source:
                        texts.append(source.read())
                except OSError:
                    texts.append("")
            self._addresses = read_own_addresses(*texts)
            self._read_at = time.monotonic()
        return self._addresses


own_addresses = OwnAddresses()


def refusal(address: IPAddress, allowed: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why a webhook may not be sent to ``address`` (e.g. "a loopback address"), or None if it may."""
    if any(address.version == net.version and address in net for net in allowed):
        return None
    for net, reason in REFUSED:
        if address.version == net.version and address in net:
            return reason
    if address in own_addresses():  # a service bound to 0.0.0.0 answers there as on loopback
        return OWN_ADDRESS
    return None


def host_refusal(host: str, addresses: Iterable[str], allowed: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why ``host`` (which resolved to ``addresses``) may not receive webhooks, or None.

    A name is refused when any of its addresses is: one safe address does not make the others safe.
    """
    name = host.lower().rstrip(".")
    if name in METADATA_NAMES:
        return f"{host} is {METADATA}"
    literal = parse_address(name)
    for text in [str(literal)] if literal is not None else addresses:
        address = parse_address(text)
        if address is None:
            continue
        reason = refusal(address, allowed)
        if reason is not None:
            shown = host if literal is not None else f"{host} resolves to {address}, which"
            return f"{shown} is {reason}"
    return None


#: How long a create or update waits for a name to resolve; a slower name is checked at delivery only.
RESOLVE_SECONDS = 2.0


def _lookup(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in found))


class BoundedResolver:
    """The system resolver with a deadline: the addresses of ``host`` within RESOLVE_SECONDS, else []
    (a name that does not resolve now is checked again at every delivery). Lookups run on a few
    threads of their own, so a slow or silent name server never holds the request threads."""

    def __init__(self, threads: int = 4) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="webhook-resolve")

    def __call__(self, host: str, port: int) -> list[str]:
        try:
            return self._pool.submit(_lookup, host, port).result(timeout=RESOLVE_SECONDS)
        except concurrent.futures.TimeoutError:
            return []

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def check_destination(uri: str, allowed: tuple[IPNetwork, ...], resolve: Resolver = _lookup) -> None:
    """Refuse (400) a service URI whose host is, or resolves to, a refused address."""
    url = httpx.URL(uri)
    try:
        host = url.host
    except ValueError:  # a malformed IDNA name
        raise RegistryError(ErrorCode.INVALID_REQUEST, "the service URI is not a valid URL") from None
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = [] if parse_address(host) is not None else resolve(host, port)
    reason = host_refusal(host, addresses, allowed)
    if reason is not None:
        raise RegistryError(
            ErrorCode.INVALID_REQUEST,
            f"webhooks cannot be sent there: {reason} (webhook_allowed_networks can allow it)",
        )


async def _getaddrinfo(host: str, port: int) -> list[str]:
    found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


class RefusedAddress(httpcore.ConnectError):
    """A delivery was not sent because its host is, or now resolves to, a refused address."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host itself, refuses forbidden addresses, and connects to an address it checked."""

    def __init__(self, allowed: tuple[IPNetwork, ...], resolve: AsyncResolver | None = None) -> None:
        self.allowed = allowed
        self._resolve = resolve or _getaddrinfo
        self._inner = httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[str]:
        if parse_address(host) is not None:
            return [host.strip("[]")]
        try:
            return await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port)
        reason = host_refusal(host, addresses, self.allowed)
        if reason is not None:
            raise RefusedAddress(f"not sent: {reason} (webhook_allowed_networks can allow it)")
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}: no addresses")
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedAddress("webhooks are not sent to Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, dialling through a GuardedBackend.

    httpx (0.28) has no public way to give its transport a network backend, so the
    connection pool it builds is replaced by one that has ours; tests prove it is used.
    """

    def __init__(
        self, allowed: tuple[IPNetwork, ...], limits: httpx.Limits, resolve: AsyncResolver | None = None
    ) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allowed, resolve),
        )

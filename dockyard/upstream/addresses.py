"""Where the upstream client may connect: the webhooks' address rules, for a synchronous client.

An import or a cache rule names an arbitrary host, so the same refusals apply as to webhooks
(loopback, link-local, cloud metadata, unspecified), checked at every connection on the
addresses the name resolves to then, and the connection goes to an address that was checked.
``upstream_allowed_networks`` allows more (tests use it for upstreams on 127.0.0.1).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable

import httpcore
import httpx

from dockyard.webhooks.addresses import IPNetwork, host_refusal, parse_address


class RefusedAddress(httpcore.ConnectError):
    """The upstream's host is, or resolves to, a refused address."""


def _lookup(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in found))


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves each host itself, refuses forbidden addresses, and connects to an address it checked."""

    def __init__(self, allowed: tuple[IPNetwork, ...]) -> None:
        self.allowed = allowed
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = [host.strip("[]")] if parse_address(host) is not None else _lookup(host, port)
        reason = host_refusal(host, addresses, self.allowed)
        if reason is not None:
            raise RefusedAddress(f"refused to connect: {reason} (upstream_allowed_networks can allow it)")
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}: no addresses")
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise RefusedAddress("upstreams are not reached over Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport dialling through a GuardedBackend (its pool replaced, as webhooks do)."""

    def __init__(
        self, allowed: tuple[IPNetwork, ...], ssl_context: ssl.SSLContext, limits: httpx.Limits
    ) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allowed),
        )

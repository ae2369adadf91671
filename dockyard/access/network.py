"""Network rules: which client addresses may reach the registry at all (pure, no I/O).

ACR's model: clients from the private networks (its private endpoints; here configured
CIDRs, loopback and RFC 1918 by default) are always allowed; other ("public") clients
are refused when public network access is disabled, and otherwise need a matching IP
rule when the default action is Deny. Behind a reverse proxy the client address is taken
from ``X-Forwarded-For`` only when the direct peer is a configured trusted proxy.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDRs; host bits are dropped (``10.0.0.5/24`` is ``10.0.0.0/24``), as ACR does."""
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


@functools.lru_cache(maxsize=4096)
def parse_address(value: str) -> IPAddress | None:
    """An IP address, also as proxies write it in X-Forwarded-For: ``[v6]``, ``[v6]:port``, ``v4:port``.

    IPv4-mapped IPv6 addresses become IPv4. None when ``value`` is no address. Memoised: a
    registry sees the same few peers again and again, and the parse costs more than the request's
    database read.
    """
    text = value.strip()
    if text.startswith("["):
        text, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and _is_port(port[1:]))):
            return None
    elif text.count(":") == 1:  # IPv6 has at least two colons
        text, _, port = text.partition(":")
        if not _is_port(port):
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def address_text(address: IPAddress) -> str:
    """``str(address)``, memoised as ``parse_address`` is (it costs more than a dict lookup)."""
    return str(address)


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= 65535


def _within(address: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in nets)


def client_address(
    peer: str | None, forwarded_for: list[str], trusted_proxies: tuple[IPNetwork, ...]
) -> IPAddress | None:
    """The real client: walk ``X-Forwarded-For`` from the right while the hop is a trusted proxy."""
    address = parse_address(peer) if peer else None
    if address is None or not _within(address, trusted_proxies):
        return address
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        parsed = parse_address(hop)
        if parsed is None:
            return address  # a garbled chain: trust nothing beyond the proxy itself
        address = parsed
        if not _within(address, trusted_proxies):
            return address
    return address


@dataclass(frozen=True)
class NetworkRules:
    public_network_access: bool
    default_action: str
    ip_rules: tuple[IPNetwork, ...]
    private_networks: tuple[IPNetwork, ...]

    def allows(self, address: IPAddress | None) -> bool:
        """None is a caller on a local transport (a Unix socket, an in-process client): allowed."""
        if address is None:
            return True
        if _within(address, self.private_networks):
            return True
        if not self.public_network_access:
            return False
        return self.default_action == "Allow" or _within(address, self.ip_rules)

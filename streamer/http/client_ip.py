"""Which address sent a request, believing forwarding headers only from trusted proxies.

The TCP peer is the client unless it is one of ``trusted_proxies``. When it is,
the forwarding chain is read right to left (``Forwarded: for=...`` when present,
else ``X-Forwarded-For``): each hop appended by a trusted proxy is skipped, and
the first address not trusted is the client. Anything a client writes in those
headers itself sits left of the first untrusted hop, so it is never believed.
If every hop is trusted the leftmost is the client; if a hop cannot be parsed
(``unknown``, an obfuscated ``_name``, garbage), the last trusted address that
reported it is used instead, since nothing further left can be believed.

Example::

    inputs:
      web:
        type: http
        client_ip:
          trusted_proxies: [10.0.0.0/8, 127.0.0.1]
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Annotated

import msgspec

__all__ = ["ClientIpResolver", "ClientIpSpec", "parse_forwarded", "parse_x_forwarded_for"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientIpSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the client address of a request is found."""

    trusted_proxies: Annotated[
        list[str],
        msgspec.Meta(
            description="Addresses or CIDR networks of the proxies in front of streamer (load balancers, CDNs). "
            "`X-Forwarded-For` and `Forwarded` are believed only from these; empty means the TCP peer "
            "is always the client.",
            examples=[["10.0.0.0/8", "127.0.0.1", "fd00::/8"]],
        ),
    ] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for index, text in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies[{index}] = {text!r} is not an IP address or CIDR network "
                    "(for example 10.0.0.0/8 or 192.0.2.7)"
                ) from None


def _address(text: str) -> Address | None:
    """Parse one hop: ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]:80``; ``None`` if not an IP."""
    text = text.strip().strip('"')
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_x_forwarded_for(value: str) -> list[str]:
    """The hops of an ``X-Forwarded-For`` value, leftmost (original client) first."""
    return [part.strip() for part in value.split(",")]


def parse_forwarded(value: str) -> list[str]:
    """The ``for=`` node of each element of an RFC 7239 ``Forwarded`` value; ``""`` where an element has none."""
    hops = []
    for element in value.split(","):
        node = ""
        for pair in element.split(";"):
            name, _, text = pair.partition("=")
            if name.strip().lower() == "for":
                node = text.strip()
        hops.append(node)
    return hops


class ClientIpResolver:
    """Finds the client address of a request from its peer address and forwarding headers."""

    __slots__ = ("_networks", "_trusted", "enabled")

    def __init__(self, spec: ClientIpSpec) -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(text.strip(), strict=False) for text in spec.trusted_proxies
        )
        self.enabled = bool(self._networks)
        # Peers repeat (a few proxies, keep-alive): remember the answer per address text.
        self._trusted = lru_cache(maxsize=4096)(self._is_trusted_text)

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._networks)

    def _is_trusted_text(self, text: str) -> bool:
        address = _address(text)
        return address is not None and self._is_trusted(address)

    def resolve(self, peer: str, headers: dict[str, str]) -> str:
        """The client address for a request from ``peer`` with these (lower-cased) headers."""
        if not self.enabled or not self._trusted(peer):
            return peer
        forwarded = headers.get("forwarded")
        if forwarded is not None:
            hops = parse_forwarded(forwarded)
        else:
            xff = headers.get("x-forwarded-for")
            if xff is None:
                return peer
            hops = parse_x_forwarded_for(xff)
        client = peer
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                return client  # the trusted proxy to its right is the last address we can believe
            client = str(address)
            if not self._is_trusted(address):
                return client
        return client

"""The address a host connected from, seen through trusted reverse proxies.

X-Forwarded-For is believed only when the connection comes from a configured proxy, and then
read from the right: each proxy appends the address it saw, so the first address from the right
that is not itself a trusted proxy is the host. A host cannot forge its way past this, because
what it writes into the header sits to the left of what the proxies add.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(
    remote: str | None, forwarded_for: str | None, networks: Sequence[Network]
) -> str | None:
    """The host's address: `remote`, unless it is a trusted proxy that says otherwise."""
    if not networks or remote is None or not forwarded_for or not _trusted(remote, networks):
        return remote
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop.strip("[]")))
            except ValueError:
                return remote  # garbage in the header: fall back to what we know
    return remote

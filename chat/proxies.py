"""The client's address behind trusted reverse proxies (``TRUSTED_PROXIES``).

Throttles and failure counters key on the client's IP (``chat.ratelimit``, the DRF write
throttle). Behind nginx every connection comes from nginx, so without help every user would
share nginx's address (and one user's failed API keys would block everybody). nginx passes the
real address in ``X-Forwarded-For`` (``$proxy_add_x_forwarded_for``: whatever the client sent,
then the address nginx saw) and ``X-Real-IP`` (``deploy/nginx.conf``). Anybody can send those
headers, so they count only when the connection itself comes from a trusted proxy:

- the peer (``REMOTE_ADDR``, the ASGI scope's ``client``) is not in ``TRUSTED_PROXIES`` (the
  default: the list is empty): the peer is the client, and the headers are ignored;
- the peer is trusted: walk ``X-Forwarded-For`` from the right (each entry was appended by the
  hop after it) past every trusted address; the first untrusted one is the client. A malformed
  entry stops the walk at the last trusted hop (never a value the client made up). Without
  ``X-Forwarded-For``, a valid ``X-Real-IP`` is the client; without either, the peer.

A client that sends ``X-Forwarded-For: 1.2.3.4`` through nginx therefore still counts as its
own address: nginx appends the address it saw and that entry is the rightmost untrusted one.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

from django.conf import settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``TRUSTED_PROXIES`` entries (addresses or CIDRs) as networks; ValueError names a bad one."""
    networks = []
    for value in values:
        text = str(value).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {text!r} is not an IP address or network ({exc})") from None
    return tuple(networks)


def parse_address(text: str | None) -> Address | None:
    """An address from a header entry or REMOTE_ADDR (``[v6]`` brackets allowed); None if it is not one."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:a.b.c.d is the IPv4 peer a.b.c.d
    return mapped or address


def is_trusted(address: Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_address(
    *,
    peer: str | None,
    forwarded_for: str | None,
    real_ip: str | None,
    trusted: tuple[Network, ...],
) -> str:
    """The client's address (see the module docstring); ``"unknown"`` without a peer."""
    peer_address = parse_address(peer)
    if peer_address is None:
        return str(peer) if peer else UNKNOWN
    if not is_trusted(peer_address, trusted):
        return str(peer_address)
    if forwarded_for:
        nearest = peer_address
        for entry in reversed(forwarded_for.split(",")):
            hop = parse_address(entry)
            if hop is None:
                return str(nearest)
            if not is_trusted(hop, trusted):
                return str(hop)
            nearest = hop
        return str(nearest)  # every hop trusted: the leftmost is the client
    forwarded = parse_address(real_ip)
    return str(forwarded) if forwarded is not None else str(peer_address)


def trusted_proxies() -> tuple[Network, ...]:
    """``TRUSTED_PROXIES`` parsed (once per distinct value, so settings overrides apply)."""
    return networks_cached(tuple(getattr(settings, "TRUSTED_PROXIES", ())))


@functools.lru_cache(maxsize=8)
def networks_cached(values: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(values)


def request_client_ip(request: Any) -> str:
    """The client's address for a Django (or DRF) request."""
    meta = getattr(request, "META", None) or {}
    return client_address(
        peer=meta.get("REMOTE_ADDR"),
        forwarded_for=meta.get("HTTP_X_FORWARDED_FOR"),
        real_ip=meta.get("HTTP_X_REAL_IP"),
        trusted=trusted_proxies(),
    )


def scope_client_ip(scope: dict[str, Any]) -> str:
    """The client's address for an ASGI scope (the websocket handshake)."""
    client = scope.get("client")
    peer = str(client[0]) if client and client[0] else None
    headers: dict[bytes, list[str]] = {}
    for name, value in scope.get("headers", []):
        headers.setdefault(name.lower(), []).append(value.decode("latin-1"))
    forwarded_for = ",".join(headers.get(b"x-forwarded-for", [])) or None
    real_ip = (headers.get(b"x-real-ip") or [None])[-1]
    return client_address(peer=peer, forwarded_for=forwarded_for, real_ip=real_ip, trusted=trusted_proxies())

"""Where a webhook may go: the SSRF guard.

A `callback_url` is written by a producer, who must not make the daemon POST into the operator's
private network (a metadata service at 169.254.169.254, an admin port on 127.0.0.1, a database on
10.0.0.5). So: http or https only, no user:password@, and every address the host resolves to must be
a global one — not loopback, link-local, private (RFC 1918, ULA), shared, reserved, multicast or
unspecified — unless IMAGEND_WEBHOOK_ALLOW_HOSTS names the host (or address, or `*`).

The address checked is the address connected to (`Target.address`: the request goes to the IP, with the
name in `Host` and in TLS's SNI and certificate check), so a name that resolves to a public address
when checked and to 127.0.0.1 a moment later (DNS rebinding) cannot slip through. Redirects are never
followed (delivery.py)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from imagend.errors import clip

SCHEMES = {"http": 80, "https": 443}
ECHO_CHARS = 80
Resolver = Callable[[str, int], list[str]]


class Refused(Exception):
    """The URL may not be called (said in a sentence naming why)."""


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    url: str  # the URL as written
    connect_url: str  # with the address in place of the name
    host: str  # the name, for TLS's SNI and certificate check
    host_header: str  # the name (and port) as written, for Host
    address: str


def parse(url: str) -> SplitResult:
    """The URL's parts, or Refused when it cannot be a webhook's (checked again at each delivery)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise Refused(f"callback_url {clip(url, ECHO_CHARS)!r} is not a URL") from None
    if parts.scheme not in SCHEMES:
        raise Refused(f"callback_url must be http:// or https://, got {clip(url, ECHO_CHARS)!r}")
    if not parts.hostname:
        raise Refused(f"callback_url {clip(url, ECHO_CHARS)!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("callback_url must not carry a user or password: the webhook is signed "
                      "(IMAGEND_WEBHOOK_SECRET), check its signature instead")
    return parts


def _allowed(host: str, allow: Collection[str]) -> bool:
    return "*" in allow or host.lower().rstrip(".") in allow


def refusal(address: str) -> str | None:
    """Why the daemon will not connect to `address` (None: a global address, fine)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for name, what in (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_private", "private"),
                       ("is_multicast", "multicast"), ("is_unspecified", "unspecified"),
                       ("is_reserved", "reserved")):
        if getattr(ip, name):
            return what
    return None if ip.is_global else "not global"


def check_literal(url: str, allow: Collection[str]) -> None:
    """At submit (no DNS lookup): the URL's form, and a host that is an address or localhost."""
    parts = parse(url)
    host = parts.hostname or ""
    if _allowed(host, allow):
        return
    if host.rstrip(".") == "localhost" or host.endswith(".localhost"):
        raise Refused(f"callback_url {clip(url, ECHO_CHARS)!r} is this host (loopback); list it in "
                      "IMAGEND_WEBHOOK_ALLOW_HOSTS to allow it")
    try:
        why = refusal(host)
    except ValueError:
        return  # a name: resolved and checked at each delivery
    if why is not None:
        raise Refused(f"callback_url {clip(url, ECHO_CHARS)!r} is a {why} address; list it in "
                      "IMAGEND_WEBHOOK_ALLOW_HOSTS to allow it")


def target(url: str, allow: Collection[str], resolver: Resolver = resolve) -> Target:
    """Where to connect for `url`: its first address, every address checked; Refused otherwise.
    OSError when the name does not resolve (a passing fault: retried)."""
    parts = parse(url)
    host = parts.hostname or ""
    port = parts.port or SCHEMES[parts.scheme]
    addresses = resolver(host, port)
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    if not _allowed(host, allow):
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise Refused(f"{clip(host, ECHO_CHARS)} resolves to {address}, a {why} address; list the host in "
                              "IMAGEND_WEBHOOK_ALLOW_HOSTS to allow it")
    address = addresses[0]
    shown = f"[{address}]" if ":" in address else address
    netloc = f"{shown}:{parts.port}" if parts.port else shown
    connect_url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(url=url, connect_url=connect_url, host=host, host_header=parts.netloc, address=address)

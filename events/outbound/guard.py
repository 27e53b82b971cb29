"""Which destinations an outbound request may reach (the SSRF guard). No httpx here.

``check_destination`` resolves a URL's host once and returns the addresses that passed;
the transport then connects to those very addresses (see ``transport.GuardedTransport``),
so a second DNS answer cannot send the connection elsewhere.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from .errors import DestinationRefused, OutboundError

# Cloud instance metadata services, refused even where a check on the address class would miss them.
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Target:
    """Where a URL points, read from its text only (nothing resolved yet)."""

    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int | None  # None when the URL gives none

    @property
    def origin(self):
        return (self.scheme, self.host, self.port or (443 if self.scheme == "https" else 80))


@dataclass(frozen=True)
class Destination(Target):
    """A checked URL: its target, and the addresses a request to it may connect to (in resolver order)."""

    addresses: tuple


def parse_target(url):
    """The scheme, host and port of ``url``; DestinationRefused when it is not a valid http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationRefused(f"“{url}” is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused(f"“{url}” is not an http:// or https:// URL.")
    try:
        host = parts.hostname if parts.hostname.isascii() else parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise DestinationRefused(f"“{url}” has a host name that cannot be encoded.") from None
    return Target(scheme=parts.scheme, host=host, port=port)


def _normalised_host(host):
    host = host.strip().lower()
    if host.startswith("[") and "]" in host:  # [v6] or [v6]:port
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:  # name:port or v4:port
        host = host.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))  # one spelling per standard IP literal
    except ValueError:
        return host


def is_allowed_host(host):
    """Is ``host`` listed in EVENTS_HTTP_ALLOWED_HOSTS?

    Entries are exact host names or IP literals (``[::1]`` or ``::1``), compared without
    case; no wildcards. Ports do not matter: an entry allows every port of its host, and a
    port written in an entry is ignored.
    """
    allowed = {_normalised_host(entry) for entry in getattr(settings, "EVENTS_HTTP_ALLOWED_HOSTS", []) or []}
    return _normalised_host(host) in allowed


def is_forbidden_address(address):
    """Loopback, private, link-local, unspecified, multicast, reserved, shared or a metadata service?

    IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, 6to4, NAT64)
    are judged by the IPv4 address inside.
    """
    if address.version == 6:
        if address.scope_id:
            return True
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and is_forbidden_address(embedded):
            return True
    return (
        address in METADATA_ADDRESSES
        or not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def check_destination(url):
    """Resolve the host of ``url`` and return a Destination whose addresses may be connected to.

    Raises DestinationRefused, before any connection, when the URL is not http(s) or when
    any address the host resolves to is forbidden (see is_forbidden_address) and the host
    is not in EVENTS_HTTP_ALLOWED_HOSTS; OutboundError when the name does not resolve.
    Odd spellings of an IP (``2130706433``, ``0177.0.0.1``, ``0x7f.1``) resolve like any
    name and are judged by the address they resolve to.
    """
    target = parse_target(url)
    try:
        infos = socket.getaddrinfo(target.host, target.origin[2], type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundError(f"Cannot resolve “{target.host}”: {exc}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundError(f"Cannot resolve “{target.host}”: no addresses.")
    if not is_allowed_host(target.host):
        for address in addresses:
            if is_forbidden_address(address):
                raise DestinationRefused(
                    f"Refused to connect to {target.host} ({address}): private, loopback, link-local and metadata "
                    "addresses are blocked. Add the host to EVENTS_HTTP_ALLOWED_HOSTS to allow it."
                )
    return Destination(scheme=target.scheme, host=target.host, port=target.port, addresses=tuple(addresses))

"""Who may hand us a session, and who may receive one.

Inbound baggage is untrusted input: anyone can send ``baggage: user.id=admin``. ``InboundPolicy``
decides what of it we believe; ``OutboundPolicy`` decides which hosts get our session entries at
all, so ids do not leak to third parties such as an AI provider's API.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sessiontrace import semconv

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PRIVATE = "@private"
"""Allow-list keyword: loopback, private and link-local addresses, single-label host names
(``ledger``, as in Docker Compose or Kubernetes) and the ``.local``, ``.internal``,
``.localhost``, ``.svc`` and ``.cluster.local`` suffixes."""

_PRIVATE_SUFFIXES = (".local", ".internal", ".localhost", ".svc", ".cluster.local")


@dataclass(frozen=True)
class InboundPolicy:
    """What we accept from the wire.

    - A well-formed ``session.id`` is always accepted, unless ``require_signature`` is set and the
      entries are not signed with ``signing_key``.
    - User id and roles are accepted only from a trusted source: entries signed with
      ``signing_key``, or a peer address inside ``trusted_peers``. Otherwise they are dropped.
    """

    signing_key: bytes | None = None
    require_signature: bool = False
    trusted_peers: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        if self.require_signature and not self.signing_key:
            raise ValueError("require_signature needs a signing_key (SESSIONTRACE_SIGNING_KEY)")

    def peer_is_trusted(self, peer: str | None) -> bool:
        if not peer or not self.trusted_peers:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_peers)


@dataclass(frozen=True)
class OutboundPolicy:
    """Hosts that may receive our session baggage: exact names, ``*.suffix`` wildcards, IP
    addresses, CIDR networks, ``*`` for every host, and ``@private`` (the default)."""

    allowed_hosts: tuple[str, ...] = (PRIVATE,)
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks = []
        for entry in self.allowed_hosts:
            if "/" in entry or _is_ip(entry):
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError as error:
                    raise ValueError(f"outbound host {entry!r} is not a valid address or network") from error
        object.__setattr__(self, "_networks", tuple(networks))

    def allows(self, host: str | None) -> bool:
        """True when ``host`` may receive session entries. An unknown destination is allowed:
        the policy guards HTTP clients we instrument, not hand-built carriers."""
        if host is None:
            return True
        host = host.lower().rstrip(".")
        if not host:  # a destination we could not parse: only "*" lets it through
            return "*" in self.allowed_hosts
        return _allows(self, host)


@functools.lru_cache(maxsize=1024)
def _allows(policy: OutboundPolicy, host: str) -> bool:
    host = host.strip("[]")  # IPv6 literal from a URL
    address = _ip(host)
    for entry in policy.allowed_hosts:
        if entry == "*" or entry == host:
            return True
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if entry == PRIVATE:
            if address is not None:
                if address.is_loopback or address.is_private or address.is_link_local:
                    return True
            elif "." not in host or host.endswith(_PRIVATE_SUFFIXES) or host == "localhost":
                return True
    return address is not None and any(address in network for network in policy._networks)


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings (``10.0.0.0/8``, ``127.0.0.1``); ``ValueError`` names the bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as error:
            raise ValueError(f"trusted peer {entry!r} is not an IP address or CIDR network") from error
    return tuple(networks)


# --- signatures ----------------------------------------------------------------------------------
_SIGNED_KEYS = tuple(key for key in semconv.SESSION_BAGGAGE_KEYS if key != semconv.BAGGAGE_SIGNATURE)


def sign(entries: Mapping[str, str], key: bytes) -> str:
    """HMAC-SHA256 over the session entries in a fixed order, base64url without padding."""
    message = "\n".join(f"{name}={entries.get(name, '')}" for name in _SIGNED_KEYS).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signature_is_valid(entries: Mapping[str, str], signature: str | None, key: bytes) -> bool:
    return signature is not None and hmac.compare_digest(sign(entries, key), signature)


def _is_ip(text: str) -> bool:
    return _ip(text) is not None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None

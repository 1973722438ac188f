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
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sessiontrace import semconv

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PRIVATE = "@private"
"""Allow-list keyword: loopback, private and link-local addresses, single-label host names
(``ledger``, as in Docker Compose or Kubernetes) and the ``.local``, ``.internal``,
``.localhost``, ``.svc`` and ``.cluster.local`` suffixes."""

_PRIVATE_SUFFIXES = (".local", ".internal", ".localhost", ".svc", ".cluster.local")
# Host names that HTTP clients read as an IPv4 address although ``ipaddress`` does not: decimal
# (134744072), hex (0x8080808), octal (010.0.0.1) and short (127.1) forms, all ``inet_aton``'s.
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")
# A host like these is a number, not a single-label name, even when ``inet_aton`` rejects it
# (99999999999): URL parsers refuse it, resolvers may look it up in public DNS.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")


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
        # A server listening on "::" sees IPv4 peers as ::ffff:a.b.c.d; IPv4 networks must match them.
        candidates = (address, _unmapped(address))
        return any(candidate in network for candidate in candidates for network in self.trusted_peers)


@dataclass(frozen=True)
class OutboundPolicy:
    """Hosts that may receive our session baggage: exact names, ``*.suffix`` wildcards, IP
    addresses, CIDR networks, ``*`` for every host, and ``@private`` (the default)."""

    allowed_hosts: tuple[str, ...] = (PRIVATE,)
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_hosts", tuple(_normalised_entry(entry) for entry in self.allowed_hosts))
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


def _normalised_entry(entry: str) -> str:
    """An allow-list entry as destinations are compared: host names are case-insensitive and may be
    written fully qualified (``ledger.example.com.``), destinations arrive lower-case without the dot."""
    entry = entry.strip().lower()
    name = entry.rstrip(".")
    return name if name not in ("", "*") else entry  # "*." must not become "*" (every host)


@functools.lru_cache(maxsize=1024)
def _allows(policy: OutboundPolicy, host: str) -> bool:
    host = host.strip("[]")  # IPv6 literal from a URL
    address = _ip(host) or _legacy_ipv4(host)
    for entry in policy.allowed_hosts:
        if entry == "*" or entry == host:
            return True
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if entry == PRIVATE:
            if address is not None:
                # The IPv4 rules for ::ffff:a.b.c.d: the client connects to a.b.c.d.
                unmapped = _unmapped(address)
                if unmapped.is_loopback or unmapped.is_private or unmapped.is_link_local:
                    return True
            elif _is_private_name(host):
                return True
    return address is not None and any(
        candidate in network for candidate in (address, _unmapped(address)) for network in policy._networks
    )


def _is_private_name(host: str) -> bool:
    if host == "localhost" or host.endswith(_PRIVATE_SUFFIXES):
        return True
    return "." not in host and not _NUMERIC_LABEL.fullmatch(host)  # single-label, unless a number


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
_SIGNED_KEYS = (
    tuple(key for key in semconv.SESSION_BAGGAGE_KEYS if key != semconv.BAGGAGE_SIGNATURE)
    + semconv.WORKFLOW_BAGGAGE_KEYS
)
_SIGNED_WHEN_PRESENT = frozenset(semconv.WORKFLOW_BAGGAGE_KEYS)


def sign(entries: Mapping[str, str], key: bytes) -> str:
    """HMAC-SHA256 over the session and workflow run entries in a fixed order, base64url without
    padding. Values are signed as receivers read them: baggage propagators strip surrounding
    whitespace. Run entries count only when present, so that a session without a run signs as it
    did before runs were signed (senders of both versions verify during a rollout)."""
    lines = [
        f"{name}={entries.get(name, '').strip()}"
        for name in _SIGNED_KEYS
        if name in entries or name not in _SIGNED_WHEN_PRESENT
    ]
    digest = hmac.new(key, "\n".join(lines).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signature_is_valid(entries: Mapping[str, str], signature: str | None, key: bytes) -> bool:
    # A signature is base64url, so ASCII: anything else (baggage "sig=%C3%A9") is simply wrong, and
    # compare_digest raises TypeError on non-ASCII text.
    if signature is None or not signature.isascii():
        return False
    return hmac.compare_digest(sign(entries, key).encode(), signature.encode())


def _is_ip(text: str) -> bool:
    return _ip(text) is not None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address of a numeric host ``ipaddress`` refuses but HTTP clients connect to."""
    if not _LEGACY_IPV4.fullmatch(host):  # inet_aton also takes "1.2.3.4 anything": not a host
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``a.b.c.d`` for ``::ffff:a.b.c.d``, else ``address`` itself."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address

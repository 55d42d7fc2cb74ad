"""Where dsar may call back: the allow-list of callback URLs, and a session that connects only there.

A request's `callback_url` comes from outside (an API client, a helpdesk ticket), so dsar posting to it
is a server-side request forgery risk: `http://169.254.169.254/...` reaches a cloud's metadata service,
`http://localhost:6379` the broker. A callback URL must therefore

- match an entry of `api.callback_allow` (scheme, host, port; `*.example.net` for any sub-domain), and
- resolve only to public addresses: private, loopback, link-local, shared, multicast and reserved ones
  are refused unless the allow-list entry is that very address, or it lies in `api.callback_networks`.

It is checked at intake (`check_url`, a one-line `CallbackRefused`) and again at call time: `session()`
resolves the name, checks every address and connects to a checked one, in one step, so a name that
resolves differently later (DNS rebinding) cannot slip through. Redirects are never followed, and the
environment's proxy settings are ignored (a proxy would be the one connecting).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
DEFAULT_PORTS = {"http": 80, "https": 443}


class CallbackRefused(ValueError):
    """A callback URL dsar will not call; the message says why in one line (no secrets, no personal data)."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (IPv4 and IPv6), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


@dataclass(frozen=True)
class AllowEntry:
    scheme: str
    host: str  # lower case, no trailing dot; "*.example.net" for sub-domains; an IP literal as ipaddress prints it
    port: int

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if (scheme, port) != (self.scheme, self.port):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    @property
    def address(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def parse_entry(text: str) -> AllowEntry:
    """`https://host[:port]` (the port defaults to the scheme's); ValueError with the reason otherwise."""
    parts = urlsplit(text.strip())
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"'{text}': must start with http:// or https://")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"'{text}': only scheme://host[:port], without a path, query or login")
    host = _host(parts.hostname or "")
    if not host or (host.startswith("*") and not host.startswith("*.")) or "*" in host[1:]:
        raise ValueError(f"'{text}': needs a host name, '*.domain' or an IP address")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError(f"'{text}': the port is not a number from 1 to 65535") from None
    return AllowEntry(parts.scheme, host, port)


def parse_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"'{text}': not an address or network (10.0.0.0/8, fd00::/8)") from None


def _host(host: str) -> str:
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))  # one spelling per address: [::1] and ::1, 127.0.0.1
    except ValueError:
        return host


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return address


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not private, loopback, link-local, shared (100.64/10), reserved or multicast."""
    address = _unmapped(address)
    return address.is_global and not address.is_multicast


class HasCallbackSettings(Protocol):
    @property
    def callback_allow(self) -> list[str]: ...

    @property
    def callback_networks(self) -> list[str]: ...


@dataclass(frozen=True)
class CallbackPolicy:
    allow: tuple[AllowEntry, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def from_settings(cls, api: HasCallbackSettings, resolver: Resolver | None = None) -> CallbackPolicy:
        return cls(tuple(parse_entry(e) for e in api.callback_allow),
                   tuple(parse_network(n) for n in api.callback_networks), resolver or RESOLVER.resolve)

    def entry_for(self, url: str) -> tuple[AllowEntry, str, int]:
        """The allow-list entry the URL matches, with its host and port; CallbackRefused if none."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise CallbackRefused("callback_url is not a valid URL") from None
        if parts.scheme not in DEFAULT_PORTS:
            raise CallbackRefused("callback_url must be an http:// or https:// URL")
        host = _host(parts.hostname or "")
        if not host:
            raise CallbackRefused("callback_url has no host")
        port = port or DEFAULT_PORTS[parts.scheme]
        for entry in self.allow:
            if entry.matches(parts.scheme, host, port):
                return entry, host, port
        if not self.allow:
            raise CallbackRefused("callbacks are not allowed here (api.callback_allow is empty)")
        raise CallbackRefused(f"callback_url {parts.scheme}://{host}:{port} is not in api.callback_allow")

    def allowed_address(self, entry: AllowEntry, address: IPAddress) -> bool:
        address = _unmapped(address)
        if is_public(address) or address == entry.address:
            return True
        return any(address.version == n.version and address in n for n in self.networks)

    def addresses(self, url: str) -> list[str]:
        """The checked addresses to connect to for url (resolved now); CallbackRefused when any is not allowed."""
        entry, host, port = self.entry_for(url)
        try:
            found = [host] if entry.address is not None and host == entry.host else self.resolver(host, port)
        except (OSError, UnicodeError):
            raise CallbackRefused(f"callback host {host} does not resolve") from None
        if not found:
            raise CallbackRefused(f"callback host {host} does not resolve")
        for text in found:
            address = ipaddress.ip_address(text)
            if not self.allowed_address(entry, address):
                # every address must pass: a resolver's order is not ours to trust
                raise CallbackRefused(f"callback host {host} resolves to a non-public address ({address}); "
                                      "list it in api.callback_networks to allow it")
        return found

    def check(self, url: str) -> None:
        """Intake: refuse a URL outside the allow-list or resolving to a refused address (one-line reason)."""
        self.addresses(url)


class _Resolver:
    """The process's resolver; tests replace `resolve` (a stub standing in for DNS)."""

    def __init__(self) -> None:
        self.resolve: Resolver = system_resolver


RESOLVER = _Resolver()


def check_url(api: HasCallbackSettings, url: str | None) -> None:
    """Intake check of a request's callback URL (None or empty: no callback, nothing to check)."""
    if url:
        CallbackPolicy.from_settings(api).check(url)


# -- the session that calls back ---------------------------------------------------------------

def session(policy: CallbackPolicy) -> requests.Session:
    """A requests session for callbacks: no redirects, no proxies from the environment, pinned checked addresses.

    Built in discovery/engine/callback_session.py, imported here when a callback is sent: requests and urllib3 are
    ~7 MB that a process which never calls back (a worker of an SQL-only data map) does not load (issue 15)."""
    from discovery.engine.callback_session import pinned_session

    return pinned_session(policy)


def validate_settings(allow: Iterable[str], networks: Iterable[str], default_url: str) -> None:
    """Settings check: every entry parses, and a default callback URL matches the allow-list (no DNS here)."""
    entries = tuple(parse_entry(e) for e in allow)
    tuple(parse_network(n) for n in networks)
    if default_url:
        try:
            CallbackPolicy(entries).entry_for(default_url)
        except CallbackRefused as exc:
            raise ValueError(f"api.callback_url: {exc}") from None

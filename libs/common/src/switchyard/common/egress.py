"""Outbound HTTP to addresses a tenant chose (job webhooks): which URLs and addresses
are allowed, and an httpx transport that connects only to allowed ones.

The policy, the same in every environment:

- a URL must be absolute `http://` or `https://`, at most 2048 characters, with a host,
  a valid port, no credentials, and no whitespace or control characters anywhere;
- its host must resolve only to public addresses (`localhost` and the names under it,
  trailing dot or not, are loopback without asking a resolver): loopback, private (RFC 1918, unique
  local), shared (100.64/10), link-local, multicast, reserved and unspecified addresses
  are refused (IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry),
  unless they fall in an explicitly allowed network (`SWITCHYARD_WEBHOOK_ALLOWED_NETWORKS`,
  e.g. `127.0.0.0/8` for local tests).

`GuardedTransport` resolves the host once per connection, checks every address, and
connects to the checked address itself: a name that resolves to a public address when
checked and to a private one when connecting (DNS rebinding) cannot slip through, and a
redirect, if a client follows one, goes through the same check. TLS still verifies the
certificate against the host name (the SNI and Host header are unchanged).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to.
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_S = 5.0


class InvalidTargetURL(ValueError):
    """The URL is malformed or not an allowed kind of URL; the message says why."""


class RefusedDestination(Exception):
    """The URL's host is, or resolves to, an address the policy refuses."""


class UnresolvableDestination(Exception):
    """The URL's host could not be resolved (perhaps only for now)."""


def parse_networks(value: str | Iterable[str] | None) -> tuple[IPNetwork, ...]:
    """Networks from 'a/n,b/m' or a list of CIDR strings (a bare address is a /32 or
    /128). Raises ValueError for anything else."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def check_target_url(url: Any) -> SplitResult:
    """The parts of `url` if it is an acceptable target URL; InvalidTargetURL otherwise.
    Only the syntax is checked here (see `TargetPolicy.check_url` for the addresses)."""
    if not isinstance(url, str) or not url:
        raise InvalidTargetURL("must be a URL string")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidTargetURL(f"must be at most {MAX_URL_LENGTH} characters")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise InvalidTargetURL("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for 'host:1:2', 'host:99999', 'host:x'
        hostname = parts.hostname
        httpx.URL(url)  # what the client will send must parse too
    except (ValueError, httpx.InvalidURL):
        raise InvalidTargetURL("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise InvalidTargetURL("must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidTargetURL("must not contain credentials")
    if port == 0:
        raise InvalidTargetURL("is not a valid URL")
    return parts


_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


def _literal_address(host: str) -> IPAddress | None:
    """The address a host names literally: IPv4/IPv6 text, or the legacy IPv4 forms the C
    resolver also accepts (`2130706433`, `0x7f.1`, `127.1`), which name 127.0.0.1 too."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


# The addresses of a `localhost` name (RFC 6761, section 6.3: `localhost` and every name
# under it are loopback, whatever a resolver answers or fails to).
_LOOPBACK_ADDRESSES = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


def _localhost_name(host: str) -> bool:
    """Whether `host` is `localhost` or a name under it, in any case, with or without the
    trailing dot of a fully qualified name (`localhost.`, `a.LOCALHOST`)."""
    name = host.lower().removesuffix(".")
    return name == "localhost" or name.endswith(".localhost")


# IPv6 prefixes whose addresses end in an IPv4 address a translator reaches (RFC 6052's
# well-known NAT64 prefix; the local-use one, RFC 8215, is not global anyway).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 `address` carries and reaches: IPv4-mapped, 6to4
    (`2002::/16`, RFC 3056), Teredo's server and client (`2001::/32`, RFC 4380) and NAT64
    (`64:ff9b::/96`)."""
    found = [found for found in (address.ipv4_mapped, address.sixtofour) if found is not None]
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public_address(address: IPAddress) -> bool:
    """Whether `address` is a globally routable unicast address. An IPv6 address carrying
    an IPv4 address (`_embedded_ipv4`: 6to4 and NAT64 reach it through a relay) is public
    only if that IPv4 address is; deprecated site-local IPv6 (`fec0::/10`) is not."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address.is_site_local or not all(is_public_address(inner) for inner in embedded):
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """The IP addresses (strings) `host` resolves to for a TCP connection on `port`, from the
    system resolver."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class TargetPolicy:
    """Which destinations outbound requests may reach: public addresses, plus the
    `allowed_networks` given explicitly."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)
    resolve_timeout_s: float = RESOLVE_TIMEOUT_S

    def allows(self, address: IPAddress) -> bool:
        """Whether outbound requests may reach `address`: it is in `allowed_networks`
        (IPv4-mapped IPv6 addresses matched as IPv4) or it is public."""
        if any(address in network for network in self.allowed_networks):
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            mapped = address.ipv4_mapped
            if any(mapped in network for network in self.allowed_networks):
                return True
        return is_public_address(address)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` resolves to, all allowed; RefusedDestination if any is
        not, UnresolvableDestination if it does not resolve (in time)."""
        literal = _literal_address(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        elif _localhost_name(host):
            # Never asked of the resolver: one that does not know `localhost.` would make
            # it look merely unresolvable now (accepted, to be tried later), and one that
            # maps it elsewhere would be wrong. Dialled on the loopback addresses allowed.
            addresses = [address for address in _LOOPBACK_ADDRESSES if self.allows(address)]
            if not addresses:
                raise RefusedDestination(f"the host {host} is a loopback name")
        else:
            try:
                async with asyncio.timeout(self.resolve_timeout_s):
                    found = await self.resolver(host, port)
            except (OSError, TimeoutError, UnicodeError):
                raise UnresolvableDestination(f"cannot resolve the host {host}") from None
            addresses = []
            for item in found:
                address = _literal_address(item.split("%", 1)[0])
                if address is not None and address not in addresses:
                    addresses.append(address)
            if not addresses:
                raise UnresolvableDestination(f"cannot resolve the host {host}")
        if not all(self.allows(address) for address in addresses):
            raise RefusedDestination(
                f"the host {host} is or resolves to a loopback, private, link-local, "
                "multicast or reserved address"
            )
        return addresses

    async def check_url(self, url: Any, *, resolve: bool = True) -> SplitResult:
        """The URL's parts if its syntax and destination are acceptable. A literal address
        is always checked; a host name only when `resolve` (raising
        UnresolvableDestination if it does not resolve)."""
        parts = check_target_url(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if resolve or _literal_address(host) is not None:
            await self.resolve(host, port)
        return parts


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects to a host's checked addresses, never to whatever it resolves to later."""

    def __init__(self, policy: TargetPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.resolve(host, port)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedDestination("unix sockets are never a destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport that connects only to destinations `policy` allows (checked
    per connection, on the address actually dialled) and never through a proxy from the
    environment. A refused destination raises RefusedDestination from the request."""

    def __init__(
        self,
        policy: TargetPolicy,
        *,
        limits: httpx.Limits | None = None,
        verify: bool = True,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(trust_env=False, limits=limits, verify=verify)
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        # httpx has no public hook for the network backend: the pool it built is replaced
        # by the same pool with the guarded backend (httpx 0.28's AsyncHTTPTransport).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )


def networks_setting(value: Any) -> Sequence[str]:
    """Settings helper: 'a,b' or a list, as a list of CIDR strings (validated)."""
    networks = parse_networks(value) if value not in (None, "") else ()
    return [str(network) for network in networks]

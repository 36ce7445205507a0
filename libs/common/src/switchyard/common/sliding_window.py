"""Sliding-window counters per key, in process memory, and the key a client address is
counted under: what auth's sign-in limits and the gateway's limit on failed API key
lookups share.

A `SlidingWindowLimiter` keeps, per key, the times of its recent hits inside a window; a
key with `limit` of them must wait until the oldest leaves. Memory is bounded: at most
`max_keys` keys are tracked, each as a 16-byte digest whatever its length, the least
recently hit forgotten first. The state is per process (no shared store): with N replicas
a client gets up to N times the limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable

# IPv6 clients are counted per /64: one subscriber or host usually holds a whole /64
# (RFC 6177), so counting single addresses would let one client spread its attempts over
# 2**64 of them.
IPV6_CLIENT_PREFIX = 64


def client_key(host: str) -> str:
    """The key a client address is counted under: an IPv4 address as it is, an IPv6
    address as its /64 network (an IPv4-mapped one as its IPv4 address), anything else
    (a name, "unknown") as given."""
    try:
        address = ipaddress.ip_address(host.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


def _digest(key: str) -> bytes:
    # Keys are attacker-chosen (any username, up to the body limit): a fixed 16 bytes each,
    # with their hits in a short list, keep a full table near 20 MiB per limiter.
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class SlidingWindowLimiter:
    """Counts hits per key in a sliding window: a key with `limit` hits in the last
    `window_s` seconds must wait. In memory, per process; at most `max_keys` keys are tracked
    (the least recently hit forgotten first). `clock` returns seconds (monotonic)."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        # Key digest -> the times of its recent hits, oldest first (at most `limit`).
        self._hits: OrderedDict[bytes, list[float]] = OrderedDict()

    def _recent(self, key: bytes, now: float) -> list[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        cutoff = now - self.window_s
        while hits and hits[0] <= cutoff:
            del hits[0]  # a few entries at most: `limit` is small
        if not hits:
            del self._hits[key]
            return None
        return hits

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may try again, or None if it is under the limit."""
        now = self._clock()
        hits = self._recent(_digest(key), now)
        if hits is None or len(hits) < self.limit:
            return None
        return max(0.0, hits[-self.limit] + self.window_s - now)

    def hit(self, key: str) -> None:
        """Count one hit for `key` now."""
        digest = _digest(key)
        now = self._clock()
        hits = self._recent(digest, now)
        if hits is None:
            hits = self._hits[digest] = []
            while len(self._hits) > self._max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(digest)
        hits.append(now)
        if len(hits) > self.limit:
            del hits[0]

    def unhit(self, key: str) -> None:
        """Take back the latest hit of `key` (an attempt that ended without a verdict)."""
        hits = self._hits.get(_digest(key))
        if hits:
            hits.pop()

    def reset(self, key: str) -> None:
        """Forget every hit of `key`."""
        self._hits.pop(_digest(key), None)

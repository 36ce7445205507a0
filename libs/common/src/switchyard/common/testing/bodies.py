"""Request bodies that tell a test whether the service read them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class WatchedBody:
    """A streamed request body (pass `stream()` as httpx's `content`) of `chunk`, which
    records in `read` whether the service asked for it: a service that answers before
    reading a body (a caller without credentials) never does."""

    chunk: bytes = b"[" * 50_000
    read: bool = field(default=False, init=False)

    async def stream(self) -> AsyncIterator[bytes]:
        """The body, as httpx sends it: only when the app reads it."""
        self.read = True
        yield self.chunk

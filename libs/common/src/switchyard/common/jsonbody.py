"""Bounds on the JSON request bodies every Switchyard HTTP service accepts.

A body is refused (400) when its JSON nests deeper than `MAX_JSON_DEPTH` levels. What an
accepted body becomes must survive every serialiser downstream, and the smallest of
their limits is far above the bound (depths counted as nested arrays/objects of the
whole document; measured with the pinned versions):

- pydantic's JSON parser (jiter), which decodes every event from Kafka: 200 levels;
- orjson: serialises 254 levels (the history service writes events with it), parses 1024;
- Python's `json` (psycopg's default JSON dumper, FastAPI's body parser): about 990;
- SQLite's JSON functions: 1000; PostgreSQL `jsonb`: bounded by `max_stack_depth`,
  thousands of levels with the default 2 MB.

A request body travels inside an event envelope that adds a few levels (`data.body`),
so the bound is kept at 64, well below 200 minus the envelope; no API request of the
OpenAI or Anthropic APIs comes near it (their structured-output schemas allow 10).

`loads` parses a body and applies the bound; `BoundedJsonRoute` makes FastAPI parse the
bodies of a router's routes the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from typing_extensions import override

MAX_JSON_DEPTH = 64

_T = TypeVar("_T")


class JsonTooDeep(ValueError):
    """A JSON document nesting arrays/objects deeper than the bound."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(
            f"The request body nests JSON arrays and objects more than {max_depth} levels "
            "deep; flatten it."
        )
        self.max_depth = max_depth


# orjson reads an integer literal outside [-2**63, 2**64 - 1] as a float; such a float is at
# or beyond these bounds.
_HUGE_FLOAT, _HUGE_NEGATIVE_FLOAT = float(2**64), float(-(2**63))


def json_depth_exceeds(value: Any, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` (parsed JSON: dicts, lists, scalars) nests containers more than
    `max_depth` levels deep (`{}` and `[]` are depth 1, a scalar 0). Iterative, so a deep
    value cannot exhaust the interpreter's stack; stops at the first level over."""
    return scan_json(value, max_depth)[0]


def scan_json(value: Any, max_depth: int = MAX_JSON_DEPTH) -> tuple[bool, bool]:
    """One walk of parsed JSON `value`: (whether it nests containers more than `max_depth`
    levels deep, whether it holds a float beyond 64-bit integers, which may have been an
    integer literal orjson could not read exactly). Stops at the first level over."""
    if not isinstance(value, dict | list):
        return False, isinstance(value, float) and _huge(value)
    huge = False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        for child in container.values() if isinstance(container, dict) else container:
            if isinstance(child, dict | list):
                if depth >= max_depth:
                    return True, huge
                stack.append((child, depth + 1))
            elif child.__class__ is float and not huge:
                huge = _huge(child)
    return False, huge


def _huge(number: float) -> bool:
    return number >= _HUGE_FLOAT or number <= _HUGE_NEGATIVE_FLOAT


def check_json_depth(value: _T, max_depth: int = MAX_JSON_DEPTH) -> _T:
    """`value` itself; raises JsonTooDeep if it nests deeper than `max_depth`."""
    if json_depth_exceeds(value, max_depth):
        raise JsonTooDeep(max_depth)
    return value


def loads(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON body (orjson) and apply the depth bound. Raises orjson.JSONDecodeError
    (a `json.JSONDecodeError`) for invalid JSON and JsonTooDeep for over-deep JSON."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own bound (1024)
            raise JsonTooDeep(max_depth) from None
        raise
    return check_json_depth(value, max_depth)


class JsonBodyTooDeep(HTTPException):
    """Raised while FastAPI parses a body: answered 400 with `code` by the error handlers."""

    code = "json_too_deep"

    def __init__(self, max_depth: int) -> None:
        super().__init__(400, str(JsonTooDeep(max_depth)))


class _BoundedJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads(await self.body())
            except JsonTooDeep as exc:
                raise JsonBodyTooDeep(exc.max_depth) from None
        return self._json


class BoundedJsonRoute(APIRoute):
    """A route whose JSON body FastAPI parses with `loads` (depth bound included): pass
    `route_class=BoundedJsonRoute` to an `APIRouter`."""

    @override
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(_BoundedJsonRequest(request.scope, request.receive))

        return bounded

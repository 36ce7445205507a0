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

A body is also refused when it holds more than `MAX_JSON_VALUES` JSON values (scalars and
containers; object keys not counted). Parsing makes a Python object of every value, and
checking a body walks them all: a 50 MiB body of `{},{},...` is 16 million dicts, over a
gigabyte and seconds of one core. The bound is counted on the raw bytes before anything is
parsed (`check_value_count`: C-speed counts of separators, and only when those pass the
bound, of the separators outside strings), so such a body costs a few scans of its bytes.
No request of the OpenAI or Anthropic APIs comes near it (OpenAI's embeddings take at
most 300,000 tokens a request, as token arrays one value each).

`loads` parses a body and applies the bounds; `BoundedJsonRoute` makes FastAPI parse the
bodies of a router's routes the same way; `loads_off_loop` parses a large body in a worker
thread (`offloop`), so that less of its cost holds up the event loop answering other
requests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from typing_extensions import override

from switchyard.common.offloop import off_loop

MAX_JSON_DEPTH = 64
MAX_JSON_VALUES = 1_000_000

_T = TypeVar("_T")
# A JSON string (RFC 8259: quotes around anything but quotes and backslashes, and escapes),
# or an unterminated one up to the end: every match from a quote succeeds, so the scan is
# linear in the body's length whatever it holds (a failed match from each of many escaped
# quotes made it quadratic).
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.S)


class JsonTooDeep(ValueError):
    """A JSON document nesting arrays/objects deeper than the bound."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(
            f"The request body nests JSON arrays and objects more than {max_depth} levels "
            "deep; flatten it."
        )
        self.max_depth = max_depth


class JsonTooManyValues(ValueError):
    """A JSON document holding more values than the bound."""

    def __init__(self, max_values: int) -> None:
        super().__init__(
            f"The request body holds more than {max_values:,} JSON values (numbers, strings, "
            "arrays, objects...); send fewer."
        )
        self.max_values = max_values


def _values_bound(raw: bytes) -> int:
    """An upper bound of the values in JSON `raw`: each value but the first of its
    container follows a comma, so values = commas + non-empty containers + 1 <= commas +
    containers + 1 (brackets and commas inside strings count too, which only raises the
    bound)."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1


def check_value_count(raw: bytes | str, max_values: int = MAX_JSON_VALUES) -> None:
    """Raise JsonTooManyValues when JSON `raw` holds more than `max_values` values, judged
    on its bytes without parsing them. When the plain count of separators passes the bound
    (a prompt may hold a CSV file), the strings are taken out and the separators counted
    again; a body with more than twice as many strings as the bound (keys and string
    values) is refused before that. Invalid JSON is left to the parser."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _values_bound(data) <= max_values:
        return
    # Quotes that open or close a string: all but escaped ones (an escaped backslash
    # before a closing quote is miscounted as an escape, which only lowers this count).
    quotes = data.count(b'"') - data.count(b'\\"')
    # Each value has at most one key: more than twice as many strings as the bound means
    # more values than the bound.
    if quotes // 2 > 2 * max_values:
        raise JsonTooManyValues(max_values)
    # Outside strings, and without whitespace, the count is exact: an empty container
    # holds no first value.
    structure = _JSON_STRING.sub(b'""', data).translate(None, b" \t\n\r")
    empty = structure.count(b"{}") + structure.count(b"[]")
    if _values_bound(structure) - empty > max_values:
        raise JsonTooManyValues(max_values)


# orjson reads an integer literal outside [-2**63, 2**64 - 1] as a float; such a float is at
# or beyond these bounds.
_HUGE_FLOAT, _HUGE_NEGATIVE_FLOAT = float(2**64), float(-(2**63))


def json_depth_exceeds(value: Any, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` (parsed JSON: dicts, lists, scalars) nests containers more than
    `max_depth` levels deep (`{}` and `[]` are depth 1, a scalar 0). Iterative, so a deep
    value cannot exhaust the interpreter's stack; stops at the first level over."""
    return scan_json(value, max_depth)[0]


def scan_json(
    value: Any, max_depth: int = MAX_JSON_DEPTH, max_values: int | None = None
) -> tuple[bool, bool, bool]:
    """One walk of parsed JSON `value`: (whether it nests containers more than `max_depth`
    levels deep, whether it holds a float beyond 64-bit integers, which may have been an
    integer literal orjson could not read exactly, whether it holds more than `max_values`
    values, when given). Stops at the first level or value over."""
    if not isinstance(value, dict | list):
        return False, isinstance(value, float) and _huge(value), False
    huge = False
    values = 1
    limit = max_values if max_values is not None else -1
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        values += len(container)
        if values > limit >= 0:
            return False, huge, True
        for child in container.values() if isinstance(container, dict) else container:
            if isinstance(child, dict | list):
                if depth >= max_depth:
                    return True, huge, False
                if child:  # an empty one holds nothing to walk
                    stack.append((child, depth + 1))
            elif child.__class__ is float and not huge:
                huge = _huge(child)
    return False, huge, False


def _huge(number: float) -> bool:
    return number >= _HUGE_FLOAT or number <= _HUGE_NEGATIVE_FLOAT


def check_json_depth(value: _T, max_depth: int = MAX_JSON_DEPTH) -> _T:
    """`value` itself; raises JsonTooDeep if it nests deeper than `max_depth`."""
    if json_depth_exceeds(value, max_depth):
        raise JsonTooDeep(max_depth)
    return value


def parse(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`orjson.loads(raw)`, without the bounds `loads` applies, but a document beyond
    orjson's own nesting bound (1,024 levels) raises JsonTooDeep(`max_depth`) as one
    beyond `max_depth` does after parsing, not the JSONDecodeError of invalid JSON.
    Raises orjson.JSONDecodeError for anything else that is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise JsonTooDeep(max_depth) from None
        raise


def loads(
    raw: bytes | str, max_depth: int = MAX_JSON_DEPTH, max_values: int = MAX_JSON_VALUES
) -> Any:
    """Parse a JSON body (orjson) and apply the bounds. Raises orjson.JSONDecodeError (a
    `json.JSONDecodeError`) for invalid JSON, JsonTooManyValues for a body of too many
    values (before parsing it) and JsonTooDeep for over-deep JSON."""
    check_value_count(raw, max_values)
    value = parse(raw, max_depth)
    too_deep, _, too_many = scan_json(value, max_depth, max_values)
    if too_deep:
        raise JsonTooDeep(max_depth)
    if too_many:
        raise JsonTooManyValues(max_values)
    return value


async def loads_off_loop(raw: bytes) -> Any:
    """`loads(raw)`, in a worker thread for a large body (`off_loop`). Raises as `loads`."""
    return await off_loop(loads, raw)


class JsonBodyTooDeep(HTTPException):
    """Raised while FastAPI parses a body: answered 400 with `code` by the error handlers."""

    code = "json_too_deep"

    def __init__(self, max_depth: int) -> None:
        super().__init__(400, str(JsonTooDeep(max_depth)))


class JsonBodyTooManyValues(HTTPException):
    """Raised while FastAPI parses a body: answered 400 with `code` by the error handlers."""

    code = "json_too_many_values"

    def __init__(self, max_values: int) -> None:
        super().__init__(400, str(JsonTooManyValues(max_values)))


class _BoundedJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = await loads_off_loop(await self.body())
            except JsonTooDeep as exc:
                raise JsonBodyTooDeep(exc.max_depth) from None
            except JsonTooManyValues as exc:
                raise JsonBodyTooManyValues(exc.max_values) from None
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

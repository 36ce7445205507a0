"""JSON that keeps every integer's digits, at orjson's speed where it can.

orjson reads an integer literal outside [-2**63, 2**64 - 1] as a float (changing its
digits) and refuses to write a Python integer outside that range (`TypeError: Integer
exceeds 64-bit range`). Clients' request bodies holding such integers are refused at the
gateway (`api/body.py`), but an upstream's reply is not Switchyard's to refuse: a model may
write `123456789012345678901234567890` into a tool call's input, and the client must get
those digits back. Replies, and every document made of them (events, history rows, cache
entries), go through `loads` and `dumps` here: orjson first, and Python's `json` module,
which reads and writes integers of any size exactly, only for the rare document that needs
it. pydantic's JSON (the event envelope) keeps such integers by itself.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from switchyard.common.jsonbody import scan_json
from switchyard.common.offloop import off_loop

# An integer beyond orjson's range has at least 19 digits (-2**63 has 19, 2**64 has 20);
# a document without a run of 19 digits cannot hold one, and most documents are that.
# With every digit made "0", such a run is 19 zeros, which one C search finds: a regular
# expression for the run starts a match at every digit, eight times slower on a document
# of numbers (230 against 21 ms for 12 MB of embeddings as floats).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"0" * 9)
_NINETEEN_ZEROS = b"0" * 19


def has_long_digit_run(raw: bytes | bytearray | str) -> bool:
    """Whether `raw` (JSON text, bytes or str) holds a run of 19 ASCII digits, which any
    integer outside orjson's exact range needs."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return _NINETEEN_ZEROS in data.translate(_DIGITS_AS_ZERO)


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """The JSON value in `raw`, every integer exact (Python's `json` reads the document
    again when orjson has read an integer beyond 64 bits as a float). Raises
    orjson.JSONDecodeError (a `json.JSONDecodeError`, a `ValueError`) for invalid JSON."""
    if isinstance(raw, memoryview):  # a Starlette response's body may be one
        raw = raw.tobytes()
    value = orjson.loads(raw)
    if has_long_digit_run(raw) and scan_json(value, max_depth=1_000_000)[1]:
        try:
            return json.loads(raw)
        except RecursionError:  # deeper than Python's parser goes: orjson's reading stands
            return value
    return value


# A UTF-16 surrogate with no partner: a `\ud83d` escape left of an emoji split in two.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogates_replaced(value: Any) -> Any:
    """`value` (JSON as Python's `json` reads it) with every lone surrogate in its strings
    and keys made U+FFFD, as a UTF-8 decoder replaces bytes it cannot decode; walked
    without recursion, so any depth is fine. Lists and dicts are changed in place."""

    def fixed(text: str) -> str:
        return _LONE_SURROGATE.sub("\ufffd", text)

    if isinstance(value, str):
        return fixed(value)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in list(item):
                child = item[key]
                if isinstance(child, str):
                    child = fixed(child)
                else:
                    stack.append(child)
                if isinstance(key, str) and _LONE_SURROGATE.search(key):
                    del item[key]
                    key = fixed(key)
                item[key] = child
        elif isinstance(item, list):
            for index, child in enumerate(item):
                if isinstance(child, str):
                    item[index] = fixed(child)
                else:
                    stack.append(child)
    return value


def loads_replacing_lone_surrogates(raw: bytes | bytearray | memoryview | str) -> Any:
    """`loads(raw)`, but a lone UTF-16 surrogate escape in a string (`"\\ud83d"` without
    its low half: valid JSON by RFC 8259's grammar, which a server splitting an emoji may
    write, and orjson refuses) becomes U+FFFD, as a UTF-8 decoder replaces bytes it
    cannot decode: no JSON Switchyard writes could hold it. For what an upstream sends,
    which is not Switchyard's to refuse. Raises ValueError (orjson's or `json`'s
    JSONDecodeError) for invalid JSON."""
    try:
        return loads(raw)
    except orjson.JSONDecodeError as exc:
        if "surrogate" not in str(exc):
            raise
        if isinstance(raw, memoryview):
            raw = raw.tobytes()
        try:
            value = json.loads(raw)
        except RecursionError:
            raise exc from None
        return _lone_surrogates_replaced(value)


async def loads_off_loop(raw: bytes | str) -> Any:
    """`loads(raw)`, in a worker thread when `raw` is over `OFF_LOOP_BYTES` (`offloop`):
    for a large document another service answered (a conversation's items, a cached reply,
    a page of history). Raises as `loads`."""
    return await off_loop(loads, raw)


def dumps(value: Any, option: int | None = None) -> bytes:
    """`value` as compact JSON (UTF-8 bytes), as `orjson.dumps(value, option=option)`
    writes it; a value holding an integer beyond 64 bits, which orjson refuses, is written
    by Python's `json` module instead, keys sorted when `option` has
    `orjson.OPT_SORT_KEYS`. Raises TypeError for a value JSON cannot hold."""
    try:
        return orjson.dumps(value, option=option)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise
    sort_keys = bool(option and option & orjson.OPT_SORT_KEYS)
    return json.dumps(
        value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys, allow_nan=False
    ).encode()

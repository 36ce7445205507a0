"""`exactjson`: integers beyond 64 bits keep their digits both ways; everything else is
what orjson reads and writes."""

from __future__ import annotations

import json

import orjson
import pytest

from switchyard.common import exactjson

BIG = 123456789012345678901234567890
DOCUMENT = {"b": [1, {"account": BIG, "negative": -(2**70)}], "a": "x"}


@pytest.mark.parametrize("raw", [json.dumps(DOCUMENT), json.dumps(DOCUMENT).encode()])
def test_integers_beyond_64_bits_are_read_exactly(raw) -> None:
    assert exactjson.loads(raw) == DOCUMENT
    assert isinstance(exactjson.loads(raw)["b"][1]["account"], int)


def test_a_document_within_64_bits_is_orjsons_reading() -> None:
    raw = b'{"id": "1234567890123456789012345", "n": 18446744073709551615, "f": 1e300}'
    assert exactjson.loads(raw) == orjson.loads(raw)
    assert exactjson.loads(bytearray(raw)) == orjson.loads(raw)
    assert exactjson.loads(memoryview(json.dumps(DOCUMENT).encode())) == DOCUMENT


def test_invalid_json_raises_a_value_error() -> None:
    with pytest.raises(ValueError):
        exactjson.loads(b'{"a": 1')


def test_integers_beyond_64_bits_are_written_exactly_keys_sorted_when_asked() -> None:
    assert (
        exactjson.dumps(DOCUMENT)
        == json.dumps(DOCUMENT, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert exactjson.dumps(DOCUMENT, option=orjson.OPT_SORT_KEYS).startswith(b'{"a":"x","b"')
    assert exactjson.dumps({"é": 1}) == orjson.dumps({"é": 1})


def test_what_json_cannot_hold_is_still_a_type_error() -> None:
    with pytest.raises(TypeError):
        exactjson.dumps({"a": object()})
    with pytest.raises(TypeError):
        exactjson.dumps({"a": object(), "b": BIG})


async def test_a_large_document_is_decoded_off_the_event_loop(monkeypatch):
    """A document over `OFF_LOOP_BYTES` is decoded in a worker thread, exactly; a small
    one at once on the loop's thread."""
    import threading

    from switchyard.common.offloop import OFF_LOOP_BYTES

    threads: list[bool] = []
    real = exactjson.loads
    loop_thread = threading.current_thread()

    def recorded(raw):
        threads.append(threading.current_thread() is loop_thread)
        return real(raw)

    monkeypatch.setattr(exactjson, "loads", recorded)
    big = 2**70
    large = b'{"n": %d, "text": "%s"}' % (big, b"x" * OFF_LOOP_BYTES)
    assert (await exactjson.loads_off_loop(large))["n"] == big
    assert await exactjson.loads_off_loop(f'{{"n": {big}}}') == {"n": big}
    assert threads == [False, True]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"n": 1234567890123456789}', True),  # 19 digits
        (b'{"n": 123456789012345678}', False),  # 18
        (b'{"n": 123456789.0123456789}', False),  # 9 and 10, split by the point
        (b'{"s": "x9999999999999999999x"}', True),  # in a string too: only a pre-check
        (bytearray(b"[" + b"1234567890," * 1000 + b"0]"), False),
        ('{"é\U0001f680": 12345678901234567890}', True),
        ('{"lone \ud800": 1}', False),
        (b"", False),
    ],
)
def test_a_run_of_nineteen_digits_is_found_wherever_it_is(raw, expected) -> None:
    assert exactjson.has_long_digit_run(raw) is expected


def test_a_document_of_floats_is_read_as_orjson_reads_it() -> None:
    document = {"data": [{"embedding": [0.0123456789, -1.5e-7, 3.0] * 100}] * 10}
    raw = orjson.dumps(document)
    assert exactjson.loads(raw) == orjson.loads(raw) == document


def test_a_lone_surrogate_is_a_replacement_character_when_asked() -> None:
    raw = (
        b'{"a": "x\\ud83d y", "b": ["\\ude00"], "\\ud800k": "\\ud83d\\ude00", '
        b'"n": 123456789012345678901234567890}'
    )
    with pytest.raises(orjson.JSONDecodeError):
        exactjson.loads(raw)
    assert exactjson.loads_replacing_lone_surrogates(raw) == {
        "a": "x\ufffd y",
        "b": ["\ufffd"],
        "\ufffdk": "\U0001f600",
        "n": 123456789012345678901234567890,
    }
    with pytest.raises(ValueError):
        exactjson.loads_replacing_lone_surrogates(b'{"a": "\\ud83d"')

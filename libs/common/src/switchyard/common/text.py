"""Text for a terminal or a message: what users wrote (emails, key names, model names)
made safe to print, numbers as operators wrote them or as people read them, and listings
in aligned columns."""

from __future__ import annotations

import math
from collections.abc import Sequence


def terminal_safe(text: object) -> str:
    """`text` as a string with every control or format character (NUL, ESC, CR/LF, bidi
    overrides, ...) shown as its Python escape (`\\x1b`, `\\n`, `\\u202e`) instead of being
    sent to the terminal, which would otherwise obey it. Printable text, accents and all,
    is unchanged."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in value)


def fixed_point(value: float) -> str:
    """`value` in fixed-point notation with the digits it has, never an exponent: `1e-07`
    is `0.0000001`, `12.5` stays `12.5`, `5.0` is `5` (how an operator wrote a budget)."""
    from decimal import Decimal

    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def quantity(value: float) -> str:
    """`value` as people read a count or a limit in a message: `fixed_point`'s digits with
    the whole part grouped by thousands, never an exponent (`1e9` is `1,000,000,000`,
    `2.5` stays `2.5`)."""
    if not math.isfinite(value):
        return str(value)  # `inf`, `nan`: nothing to group
    sign = "-" if value < 0 else ""
    whole, dot, fraction = fixed_point(abs(value)).partition(".")
    return f"{sign}{int(whole):,}{dot}{fraction}"


def columns(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """`rows` as plain-text lines under a header row and a rule of dashes, each column
    left-aligned to its widest cell as a terminal shows it (wide characters count two,
    through wcwidth), two spaces apart (tabulate's `simple` format, no number alignment
    or parsing: cells print as given, None as empty, surrounding spaces dropped). Cells
    are shown through `terminal_safe`; a row per line, so `grep` finds a row (`--json`
    is for programs: a cell may hold spaces)."""
    from tabulate import tabulate

    shown = [["" if cell is None else terminal_safe(cell) for cell in row] for row in rows]
    return tabulate(
        shown,
        headers=list(headers),
        tablefmt="simple",
        disable_numparse=True,
        stralign="left",
    )

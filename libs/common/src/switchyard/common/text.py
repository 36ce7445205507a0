"""Text from users (emails, key names, model names) made safe to print on a terminal."""

from __future__ import annotations


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

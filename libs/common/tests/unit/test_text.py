"""Text for a terminal: listings in columns that line up as a terminal shows them, with
nothing a user wrote able to move the cursor or recolour the screen; quantities in
messages as people write them."""

from __future__ import annotations

import pytest
from wcwidth import wcswidth

from switchyard.common.text import columns, quantity


def test_columns_line_up_as_a_terminal_shows_wide_characters():
    lines = columns(["id", "name", "tenant"], [["1", "研究チーム", "acme"], ["22", "ab", "x"]])
    header, rule, *rows = lines.splitlines()
    assert header.split() == ["id", "name", "tenant"]
    assert set(rule.replace(" ", "")) == {"-"}
    # Every column starts at the same screen column on every line.
    for row in rows:
        prefix = row[: row.index("acme" if "acme" in row else "x")]
        assert wcswidth(prefix) == header.index("tenant")


def test_columns_escape_what_users_wrote_and_show_none_as_empty():
    lines = columns(["name", "note"], [["a\x1b[2Jb", None], ["c\u202ed", "\n"]]).splitlines()
    assert "\x1b" not in "".join(lines) and "\u202e" not in "".join(lines)
    assert lines[2].split() == ["a\\x1b[2Jb"]
    assert lines[3].split() == ["c\\u202ed", "\\n"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1e9, "1,000,000,000"),
        (60, "60"),
        (2.5, "2.5"),
        (-0.5, "-0.5"),
        (-1234567.25, "-1,234,567.25"),
        (1e-7, "0.0000001"),
        (float("inf"), "inf"),
        (float("nan"), "nan"),
    ],
)
def test_a_quantity_reads_as_people_write_it(value, shown):
    assert quantity(value) == shown

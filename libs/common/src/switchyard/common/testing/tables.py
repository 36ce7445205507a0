"""Reading back the plain-text tables the command line prints (`switchyard.common.text.
columns`: a header row, a rule of dashes, a row per line), for tests that check cells."""

from __future__ import annotations


def table_cells(text: str) -> list[dict[str, str]]:
    """The rows of the first table in `text`, each as {header: cell}, cut at the columns
    the rule of dashes under the header row marks. Raises ValueError when `text` has no
    header row and rule."""
    lines = text.splitlines()
    for at in range(1, len(lines)):
        rule = lines[at]
        if rule and set(rule) <= {"-", " "} and "-" in rule:
            break
    else:
        raise ValueError(f"no table in {text!r}")
    spans: list[tuple[int, int]] = []
    start = None
    for index, char in enumerate(rule + " "):
        if char == "-" and start is None:
            start = index
        elif char != "-" and start is not None:
            spans.append((start, index))
            start = None
    # The last column runs to the end of its line (a cell may be wider than its rule
    # when the table is read from a narrower terminal; `columns` pads, never cuts).
    spans[-1] = (spans[-1][0], max(len(line) for line in lines))
    headers = [lines[at - 1][a:b].strip() for a, b in spans]
    return [
        {header: line[a:b].strip() for header, (a, b) in zip(headers, spans, strict=True)}
        for line in lines[at + 1 :]
        if line.strip()
    ]

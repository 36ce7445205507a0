"""docs/console.md states the console's security headers as the console sends them."""

from __future__ import annotations

from pathlib import Path

from switchyard.gateway.console.app import CONTENT_SECURITY_POLICY, SECURITY_HEADERS

CONSOLE_DOC = Path(__file__).resolve().parents[4] / "docs" / "console.md"


def test_the_documented_csp_is_the_one_sent() -> None:
    text = " ".join(CONSOLE_DOC.read_text(encoding="utf-8").split())
    assert f"`{CONTENT_SECURITY_POLICY}`" in text


def test_every_security_header_sent_is_documented() -> None:
    text = CONSOLE_DOC.read_text(encoding="utf-8").lower()
    for name, _ in SECURITY_HEADERS:
        assert name.decode() in text.replace("`", ""), name

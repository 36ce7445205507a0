"""What users and models write never runs as script in a real browser, wherever the
console shows it: prompts, replies, tool calls, model names, key names, team names and
error messages. The console is served in-process with auth and history played by the
unit suite's `ConsoleDouble` (so payloads can reach every field, team names and error
messages included), and Debian's Chromium renders each page through Playwright."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import uvicorn

from switchyard.common.testing.infra import async_wait_until
from switchyard.common.testing.processes import free_port
from switchyard.gateway.config import Settings

from ..unit.auth_double import gateway_with
from ..unit.console_double import ConsoleDouble

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SWITCHYARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAYLOADS = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=2">',
    '"><svg onload="window.__xss=3">',
    '\'><iframe srcdoc="<script>parent.__xss=4</script>">',
]


def _seed(double: ConsoleDouble) -> list[str]:
    alice = double.account("alice@acme.test")
    double.teams = []
    ids = []
    for payload in PAYLOADS:
        double.add_key(alice, payload)
        double.teams.append(
            {
                "id": payload,
                "name": payload,
                "limits": {
                    "max_budget_usd": 5.0,
                    "budget_period": "1d",
                    "budget_anchor_at": "2025-01-01T00:00:00Z",
                    "rpm_limit": None,
                    "tpm_limit": None,
                    "max_parallel_requests": None,
                },
            }
        )
        double.team_spend[payload] = 1.0
        ids.append(
            double.add_item(
                alice,
                model=payload,
                status="failed",
                deployment=payload,
                request={
                    "model": payload,
                    "system": [{"type": "text", "text": payload}],
                    "tools": [{"name": payload, "input_schema": {}}],
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": payload}]},
                        {
                            "role": "assistant",
                            "content": [
                                {"type": "thinking", "thinking": payload, "signature": "s"},
                                {
                                    "type": "tool_use",
                                    "id": payload,
                                    "name": payload,
                                    "input": {"q": payload},
                                },
                            ],
                        },
                        {
                            "role": "user",
                            "content": [
                                {"type": "tool_result", "tool_use_id": payload, "content": payload}
                            ],
                        },
                    ],
                },
                response={
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "text", "text": payload}],
                },
                error={"type": payload, "code": payload, "message": payload, "status": 502},
            )["id"]
        )
    return ids


def _started(server: uvicorn.Server):
    async def started() -> bool | None:
        return server.started or None

    return started


@pytest.fixture
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("SWITCHYARD_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing: run deploy/local/chromium.sh")
        pytest.skip(f"{CHROMIUM} is missing")
    return CHROMIUM


@pytest.mark.timeout(180)
async def test_payloads_in_every_field_render_as_text_and_never_run(chromium: str):
    from playwright.async_api import async_playwright

    double = ConsoleDouble()
    ids = _seed(double)
    settings = Settings(request_timeout_s=2.0, topic_prefix="browser-console")
    async with gateway_with(double, settings) as gw:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(gw.app, host="127.0.0.1", port=port, lifespan="off", log_config=None)
        )
        serving = asyncio.create_task(server.serve())
        await async_wait_until(
            _started(server), timeout=30, interval=0.05, message="the console server"
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=chromium, args=CHROMIUM_ARGS
                )
                page = await browser.new_page()
                problems: list[str] = []
                page.on("dialog", lambda dialog: problems.append("dialog: " + dialog.message))
                page.on("pageerror", lambda error: problems.append(f"error: {error}"))
                page.on(
                    "console",
                    lambda m: problems.append("console: " + m.text) if m.type == "error" else None,
                )
                await page.goto(base + "/ui/login")
                # An admin, who sees every team, key and request of the tenant.
                await page.get_by_label("Email").fill("root@acme.test")
                await page.get_by_label("Password").fill("root-password")
                await page.get_by_role("button", name="Sign in").click()
                await page.wait_for_url(base + "/ui/")
                pages = [("/ui/keys", PAYLOADS), ("/ui/teams", PAYLOADS)]
                pages += [("/ui/requests", PAYLOADS)]
                pages += [
                    (f"/ui/requests/{rid}", [p]) for rid, p in zip(ids, PAYLOADS, strict=True)
                ]
                for path, expected in pages:
                    response = await page.goto(base + path)
                    assert response is not None and response.status == 200, path
                    text = await page.inner_text("main")
                    for payload in expected:
                        # Each payload is on the page as the text it is.
                        assert payload in text, (path, payload)
                    assert await page.evaluate("window.__xss") is None, path
                    assert await page.locator("main iframe, main svg, main img").count() == 0
                assert not problems, problems
                await browser.close()
        finally:
            server.should_exit = True
            await serving

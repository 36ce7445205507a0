"""The console as a person uses it, in Chromium: sign in, every page at 1280 and 390 px
(screenshots saved), create a key and see its secret once, revoke it, download the usage
CSV, open a request's detail; another tenant's request is not found; nothing users or
models wrote ever runs as script, and the CSP is never violated."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from .conftest import CHROMIUM, CHROMIUM_ARGS, XSS_MODEL, Embedded

pytestmark = pytest.mark.browser

PAYLOADS = [
    "<script>window.__xss=2</script>",
    '<img src=x onerror="window.__xss=3">',
    '"><svg onload=alert(4)>',
]
# Every page at both widths; a second view of the overview and usage at 1280 px only.
PAGES = [
    ("overview", "/ui/?range=hour"),
    ("overview-30d", "/ui/?range=30d"),
    ("usage", "/ui/usage?group_by=model"),
    ("usage-by-day", "/ui/usage?group_by=day"),
    ("requests", "/ui/requests"),
    ("keys", "/ui/keys"),
    ("teams", "/ui/teams"),
    ("jobs", "/ui/jobs"),
    ("models", "/ui/models"),
]


def seed_traffic(system: Embedded) -> list[str]:
    """Requests whose prompts (and so the simulator's replies) are XSS payloads, one on
    the model named like one, and a job."""
    ids = []
    with httpx.Client(
        base_url=system.url, headers={"authorization": f"Bearer {system.api_key}"}, timeout=30
    ) as api:
        for index, payload in enumerate(PAYLOADS):
            model = XSS_MODEL if index == 0 else "sim-small"
            response = api.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": payload}]},
            )
            assert response.status_code == 200, response.text
            ids.append(response.headers["x-request-id"])
        job = api.post(
            "/v1/jobs",
            json={"model": "sim-large", "messages": [{"role": "user", "content": "later"}]},
        )
        assert job.status_code == 202, job.text
    return ids


def other_tenants_request(system: Embedded) -> str:
    """A request of a user of another tenant (created with the CLI, as an operator would)."""
    system.group.cli(
        "users",
        "create",
        "--email",
        "mallory@other.test",
        "--tenant",
        "other",
        "--role",
        "admin",
        "--no-password",
    )
    printed = system.group.cli("keys", "create", "--email", "mallory@other.test")
    key = next(word for word in printed.split() if word.startswith("sk-sy-"))
    response = httpx.post(
        f"{system.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "sim-small", "messages": [{"role": "user", "content": "tenant secret"}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


class Watch:
    """What a page must never do: run injected script, open unexpected dialogs, log
    errors (CSP violations are logged as errors)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        if dialog.type == "confirm" and dialog.message.startswith("Revoke this key?"):
            dialog.accept()
        else:
            dialog.dismiss()

    def check(self, page: Page, where: str) -> None:
        assert page.evaluate("window.__xss") is None, f"injected script ran on {where}"
        assert not self.errors, f"{where}: {self.errors}"
        assert all(message.startswith("Revoke this key?") for message in self.dialogs), (
            where,
            self.dialogs,
        )


def sign_in(page: Page, system: Embedded) -> None:
    page.goto(system.url + "/ui/")
    expect(page).to_have_url(system.url + "/ui/login?next=%2Fui%2F")
    page.get_by_label("Email").fill(system.email)
    page.get_by_label("Password").fill(system.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


@pytest.mark.timeout(300)
def test_a_person_uses_every_page_of_the_console(embedded: Embedded, screenshots: Path):
    started = time.monotonic()
    # The CLI starts slowly: the other tenant is set up while the browser works.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        foreign_request = pool.submit(other_tenants_request, embedded)
        request_ids = seed_traffic(embedded)
        browse(embedded, screenshots, request_ids, foreign_request, started)


def browse(embedded, screenshots, request_ids, foreign_request, started) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width in (1280, 390):
                context = browser.new_context(
                    viewport={"width": width, "height": 900}, accept_downloads=True
                )
                page = context.new_page()
                watch = Watch(page)
                sign_in(page, embedded)
                for name, path in PAGES:
                    if width < 1280 and name in ("overview-30d", "usage-by-day"):
                        continue
                    print(f"{time.monotonic() - started:6.1f}s {width}px {path}", flush=True)
                    response = page.goto(embedded.url + path)
                    assert response is not None and response.status == 200, path
                    if name.startswith("overview"):
                        # Every chart drew (console.js marks each canvas it filled).
                        expect(page.locator("canvas[data-drawn]")).to_have_count(5)
                    page.screenshot(path=screenshots / f"{name}-{width}.png", full_page=True)
                    watch.check(page, path)
                    # The page fits the viewport; wide tables scroll inside their box.
                    overflow = page.evaluate(
                        "document.documentElement.scrollWidth - window.innerWidth"
                    )
                    assert overflow <= 1, (path, width, overflow)
                # Navigating inside the console swaps pages in place (htmx) and still
                # draws the charts.
                page.get_by_role("link", name="Overview").click()
                expect(page.get_by_role("heading", name="Overview")).to_be_visible()
                expect(page.locator("canvas[data-drawn]")).to_have_count(5)
                watch.check(page, "overview after in-page navigation")
                # The request log shows the model named like an attack, as text.
                page.goto(embedded.url + "/ui/requests")
                expect(page.locator("#request-log")).to_contain_text(XSS_MODEL)
                # Request detail: the prompt and the reply as text.
                page.goto(embedded.url + f"/ui/requests/{request_ids[1]}")
                expect(page.locator("#request-conversation")).to_contain_text(PAYLOADS[1])
                expect(page.locator("#reply-conversation")).to_contain_text(
                    "Simulated reply to: " + PAYLOADS[1]
                )
                expect(page.locator(".facts")).to_contain_text("simulator")
                page.screenshot(path=screenshots / f"request-detail-{width}.png", full_page=True)
                watch.check(page, "request detail")
                # Another tenant's request id: not found, nothing of it shown.
                foreign = foreign_request.result(timeout=120)
                response = page.goto(embedded.url + f"/ui/requests/{foreign}")
                assert response is not None and response.status == 404
                assert "tenant secret" not in page.content()
                # Chromium logs the expected 404 as a failed load; nothing else may show.
                assert all("404" in error for error in watch.errors), watch.errors
                watch.errors.clear()
                if width == 1280:
                    keys_flow(page, embedded, screenshots, watch)
                    csv_download(page, embedded)
                context.close()
            # Signing out ends the session.
            context = browser.new_context()
            page = context.new_page()
            sign_in(page, embedded)
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_label("Email")).to_be_visible()
            page.goto(embedded.url + "/ui/keys")
            expect(page.get_by_label("Password")).to_be_visible()
            context.close()
        finally:
            browser.close()


def keys_flow(page: Page, system: Embedded, screenshots: Path, watch: Watch) -> None:
    """Create a key named like an attack: its secret shows once, it works, and revoked
    it stops working."""
    page.goto(system.url + "/ui/keys")
    page.get_by_text("Create a key").click()
    page.locator("#create-key input[name=name]").fill(PAYLOADS[0])
    page.locator("#create-key select[name=allowed_models]").select_option("sim-small")
    page.locator("#create-key button[type=submit]").click()
    secret = page.locator("#new-secret").inner_text().strip()
    assert secret.startswith("sk-sy-")
    expect(page.locator("#keys-table")).to_contain_text(PAYLOADS[0])
    page.screenshot(path=screenshots / "key-created-1280.png", full_page=True)
    watch.check(page, "key created")
    answer = httpx.post(
        f"{system.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "sim-small", "messages": [{"role": "user", "content": "with new key"}]},
        timeout=30,
    )
    assert answer.status_code == 200
    page.goto(system.url + "/ui/keys")
    assert secret not in page.content()  # shown once only
    row = page.locator("#keys-table tr", has_text=PAYLOADS[0])
    row.get_by_role("button", name="Revoke").click()
    expect(row.locator(".status")).to_have_text("revoked")
    watch.check(page, "key revoked")
    deadline = time.monotonic() + 5
    while True:
        refused = httpx.get(
            f"{system.url}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10
        )
        if refused.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert refused.status_code == 401


def csv_download(page: Page, system: Embedded) -> None:
    """The CSV the usage page downloads is what GET /v1/usage answers as CSV."""
    page.goto(system.url + "/ui/usage?group_by=model&range=30d")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    downloaded = Path(download_info.value.path()).read_text()
    api = httpx.get(
        f"{system.url}/v1/usage",
        params={"group_by": "model", "since": "720h", "format": "csv"},
        headers={"authorization": f"Bearer {system.api_key}"},
        timeout=30,
    )
    assert api.status_code == 200
    assert downloaded == api.text
    assert downloaded.splitlines()[0].startswith("model,requests")
    assert "sim-small" in downloaded

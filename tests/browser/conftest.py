"""The web console in a real browser: Debian's Chromium (installed by
`deploy/local/chromium.sh`) driven by Playwright for Python, against `switchyard dev` as
its own process on free ports. Screenshots of every page go to build/console-screenshots/
(git-ignored) for a person to look at."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from switchyard.common.testing.infra import wait_until
from switchyard.common.testing.processes import ProcessGroup, free_port

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build" / "console-screenshots"
CHROMIUM = os.environ.get("SWITCHYARD_CHROMIUM", "/usr/bin/chromium")
# Playwright's own browser downloads are not used: Debian's Chromium, headless, offline.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "browser-test-password"
# A model whose very name is an XSS attempt: it must show as text everywhere.
XSS_MODEL = "<img src=x onerror=window.__xss=1>"


def require_chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("SWITCHYARD_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing: run deploy/local/chromium.sh")
        pytest.skip(f"{CHROMIUM} is missing (deploy/local/chromium.sh installs it)")
    return CHROMIUM


@dataclass
class Embedded:
    group: ProcessGroup
    url: str
    auth_url: str
    api_key: str
    email: str = "dev@switchyard.local"
    password: str = PASSWORD


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):  # only this run's pictures remain
        old.unlink()
    return SCREENSHOTS


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    """`switchyard dev` (every service in one process, SQLite, the simulator) on free
    ports, with the simulator also serving a model named like an XSS attack."""
    require_chromium()
    workdir = tmp_path_factory.mktemp("console-browser")
    ports = {name: free_port() for name in ("gateway", "auth", "history", "inference", "sim")}
    simulator = f"http://127.0.0.1:{ports['sim']}/v1"
    (workdir / "routing.yaml").write_text(
        "models:\n"
        + "".join(
            f"  {name!r}:\n    deployments:\n      - name: simulator\n"
            f"        provider: openai\n        model: sim-small\n        base_url: {simulator}\n"
            for name in ("sim-small", "sim-large", XSS_MODEL)
        )
    )
    env = {
        **os.environ,
        "SWITCHYARD_ROUTING_FILE": str(workdir / "routing.yaml"),
        "SWITCHYARD_SIMULATOR_URL": simulator,
        "SWITCHYARD_DEV_PASSWORD": PASSWORD,
        "SWITCHYARD_GATEWAY_PORT": str(ports["gateway"]),
        "SWITCHYARD_AUTH_PORT": str(ports["auth"]),
        "SWITCHYARD_HISTORY_PORT": str(ports["history"]),
        "SWITCHYARD_INFERENCE_PORT": str(ports["inference"]),
        "SWITCHYARD_AUTH_URL": f"http://127.0.0.1:{ports['auth']}",
        "SWITCHYARD_HISTORY_URL": f"http://127.0.0.1:{ports['history']}",
        "SWITCHYARD_GATEWAY_CONSOLE_INFERENCE_METRICS_URLS": (
            f"http://127.0.0.1:{ports['inference']}/metrics"
        ),
        "SWITCHYARD_LOG_LEVEL": "WARNING",
    }
    for name in ("SWITCHYARD_DEV_API_KEY", "DATABASE_URL", "SWITCHYARD_BUS", "OPENAI_API_KEY"):
        env.pop(name, None)
    group = ProcessGroup(env=env, workdir=workdir)
    try:
        process = group.start("dev", "dev", port=ports["gateway"], timeout=150)
        wait_until(
            lambda: "Press Ctrl+C" in process.log(), timeout=30, message="the start-up banner"
        )
        printed = process.log()
        api_key = re.search(r"API key: (sk-sy-\S+)", printed)
        assert api_key, printed
        assert f"Console:          http://127.0.0.1:{ports['gateway']}/ui/" in printed
        assert f"Console sign-in: dev@switchyard.local / {PASSWORD}" in printed
        yield Embedded(
            group,
            f"http://127.0.0.1:{ports['gateway']}",
            f"http://127.0.0.1:{ports['auth']}",
            api_key.group(1),
        )
    finally:
        group.stop_all()

"""No credential ever reaches a log line. Named to run after every other e2e test, so the
logs it reads hold everything the suite did: logins, key creation, JWTs, revocations."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.e2e

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
FULL_API_KEY = re.compile(r"sk-sy-[A-Za-z0-9_-]{30,}")


def test_service_logs_contain_no_credentials(system):
    logs = "\n".join(process.log() for process in system.processes)
    assert len(logs) > 1000, "the services logged nothing: this check would prove nothing"
    assert system.api_key not in logs
    assert system.password not in logs
    assert system.env["SWITCHYARD_INTERNAL_TOKEN"] not in logs
    assert not JWT.search(logs), JWT.search(logs).group(0)[:20] + "..."
    assert not FULL_API_KEY.search(logs)
    assert "Bearer " not in logs
    assert "authorization" not in logs.lower().replace('"authorization": "[redacted]"', "")

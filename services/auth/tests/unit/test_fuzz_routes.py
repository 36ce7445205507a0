"""Every route of the auth service, called with generated requests (schemathesis) as an
admin with every scope, never answers 5xx."""

from __future__ import annotations

import pytest
from argon2 import profiles

from switchyard.auth.app import create_app
from switchyard.auth.bootstrap import build_database_service, build_token_issuer
from switchyard.auth.passwords import PasswordHasher
from switchyard.common.bus import InMemoryBus
from switchyard.common.scopes import ADMIN_TOKEN_SCOPES
from switchyard.common.testing.fuzz import serve_in_thread, server_errors


# Bounded by examples (about 45 s alone on 2 cores); the timeout only covers a busy machine.
@pytest.mark.timeout(300)
def test_no_auth_route_answers_5xx_to_generated_requests(settings):
    async def serve_auth(state: dict) -> object:
        engine, service = build_database_service(
            settings.database_url,
            tokens=build_token_issuer(settings),
            passwords=PasswordHasher(profiles.CHEAPEST),
        )
        admin = await service.create_user(
            email="root@example.com", role="admin", password="correct horse battery"
        )
        await engine.dispose()
        state["token"] = service.tokens.issue(
            user_id=admin.id, tenant=admin.tenant, role="admin", scopes=ADMIN_TOKEN_SCOPES
        ).token
        bus = InMemoryBus()

        async def cleanup() -> None:
            await bus.stop()

        state["cleanup"] = cleanup
        # The deployed hash costs ~100 ms; the routes are what is under test here.
        return create_app(settings, bus=bus, passwords=PasswordHasher(profiles.CHEAPEST))

    with serve_in_thread(serve_auth) as server:
        headers = {
            "Authorization": f"Bearer {server.state['token']}",
            "x-switchyard-internal-token": settings.internal_token,
        }
        failures = server_errors(server.base_url, headers=headers)
    assert failures == [], "\n".join(failures)

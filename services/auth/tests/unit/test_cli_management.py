"""`switchyard users list|disable|enable`, `keys list|revoke` and `tokens create` options:
the operator's side of revocation (events go to the outbox for the service to publish)."""

from __future__ import annotations

import json

import jwt
import pytest
import typer
from typer.testing import CliRunner

from switchyard.auth.cli import keys_app, teams_app, tokens_app, users_app
from switchyard.auth.config import Settings
from switchyard.auth.models import OutboxEvent
from switchyard.auth.service import AuthService


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SWITCHYARD_AUTH_SIGNING_KEY_FILE", str(settings.signing_key_file))
    monkeypatch.setenv("SWITCHYARD_ENVIRONMENT", "development")
    app = typer.Typer()
    for group in (users_app, keys_app, tokens_app, teams_app):
        app.add_typer(group)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, list(args), input=input)

    return invoke


def outbox_types(run_with_service) -> list[str]:
    async def read(service: AuthService) -> list[str]:
        async with service.sessions() as session:
            rows = (await session.execute(OutboxEvent.__table__.select())).all()
        return [row.event_type for row in rows if row.published_at is None]

    return run_with_service(read)


def test_keys_list_and_revoke(cli, run_with_service) -> None:
    assert cli("users", "create", "--email", "ops@example.com", "--no-password").exit_code == 0
    created = cli("keys", "create", "--email", "ops@example.com", "--json")
    issued = json.loads(created.stdout)

    listed = cli("keys", "list", "--email", "ops@example.com", "--json")
    assert listed.exit_code == 0, listed.output
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["key_id"] == issued["key_id"] and entry["status"] == "active"
    assert issued["key"] not in listed.stdout

    revoked = cli("keys", "revoke", issued["key_id"])
    assert revoked.exit_code == 0, revoked.output
    assert issued["key"] not in revoked.stdout
    listed = cli("keys", "list", "--json")
    assert json.loads(listed.stdout)["status"] == "revoked"
    assert outbox_types(run_with_service) == ["auth.api_key_revoked"]

    unknown = cli("keys", "revoke", "no-such-key")
    assert unknown.exit_code == 1 and "No API key" in unknown.output


def test_an_empty_listing_still_prints_its_header_row(cli) -> None:
    """A script reading the listing finds the header whether or not there are rows."""
    for command, first in (("users", "id"), ("keys", "key_id"), ("teams", "id")):
        listed = cli(command, "list", "--tenant", "nobody")
        assert listed.exit_code == 0, listed.output
        lines = listed.stdout.splitlines()
        assert lines[0].split()[0] == first and set(lines[1].replace(" ", "")) == {"-"}
        assert len(lines) == 2, command


def test_the_plain_listings_have_a_header_row_and_aligned_columns(cli) -> None:
    """`users list`, `keys list` and `teams list` print a header, a rule and one row per
    item, each column starting where its header does (what `--json` does not need)."""
    cli("users", "create", "--email", "a@acme.test", "--tenant", "acme", "--no-password")
    cli("users", "create", "--email", "longer.name@acme.test", "--tenant", "acme", "--no-password")
    for email in ("a@acme.test", "longer.name@acme.test"):
        assert cli("keys", "create", "--email", email, "--name", f"key of {email}").exit_code == 0
    assert cli("teams", "create", "--tenant", "acme", "--name", "research").exit_code == 0

    for command, header in (
        ("users", ["id", "email", "tenant", "role", "status"]),
        ("keys", ["key_id", "prefix", "name", "tenant", "status"]),
        ("teams", ["id", "tenant", "name", "limits"]),
    ):
        listed = cli(command, "list")
        assert listed.exit_code == 0, listed.output
        lines = listed.stdout.splitlines()
        assert lines[0].split() == header, command
        assert set(lines[1].replace(" ", "")) == {"-"}, command
        rows = lines[2:]
        assert len(rows) == (1 if command == "teams" else 2), command
        starts = [lines[0].index(name) for name in header]
        for row in rows:
            for start in starts[1:]:
                # Every column begins after two spaces, where its header does.
                assert row[start - 2 : start] == "  " and row[start] != " ", (command, row)


def test_users_list_disable_and_enable(cli, run_with_service) -> None:
    cli("users", "create", "--email", "a@acme.test", "--tenant", "acme", "--no-password")
    cli("users", "create", "--email", "b@globex.test", "--tenant", "globex", "--no-password")
    listed = cli("users", "list", "--tenant", "acme", "--json")
    assert [json.loads(line)["email"] for line in listed.stdout.splitlines()] == ["a@acme.test"]

    disabled = cli("users", "disable", "--email", "a@acme.test")
    assert disabled.exit_code == 0 and "Disabled" in disabled.stdout
    assert json.loads(cli("users", "list", "--tenant", "acme", "--json").stdout)["disabled"]
    enabled = cli("users", "enable", "--email", "a@acme.test")
    assert enabled.exit_code == 0
    assert outbox_types(run_with_service) == ["auth.user_disabled", "auth.user_enabled"]
    missing = cli("users", "disable", "--email", "nobody@acme.test")
    assert missing.exit_code == 1


def test_tokens_create_can_narrow_scopes_and_models(cli) -> None:
    cli("users", "create", "--email", "dev@example.com", "--no-password")
    result = cli(
        "tokens",
        "create",
        "--email",
        "dev@example.com",
        "--scopes",
        "chat",
        "--allowed-models",
        "sim-small",
    )
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.stdout.strip(), options={"verify_signature": False})
    assert claims["scopes"] == ["chat"] and claims["allowed_models"] == ["sim-small"]
    assert "sid" not in claims
    bad = cli("tokens", "create", "--email", "dev@example.com", "--scopes", "root")
    assert bad.exit_code == 1 and "Unknown scope" in bad.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--scopes", ""),
        ("--scopes", "chat,,models"),
        ("--allowed-models", ""),
        ("--allowed-models", "sim-small, "),
    ],
)
def test_tokens_create_refuses_an_empty_list_or_entry(cli, option, value) -> None:
    """An empty list would issue a token that can do nothing, and a dropped entry one other
    than asked for: one line, exit 1, no token."""
    cli("users", "create", "--email", "dev@example.com", "--no-password")
    refused = cli("tokens", "create", "--email", "dev@example.com", option, value)
    assert refused.exit_code == 1, refused.output
    assert refused.stdout == ""
    assert len(refused.output.strip().splitlines()) == 1 and option in refused.output

"""`switchyard users|keys|tokens create` as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
import typer
from typer.testing import CliRunner

from switchyard.auth.cli import keys_app, tokens_app, users_app
from switchyard.auth.config import Settings
from switchyard.auth.keys import hash_api_key
from switchyard.auth.service import AuthService, InvalidCredentials, InvalidGrant
from switchyard.auth.signing import load_signing_key


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """Invoke the commands as the shared CLI mounts them, against the test database."""
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SWITCHYARD_AUTH_SIGNING_KEY_FILE", str(settings.signing_key_file))
    monkeypatch.setenv("SWITCHYARD_ENVIRONMENT", "development")
    app = typer.Typer()
    for group in (users_app, keys_app, tokens_app):
        app.add_typer(group)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, list(args), input=input)

    return invoke


def test_create_user_with_a_prompted_password_that_then_signs_in(
    cli, run_with_service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("switchyard.auth.cli._has_terminal", lambda: True)
    result = cli(
        "users",
        "create",
        "--email",
        "Ops@Example.com",
        "--role",
        "admin",
        input="hunter22\nhunter22\n",
    )
    assert result.exit_code == 0, result.output
    assert "ops@example.com" in result.stdout and "hunter22" not in result.stdout

    async def sign_in(service: AuthService):
        return await service.authenticate("ops@example.com", "hunter22")

    user = run_with_service(sign_in)
    assert (user.role, user.tenant) == ("admin", "default")


def test_an_operator_sets_a_users_password_and_their_sign_ins_end(
    cli, run_with_service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("switchyard.auth.cli._has_terminal", lambda: True)
    cli("users", "create", "--email", "ops@example.com", "--password-stdin", input="old-pass\n")

    async def signed_in(service: AuthService):
        user = await service.authenticate("ops@example.com", "old-pass")
        return (await service.sign_in(user)).refresh_token

    refresh_token = run_with_service(signed_in)
    changed = cli(
        "users", "set-password", "--email", "OPS@example.com", input="new-pass-1\nnew-pass-1\n"
    )
    assert changed.exit_code == 0, changed.output
    assert "ops@example.com" in changed.stdout and "new-pass-1" not in changed.stdout

    async def after(service: AuthService):
        user = await service.authenticate("ops@example.com", "new-pass-1")
        with pytest.raises(InvalidGrant):
            await service.refresh(refresh_token)
        with pytest.raises(InvalidCredentials):
            await service.authenticate("ops@example.com", "old-pass")
        return user

    assert run_with_service(after).email == "ops@example.com"
    piped = cli(
        "users",
        "set-password",
        "--email",
        "ops@example.com",
        "--password-stdin",
        input="piped-pass\n",
    )
    assert piped.exit_code == 0, piped.output
    assert run_with_service(lambda s: s.authenticate("ops@example.com", "piped-pass"))
    empty = cli(
        "users", "set-password", "--email", "ops@example.com", "--password-stdin", input="\n"
    )
    assert empty.exit_code == 1 and "this one has 0" in empty.output
    ghost = cli("users", "set-password", "--email", "ghost@example.com", "--password", "abcd1234")
    assert ghost.exit_code == 1 and "No user with email" in ghost.output
    both = cli(
        "users",
        "set-password",
        "--email",
        "ops@example.com",
        "--password",
        "a-long-password",
        "--password-stdin",
    )
    assert both.exit_code == 1 and "only one of" in both.output


def test_duplicate_email_and_unknown_user_fail_cleanly(cli) -> None:
    assert (
        cli(
            "users", "create", "--email", "a@example.com", "--password-stdin", input="password\n"
        ).exit_code
        == 0
    )
    duplicate = cli("users", "create", "--email", "A@example.com", "--no-password")
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.output and "Traceback" not in duplicate.output

    unknown = cli("keys", "create", "--email", "ghost@example.com")
    assert unknown.exit_code == 1
    assert "No user with email ghost@example.com" in unknown.output

    bad_role = cli("users", "create", "--email", "b@example.com", "--role", "root", "--no-password")
    assert bad_role.exit_code == 1 and "--role must be one of: admin, member" in bad_role.output
    # Refused before the password prompt: nothing is asked for a command that will fail.
    for bad, said in (
        (("--email", "c@example.com", "--role", "wizard"), "--role must be one of"),
        (("--email", "not-an-email"), "is not a valid email address"),
        (("--email", "d@example.com", "--tenant", "bad!tenant"), "Tenant must be"),
    ):
        prompted = cli("users", "create", *bad, input="")
        assert prompted.exit_code == 1 and "Password" not in prompted.output, prompted.output
        assert said in prompted.output


def test_keys_create_json_prints_a_working_key_once(cli, run_with_service) -> None:
    cli("users", "create", "--email", "dev@example.com", "--no-password")
    result = cli(
        "keys",
        "create",
        "--email",
        "dev@example.com",
        "--name",
        "ci",
        "--scopes",
        "chat",
        "--expires-in-days",
        "3",
        "--json",
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert set(printed) == {"key", "key_id"}

    async def lookup(service: AuthService):
        return await service.lookup_api_key(hash_api_key(printed["key"]))

    identity = run_with_service(lookup)
    assert identity is not None and identity.key_id == printed["key_id"]
    assert identity.scopes == ["chat"] and identity.expires_at is not None

    plain = cli("keys", "create", "--email", "dev@example.com")
    assert plain.exit_code == 0 and plain.stdout.strip().startswith("sk-sy-")

    bad_scope = cli("keys", "create", "--email", "dev@example.com", "--scopes", "everything")
    assert bad_scope.exit_code == 1 and "Unknown scope(s): everything" in bad_scope.output


def test_tokens_create_prints_a_token_signed_with_the_service_key(cli, settings: Settings) -> None:
    cli("users", "create", "--email", "ops@example.com", "--tenant", "acme", "--no-password")
    result = cli("tokens", "create", "--email", "ops@example.com")
    assert result.exit_code == 0, result.output
    public_key = load_signing_key(settings).private_key.public_key()
    claims = jwt.decode(
        result.stdout.strip(), public_key, algorithms=["RS256"], audience="switchyard"
    )
    assert claims["tenant"] == "acme"


def test_tokens_create_never_signs_with_a_development_key_of_its_own(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run where the instance's generated key is not, a key made on the spot would sign a
    token no running service accepts: refused, naming where the key was looked for."""
    cli("users", "create", "--email", "ops@example.com", "--no-password")
    monkeypatch.delenv("SWITCHYARD_AUTH_SIGNING_KEY_FILE")
    monkeypatch.setenv("SWITCHYARD_AUTH_DEV_KEY_FILE", str(tmp_path / "elsewhere" / "key.pem"))
    result = cli("tokens", "create", "--email", "ops@example.com")
    assert result.exit_code == 1
    assert result.output.startswith(
        f"error: no development signing key at {tmp_path}/elsewhere/key.pem"
    )
    assert "Traceback" not in result.output and not (tmp_path / "elsewhere").exists()


def test_the_dev_banner_names_the_key_the_instance_signs_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from switchyard.auth.dev import signing_key_variable

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWITCHYARD_AUTH_SIGNING_KEY_FILE", raising=False)
    monkeypatch.setenv("SWITCHYARD_ENVIRONMENT", "development")
    generated = Settings(database_url="sqlite+aiosqlite:///x.db")
    assert signing_key_variable(generated) == (
        f"SWITCHYARD_AUTH_DEV_KEY_FILE={tmp_path}/.switchyard/auth-signing-key.pem "
    )
    given = Settings(database_url="sqlite+aiosqlite:///x.db", signing_key_file=Path("k.pem"))
    assert signing_key_variable(given) == f"SWITCHYARD_AUTH_SIGNING_KEY_FILE={tmp_path}/k.pem "


def test_commands_on_an_unmigrated_database_say_what_to_do(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty.db").touch()
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    result = cli("users", "create", "--email", "a@example.com", "--no-password")
    assert result.exit_code == 1
    assert "switchyard db upgrade" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", [("tokens", "create"), ("users", "list"), ("keys", "list")])
def test_commands_run_away_from_the_database_name_it_and_create_nothing(
    cli, command: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded mode's relative default run from another directory: one line saying where
    the database was looked for and what to do, and no stray empty database left behind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", "sqlite+aiosqlite:///.switchyard/auth.db")
    result = (
        cli(*command, "--email", "dev@switchyard.local")
        if command[0] == "tokens"
        else cli(*command)
    )
    assert result.exit_code == 1
    assert f"no auth database at {tmp_path}/.switchyard/auth.db" in result.output
    assert "SWITCHYARD_AUTH_DATABASE_URL" in result.output and "Traceback" not in result.output
    assert not (tmp_path / ".switchyard").exists()


def test_a_command_next_to_make_runs_database_says_which_one_it_acts_on(
    cli, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATABASE_URL exported for other work, run where `make run` keeps its `.switchyard/`:
    the command acts on DATABASE_URL's (the rule of every service) and says so, naming
    how to act on the instance of this directory instead."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".switchyard").mkdir()
    (tmp_path / ".switchyard" / "auth.db").touch()
    monkeypatch.delenv("SWITCHYARD_AUTH_DATABASE_URL")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)

    result = cli("users", "list")

    assert result.exit_code == 0, result.output
    assert "note: acting on the auth database of DATABASE_URL" in result.output
    assert f"SWITCHYARD_AUTH_DATABASE_URL=sqlite+aiosqlite:///{tmp_path}/.switchyard/auth.db" in (
        result.output
    )
    # Its own variable set, or no embedded database here: nothing to tell apart.
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", settings.database_url)
    assert "note:" not in cli("users", "list").output
    monkeypatch.delenv("SWITCHYARD_AUTH_DATABASE_URL")
    (tmp_path / ".switchyard" / "auth.db").unlink()
    assert "note:" not in cli("users", "list").output


def test_other_services_reports_get_emails_key_names_and_team_names_by_id(
    settings: Settings, run_with_service, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from switchyard.auth.governance import Governance
    from switchyard.auth.plugin import service as auth_plugin

    async def create(service: AuthService):
        user = await service.create_user(email="ana@example.com")
        created = await service.create_api_key(user_id=user.id, name="ci pipeline")
        team = await Governance(service).create_team(tenant="default", name="research")
        return user.id, created, team.id

    user_id, created, team_id = run_with_service(create)
    key_id = created.record.id
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", settings.database_url)
    assert auth_plugin.principal_names is not None
    names = asyncio.run(
        auth_plugin.principal_names({user_id, "gone"}, {key_id}, {team_id, "gone-team"})
    )
    assert names.emails == {user_id: "ana@example.com"}
    assert names.key_names == {key_id: "ci pipeline"}
    assert names.team_names == {team_id: "research"}

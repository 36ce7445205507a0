"""What a new operator meets with the auth commands: passwords (no terminal to ask on, the
API's 8 to 1024 character rule, an email taken or unknown before the prompt), model lists
changed after creation, a tenant nobody is in when shown or listed, and errors naming the
option the operator typed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from switchyard.auth.cli import keys_app, teams_app, tenants_app, tokens_app, users_app
from switchyard.auth.config import Settings
from switchyard.auth.models import OutboxEvent
from switchyard.auth.service import AuthService, InvalidCredentials


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    """Invoke the commands as the shared CLI mounts them, against the test database."""
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SWITCHYARD_ENVIRONMENT", "development")
    app = typer.Typer()
    for group in (users_app, keys_app, tokens_app, teams_app, tenants_app):
        app.add_typer(group)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, list(args), input=input)

    return invoke


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard input is a terminal (the runner's input stands for what is typed)."""
    monkeypatch.setattr("switchyard.auth.cli._has_terminal", lambda: True, raising=False)


def _signs_in(run_with_service, email: str, password: str) -> bool:
    async def check(service: AuthService) -> bool:
        try:
            await service.authenticate(email, password)
        except InvalidCredentials:
            return False
        return True

    return run_with_service(check)


# -- passwords ---------------------------------------------------------------------------


PASSWORD_COMMANDS = [
    ("users", "create", "--email", "new@example.com"),
    ("users", "set-password", "--email", "old@example.com"),
]


@pytest.mark.parametrize("command", PASSWORD_COMMANDS)
def test_without_a_terminal_the_password_is_not_asked_for(cli, command) -> None:
    """Standard input not a terminal (a script, a pipe, CI): one line naming the options
    that give a password otherwise, at once, and nothing is done."""
    cli("users", "create", "--email", "old@example.com", "--no-password")

    result = cli(*command, input="")

    assert result.exit_code == 1
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: standard input is not a terminal")
    assert "--password-stdin" in result.stderr
    assert ("--no-password" if command[1] == "create" else "--password") in result.stderr
    listed = cli("users", "list", "--json").stdout
    assert "new@example.com" not in listed


@pytest.mark.parametrize("command", PASSWORD_COMMANDS)
def test_without_a_controlling_terminal_no_getpass_warning(
    command, settings: Settings, run_with_service, tmp_path: Path
) -> None:
    """The real command in a process of its own with no terminal at all (a new session,
    standard input from /dev/null), where getpass would warn that the password may be
    echoed and read it from standard input: one line, naming the options."""
    run_with_service(lambda s: s.create_user(email="old@example.com"))
    env = {
        **os.environ,
        "SWITCHYARD_AUTH_DATABASE_URL": settings.database_url,
        "SWITCHYARD_ENVIRONMENT": "development",
    }
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", "from switchyard.common.cli import main; main()", *command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        timeout=120,
    )

    assert result.returncode == 1
    assert "GetPassWarning" not in result.stderr and "Aborted" not in result.stderr
    assert result.stderr.startswith("error: standard input is not a terminal"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--password-stdin" in result.stderr


@pytest.mark.usefixtures("terminal")
def test_an_email_taken_is_said_before_the_password_is_asked_for(cli) -> None:
    cli("users", "create", "--email", "a@example.com", "--no-password")

    result = cli("users", "create", "--email", "A@example.com", input="")

    assert result.exit_code == 1
    assert "A user with email a@example.com already exists." in result.stderr
    assert "Password" not in result.output and "Aborted" not in result.output


@pytest.mark.usefixtures("terminal")
def test_an_unknown_user_is_said_before_the_new_password_is_asked_for(cli) -> None:
    result = cli("users", "set-password", "--email", "ghost@example.com", input="")

    assert result.exit_code == 1
    assert "No user with email ghost@example.com" in result.stderr
    assert "New password" not in result.output and "Aborted" not in result.output


@pytest.mark.parametrize("length", [0, 1, 7, 1025])
@pytest.mark.parametrize("command", PASSWORD_COMMANDS)
def test_a_password_outside_8_to_1024_characters_is_refused_naming_the_rule(
    cli, run_with_service, command, length
) -> None:
    """As the admin API refuses it: given with --password or --password-stdin, nothing is
    changed and the error names the rule (never the password)."""
    cli("users", "create", "--email", "old@example.com", "--password", "the-old-password")
    password = "p" * length
    for result in (
        cli(*command, "--password", password),
        cli(*command, "--password-stdin", input=password + "\n"),
    ):
        assert result.exit_code == 1, result.output
        assert result.stderr == (
            f"error: a password must have 8 to 1024 characters; this one has {length}\n"
        )
    assert "new@example.com" not in cli("users", "list", "--json").stdout
    assert _signs_in(run_with_service, "old@example.com", "the-old-password")


@pytest.mark.parametrize("length", [8, 1024])
def test_passwords_of_8_and_1024_characters_are_taken(cli, run_with_service, length) -> None:
    password = "p" * length
    created = cli("users", "create", "--email", "new@example.com", "--password", password)
    assert created.exit_code == 0, created.output
    assert _signs_in(run_with_service, "new@example.com", password)
    changed = cli(
        "users", "set-password", "--email", "new@example.com", "--password-stdin", input="q" * 8
    )
    assert changed.exit_code == 0, changed.output
    assert _signs_in(run_with_service, "new@example.com", "q" * 8)


@pytest.mark.usefixtures("terminal")
@pytest.mark.parametrize("command", PASSWORD_COMMANDS)
def test_a_prompted_password_breaking_the_rule_is_asked_for_again(
    cli, run_with_service, command
) -> None:
    """At the prompt, a password too short is refused at once, saying why, before it is
    typed a second time; then the next one is taken."""
    cli("users", "create", "--email", "old@example.com", "--no-password")

    result = cli(*command, input="short\nlong-enough\nlong-enough\n")

    assert result.exit_code == 0, result.output
    assert "a password must have 8 to 1024 characters; this one has 5; try again" in (result.output)
    assert "short" not in result.output
    email = command[-1]
    assert _signs_in(run_with_service, email, "long-enough")


# -- allowed models after creation -------------------------------------------------------


def _limits_changed(run_with_service) -> list[tuple[str, str]]:
    async def read(service: AuthService) -> list[tuple[str, str]]:
        async with service.sessions() as session:
            rows = (await session.execute(OutboxEvent.__table__.select())).all()
        changes = [json.loads(row.payload)["data"] for row in rows]
        return [
            (change["scope"], change["scope_id"])
            for row, change in zip(rows, changes, strict=True)
            if row.event_type == "auth.limits_changed"
        ]

    return run_with_service(read)


@pytest.fixture
def acme_team_key(cli) -> tuple[str, str]:
    """A team of acme allowing sim-small and sim-large, with a member and a key of theirs:
    (team id, key id)."""
    user = cli("users", "create", "--email", "a@acme.test", "--tenant", "acme", "--no-password")
    assert user.exit_code == 0, user.output
    team = cli(
        "teams",
        "create",
        "--tenant",
        "acme",
        "--name",
        "research",
        "--allowed-models",
        "sim-small,sim-large",
        "--json",
    )
    team_id = json.loads(team.stdout)["id"]
    assert cli("users", "update", "--email", "a@acme.test", "--team", team_id).exit_code == 0
    key = cli("keys", "create", "--email", "a@acme.test", "--json")
    return team_id, json.loads(key.stdout)["key_id"]


def _team(cli, team_id: str) -> dict:
    (team,) = [
        json.loads(line)
        for line in cli("teams", "list", "--json").stdout.splitlines()
        if json.loads(line)["id"] == team_id
    ]
    return team


def _key_models(cli, key_id: str) -> list[str] | None:
    (key,) = [
        json.loads(line)
        for line in cli("keys", "list", "--json").stdout.splitlines()
        if json.loads(line)["key_id"] == key_id
    ]
    return key["allowed_models"]


def test_teams_update_replaces_and_clears_the_allowed_models(
    cli, run_with_service, acme_team_key
) -> None:
    team_id, _ = acme_team_key
    before = len(_limits_changed(run_with_service))

    changed = cli("teams", "update", "research", "--tenant", "acme", "--allowed-models", "gpt-4o")
    assert changed.exit_code == 0, changed.output
    assert "models gpt-4o" in changed.stdout
    assert _team(cli, team_id)["allowed_models"] == ["gpt-4o"]
    cleared = cli("teams", "update", team_id, "--clear", "allowed_models")
    assert cleared.exit_code == 0, cleared.output
    assert "any model" in cleared.stdout
    assert _team(cli, team_id)["allowed_models"] is None
    # Each change tells every gateway, as the admin API's does.
    assert _limits_changed(run_with_service)[before:] == [("team", team_id)] * 2


def test_keys_update_replaces_and_clears_the_allowed_models(
    cli, run_with_service, acme_team_key
) -> None:
    _, key_id = acme_team_key
    before = len(_limits_changed(run_with_service))

    changed = cli("keys", "update", key_id, "--allowed-models", "sim-large, gpt-4o")
    assert changed.exit_code == 0, changed.output
    assert "models sim-large, gpt-4o" in changed.stdout
    assert _key_models(cli, key_id) == ["sim-large", "gpt-4o"]
    cleared = cli("keys", "update", key_id, "--clear", "allowed_models", "--rpm-limit", "5")
    assert cleared.exit_code == 0, cleared.output
    assert "any model its team allows" in cleared.stdout and "rpm_limit=5" in cleared.stdout
    assert _key_models(cli, key_id) is None
    assert _limits_changed(run_with_service)[before:] == [("api_key", key_id)] * 2


def test_a_key_list_its_team_allows_none_of_is_refused(cli, acme_team_key) -> None:
    """As on creation: bounded by its team's models at every request, the key could call
    nothing. The error names the option."""
    _, key_id = acme_team_key

    refused = cli("keys", "update", key_id, "--allowed-models", "gpt-4o")

    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: --allowed-models: None of the models gpt-4o")
    assert _key_models(cli, key_id) is None


def test_a_member_may_not_change_their_keys_models(run_with_service, acme_team_key) -> None:
    """The service method the command uses keeps a key's models an admin's or operator's
    decision, as its limits are beyond tightening."""
    from switchyard.auth.governance import Governance, NotPermitted

    _, key_id = acme_team_key

    async def as_member(service: AuthService) -> None:
        with pytest.raises(NotPermitted) as refused:
            await Governance(service).update_api_key(
                key_id, allowed_models=["sim-small"], member=True
            )
        assert refused.value.param == "allowed_models"
        key = await Governance(service).update_api_key(key_id, allowed_models=["sim-small"])
        assert key.allowed_models == ["sim-small"]

    run_with_service(as_member)


@pytest.mark.parametrize("command", [("teams", "update", "research"), ("keys", "update")])
@pytest.mark.parametrize(
    ("options", "said"),
    [
        (("--allowed-models", ""), "--allowed-models must not be empty (--clear allowed_models"),
        (("--allowed-models", "a,,b"), "--allowed-models has an empty entry"),
        (
            ("--allowed-models", "a", "--clear", "allowed_models"),
            "--clear allowed_models contradicts the --allowed-models given",
        ),
        (("--clear", "bogus"), "allowed_models, not 'bogus'"),
    ],
)
def test_bad_model_options_are_refused_and_change_nothing(
    cli, acme_team_key, command, options, said
) -> None:
    team_id, key_id = acme_team_key
    target = ["--tenant", "acme"] if command[0] == "teams" else [key_id]

    refused = cli(*command, *target, *options)

    assert refused.exit_code == 1 and said in refused.stderr, refused.output
    assert _team(cli, team_id)["allowed_models"] == ["sim-small", "sim-large"]
    assert _key_models(cli, key_id) is None


# -- tenants nobody is in ----------------------------------------------------------------


def test_tenants_show_of_a_tenant_nobody_is_in_exits_1(cli) -> None:
    cli("users", "create", "--email", "a@acme.test", "--tenant", "acme", "--no-password")

    typo = cli("tenants", "show", "--tenant", "acmee")

    assert typo.exit_code == 1 and typo.stdout == ""
    assert "No user or team is in tenant 'acmee' (a typo?)" in typo.stderr
    assert json.loads(cli("tenants", "show", "--tenant", "acme").stdout)["tenant"] == "acme"


@pytest.mark.parametrize("group", ["users", "keys", "teams"])
def test_listing_a_tenant_nobody_is_in_says_so_on_stderr(cli, group) -> None:
    cli("users", "create", "--email", "a@acme.test", "--tenant", "acme", "--no-password")

    typo = cli(group, "list", "--tenant", "acmee", "--json")
    known = cli(group, "list", "--tenant", "acme", "--json")

    assert typo.exit_code == 0 and typo.stdout == ""
    assert "note: No user or team is in tenant 'acmee' (a typo?)" in typo.stderr
    assert known.exit_code == 0 and "note:" not in known.output


# -- options named as typed --------------------------------------------------------------


def test_deleting_a_team_with_members_names_the_force_option(cli, acme_team_key) -> None:
    refused = cli("teams", "delete", "research", "--tenant", "acme")

    assert refused.exit_code == 1
    assert "1 member(s) and 1 unrevoked key(s)" in refused.stderr
    assert "delete it anyway with --force." in refused.stderr
    assert "with force" not in refused.stderr
    assert cli("teams", "delete", "research", "--tenant", "acme", "--force").exit_code == 0


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (("keys", "update", "{key}", "--rpm-limit", "-5"), "--rpm-limit"),
        (("keys", "update", "{key}", "--max-parallel", "-1"), "--max-parallel"),
        (("keys", "update", "{key}", "--budget-period", "7d"), "--budget-period"),
        (("teams", "update", "{team}", "--max-budget-usd", "1e12"), "--max-budget-usd"),
        (("keys", "create", "--email", "a@acme.test", "--expires-in-days", "99999"), None),
        (("keys", "create", "--email", "a@acme.test", "--team", "other"), "--team"),
        (("tenants", "update", "--tenant", "acme", "--budgets-when-store-down", "maybe"), None),
        (("tenants", "update", "--tenant", "acme", "--rate-limits-when-store-down", "x"), None),
    ],
)
def test_refusals_name_the_option_the_operator_typed(cli, acme_team_key, command, option) -> None:
    """The service names fields as the API spells them (`'rpm_limit'`, `budget_failure_mode`):
    the command's error names the option that sets it (by default, the last one given)."""
    team_id, key_id = acme_team_key
    cli("teams", "create", "--tenant", "acme", "--name", "other")
    args = [part.format(key=key_id, team=team_id) for part in command]

    refused = cli(*args)

    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"error: {option or args[-2]}"), refused.stderr
    assert "failure_mode" not in refused.stderr

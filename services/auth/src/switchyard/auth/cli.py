"""`switchyard users|keys|tokens ...`: operator commands working directly on the auth
database named by the settings (the same one the service uses).

Revocations (`keys revoke`, `users disable`) and limit changes write their event to the
outbox table. On Kafka (`SWITCHYARD_BUS=kafka`) with PostgreSQL the command then publishes
what it wrote itself, so every gateway applies it within a second even while no auth
service runs (a gateway serving cached answers through an auth outage learns of it only
from the topic); otherwise, or when the broker cannot take it within 10 s, the running
auth service publishes it within its poll interval (0.5 s).

Errors an operator can fix (unknown user, duplicate email, tables not migrated) print one
line to stderr and exit with status 1, without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar, cast

import typer
from sqlalchemy import func, make_url, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.auth import scopes as known_scopes
from switchyard.auth.bootstrap import build_database_service, build_token_issuer
from switchyard.auth.config import DatabaseSettings, Settings
from switchyard.auth.governance import (
    CACHE_FIELDS,
    MAX_CACHE_TTL_S,
    Governance,
    TeamNotEmpty,
    TeamNotFound,
    limits_of,
)
from switchyard.auth.models import ROLES, OutboxEvent
from switchyard.auth.outbox import OutboxRelay
from switchyard.auth.service import (
    AuthError,
    AuthService,
    DuplicateEmail,
    InvalidInput,
    UserNotFound,
    check_tenant,
    expiry_in_days,
    normalise_email,
)
from switchyard.auth.signing import SigningKeyError
from switchyard.common.bus import create_bus
from switchyard.common.db import (
    dispose_engine,
    missing_database,
    other_database_note,
    sync_url,
)
from switchyard.common.logging import configure_logging
from switchyard.common.settings import ServiceSettings
from switchyard.common.text import columns, fixed_point
from switchyard.common.text import terminal_safe as safe
from switchyard.common.topics import Topics

T = TypeVar("T")

users_app = typer.Typer(name="users", help="Manage auth users.", no_args_is_help=True)
keys_app = typer.Typer(name="keys", help="Manage API keys.", no_args_is_help=True)
tokens_app = typer.Typer(name="tokens", help="Issue access tokens.", no_args_is_help=True)
teams_app = typer.Typer(name="teams", help="Manage teams and their limits.", no_args_is_help=True)
tenants_app = typer.Typer(
    name="tenants", help="Tenants' own limits and failure modes.", no_args_is_help=True
)

RpmOption = Annotated[int | None, typer.Option("--rpm-limit", help="Requests per minute.")]
TpmOption = Annotated[int | None, typer.Option("--tpm-limit", help="Tokens per minute.")]
BudgetOption = Annotated[
    float | None, typer.Option("--max-budget-usd", help="US dollars per budget period.")
]
PeriodOption = Annotated[
    str | None, typer.Option("--budget-period", help="1d, 7d, 30d or none (never resets).")
]
ParallelOption = Annotated[
    int | None, typer.Option("--max-parallel", help="Requests in progress at once.")
]
ClearOption = Annotated[
    list[str] | None,
    typer.Option(
        "--clear",
        help="Remove a limit: rpm_limit, tpm_limit, max_budget_usd (and its period), "
        "budget_period, max_parallel_requests (repeatable); for teams and keys also "
        "cache_enabled, cache_ttl_s (then the level above decides) and allowed_models "
        "(then any model: for a key, any its team allows).",
    ),
]
_CLEARABLE = ("rpm_limit", "tpm_limit", "max_budget_usd", "max_parallel_requests", "budget_period")
# What `--clear` takes on `teams update` and `keys update` beyond the limits.
_CLEARABLE_SETTINGS = (*CACHE_FIELDS, "allowed_models")
UpdateModelsOption = Annotated[
    str | None,
    typer.Option(
        "--allowed-models",
        help="Comma-separated models it may call from now on, replacing its list "
        "(--clear allowed_models removes the list).",
    ),
]
CacheOption = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache",
        help="Turn the response cache on or off for these requests (overrides the team's "
        "and tenant's setting; a request header overrides this).",
    ),
]
CacheTtlOption = Annotated[
    int | None,
    typer.Option(
        "--cache-ttl", min=1, max=MAX_CACHE_TTL_S, help="How long cached answers are reused (s)."
    ),
]


def _cache_options(
    cache: bool | None, cache_ttl: int | None, clear: list[str] | None
) -> tuple[dict[str, Any], list[str]]:
    """The cache opt-in given on the command line as a patch, and the `--clear` names
    left for `_limit_options`."""
    patch: dict[str, Any] = {}
    if cache is not None:
        patch["cache_enabled"] = cache
    if cache_ttl is not None:
        patch["cache_ttl_s"] = cache_ttl
    rest = []
    for name in clear or ():
        if name in CACHE_FIELDS:
            if name in patch:
                raise _fail(f"--clear {name} contradicts the value given for it")
            patch[name] = None
        else:
            rest.append(name)
    return patch, rest


def _models_option(
    allowed_models: str | None, clear: list[str]
) -> tuple[list[str] | None | Literal[False], list[str]]:
    """The model list `--allowed-models` or `--clear allowed_models` asks for (False when
    neither: unchanged; None: the list removed), and the `--clear` names left for
    `_limit_options`. Raises typer.Exit for an empty list or entry, or both options."""
    models: list[str] | None | Literal[False] = False
    if allowed_models is not None:
        models = _split(
            allowed_models,
            "--allowed-models",
            empty="--clear allowed_models removes the list",
        )
    rest = []
    for name in clear:
        if name == "allowed_models":
            if allowed_models is not None:
                raise _fail("--clear allowed_models contradicts the --allowed-models given")
            models = None
        else:
            rest.append(name)
    return models, rest


def _update_options(
    rpm_limit: int | None,
    tpm_limit: int | None,
    max_budget_usd: float | None,
    budget_period: str | None,
    max_parallel: int | None,
    clear: list[str] | None,
    cache: bool | None,
    cache_ttl: int | None,
    allowed_models: str | None,
) -> tuple[dict[str, Any], list[str] | None | Literal[False], dict[str, Any]]:
    """What `teams update` and `keys update` were asked to change: the cache opt-in patch
    (`_cache_options`), the model list (`_models_option`) and the limits patch
    (`_limit_options`), `--clear` shared out between them. Raises typer.Exit for
    contradicting or unknown options."""
    cache_patch, rest = _cache_options(cache, cache_ttl, clear)
    models, rest = _models_option(allowed_models, rest)
    limits = _limit_options(
        rpm_limit,
        tpm_limit,
        max_budget_usd,
        budget_period,
        max_parallel,
        rest,
        _CLEARABLE_SETTINGS,
    )
    return cache_patch, models, limits


def _describe_models(row: Any, unlisted: str) -> str:
    """The models of a team or key as its update prints them; `unlisted` says what a row
    without a list may call."""
    models = row.allowed_models
    return f"models {', '.join(safe(m) for m in models)}" if models is not None else unlisted


def _describe_cache(row: Any) -> str:
    if row.cache_enabled is None and row.cache_ttl_s is None:
        return "response cache as the level above"
    state = {True: "on", False: "off", None: "as the level above"}[row.cache_enabled]
    ttl = f", ttl {row.cache_ttl_s} s" if row.cache_ttl_s is not None else ""
    return f"response cache {state}{ttl}"


def _limit_options(
    rpm_limit: int | None,
    tpm_limit: int | None,
    max_budget_usd: float | None,
    budget_period: str | None,
    max_parallel: int | None,
    clear: list[str] | None = None,
    clearable_also: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The limits given on the command line as a patch (absent options change nothing).
    `clearable_also`: the other names `--clear` took for this command (the cache's,
    already taken out by `_cache_options`), named in the refusal of an unknown one."""
    patch: dict[str, Any] = {}
    for name, value in (
        ("rpm_limit", rpm_limit),
        ("tpm_limit", tpm_limit),
        ("max_budget_usd", max_budget_usd),
        ("budget_period", budget_period),
        ("max_parallel_requests", max_parallel),
    ):
        if value is not None:
            patch[name] = value
    given = dict(patch)
    for name in clear or ():
        if name not in _CLEARABLE:
            known = ", ".join(_CLEARABLE + clearable_also)
            raise _fail(f"--clear takes one of {known}, not {name!r}")
        # Both in one call is a contradiction; applying either would silently drop the other.
        if name in given:
            raise _fail(f"--clear {name} contradicts the value given for it")
        patch[name] = None
        if name == "max_budget_usd":
            # Clearing a budget clears its period, so a period given too is set and cleared.
            if "budget_period" in given:
                raise _fail("--clear max_budget_usd also clears budget_period, given a value")
            patch["budget_period"] = None
    return patch


def _describe(row: Any) -> str:
    limits = limits_of(row).model_dump(exclude_none=True)
    shown = {
        name: fixed_point(value) if isinstance(value, float) else value
        for name, value in limits.items()
    }
    return ", ".join(f"{name}={value}" for name, value in shown.items()) or "no limits"


async def _team_id(governance: Governance, tenant: str, team: str) -> str:
    """A team given by id or by name."""
    try:
        return (await governance.team(team, tenant)).id
    except TeamNotFound:
        return (await governance.team_by_name(tenant, team)).id


def _check_team_option(team: str | None) -> None:
    """Refuse an empty `--team` (exit 1): taken as no option at all, it changed nothing
    while the command said it had done its work."""
    if team is not None and not team.strip():
        raise _fail("--team is empty: give a team id or name (--no-team takes a user out)")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {safe(message)}", err=True)
    return typer.Exit(code=1)


def _split(
    value: str | None, option: str, *, empty: str = "leave the option out for the default"
) -> list[str] | None:
    """A comma-separated list option (None when not given). An empty value or entry is
    refused, as the API refuses it: an empty list would make a credential that can call
    nothing, and a dropped entry one other than the operator typed. `empty` says, in the
    refusal of an empty value, what to do instead."""
    if value is None:
        return None
    parts = [part.strip() for part in value.split(",")]
    if parts == [""]:
        raise _fail(f"{option} must not be empty ({empty})")
    if "" in parts:
        raise _fail(f"{option} has an empty entry in {value!r}")
    return parts


# How long a command waits to publish the events it wrote before leaving them to the
# running auth service (connecting, publishing and closing, all told).
CLI_PUBLISH_TIMEOUT_S = 10.0


class _BusSettings(ServiceSettings):
    """The bus settings of the services, read by a command that publishes: a command calls
    no other service, so it needs none of their secrets (the internal token)."""

    secret_defaults: ClassVar[dict[str, str]] = {}


async def _last_outbox_id(service: AuthService) -> int:
    async with service.sessions() as session:
        return int(await session.scalar(select(func.max(OutboxEvent.id))) or 0)


async def _publish_written_events(service: AuthService, before: int) -> None:
    """Publish the auth events the command wrote (outbox rows after id `before`) to the
    auth events topic, with any still pending before them, as the auth service's relay does
    (the same relay: in order, under its PostgreSQL lock), when the bus is Kafka. Not on
    SQLite, which has no lock to keep a running service's relay from publishing the same
    rows (the caller publishes only on PostgreSQL). Best effort, within
    `CLI_PUBLISH_TIMEOUT_S`: on failure one warning line says the auth service will publish
    them; the command has succeeded either way."""
    if await _last_outbox_id(service) <= before:
        return  # the command wrote no event
    try:
        settings = _BusSettings()
    except ValueError as exc:
        typer.echo(
            f"warning: the change is saved, but its event was not published now (bus "
            f"settings: {exc}); the auth service publishes it when it runs",
            err=True,
        )
        return
    if settings.bus != "kafka":
        return
    # Standard output is the command's answer (`--json` is read by programs), and the bus's
    # own retry lines would bury the one warning that matters here: errors only, to
    # standard error.
    configure_logging("auth", "ERROR", "console", stream=sys.stderr)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    bus = create_bus(settings, client_id="auth-cli")
    relay = OutboxRelay(service.sessions, bus, Topics(settings.topic_prefix).auth_events)
    try:
        async with asyncio.timeout(CLI_PUBLISH_TIMEOUT_S):
            try:
                await bus.start()
                # The producer connects in the background; a publish before it has would be
                # refused at once.
                connected = getattr(bus, "can_publish", lambda: True)
                for _ in range(int(CLI_PUBLISH_TIMEOUT_S / 0.05)):
                    if connected():
                        break
                    await asyncio.sleep(0.05)
                await relay.publish_pending()
            finally:
                await bus.stop()
    except Exception as exc:  # noqa: BLE001 - the auth service publishes them later
        typer.echo(
            f"warning: the change is saved, but its event could not be published now "
            f"({type(exc).__name__}); the auth service publishes it when it runs",
            err=True,
        )


# The option of each field the service names in its refusals (`param`) where the two are
# spelt otherwise, so that the error names what the operator typed.
_OPTION_OF_FIELD = {
    "rpm_limit": "--rpm-limit",
    "tpm_limit": "--tpm-limit",
    "max_budget_usd": "--max-budget-usd",
    "budget_period": "--budget-period",
    "max_parallel_requests": "--max-parallel",
    "rate_limit_failure_mode": "--rate-limits-when-store-down",
    "budget_failure_mode": "--budgets-when-store-down",
    "expires_in_days": "--expires-in-days",
    "expires_at": "--expires-in-days",
    "allowed_models": "--allowed-models",
    "cache_enabled": "--cache/--no-cache",
    "cache_ttl_s": "--cache-ttl",
    "team_id": "--team",
}


def _in_option_terms(exc: AuthError) -> str:
    """The message of `exc` for the command line: led by the option it concerns when the
    service named the field (`param`) as the API spells it (`'rpm_limit'` is set with
    `--rpm-limit`)."""
    message = str(exc)
    option = _OPTION_OF_FIELD.get(getattr(exc, "param", None) or "")
    if option is None or option in message:
        return message
    return f"{option}: {message}"


def run_with_service(
    action: Callable[[AuthService], Awaitable[T]], *, signing: bool = False, note: bool = True
) -> T:
    """Run `action` against the configured database and return its result. Expected
    failures (settings, a missing or unmigrated database, an AuthError) raise typer.Exit
    after one line on stderr. `note`: print the note saying which database is acted on
    when it may not be the one meant (False for a command's second run, already noted)."""
    try:
        database_url = DatabaseSettings().database_url
    except ValueError as exc:
        raise _fail(f"invalid settings: {exc}") from None
    # Before the signing key is read: nothing is made on the way to this error.
    missing = missing_database("auth", database_url)
    if missing is not None:
        raise _fail(missing)
    if note and (message := other_database_note("auth", database_url)) is not None:
        typer.echo(message, err=True)
    tokens = None
    if signing:
        try:
            tokens = build_token_issuer(Settings(), generate_dev_key=False)
        except ValueError as exc:
            raise _fail(f"invalid settings: {exc}") from None
        except SigningKeyError as exc:
            raise _fail(str(exc)) from None

    async def run() -> T:
        engine: AsyncEngine
        engine, service = build_database_service(database_url, tokens=tokens)
        try:
            # Only PostgreSQL's lock lets a command publish beside a running service.
            publishes = make_url(sync_url(database_url)).get_backend_name() == "postgresql"
            before = await _last_outbox_id(service) if publishes else 0
            result = await action(service)
            if publishes:
                await _publish_written_events(service, before)
            return result
        finally:
            await dispose_engine(engine)

    try:
        return asyncio.run(run())
    except AuthError as exc:
        raise _fail(_in_option_terms(exc)) from None
    except (OperationalError, ProgrammingError) as exc:
        # Most often: the tables do not exist yet, or the database is unreachable.
        reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        raise _fail(
            f"database error ({reason}); is it reachable, and has `switchyard db upgrade` run?"
        ) from None


# The admin API's rule for the passwords it sets (`POST /v1/admin/users`, `/password`):
# the commands keep it too, so that no account gets a password the API would refuse.
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
PASSWORD_HELP = (
    f"Password, {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters (visible in shell "
    "history; prefer the prompt or --password-stdin)."
)


def _password_problem(password: str) -> str | None:
    """Why `password` breaks the rule of 8 to 1024 characters, without quoting it; None
    when it keeps it."""
    if MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        return None
    return (
        f"a password must have {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters; "
        f"this one has {len(password)}"
    )


def _checked_password(password: str) -> str:
    """`password` when it keeps the rule. Raises typer.Exit (one line, status 1) otherwise."""
    if (problem := _password_problem(password)) is not None:
        raise _fail(problem)
    return password


def _has_terminal() -> bool:
    """Whether standard input is a terminal, where a password can be asked for without
    being echoed."""
    return sys.stdin.isatty()


def _given_password(password: str | None, password_stdin: bool) -> str | None:
    """The password given as `--password`, or read as one line of standard input with
    `--password-stdin`, checked against the rule (typer.Exit otherwise); None when
    neither was given (then it is asked for)."""
    if password_stdin:
        return _checked_password(sys.stdin.readline().rstrip("\r\n"))
    if password is not None:
        return _checked_password(password)
    return None


def _prompt_password(label: str) -> str:
    """A password typed twice at the terminal; one that breaks the rule is refused at
    once, saying why, and asked for again, as are two entries that differ. Raises
    typer.Abort on end of input or Ctrl+C."""
    while True:
        password = cast(str, typer.prompt(label, hide_input=True))
        if (problem := _password_problem(password)) is not None:
            typer.echo(f"{problem}; try again", err=True)
            continue
        if typer.prompt("Repeat for confirmation", hide_input=True) == password:
            return password
        typer.echo("the two entries differ; try again", err=True)


async def _email_free(service: AuthService, email: str) -> None:
    """Raise DuplicateEmail when an account already signs in with `email` (the creation
    still refuses one made meanwhile)."""
    try:
        user = await service.user_by_email(email)
    except UserNotFound:
        return
    raise DuplicateEmail(f"A user with email {user.email} already exists.")


# The options of the commands that take a password.
PasswordOption = Annotated[str | None, typer.Option(help=PASSWORD_HELP)]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from standard input (its first line)."
    ),
]


@users_app.command("create")
def create_user(
    email: Annotated[str, typer.Option(help="The user's email (their login name).")],
    tenant: Annotated[str, typer.Option(help="Tenant the user belongs to.")] = "default",
    role: Annotated[str, typer.Option(help="member or admin.")] = "member",
    password: PasswordOption = None,
    password_stdin: PasswordStdinOption = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="A user who signs in only with API keys.")
    ] = False,
) -> None:
    """Create a user. Without --password, --password-stdin or --no-password the password is
    asked for on the terminal (twice)."""
    if sum((password is not None, password_stdin, no_password)) > 1:
        raise _fail("use only one of --password, --password-stdin and --no-password")
    # What can be judged without the database is judged before the password is asked
    # for: a typo must not cost the operator a prompt.
    if role not in ROLES:
        raise _fail(f"--role must be one of: {', '.join(ROLES)} (got {role!r})")
    try:
        normalise_email(email, new=True)
        check_tenant(tenant)
    except AuthError as exc:
        raise _fail(str(exc)) from None
    password = _given_password(password, password_stdin)
    noted = False
    if password is None and not no_password:
        if not _has_terminal():
            # getpass would read the password from a pipe, echoing it, after a warning.
            raise _fail(
                "standard input is not a terminal, so the password cannot be asked for: "
                "pipe it in with --password-stdin, or create the user with --no-password"
            )
        # An email already taken is known before the operator types a password twice.
        run_with_service(lambda service: _email_free(service, email))
        noted = True
        password = _prompt_password("Password")
    new_password = password

    async def create(service: AuthService) -> Any:
        return await service.create_user(
            email=email, tenant=tenant, role=role, password=new_password
        )

    user = run_with_service(create, note=not noted)
    typer.echo(
        f"Created user {safe(user.email)} (id {user.id}, tenant {safe(user.tenant)}, "
        f"role {user.role})."
    )


@users_app.command("list")
def list_users(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's users.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List users (never their password hashes)."""

    async def list_all(service: AuthService) -> Any:
        users = await service.list_users(tenant)
        exists = bool(users) or tenant is None or await _tenant_exists(service, tenant)
        return users, exists

    users, exists = run_with_service(list_all)
    _note_unknown_tenant(tenant, exists)
    if as_json:
        for user in users:
            fields = {
                "id": user.id,
                "email": user.email,
                "tenant": user.tenant,
                "role": user.role,
                "disabled": user.disabled,
                "created_at": user.created_at.isoformat(),
            }
            typer.echo(json.dumps(fields))
    else:  # the header row even when there is no user: scripts read it
        typer.echo(
            columns(
                ("id", "email", "tenant", "role", "status"),
                [
                    (u.id, u.email, u.tenant, u.role, "disabled" if u.disabled else "active")
                    for u in users
                ],
            )
        )


def _set_disabled(email: str, disabled: bool) -> None:
    async def change(service: AuthService) -> Any:
        user = await service.user_by_email(email)
        return await service.set_disabled(user.id, disabled)

    user = run_with_service(change)
    state = "Disabled" if disabled else "Enabled"
    typer.echo(f"{state} user {safe(user.email)} (id {user.id}).")


@users_app.command("set-password")
def set_password(
    email: Annotated[str, typer.Option(help="Email of the user.")],
    password: PasswordOption = None,
    password_stdin: PasswordStdinOption = False,
) -> None:
    """Set a user's password (a forgotten or leaked one): every sign-in of theirs ends; their
    API keys stay valid. Without --password or --password-stdin it is asked for on the
    terminal (twice)."""
    if password is not None and password_stdin:
        raise _fail("use only one of --password and --password-stdin")
    password = _given_password(password, password_stdin)
    noted = False
    if password is None:
        if not _has_terminal():
            # getpass would read the password from a pipe, echoing it, after a warning.
            raise _fail(
                "standard input is not a terminal, so the new password cannot be asked "
                "for: pipe it in with --password-stdin (or give it with --password)"
            )
        # An unknown email is known before the operator types a password twice.
        run_with_service(lambda service: service.user_by_email(email))
        noted = True
        password = _prompt_password("New password")
    new_password = password

    async def change(service: AuthService) -> Any:
        user = await service.user_by_email(email)
        return await service.set_password(user.id, new_password)

    user = run_with_service(change, note=not noted)
    typer.echo(f"Set the password of {safe(user.email)} (id {user.id}); their sign-ins ended.")


@users_app.command("disable")
def disable_user(
    email: Annotated[str, typer.Option(help="Email of the user to disable.")],
) -> None:
    """Disable a user: sign-ins end; gateways refuse their tokens and keys within a second."""
    _set_disabled(email, True)


@users_app.command("enable")
def enable_user(
    email: Annotated[str, typer.Option(help="Email of the user to enable again.")],
) -> None:
    """Enable a disabled user again."""
    _set_disabled(email, False)


@keys_app.command("create")
def create_key(
    email: Annotated[str, typer.Option(help="Email of the user who owns the key.")],
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "default",
    scopes: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated, of {','.join(known_scopes.API_KEY_SCOPES)} within what the "
            f"user's role grants; default {','.join(known_scopes.DEFAULT_API_KEY_SCOPES)}."
        ),
    ] = None,
    allowed_models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may call; default any.")
    ] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(help="Days until the key expires; default never.")
    ] = None,
    team: Annotated[
        str | None,
        typer.Option(help="Team id or name (the user's team; default: the user's team)."),
    ] = None,
    rpm_limit: RpmOption = None,
    tpm_limit: TpmOption = None,
    max_budget_usd: BudgetOption = None,
    budget_period: PeriodOption = None,
    max_parallel: ParallelOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"key", "key_id"} as JSON.')
    ] = False,
) -> None:
    """Create an API key for a user and print it (it is shown only once)."""
    _check_team_option(team)
    limits = _limit_options(rpm_limit, tpm_limit, max_budget_usd, budget_period, max_parallel)
    scope_list = _split(scopes, "--scopes")
    model_list = _split(allowed_models, "--allowed-models")

    async def create(service: AuthService) -> Any:
        user = await service.user_by_email(email)
        governance = Governance(service)
        team_id: str | Literal[False] = (
            await _team_id(governance, user.tenant, team) if team else False
        )
        return await governance.create_api_key(
            user_id=user.id,
            limits=limits,
            team_id=team_id,
            name=name,
            scopes=scope_list,
            allowed_models=model_list,
            expires_at=expiry_in_days(expires_in_days),
        )

    issued = run_with_service(create)
    if as_json:
        typer.echo(json.dumps({"key": issued.key, "key_id": issued.record.id}))
        return
    typer.echo(issued.key)
    typer.echo(
        f"API key {issued.record.id} for {safe(email.strip().lower())} "
        f"(scopes {','.join(issued.record.scopes)}). Store it now: it is not shown again.",
        err=True,
    )


@keys_app.command("list")
def list_keys(
    email: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List API keys with their visible prefix and state (never the secrets)."""

    async def list_all(service: AuthService) -> Any:
        user_id = (await service.user_by_email(email)).id if email else None
        keys = await service.list_api_keys(tenant=tenant, user_id=user_id)
        exists = bool(keys) or tenant is None or await _tenant_exists(service, tenant)
        return keys, exists

    keys, exists = run_with_service(list_all)
    _note_unknown_tenant(tenant, exists)
    now = datetime.now(UTC)
    rows = []
    for key in keys:
        if key.revoked_at is not None:
            state = "revoked"
        elif key.expires_at is not None and key.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        fields = {
            "key_id": key.id,
            "prefix": key.prefix,
            "name": key.name,
            "user_id": key.user_id,
            "tenant": key.tenant,
            "scopes": key.scopes,
            "allowed_models": key.allowed_models,
            "status": state,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        }
        if as_json:
            typer.echo(json.dumps(fields))
        else:
            rows.append((key.id, f"{key.prefix}...", key.name, key.tenant, state))
    if not as_json:  # the header row even when there is no key: scripts read it
        typer.echo(columns(("key_id", "prefix", "name", "tenant", "status"), rows))


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="Id of the key (see `keys list`).")],
) -> None:
    """Revoke an API key; every gateway refuses it within a second."""

    async def revoke(service: AuthService) -> Any:
        return await service.revoke_api_key(key_id, reason="operator")

    record = run_with_service(revoke)
    typer.echo(f"Revoked API key {record.id} ({safe(record.prefix)}...).")


@keys_app.command("update")
def update_key(
    key_id: Annotated[str, typer.Argument(help="Id of the key (see `keys list`).")],
    rpm_limit: RpmOption = None,
    tpm_limit: TpmOption = None,
    max_budget_usd: BudgetOption = None,
    budget_period: PeriodOption = None,
    max_parallel: ParallelOption = None,
    clear: ClearOption = None,
    cache: CacheOption = None,
    cache_ttl: CacheTtlOption = None,
    allowed_models: UpdateModelsOption = None,
) -> None:
    """Change a key's budget and rate limits, its allowed models and its response cache
    opt-in; every gateway applies them within a second."""
    cache_patch, models, limits = _update_options(
        rpm_limit,
        tpm_limit,
        max_budget_usd,
        budget_period,
        max_parallel,
        clear,
        cache,
        cache_ttl,
        allowed_models,
    )

    async def update(service: AuthService) -> Any:
        return await Governance(service).update_api_key(
            key_id, limits=limits, cache=cache_patch, allowed_models=models
        )

    record = run_with_service(update)
    typer.echo(
        f"Updated API key {record.id}: {_describe(record)}; "
        f"{_describe_models(record, 'any model its team allows')}; {_describe_cache(record)}."
    )


@tokens_app.command("create")
def create_token(
    email: Annotated[str, typer.Option(help="Email of the user the token is for.")],
    scopes: Annotated[
        str | None,
        typer.Option(help="Comma-separated; default: all the scopes of the user's role."),
    ] = None,
    allowed_models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated models the token may call, within those the user's team "
            "allows at each request; default: the team's (any without a team or list)."
        ),
    ] = None,
) -> None:
    """Print an access token for a user, as the password grant would issue."""
    scope_list = _split(scopes, "--scopes")
    model_list = _split(allowed_models, "--allowed-models")

    async def issue(service: AuthService) -> Any:
        user = await service.user_by_email(email)
        if user.disabled:
            raise AuthError(f"User {user.email} is disabled.")
        return service.issue_access_token(user, scopes=scope_list, allowed_models=model_list)

    token = run_with_service(issue, signing=True)
    typer.echo(token.token)


@users_app.command("update")
def update_user(
    email: Annotated[str, typer.Option(help="Email of the user.")],
    team: Annotated[
        str | None, typer.Option(help="Team id or name to move the user (and their keys) into.")
    ] = None,
    no_team: Annotated[
        bool, typer.Option("--no-team", help="Take the user out of their team.")
    ] = False,
    rpm_limit: RpmOption = None,
    tpm_limit: TpmOption = None,
    max_budget_usd: BudgetOption = None,
    budget_period: PeriodOption = None,
    max_parallel: ParallelOption = None,
    clear: ClearOption = None,
) -> None:
    """Change a user's team and limits."""
    _check_team_option(team)
    if team is not None and no_team:
        raise _fail("use either --team or --no-team")
    limits = _limit_options(
        rpm_limit, tpm_limit, max_budget_usd, budget_period, max_parallel, clear
    )

    async def update(service: AuthService) -> Any:
        user = await service.user_by_email(email)
        governance = Governance(service)
        team_id: str | None | Literal[False] = False
        if team:
            team_id = await _team_id(governance, user.tenant, team)
        elif no_team:
            team_id = None
        return await governance.update_user(user.id, team_id=team_id, limits=limits)

    user = run_with_service(update)
    typer.echo(f"Updated user {user.email} (team {user.team_id or 'none'}): {_describe(user)}.")


def _team_fields(team: Any) -> dict[str, Any]:
    return {
        "id": team.id,
        "tenant": team.tenant,
        "name": team.name,
        **limits_of(team).model_dump(),
        "cache_enabled": team.cache_enabled,
        "cache_ttl_s": team.cache_ttl_s,
        "allowed_models": team.allowed_models,
        "created_at": team.created_at.isoformat(),
    }


@teams_app.command("create")
def create_team(
    name: Annotated[str, typer.Option(help="The team's name (unique in its tenant).")],
    tenant: Annotated[str, typer.Option(help="Tenant of the team.")] = "default",
    allowed_models: Annotated[
        str | None, typer.Option(help="Comma-separated models the team may call; default any.")
    ] = None,
    rpm_limit: RpmOption = None,
    tpm_limit: TpmOption = None,
    max_budget_usd: BudgetOption = None,
    budget_period: PeriodOption = None,
    max_parallel: ParallelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the team as JSON.")] = False,
) -> None:
    """Create a team with its budget and rate limits."""
    limits = _limit_options(rpm_limit, tpm_limit, max_budget_usd, budget_period, max_parallel)
    model_list = _split(allowed_models, "--allowed-models")

    async def create(service: AuthService) -> Any:
        await _known_tenant(service, tenant)
        return await Governance(service).create_team(
            tenant=tenant, name=name, limits=limits, allowed_models=model_list
        )

    team = run_with_service(create)
    if as_json:
        typer.echo(json.dumps(_team_fields(team)))
    else:
        typer.echo(
            f"Created team {team.name} (id {team.id}, tenant {team.tenant}): {_describe(team)}."
        )


@teams_app.command("list")
def list_teams(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's teams.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List teams and their limits."""

    async def list_all(service: AuthService) -> Any:
        teams = await Governance(service).list_teams(tenant)
        exists = bool(teams) or tenant is None or await _tenant_exists(service, tenant)
        return teams, exists

    teams, exists = run_with_service(list_all)
    _note_unknown_tenant(tenant, exists)
    if as_json:
        for team in teams:
            typer.echo(json.dumps(_team_fields(team)))
    else:  # the header row even when there is no team: scripts read it
        typer.echo(
            columns(
                ("id", "tenant", "name", "limits"),
                [(team.id, team.tenant, team.name, _describe(team)) for team in teams],
            )
        )


TeamArgument = Annotated[
    str, typer.Argument(help="The team's id (see `teams list`), or its name in --tenant.")
]
TeamTenantOption = Annotated[
    str, typer.Option("--tenant", help="The tenant whose team a name names.")
]


def _unknown_tenant(tenant: str) -> str:
    """What every command says of a tenant no user or team is in."""
    return (
        f"No user or team is in tenant {tenant!r} (a typo?); a tenant begins with its "
        f"first user: `switchyard users create --tenant {tenant} --email ...`."
    )


async def _tenant_exists(service: AuthService, tenant: str) -> bool:
    """Whether a user or a team is in `tenant`."""
    return bool(await service.list_users(tenant) or await Governance(service).list_teams(tenant))


async def _known_tenant(service: AuthService, tenant: str) -> None:
    """Raise InvalidInput unless a user or a team is in `tenant`: an operator's typo would
    otherwise make a tenant of its own, with limits or teams nobody is under, or be shown
    the defaults as if it were a tenant."""
    if not await _tenant_exists(service, tenant):
        raise InvalidInput(_unknown_tenant(tenant), param="tenant")


def _note_unknown_tenant(tenant: str | None, exists: bool) -> None:
    """Say on stderr that a listing of `tenant` is empty because no user or team is in it
    (an empty listing is an answer, but a typo should not read as a tenant with nothing)."""
    if tenant is not None and not exists:
        typer.echo(f"note: {_unknown_tenant(tenant)}", err=True)


async def _named_team(governance: Governance, team: str, tenant: str) -> str:
    """The id of the team given as its id (any tenant's) or as its name in `tenant`.
    Raises TeamNotFound naming both ways it looked."""
    try:
        return (await governance.team(team)).id
    except TeamNotFound:
        try:
            return (await governance.team_by_name(tenant, team)).id
        except TeamNotFound:
            raise TeamNotFound(
                f"No team with id {team!r}, nor named so in tenant {tenant!r} (another "
                "tenant's: pass --tenant)."
            ) from None


@teams_app.command("update")
def update_team(
    team_id: TeamArgument,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    rpm_limit: RpmOption = None,
    tpm_limit: TpmOption = None,
    max_budget_usd: BudgetOption = None,
    budget_period: PeriodOption = None,
    max_parallel: ParallelOption = None,
    clear: ClearOption = None,
    cache: CacheOption = None,
    cache_ttl: CacheTtlOption = None,
    allowed_models: UpdateModelsOption = None,
    tenant: TeamTenantOption = "default",
) -> None:
    """Rename a team or change its limits, its allowed models and its response cache
    opt-in; every gateway applies them within a second (to its members' keys and tokens
    too)."""
    cache_patch, models, limits = _update_options(
        rpm_limit,
        tpm_limit,
        max_budget_usd,
        budget_period,
        max_parallel,
        clear,
        cache,
        cache_ttl,
        allowed_models,
    )

    async def update(service: AuthService) -> Any:
        governance = Governance(service)
        found = await _named_team(governance, team_id, tenant)
        return await governance.update_team(
            found, name=name, limits=limits, cache=cache_patch, allowed_models=models
        )

    team = run_with_service(update)
    typer.echo(
        f"Updated team {safe(team.name)} (id {team.id}): {_describe(team)}; "
        f"{_describe_models(team, 'any model')}; {_describe_cache(team)}."
    )


@teams_app.command("delete")
def delete_team(
    team_id: TeamArgument,
    tenant: TeamTenantOption = "default",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Delete it although it has members or unrevoked keys (they stay, without "
            "a team, its limits and its model list).",
        ),
    ] = False,
) -> None:
    """Delete a team. One with members or unrevoked keys is refused unless --force: they
    would stay, without its limits and model list."""

    async def delete(service: AuthService) -> Any:
        governance = Governance(service)
        found = await _named_team(governance, team_id, tenant)
        try:
            await governance.delete_team(found, force=force)
        except TeamNotEmpty as exc:
            # The service's message is the API's too (where forcing is `?force=true`):
            # here it names this command's option.
            team = await governance.team(found)
            raise TeamNotEmpty(
                f"Team {team.name!r} has {exc.members} member(s) and {exc.keys} unrevoked "
                "key(s); deleting it frees them from its limits and model list. Move them "
                "to another team first (`switchyard users update --email ... --team ...`), "
                "or delete it anyway with --force.",
                members=exc.members,
                keys=exc.keys,
            ) from None
        return found

    found = run_with_service(delete)
    typer.echo(
        f"Deleted team {safe(team_id)} (id {found}); its members and keys no longer have its "
        "limits or model list."
    )


@tenants_app.command("update")
def update_tenant(
    tenant: Annotated[str, typer.Option(help="The tenant.")],
    rpm_limit: RpmOption = None,
    tpm_limit: TpmOption = None,
    max_budget_usd: BudgetOption = None,
    budget_period: PeriodOption = None,
    max_parallel: ParallelOption = None,
    clear: ClearOption = None,
    rate_limits_when_store_down: Annotated[
        str | None,
        typer.Option(help="open (admit, default) or closed (refuse) when the store is down."),
    ] = None,
    budgets_when_store_down: Annotated[
        str | None,
        typer.Option(help="closed (refuse, default) or open (admit) when the store is down."),
    ] = None,
) -> None:
    """Set a tenant's own limits, and what gateways do when their limit store is down."""
    for option, mode in (
        ("--rate-limits-when-store-down", rate_limits_when_store_down),
        ("--budgets-when-store-down", budgets_when_store_down),
    ):
        if mode is not None and mode not in ("open", "closed"):
            raise _fail(f"{option} must be open or closed (got {mode!r})")
    limits = _limit_options(
        rpm_limit, tpm_limit, max_budget_usd, budget_period, max_parallel, clear
    )

    async def update(service: AuthService) -> Any:
        await _known_tenant(service, tenant)
        return await Governance(service).update_tenant(
            tenant,
            limits,
            rate_limit_failure_mode=rate_limits_when_store_down,
            budget_failure_mode=budgets_when_store_down,
        )

    row = run_with_service(update)
    typer.echo(
        f"Updated tenant {row.tenant}: {_describe(row)}; when the limit store is down, "
        f"rate limits fail {row.rate_limit_failure_mode}, budgets fail {row.budget_failure_mode}."
    )


@tenants_app.command("show")
def show_tenant(tenant: Annotated[str, typer.Option(help="The tenant.")]) -> None:
    """Print a tenant's limits and failure modes as JSON. A tenant no user or team is in
    is an error (exit 1), not the defaults."""

    async def show(service: AuthService) -> Any:
        await _known_tenant(service, tenant)
        return await Governance(service).tenant(tenant)

    row = run_with_service(show)
    typer.echo(
        json.dumps(
            {
                "tenant": row.tenant,
                **limits_of(row).model_dump(),
                "rate_limit_failure_mode": row.rate_limit_failure_mode,
                "budget_failure_mode": row.budget_failure_mode,
            }
        )
    )

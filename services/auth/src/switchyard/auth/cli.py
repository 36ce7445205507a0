"""`switchyard users|keys|tokens ...`: operator commands working directly on the auth
database named by the settings (the same one the service uses).

Errors an operator can fix (unknown user, duplicate email, tables not migrated) print one
line to stderr and exit with status 1, without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.auth import scopes as known_scopes
from switchyard.auth.bootstrap import build_database_service, build_token_issuer
from switchyard.auth.config import DatabaseSettings, Settings
from switchyard.auth.service import AuthError, AuthService, expiry_in_days
from switchyard.auth.signing import SigningKeyError

T = TypeVar("T")

users_app = typer.Typer(name="users", help="Manage auth users.", no_args_is_help=True)
keys_app = typer.Typer(name="keys", help="Manage API keys.", no_args_is_help=True)
tokens_app = typer.Typer(name="tokens", help="Issue access tokens.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def run_with_service(action: Callable[[AuthService], Awaitable[T]], *, signing: bool = False) -> T:
    """Run `action` against the configured database, turning expected failures into exit 1."""
    try:
        if signing:
            settings = Settings()
            database_url, tokens = settings.database_url, build_token_issuer(settings)
        else:
            database_url, tokens = DatabaseSettings().database_url, None
    except (ValueError, SigningKeyError) as exc:
        raise _fail(f"invalid settings: {exc}") from None

    async def run() -> T:
        engine: AsyncEngine
        engine, service = build_database_service(database_url, tokens=tokens)
        try:
            return await action(service)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except AuthError as exc:
        raise _fail(str(exc)) from None
    except (OperationalError, ProgrammingError) as exc:
        # Most often: the tables do not exist yet, or the database is unreachable.
        reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        raise _fail(
            f"database error ({reason}); is it reachable, and has `switchyard db upgrade` run?"
        ) from None


@users_app.command("create")
def create_user(
    email: Annotated[str, typer.Option(help="The user's email (their login name).")],
    tenant: Annotated[str, typer.Option(help="Tenant the user belongs to.")] = "default",
    role: Annotated[str, typer.Option(help="member or admin.")] = "member",
    password: Annotated[
        str | None, typer.Option(help="Password (visible in shell history; prefer the prompt).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="A user who signs in only with API keys.")
    ] = False,
) -> None:
    """Create a user."""
    if sum((password is not None, password_stdin, no_password)) > 1:
        raise _fail("use only one of --password, --password-stdin and --no-password")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password is None and not no_password:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def create(service: AuthService) -> Any:
        return await service.create_user(email=email, tenant=tenant, role=role, password=password)

    user = run_with_service(create)
    typer.echo(f"Created user {user.email} (id {user.id}, tenant {user.tenant}, role {user.role}).")


@keys_app.command("create")
def create_key(
    email: Annotated[str, typer.Option(help="Email of the user who owns the key.")],
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "default",
    scopes: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated; default {','.join(known_scopes.API_KEY_SCOPES)}."),
    ] = None,
    allowed_models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may call; default any.")
    ] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(help="Days until the key expires; default never.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"key", "key_id"} as JSON.')
    ] = False,
) -> None:
    """Create an API key for a user and print it (it is shown only once)."""

    async def create(service: AuthService) -> Any:
        user = await service.user_by_email(email)
        return await service.create_api_key(
            user_id=user.id,
            name=name,
            scopes=_split(scopes),
            allowed_models=_split(allowed_models),
            expires_at=expiry_in_days(expires_in_days),
        )

    issued = run_with_service(create)
    if as_json:
        typer.echo(json.dumps({"key": issued.key, "key_id": issued.record.id}))
        return
    typer.echo(issued.key)
    typer.echo(
        f"API key {issued.record.id} for {email.strip().lower()} "
        f"(scopes {','.join(issued.record.scopes)}). Store it now: it is not shown again.",
        err=True,
    )


@tokens_app.command("create")
def create_token(
    email: Annotated[str, typer.Option(help="Email of the user the token is for.")],
) -> None:
    """Print an access token for a user, as the password grant would issue."""

    async def issue(service: AuthService) -> Any:
        user = await service.user_by_email(email)
        if user.disabled:
            raise AuthError(f"User {user.email} is disabled.")
        return service.issue_access_token(user)

    token = run_with_service(issue, signing=True)
    typer.echo(token.token)

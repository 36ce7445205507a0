"""Teams and limits: the use cases behind the team, budget and rate-limit parts of the
admin API, the self-service key API and the CLI, and the policy gateways enforce.

Tenant → teams → users → API keys. A user belongs to at most one team; a key belongs to
its user and (by default) to the user's team. Every level may carry `Limits`; a limit of
a key may not be set or raised above the same limit of its user, team or tenant, nor a
team's or a user's above the tenant's (a 400 naming the field). Lowering a level's limits
is always taken; a lower level's limits left above them stay, inert (`_not_raised_above`).
Each change writes `auth.limits_changed` to the outbox in its transaction, so every
gateway applies it within a second.

A member managing their own keys (`member=True`) is bound by what admins decide: their
key stays in their team, and they may only tighten its limits (lower one, or add one where
none is set), never raise or remove one nor change a budget's period; anything else is
`NotPermitted` (403). Only admins and operators take a key out of its user's team.

Teams and keys also carry the response cache opt-in (`cache_enabled`, `cache_ttl_s`, see
`CacheColumns`); gateways receive it with the policy and apply it with the precedence
request header > key > team > tenant > default (the gateway's cache.py).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from switchyard.auth.models import ApiKey, CacheColumns, LimitColumns, Team, Tenant, User
from switchyard.auth.names import fold_name, look_alike_message, looks_of
from switchyard.auth.service import (
    ApiKeyNotFound,
    AuthError,
    AuthService,
    InvalidInput,
    IssuedApiKey,
    KeyAlreadyRevoked,
    UserNotFound,
    _check_team_models,
    _validate_models,
    check_tenant,
    printable,
)
from switchyard.common.events import LimitsChanged, LimitsChangedData
from switchyard.common.governance import (
    LIMIT_FIELDS,
    NUMERIC_LIMIT_FIELDS,
    FailureMode,
    LimitError,
    Limits,
    check_limit_values,
    check_within,
)
from switchyard.common.text import quantity


class TeamNotFound(AuthError):
    """No such team (in the caller's tenant); the API answers 404."""

    pass


class DuplicateTeam(AuthError):
    """The tenant already has a team of that name; the API answers 409."""

    pass


class TeamNotEmpty(AuthError):
    """A team still has members or unrevoked keys, which deleting it would free from its
    limits and model list; deleting it anyway needs `force`. The API answers 409."""

    def __init__(self, message: str, *, members: int, keys: int) -> None:
        super().__init__(message)
        self.members = members
        self.keys = keys


class NotPermitted(AuthError):
    """A change of a member's own key that only an admin of the tenant may make (the key
    out of the member's team, a limit raised or removed, a budget's period changed);
    `param` names the field. The API answers 403."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def limits_of(row: LimitColumns | None) -> Limits:
    """The `Limits` stored on a tenant, team, user or key row; no limits for None."""
    if row is None:
        return Limits()
    return Limits(**{name: getattr(row, name) for name in LIMIT_FIELDS})


def _merged(row: LimitColumns | None, patch: dict[str, Any] | None) -> Limits:
    """The row's limits with `patch` applied (a key present with None clears that limit,
    `max_budget_usd` its `budget_period` too); InvalidInput naming the field if the
    result is invalid."""
    values = {name: getattr(row, name, None) if row is not None else None for name in LIMIT_FIELDS}
    for name, value in (patch or {}).items():
        if name not in LIMIT_FIELDS:
            raise InvalidInput(f"Unknown limit '{name}'.", param=name)
        values[name] = value
    if patch and "max_budget_usd" in patch and patch["max_budget_usd"] is None:
        # Removing a budget removes its period, unless the patch names one (refused then):
        # a period is the budget's, and limits nothing alone.
        values["budget_period"] = patch.get("budget_period")
    try:
        return check_limit_values(values, changed=set(patch or ()))
    except LimitError as exc:
        raise InvalidInput(str(exc), param=exc.param) from None


def _store(row: LimitColumns, limits: Limits, now: datetime) -> None:
    budget_changed = (row.max_budget_usd is None) != (limits.max_budget_usd is None) or (
        row.budget_period != limits.budget_period
    )
    for name in LIMIT_FIELDS:
        setattr(row, name, getattr(limits, name))
    if limits.max_budget_usd is None:
        row.budget_anchor_at = None
    elif budget_changed or row.budget_anchor_at is None:
        # A new budget, or a new period, starts now; a changed amount keeps its period.
        row.budget_anchor_at = now


def _removal(name: str, old: float) -> NotPermitted:
    return NotPermitted(
        f"Only an admin of the tenant can remove '{name}' from a key (now {quantity(old)}); "
        "you may lower it.",
        param=name,
    )


def _not_removed(before: Limits, patch: dict[str, Any] | None) -> None:
    """Raise NotPermitted naming the first limit of `before` that `patch` sets to None."""
    for name in NUMERIC_LIMIT_FIELDS:
        old = getattr(before, name)
        if old is not None and name in (patch or {}) and (patch or {})[name] is None:
            raise _removal(name, old)


def _not_loosened(before: Limits, after: Limits) -> None:
    """Raise NotPermitted naming the first limit that `after` raises or removes from
    `before`, or the budget period if `after` changes the period of a budget `before` has.
    Lowering a limit, or adding one where `before` has none, tightens and passes."""
    for name in NUMERIC_LIMIT_FIELDS:
        old, new = getattr(before, name), getattr(after, name)
        if old is None:
            continue
        if new is None:
            raise _removal(name, old)
        if new > old:
            raise NotPermitted(
                f"Only an admin of the tenant can raise '{name}' of a key (now {quantity(old)}, "
                f"asked {quantity(new)}); you may lower it.",
                param=name,
            )
    if before.max_budget_usd is not None and after.budget_period != before.budget_period:
        raise NotPermitted(
            "Only an admin of the tenant can change the period of a key's budget "
            f"(now {before.budget_period or 'none, a lifetime budget'}).",
            param="budget_period",
        )


def _within(child: Limits, parent: Limits, child_level: str, parent_level: str) -> None:
    try:
        check_within(child, parent, child_level, parent_level)
    except LimitError as exc:
        raise InvalidInput(str(exc), param=exc.param) from None


def _not_raised_above(
    before: Limits, after: Limits, parent: Limits, child_level: str, parent_level: str
) -> None:
    """InvalidInput naming the field when changing a level's limits from `before` to `after`
    sets or raises one above its `parent`'s (a budget whose period changes counts as set).

    Only what the change raises is judged: a limit left as it was, or lowered, stands even
    above the parent's, which an admin may have lowered since. Such a limit is inert (every
    request is admitted against every level, so the lowest one holds), and refusing every
    later edit of the level for it, or refusing the parent's tightening because of it,
    would let any member's key keep an admin from tightening a team in an incident."""
    period_changed = after.budget_period != before.budget_period
    kept = {
        name: None
        for name in NUMERIC_LIMIT_FIELDS
        if getattr(after, name) is None
        or (
            getattr(before, name) is not None
            and getattr(after, name) <= getattr(before, name)
            and not (name == "max_budget_usd" and period_changed)
        )
    }
    _within(after.model_copy(update=kept), parent, child_level, parent_level)


# A cached answer lives at most a week in history's store, whatever is asked.
MAX_CACHE_TTL_S = 7 * 86_400
CACHE_FIELDS = ("cache_enabled", "cache_ttl_s")


def apply_cache(row: CacheColumns, patch: dict[str, Any] | None) -> None:
    """Set a team's or key's cache opt-in from `patch` (`cache_enabled`: true, false or
    None to inherit; `cache_ttl_s`: whole seconds from 1 to a week, or None to inherit;
    an absent field keeps its value). InvalidInput naming the field if a value is wrong;
    nothing is changed then."""
    values = {name: getattr(row, name) for name in CACHE_FIELDS}
    for name, value in (patch or {}).items():
        if name not in CACHE_FIELDS:
            raise InvalidInput(f"Unknown cache setting '{name}'.", param=name)
        values[name] = value
    enabled, ttl = values["cache_enabled"], values["cache_ttl_s"]
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidInput("cache_enabled must be true, false or null.", param="cache_enabled")
    if ttl is not None:
        if isinstance(ttl, float) and ttl.is_integer():
            ttl = int(ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_CACHE_TTL_S:
            raise InvalidInput(
                f"cache_ttl_s must be a whole number of seconds from 1 to {MAX_CACHE_TTL_S} "
                "(null: as the team or tenant says).",
                param="cache_ttl_s",
            )
    row.cache_enabled = enabled
    row.cache_ttl_s = ttl


@dataclass(frozen=True)
class LevelPolicy:
    """One level's id, limits and budget anchor, as gateways receive them; for a team or
    a key, its response cache opt-in too (None: not set there)."""

    scope_id: str
    limits: Limits
    budget_anchor_at: datetime | None
    cache_enabled: bool | None = None
    cache_ttl_s: int | None = None


@dataclass(frozen=True)
class Policy:
    """Everything a gateway checks for one caller (a user, optionally through a key)."""

    tenant: str
    team_id: str | None
    levels: dict[str, LevelPolicy]  # "api_key", "user", "team", "tenant"
    rate_limit_failure_mode: str
    budget_failure_mode: str


def _level(scope_id: str, row: LimitColumns | None) -> LevelPolicy:
    return LevelPolicy(
        scope_id=scope_id,
        limits=limits_of(row),
        budget_anchor_at=row.budget_anchor_at if row is not None else None,
        cache_enabled=getattr(row, "cache_enabled", None),
        cache_ttl_s=getattr(row, "cache_ttl_s", None),
    )


class Governance:
    """Teams and limits over the auth database; shares the outbox with `AuthService`."""

    def __init__(self, auth: AuthService) -> None:
        self._auth = auth
        self._sessions = auth.sessions
        # For the lookups that only read (a gateway's policy, a caller's own limits).
        self._reads = auth.reads

    def _changed(self, session: AsyncSession, tenant: str, scope: str, scope_id: str) -> None:
        event = LimitsChanged(
            source="auth",
            tenant=tenant,
            request_id=scope_id,
            data=LimitsChangedData(scope=scope, scope_id=scope_id),
        )
        self._auth._record(session, event, scope_id)

    # -- tenants --------------------------------------------------------------------

    async def tenant(self, tenant: str) -> Tenant:
        """The tenant's row; for a tenant with no row yet, an unsaved one with no limits and
        the default failure modes (rate limits fail open, budgets closed)."""
        async with self._reads() as session:
            row = await session.get(Tenant, tenant)
        return row if row is not None else Tenant(tenant=tenant, **_default_modes())

    async def update_tenant(
        self,
        tenant: str,
        limits: dict[str, Any] | None = None,
        *,
        rate_limit_failure_mode: str | None = None,
        budget_failure_mode: str | None = None,
    ) -> Tenant:
        """Set a tenant's limits (a patch) and failure modes. Raises InvalidInput naming
        the field (a bad tenant name or value). Limits of its teams, users and keys above the
        new ones stay as they are, inert (`_not_raised_above`)."""
        check_tenant(tenant)
        for name, mode in (
            ("rate_limit_failure_mode", rate_limit_failure_mode),
            ("budget_failure_mode", budget_failure_mode),
        ):
            if mode is not None and mode not in (FailureMode.OPEN, FailureMode.CLOSED):
                raise InvalidInput(f"'{name}' must be 'open' or 'closed'.", param=name)
        now = datetime.now(UTC)
        async with self._sessions() as session:
            row = await session.get(Tenant, tenant)
            if row is None:
                row = Tenant(tenant=tenant, **_default_modes())
                session.add(row)
            merged = _merged(row, limits)
            _store(row, merged, now)
            if rate_limit_failure_mode is not None:
                row.rate_limit_failure_mode = rate_limit_failure_mode
            if budget_failure_mode is not None:
                row.budget_failure_mode = budget_failure_mode
            row.updated_at = now
            self._changed(session, tenant, "tenant", tenant)
            await self._auth._commit_with_events(session)
            return row

    # -- teams ----------------------------------------------------------------------

    async def list_teams(self, tenant: str | None = None) -> list[Team]:
        """Every team (only those of `tenant` when given), oldest first."""
        async with self._reads() as session:
            query = select(Team).order_by(Team.created_at, Team.id)
            if tenant is not None:
                query = query.where(Team.tenant == tenant)
            return list((await session.execute(query)).scalars().all())

    async def _team(self, session: AsyncSession, team_id: str, tenant: str | None) -> Team:
        team = await session.get(Team, team_id)
        if team is None or (tenant is not None and team.tenant != tenant):
            raise TeamNotFound(f"No team with id {team_id}.")
        return team

    async def team(self, team_id: str, tenant: str | None = None) -> Team:
        """The team `team_id` (only within `tenant` when given). Raises TeamNotFound."""
        async with self._reads() as session:
            return await self._team(session, team_id, tenant)

    async def team_by_name(self, tenant: str, name: str) -> Team:
        """The team called `name` in `tenant`: the one of exactly that name, else the one
        whose name matches it ignoring case (`str.casefold`). Raises TeamNotFound when none
        does, or when several teams named before names were compared ignoring case match
        it only that way (their ids tell them apart)."""
        async with self._reads() as session:
            teams = await _tenant_teams(session, tenant)
        exact = [team for team in teams if team.name == name]
        if exact:
            return exact[0]
        matches = _same_name(teams, name)
        if len(matches) > 1:
            raise TeamNotFound(
                f"Several teams of tenant {tenant} are named {name!r} ignoring case "
                f"({', '.join(repr(team.name) for team in matches)}); name one by its id."
            )
        if not matches:
            raise TeamNotFound(f"No team named {name!r} in tenant {tenant}.")
        return matches[0]

    async def create_team(
        self,
        *,
        tenant: str,
        name: str,
        limits: dict[str, Any] | None = None,
        allowed_models: Sequence[str] | None = None,
        cache: dict[str, Any] | None = None,
    ) -> Team:
        """A new team with its limits and response cache opt-in (`cache`, see
        `apply_cache`); DuplicateTeam if the tenant has one of that name, InvalidInput
        for a bad tenant name or value."""
        check_tenant(tenant)
        name = _team_name(name)
        models = _validate_models(allowed_models)
        now = datetime.now(UTC)
        async with self._sessions() as session:
            merged = _merged(None, limits)
            _within(merged, limits_of(await session.get(Tenant, tenant)), "team", "tenant")
            await _refuse_taken_name(session, tenant, name)
            team = Team(tenant=tenant, name=name, allowed_models=models, created_at=now)
            apply_cache(team, cache)
            _store(team, merged, now)
            session.add(team)
            try:
                await session.flush()
            except IntegrityError:
                raise DuplicateTeam(f"Tenant {tenant} already has a team named {name!r}.") from None
            self._changed(session, tenant, "team", team.id)
            await self._auth._commit_with_events(session)
            return team

    async def update_team(
        self,
        team_id: str,
        *,
        tenant: str | None = None,
        name: str | None = None,
        limits: dict[str, Any] | None = None,
        allowed_models: Sequence[str] | None | bool = False,
        cache: dict[str, Any] | None = None,
    ) -> Team:
        """Rename a team, patch its limits and its response cache opt-in (`cache`, see
        `apply_cache`) and (unless `allowed_models` is False) replace its allowed models.
        A limit may not be raised above the tenant's (InvalidInput naming it); members' and
        keys' limits above the new ones stay as they are, inert (`_not_raised_above`)."""
        now = datetime.now(UTC)
        async with self._sessions() as session:
            team = await self._team(session, team_id, tenant)
            merged = _merged(team, limits)
            tenant_limits = limits_of(await session.get(Tenant, team.tenant))
            _not_raised_above(limits_of(team), merged, tenant_limits, "team", "tenant")
            apply_cache(team, cache)
            _store(team, merged, now)
            if name is not None:
                name = _team_name(name)
                await _refuse_taken_name(session, team.tenant, name, renaming=team)
                team.name = name
            if allowed_models is not False:
                team.allowed_models = _validate_models(allowed_models)  # type: ignore[arg-type]
            try:
                await session.flush()
            except IntegrityError:
                raise DuplicateTeam(f"Tenant already has a team named {name!r}.") from None
            self._changed(session, team.tenant, "team", team.id)
            await self._auth._commit_with_events(session)
            return team

    async def delete_team(
        self, team_id: str, *, tenant: str | None = None, force: bool = False
    ) -> None:
        """Delete a team; its members and keys stay, without a team, and so without its
        limits and model list. Raises TeamNotFound, and TeamNotEmpty when the team still
        has members or unrevoked keys and `force` is False (a team's budget and model list
        are what keeps its members' spending and reach in check: lifting them takes an
        explicit choice)."""
        async with self._sessions() as session:
            team = await self._team(session, team_id, tenant)
            if not force:
                members = await session.scalar(
                    select(func.count()).select_from(User).where(User.team_id == team.id)
                )
                keys = await session.scalar(
                    select(func.count())
                    .select_from(ApiKey)
                    .where(ApiKey.team_id == team.id, ApiKey.revoked_at.is_(None))
                )
                if members or keys:
                    raise TeamNotEmpty(
                        f"Team {team.name!r} has {members or 0} member(s) and {keys or 0} "
                        "unrevoked key(s); deleting it frees them from its limits and model "
                        "list. Move them to another team first, or delete it anyway with "
                        "force=true.",
                        members=members or 0,
                        keys=keys or 0,
                    )
            for model in (User, ApiKey):
                await session.execute(
                    update(model)
                    .where(model.team_id == team.id)
                    .values(team_id=None)
                    .execution_options(synchronize_session=False)
                )
            await session.delete(team)
            self._changed(session, team.tenant, "team", team.id)
            await self._auth._commit_with_events(session)

    # -- users ----------------------------------------------------------------------

    async def user(self, user_id: str, tenant: str | None = None) -> User:
        """The user `user_id` (only within `tenant` when given). Raises UserNotFound."""
        async with self._reads() as session:
            user = await session.get(User, user_id)
        if user is None or (tenant is not None and user.tenant != tenant):
            raise UserNotFound(f"No user with id {user_id}.")
        return user

    async def update_user(
        self,
        user_id: str,
        *,
        tenant: str | None = None,
        team_id: str | None | Literal[False] = False,
        limits: dict[str, Any] | None = None,
    ) -> User:
        """Move a user into a team (`team_id`; None: out of any; False: unchanged) and patch
        their limits. Their keys follow them into the new team; their limits and their keys'
        above the team's stay as they are, inert (as when a team's limits are lowered;
        `_not_raised_above`). Raises UserNotFound, TeamNotFound, InvalidInput naming the
        field (a bad value, a limit raised above a level's)."""
        now = datetime.now(UTC)
        async with self._sessions() as session:
            user = await session.get(User, user_id)
            if user is None or (tenant is not None and user.tenant != tenant):
                raise UserNotFound(f"No user with id {user_id}.")
            # The team sent unchanged is no move: the keys stay where they are (an admin may
            # have taken one out of the team).
            if team_id is not False and team_id != user.team_id:
                if team_id is not None:
                    await self._team(session, team_id, user.tenant)
                user.team_id = team_id
                await session.execute(
                    update(ApiKey)
                    .where(ApiKey.user_id == user.id)
                    .values(team_id=team_id)
                    .execution_options(synchronize_session=False)
                )
            merged = _merged(user, limits)
            await self._check_user(session, user, limits_of(user), merged)
            _store(user, merged, now)
            self._changed(session, user.tenant, "user", user.id)
            await self._auth._commit_with_events(session)
            return user

    async def _check_user(
        self, session: AsyncSession, user: User, before: Limits, after: Limits
    ) -> None:
        """InvalidInput when the change raises a user's limit above its tenant's or team's."""
        tenant_limits = limits_of(await session.get(Tenant, user.tenant))
        _not_raised_above(before, after, tenant_limits, "user", "tenant")
        if user.team_id is not None:
            team_limits = limits_of(await session.get(Team, user.team_id))
            _not_raised_above(before, after, team_limits, "user", "team")

    # -- API keys -------------------------------------------------------------------

    async def check_key_limits(
        self,
        user_id: str,
        limits: dict[str, Any] | None,
        team_id: str | None | Literal[False] = False,
        *,
        member: bool = False,
    ) -> tuple[Limits, str | None]:
        """The validated limits and team of a new key of `user_id`: within its user's,
        team's and tenant's. `team_id` False: the user's team. With `member` (the user
        creating their own key), a `team_id` other than the user's team raises
        NotPermitted; otherwise one other than the user's raises InvalidInput (TeamNotFound
        if there is no such team in the user's tenant)."""
        async with self._sessions() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise UserNotFound(f"No user with id {user_id}.")
            team = await self._key_team(session, user, team_id, member=member)
            merged = _merged(None, limits)
            await self._check_key(session, user, team, Limits(), merged)
            return merged, team

    async def _key_team(
        self,
        session: AsyncSession,
        user: User,
        team_id: str | None | Literal[False],
        *,
        member: bool = False,
    ) -> str | None:
        if team_id is False:
            return user.team_id
        if member and team_id != user.team_id:
            # Outside its team a key escapes the team's budget and rate limits, and its
            # spend no longer counts there: that is the team's admins' call, not a member's.
            # Refused before looking the team up, so no team's existence is revealed.
            raise NotPermitted(
                "A member's key belongs to the member's team "
                f"({user.team_id or 'none'}); only an admin of the tenant can put a key "
                "in no team or another one.",
                param="team_id",
            )
        if team_id is not None and team_id != user.team_id:
            await self._team(session, team_id, user.tenant)
            raise InvalidInput(
                "A key can only belong to its user's team; add the user to the team first.",
                param="team_id",
            )
        return team_id

    async def _check_key(
        self,
        session: AsyncSession,
        user: User,
        team_id: str | None,
        before: Limits,
        after: Limits,
    ) -> None:
        """InvalidInput when a key's limits going from `before` (a new key: none) to `after`
        raise one above its user's, team's or tenant's (`_not_raised_above`)."""
        _not_raised_above(before, after, limits_of(user), "api_key", "user")
        if team_id is not None:
            team_limits = limits_of(await session.get(Team, team_id))
            _not_raised_above(before, after, team_limits, "api_key", "team")
        tenant_limits = limits_of(await session.get(Tenant, user.tenant))
        _not_raised_above(before, after, tenant_limits, "api_key", "tenant")

    async def create_api_key(
        self,
        *,
        user_id: str,
        limits: dict[str, Any] | None = None,
        team_id: str | None | Literal[False] = False,
        member: bool = False,
        **options: Any,
    ) -> IssuedApiKey:
        """A new key (see `AuthService.create_api_key` for `options`) whose limits are
        within its user's, team's and tenant's; `team_id` and `member` as in
        `check_key_limits` (NotPermitted, InvalidInput, TeamNotFound, UserNotFound)."""
        merged, team = await self.check_key_limits(user_id, limits, team_id, member=member)
        return await self._auth.create_api_key(
            user_id=user_id, team_id=team, limits=merged, **options
        )

    async def update_api_key(
        self,
        key_id: str,
        *,
        tenant: str | None = None,
        user_id: str | None = None,
        limits: dict[str, Any] | None = None,
        team_id: str | None | Literal[False] = False,
        cache: dict[str, Any] | None = None,
        allowed_models: Sequence[str] | None | Literal[False] = False,
        member: bool = False,
    ) -> ApiKey:
        """Patch a key's limits (and team, response cache opt-in: `cache`, see
        `apply_cache`, and, unless `allowed_models` is False, replace its allowed models:
        None allows any its teams allow); only the tenant's, or the user's own key. With
        `member` (a member changing their own key) the key stays in the member's team, its
        limits may only tighten and its models may not change: NotPermitted names the field
        otherwise. Raises ApiKeyNotFound, KeyAlreadyRevoked, TeamNotFound, InvalidInput (a
        bad value, a limit above a level's, a model list none of whose models the key's
        team and its user's team allow, as when a key is created)."""
        now = datetime.now(UTC)
        async with self._sessions() as session:
            key = await session.get(ApiKey, key_id)
            if (
                key is None
                or (tenant is not None and key.tenant != tenant)
                or (user_id is not None and key.user_id != user_id)
            ):
                raise ApiKeyNotFound(f"No API key with id {key_id}.")
            if key.revoked_at is not None:
                # It authenticates nothing any more: a change would only mislead a reader.
                raise KeyAlreadyRevoked(f"API key {key_id} is revoked.")
            user = await session.get(User, key.user_id)
            assert user is not None
            team = (
                key.team_id
                if team_id is False or team_id == key.team_id  # unchanged: nothing to decide
                else await self._key_team(session, user, team_id, member=member)
            )
            if member:
                # A removal is refused as such before the rest is judged: removing a budget
                # alone leaves its period without one, which is not what to tell a member.
                _not_removed(limits_of(key), limits)
            merged = _merged(key, limits)
            if member:
                _not_loosened(limits_of(key), merged)
            await self._check_key(session, user, team, limits_of(key), merged)
            apply_cache(key, cache)
            if allowed_models is not False:
                if member:
                    raise NotPermitted(
                        "Only an admin of the tenant can change a key's models.",
                        param="allowed_models",
                    )
                models = _validate_models(allowed_models)
                if models is not None:
                    # Bounded by both teams at every lookup (`effective_models`), the key
                    # must keep a model they allow, as a new key must.
                    bounds = dict.fromkeys(bound for bound in (user.team_id, team) if bound)
                    _check_team_models(models, [await session.get(Team, b) for b in bounds])
                key.allowed_models = models
            key.team_id = team
            _store(key, merged, now)
            self._changed(session, key.tenant, "api_key", key.id)
            await self._auth._commit_with_events(session)
            return key

    # -- what gateways enforce ------------------------------------------------------

    async def policy(self, user_id: str, key_id: str | None = None) -> Policy:
        """The limits of every level above a caller; UserNotFound/ApiKeyNotFound."""
        async with self._reads() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise UserNotFound(f"No user with id {user_id}.")
            key = None
            team_id = user.team_id
            if key_id is not None:
                key = await session.get(ApiKey, key_id)
                if key is None or key.user_id != user.id:
                    raise ApiKeyNotFound(f"No API key with id {key_id}.")
                team_id = key.team_id
            team = await session.get(Team, team_id) if team_id is not None else None
            tenant = await session.get(Tenant, user.tenant)
        levels = {"user": _level(user.id, user), "tenant": _level(user.tenant, tenant)}
        if key is not None:
            levels["api_key"] = _level(key.id, key)
        if team is not None:
            levels["team"] = _level(team.id, team)
        modes = tenant if tenant is not None else Tenant(**_default_modes())
        return Policy(
            tenant=user.tenant,
            team_id=team.id if team is not None else None,
            levels=levels,
            rate_limit_failure_mode=modes.rate_limit_failure_mode,
            budget_failure_mode=modes.budget_failure_mode,
        )


def _default_modes() -> dict[str, str]:
    return {
        "rate_limit_failure_mode": FailureMode.OPEN.value,
        "budget_failure_mode": FailureMode.CLOSED.value,
    }


_ID_FORM = re.compile(r"[0-9a-fA-F]{32}")


def _team_name(name: str) -> str:
    # Composed (NFC), so `café` typed either way is one name (`_same_name` compares so too).
    name = unicodedata.normalize("NFC", name.strip())
    # Printable only, like key names: team names reach terminals and logs, and PostgreSQL
    # refuses a NUL in text (which would be a 500 rather than this 400).
    if not name or len(name) > 200 or not printable(name):
        raise InvalidInput("Team name must be 1-200 printable characters.", param="name")
    # `Rеsearch` with a Cyrillic `е` would read as the team `Research` on every page.
    if (refusal := look_alike_message("team name", name)) is not None:
        raise InvalidInput(refusal, param="name")
    # The CLI and the user options take a team by id or by name, the id first: a name in
    # the form of an id (`new_id`) could name another tenant's team there.
    if _ID_FORM.fullmatch(name):
        raise InvalidInput(
            "Team name must not be 32 hexadecimal digits, the form of a team id.", param="name"
        )
    return name


async def _tenant_teams(session: AsyncSession, tenant: str) -> Sequence[Team]:
    """Every team of `tenant` (one indexed query; a tenant has tens of teams, not
    thousands)."""
    return (await session.execute(select(Team).where(Team.tenant == tenant))).scalars().all()


def _same_name(teams: Sequence[Team], name: str) -> list[Team]:
    """The teams of `teams` whose name is `name` ignoring case and how its characters are
    written (`names.fold_name`). Compared in Python with `str.casefold` rather than SQL's
    `lower()`, which SQLite applies to ASCII letters only: `Straße` and `STRASSE` are one
    name on every database, and so are `café` with a composed `é` and with `e` and a
    combining accent, and full-width `Ｒｅｓｅａｒｃｈ` and `Research`, which look alike."""
    folded = fold_name(name)
    return [team for team in teams if fold_name(team.name) == folded]


async def _refuse_taken_name(
    session: AsyncSession, tenant: str, name: str, *, renaming: Team | None = None
) -> None:
    """Raise DuplicateTeam when another team of `tenant` than `renaming` is called `name`
    ignoring case, or has a name that looks like it (`names.looks_of`): people and the
    CLI take `Research` and `research` for one team, and `team_by_name` could not tell
    them apart. The database's unique constraint on the exact name stays the last word
    against two creations at the same moment."""
    teams = await _tenant_teams(session, tenant)
    for team in _same_name(teams, name):
        if renaming is None or team.id != renaming.id:
            raise DuplicateTeam(
                f"Tenant {tenant} already has a team named {team.name!r} (names are "
                "compared ignoring case)."
            )
    # A name that only looks like another's (`ΑΙ Team` in Greek beside `AI Team`, `0ps`
    # beside `Ops`): every page and log would show two teams of one name.
    looks = looks_of(name)
    for team in teams:
        if (renaming is None or team.id != renaming.id) and looks_of(team.name) & looks:
            raise DuplicateTeam(
                f"Tenant {tenant} already has a team named {team.name!r}, which {name!r} "
                "looks like (names are compared by their look-alike letters too)."
            )

"""What the gateway's OpenAPI document says beyond what FastAPI derives from the routes:
credentials (API key or access token, as a bearer or in `x-api-key`), the errors each
route really answers, and the query parameters of the routes history serves (the gateway
relays their query strings, so FastAPI cannot see them). Applied once, app-wide, by
`switchyard.common.docs.install_docs`."""

from __future__ import annotations

from switchyard.common.docs import API_KEY_HEADER, BEARER, ApiDocs, QueryParameter
from switchyard.common.statuses import JOB_STATUSES, REPLAY_STATUSES, REQUEST_STATUSES
from switchyard.gateway.api.admin import AUTH_ROUTES
from switchyard.gateway.api.deps import required_scope
from switchyard.gateway.errors import ANTHROPIC_PATHS
from switchyard.gateway.idempotency import IDEMPOTENT_PATHS

# Page sizes and statuses history accepts (history's `queries`, `jobs` and `models`).
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
TIME_HELP = (
    "ISO 8601 instant (2025-03-01T00:00:00Z), a date (2025-03-01) or relative to now (7d, 12h)."
)

_LIMIT = QueryParameter(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
    "Page size.",
)
_CURSOR = QueryParameter(
    "cursor", {"type": "string", "maxLength": 512}, "`next_cursor` of the previous page."
)
_SINCE = QueryParameter(
    "since", {"type": "string", "examples": ["7d"]}, f"From (inclusive): {TIME_HELP}"
)
_UNTIL = QueryParameter("until", {"type": "string"}, f"Until (exclusive): {TIME_HELP}")
_MODEL = QueryParameter("model", {"type": "string", "maxLength": 256}, "Only this model.")
_API_KEY_ID = QueryParameter(
    "api_key_id", {"type": "string", "maxLength": 128}, "Only requests made with this API key."
)
_USER_ID = QueryParameter(
    "user_id", {"type": "string", "maxLength": 128}, "Admins: only this user's."
)
_TEAM_ID = QueryParameter(
    "team_id",
    {"type": "string", "maxLength": 128},
    "Only requests made as a member of this team.",
)


def _statuses(values: tuple[str, ...]) -> QueryParameter:
    return QueryParameter(
        "status",
        {"type": "array", "items": {"type": "string", "enum": list(values)}},
        "Only these statuses (comma-separated).",
        comma_separated=True,
    )


QUERY_PARAMETERS = {
    "GET /v1/history": (
        _LIMIT,
        _CURSOR,
        _SINCE,
        _UNTIL,
        _MODEL,
        _statuses(REQUEST_STATUSES),
        _API_KEY_ID,
        _TEAM_ID,
        _USER_ID,
    ),
    "GET /v1/usage": (
        QueryParameter(
            "since",
            {"type": "string", "examples": ["30d"]},
            f"From (default 30 days ago): {TIME_HELP}",
        ),
        QueryParameter("until", {"type": "string"}, f"Until (default now): {TIME_HELP}"),
        QueryParameter(
            "group_by",
            {
                "type": "array",
                "items": {
                    "type": "string",
                    "enum": ["day", "hour", "model", "user", "api_key", "team"],
                },
                "default": ["day"],
            },
            "Comma-separated: a time bucket (day or hour) and any of model, user, api_key, "
            "team. "
            "Without day or hour: totals over the range.",
            comma_separated=True,
        ),
        _MODEL,
        _API_KEY_ID,
        _TEAM_ID,
        _USER_ID,
        QueryParameter(
            "format",
            {"type": "string", "enum": ["json", "csv"], "default": "json"},
            "csv answers text/csv (as does `Accept: text/csv`).",
        ),
    ),
    "GET /v1/jobs": (_LIMIT, _CURSOR, _statuses(JOB_STATUSES)),
    "GET /v1/replays": (_LIMIT, _CURSOR, _statuses(REPLAY_STATUSES)),
    "GET /v1/responses/{response_id}/input_items": (
        _LIMIT,
        QueryParameter(
            "order",
            {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
            "Oldest (asc) or newest (desc) first.",
        ),
        QueryParameter("after", {"type": "string"}, "An item id: the items after it."),
        QueryParameter("before", {"type": "string"}, "An item id: the items before it."),
    ),
}

# Errors beyond those derived from the route (400 for input, 401 for credentials, 404 for
# an id in the path, 403 where a scope is needed) and the 503 every authenticated route
# gives while auth is unreachable.
_GENERATE = (404, 429, 502, 504)
ROUTE_ERRORS: dict[str, tuple[int, ...]] = {
    "POST /v1/chat/completions": _GENERATE,
    "POST /v1/messages": _GENERATE,
    "POST /v1/embeddings": _GENERATE,
    # 404 also for a previous_response_id not stored; 409 while it is in progress.
    "POST /v1/responses": (*_GENERATE, 409),
    "GET /v1/responses/{response_id}": (),
    "GET /v1/responses/{response_id}/input_items": (),
    "DELETE /v1/responses/{response_id}": (409,),
    "POST /v1/responses/{response_id}/cancel": (409,),
    "POST /v1/jobs": (404,),
    "POST /v1/jobs/{job_id}/cancel": (409,),
    "GET /v1/jobs/{job_id}": (),
    "GET /v1/jobs": (),
    # A member naming another user in `user_id` (admins only).
    "GET /v1/history": (403,),
    "GET /v1/history/{request_id}": (),
    # Tenant settings are for admins of the tenant.
    "GET /v1/history/settings": (403,),
    "PUT /v1/history/settings": (400, 403),
    "GET /v1/usage": (403,),
    "GET /v1/spend": (),
    # Replays: bad selection or rate (400), an unknown target model (404); stopping or
    # resuming a completed replay (409).
    "POST /v1/replays": (400, 403, 404),
    "GET /v1/replays": (),
    "GET /v1/replays/{replay_id}": (404,),
    "POST /v1/replays/{replay_id}/stop": (404, 409),
    "POST /v1/replays/{replay_id}/resume": (404, 409),
    # Forwarded to auth, which answers for them: its refusals (bad input, scope, unknown
    # ids, conflicts, sign-in limits) come back unchanged.
    **{f"{method} {path}": (400, 401, 403, 404, 409, 429) for method, path, _, _ in AUTH_ROUTES},
}


def _errors() -> dict[str, tuple[int, ...]]:
    errors: dict[str, tuple[int, ...]] = {}
    for operation, statuses in ROUTE_ERRORS.items():
        method, path = operation.split(" ", 1)
        extra = {403} if required_scope(path) else set()
        if method in ("POST", "PUT"):
            extra.add(413)  # the body limit holds for every request that has a body
        if method == "POST" and path in IDEMPOTENT_PATHS:
            # Idempotency-Key: malformed (400), in progress (409), reused (422).
            extra |= {400, 409, 422}
        errors[operation] = tuple(sorted({*statuses, *extra}))
    return errors


def _security(operation: str) -> list[dict[str, list[str]]]:
    path = operation.split(" ", 1)[1]
    if not path.startswith("/v1/"):
        return []  # health: public
    return [{BEARER: []}, {API_KEY_HEADER: []}]


GATEWAY_DOCS = ApiDocs(
    errors=_errors(),
    common_errors=(503,),
    security=_security,
    query=QUERY_PARAMETERS,
    anthropic_paths=ANTHROPIC_PATHS,
)

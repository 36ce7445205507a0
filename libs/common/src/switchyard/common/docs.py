"""API documentation every HTTP service serves: Swagger UI at `/docs` from the files of
the installed `swagger-ui-bundle-v2` package (nothing from a CDN, so it works offline),
and the OpenAPI post-processing they share.

`install_docs(app, ...)` adds `/docs` and its assets; for FastAPI apps it also rewrites
the generated OpenAPI document once, so that it says what the service really does:

- the security schemes callers use (Swagger UI's Authorize button) and, per operation,
  which of them it accepts;
- the error responses each operation really gives, each with its body (OpenAI's error
  object, or Anthropic's on `/v1/messages`) instead of FastAPI's 422 validation schema,
  which no Switchyard route answers (invalid input is 400);
- typed query parameters for routes that read their query string themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

from switchyard.common.errorformat import error_type
from switchyard.common.headers import INTERNAL_TOKEN_HEADER

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
OPENAPI_PATH = "/openapi.json"
# The only files of the bundle a page needs; nothing else of the package is served.
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "oauth2-redirect.html": "text/html; charset=utf-8",
    "oauth2-redirect.js": "text/javascript; charset=utf-8",
}

# Security schemes, by the names operations refer to.
BEARER = "bearerAuth"
API_KEY_HEADER = "apiKeyHeader"
INTERNAL_TOKEN = "internalToken"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (sk-sy-...) or an access token (JWT) from the auth service, "
        "as `Authorization: Bearer <credential>`.",
    },
    API_KEY_HEADER: {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "An API key in the `x-api-key` header (as the Anthropic SDK sends it).",
    },
    INTERNAL_TOKEN: {
        "type": "apiKey",
        "in": "header",
        "name": INTERNAL_TOKEN_HEADER,
        "description": "The shared secret of service-to-service calls (SWITCHYARD_INTERNAL_TOKEN).",
    },
}

OPENAI_ERROR_SCHEMA = "ErrorResponse"
ANTHROPIC_ERROR_SCHEMA = "AnthropicErrorResponse"
_COMPONENT_SCHEMAS: dict[str, dict[str, Any]] = {
    OPENAI_ERROR_SCHEMA: {
        "title": "ErrorResponse",
        "description": "OpenAI's error object, which the official SDKs turn into exceptions.",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string", "description": "What went wrong, readable."},
                    "type": {"type": "string", "example": "invalid_request_error"},
                    "param": {
                        "type": ["string", "null"],
                        "description": "The offending parameter, if one.",
                    },
                    "code": {"type": ["string", "null"], "example": "invalid_request"},
                },
            }
        },
    },
    ANTHROPIC_ERROR_SCHEMA: {
        "title": "AnthropicErrorResponse",
        "description": "Anthropic's error shape, which the `anthropic` SDK expects.",
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"type": "string", "example": "invalid_request_error"},
                    "message": {"type": "string"},
                },
            },
            "request_id": {
                "type": "string",
                "description": "The request's id, as in its `request-id` header.",
            },
        },
    },
}

# What each status means for a caller, and an example of its body.
_ERRORS: dict[int, tuple[str, str, str, str]] = {
    # status: (description, OpenAI type, code, example message)
    400: (
        "Invalid input: the message names the offending parameter.",
        "invalid_request_error",
        "invalid_request",
        "Invalid value for 'limit': must be an integer from 1 to 100.",
    ),
    401: (
        "Missing or invalid credentials.",
        "invalid_request_error",
        "invalid_api_key",
        "Invalid or missing credentials.",
    ),
    403: (
        "Valid credentials without the scope, role or model access this needs.",
        "permission_error",
        "insufficient_scope",
        "These credentials lack the 'chat' scope this operation needs.",
    ),
    404: (
        "No such resource (or model) visible to the caller.",
        "invalid_request_error",
        "not_found",
        "No request found with id '0123abcd'.",
    ),
    409: (
        "Conflict with the current state (e.g. a request with the same Idempotency-Key is "
        "still in progress, a finished job, an existing user).",
        "conflict_error",
        "conflict",
        "A request with this Idempotency-Key is still in progress.",
    ),
    413: (
        "The request body exceeds the size limit.",
        "invalid_request_error",
        "request_too_large",
        "Request body exceeds the limit of 1048576 bytes.",
    ),
    422: (
        "The Idempotency-Key was used before for a different request.",
        "invalid_request_error",
        "idempotency_key_reused",
        "This Idempotency-Key was used for another request.",
    ),
    429: (
        "Too many requests (rate limit, or the gateway is at capacity); see Retry-After.",
        "rate_limit_error",
        "rate_limited",
        "Too many requests in progress on this gateway; retry shortly.",
    ),
    502: (
        "The provider failed.",
        "upstream_error",
        "upstream_error",
        "The provider returned an error.",
    ),
    503: (
        "A dependency (event bus, auth, history, database) is unavailable; see Retry-After.",
        "service_unavailable",
        "unavailable",
        "The request could not be accepted right now; retry shortly.",
    ),
    504: (
        "No reply before the request's deadline.",
        "timeout_error",
        "deadline_exceeded",
        "The request did not complete before its deadline.",
    ),
}


@dataclass(frozen=True)
class QueryParameter:
    """A query parameter to document on a route that reads its query string itself."""

    name: str
    schema: dict[str, Any]
    description: str
    # Comma-separated lists: OpenAPI's form style without explode (a=x,y).
    comma_separated: bool = False

    def openapi(self) -> dict[str, Any]:
        """This parameter as an OpenAPI 3.1 Parameter Object (a dict, `in: query`, optional)."""
        parameter: dict[str, Any] = {
            "name": self.name,
            "in": "query",
            "required": False,
            "schema": self.schema,
            "description": self.description,
        }
        if self.comma_separated:
            parameter.update(style="form", explode=False)
        return parameter


@dataclass
class ApiDocs:
    """What a service declares about its operations, keyed by "METHOD /path" (the path as
    in the OpenAPI document, e.g. "GET /v1/history/{request_id}")."""

    # Error statuses per operation, in addition to the ones derived from the operation
    # itself (400 for query parameters or a body, 401 where credentials are required, 404
    # for path parameters).
    errors: Mapping[str, Iterable[int]] = field(default_factory=dict)
    # Statuses every operation not tagged "operations" (health) may answer, e.g. 503.
    common_errors: Iterable[int] = ()
    # Security requirement of each operation: None leaves FastAPI's (from its security
    # dependencies); a callable decides by "METHOD /path" (empty list: public).
    security: Callable[[str], list[dict[str, list[str]]]] | None = None
    # Query parameters to document, per operation.
    query: Mapping[str, Sequence[QueryParameter]] = field(default_factory=dict)
    # Operations answering in Anthropic's error format, by path prefix.
    anthropic_paths: tuple[str, ...] = ()
    # Statuses removed from an operation's documented responses (422 unless it is real).
    drop_validation_422: bool = True


def _error_response(status: int, anthropic: bool) -> dict[str, Any]:
    description, openai_type, code, message = _ERRORS.get(
        status,
        (
            HTTPStatus(status).phrase,
            error_type("openai", status),
            "error",
            HTTPStatus(status).phrase,
        ),
    )
    if anthropic:
        schema = ANTHROPIC_ERROR_SCHEMA
        example: dict[str, Any] = {
            "type": "error",
            "error": {"type": error_type("anthropic", status), "message": message},
            "request_id": "6f49fc77bd694a63aee0e644b362d3a8",
        }
    else:
        schema = OPENAI_ERROR_SCHEMA
        example = {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"$ref": f"#/components/schemas/{schema}"},
                "example": example,
            }
        },
    }


def _is_health(operation: dict[str, Any]) -> bool:
    return "operations" in operation.get("tags", [])


def document(spec: dict[str, Any], docs: ApiDocs) -> dict[str, Any]:
    """A copy of the OpenAPI document `spec` with `docs` applied (see the module doc)."""
    spec = copy.deepcopy(spec)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(copy.deepcopy(_COMPONENT_SCHEMAS))
    used_schemes: set[str] = set()
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or method.startswith("x-"):
                continue
            key = f"{method.upper()} {path}"
            parameters: list[dict[str, Any]] = operation.setdefault("parameters", [])
            # The internal token is a credential: the Authorize button, not a form field.
            internal = [p for p in parameters if p.get("name", "").lower() == INTERNAL_TOKEN_HEADER]
            for parameter in internal:
                parameters.remove(parameter)
            if docs.security is not None:
                requirement = docs.security(key)
                if requirement:
                    operation["security"] = requirement
                else:
                    operation.pop("security", None)
            elif internal:
                operation["security"] = [{INTERNAL_TOKEN: []}]
            security = operation.get("security") or []
            # FastAPI names its HTTPBearer scheme "HTTPBearer"; one name for one scheme.
            security = [
                {(BEARER if name == "HTTPBearer" else name): scopes for name, scopes in req.items()}
                for req in security
            ]
            if security:
                operation["security"] = security
            for requirement in security:
                used_schemes.update(requirement)
            known = {p["name"] for p in parameters}
            for query in docs.query.get(key, ()):
                if query.name not in known:
                    parameters.append(query.openapi())
            if not parameters:
                operation.pop("parameters")

            statuses: set[int] = set(docs.errors.get(key, ()))
            if not _is_health(operation):
                statuses.update(docs.common_errors)
                if any(p.get("in") == "query" for p in parameters) or ("requestBody" in operation):
                    statuses.add(400)
                if any(p.get("in") == "path" for p in parameters):
                    statuses.add(404)
                if security:
                    statuses.add(401)
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if docs.drop_validation_422 and 422 not in statuses:
                responses.pop("422", None)
            anthropic = path.startswith(docs.anthropic_paths) if docs.anthropic_paths else False
            for status in sorted(statuses):
                existing = responses.get(str(status), {})
                response = _error_response(status, anthropic)
                if existing.get("description") and existing["description"] != "Successful Response":
                    response["description"] = existing["description"]
                responses[str(status)] = response
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    # FastAPI's own scheme entry is replaced by ours (same meaning, shared name).
    security_schemes = components.setdefault("securitySchemes", {})
    security_schemes.pop("HTTPBearer", None)
    for name in sorted(used_schemes):
        security_schemes[name] = copy.deepcopy(SECURITY_SCHEMES[name])
    if not security_schemes:
        components.pop("securitySchemes")
    return spec


# Headers of the Swagger UI page: it takes an API key (Authorize) and sends requests with
# it, so no other site may frame it (clickjacking); `frame-ancestors` alone, as the page's
# own inline script must still run.
DOCS_PAGE_HEADERS = {
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def swagger_ui_page(title: str, openapi_url: str = OPENAPI_PATH) -> HTMLResponse:
    """FastAPI's Swagger UI page, loading its script, style and icon from ASSETS_PATH,
    with `DOCS_PAGE_HEADERS`."""
    from fastapi.openapi.docs import get_swagger_ui_html

    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{title} - Swagger UI",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        oauth2_redirect_url=f"{ASSETS_PATH}/oauth2-redirect.html",
        swagger_ui_parameters={"persistAuthorization": True, "displayRequestDuration": True},
    )
    page.headers.update(DOCS_PAGE_HEADERS)
    return page


async def _asset(request: Request) -> Response:
    from swagger_ui_bundle import swagger_ui_path

    name = request.path_params["name"]
    media_type = ASSET_TYPES.get(name)
    if media_type is None:
        return JSONResponse(
            {
                "error": {
                    "message": "Not found.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            status_code=404,
        )
    return FileResponse(
        str(swagger_ui_path / name),
        media_type=media_type,
        headers={"cache-control": "public, max-age=86400"},
    )


def install_docs(app: Any, title: str, docs: ApiDocs | None = None) -> None:
    """Serve Swagger UI at /docs (assets from the installed package) on a FastAPI or
    Starlette `app`; for FastAPI apps, also apply `docs` to the app's OpenAPI document.
    FastAPI apps must be built with `docs_url=None, redoc_url=None` (their own pages load
    the CDN)."""

    async def page(_: Request) -> HTMLResponse:
        return swagger_ui_page(title)

    app.add_route(DOCS_PATH, page, methods=["GET"], include_in_schema=False)
    app.add_route(f"{ASSETS_PATH}/{{name}}", _asset, methods=["GET"], include_in_schema=False)
    generate = getattr(app, "openapi", None)
    if docs is None or generate is None:
        return
    documented: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not documented:
            documented.update(document(generate(), docs))
        return documented

    app.openapi = openapi

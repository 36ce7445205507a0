"""The route class of the auth service's authenticated routers: the caller is judged before
the request body.

FastAPI decodes a route's JSON body before it solves the route's dependencies, so a body
that is not JSON (or nests deeper than `switchyard.common.jsonbody.MAX_JSON_DEPTH`) would be
answered 400 before the credentials are looked at: a caller without credentials would learn
what an admin route accepts. `CredentialsFirstRoute` defers that verdict: the body is
decoded as `BoundedJsonRoute` decodes it, but a body that cannot be decoded is only refused
once every dependency (the access token, the admin role, the scope, the internal token) has
let the request through. The answer is then exactly the one it always was (400
`invalid_json` or `json_too_deep`). Body validation proper (types, unknown fields) already
happens after the dependencies, in FastAPI itself.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any, Final

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from typing_extensions import override

from switchyard.common import jsonbody
from switchyard.common.queryparams import refuse_unknown_parameters

# Stands for a body that could not be decoded. A bare `object()`: pydantic reads an instance
# of any other class by its attributes for a body model (FastAPI validates with
# `from_attributes`), so a model whose fields all have defaults would accept it. No body
# model accepts this one (checked when each route is built), so the route's own validation
# refuses it after the dependencies.
_UNDECODABLE: Final = object()


class _DeferredJsonRequest(Request):
    """A request whose `json()` never raises: a body that is not JSON, or too deep, becomes
    `_UNDECODABLE` and the error it would have raised is kept in `body_error`."""

    body_error: Exception | None = None

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = jsonbody.loads(await self.body())
            except json.JSONDecodeError as exc:  # orjson's error is one
                # The error FastAPI raises for a body that is not JSON.
                self.body_error = RequestValidationError(
                    [
                        {
                            "type": "json_invalid",
                            "loc": ("body", exc.pos),
                            "msg": "JSON decode error",
                            "input": {},
                            "ctx": {"error": exc.msg},
                        }
                    ]
                )
                self._json = _UNDECODABLE
            except jsonbody.JsonTooDeep as exc:
                self.body_error = jsonbody.JsonBodyTooDeep(exc.max_depth)
                self._json = _UNDECODABLE
            except jsonbody.JsonTooManyValues as exc:
                self.body_error = jsonbody.JsonBodyTooManyValues(exc.max_values)
                self._json = _UNDECODABLE
        return self._json


class CredentialsFirstRoute(APIRoute):
    """A route whose JSON body is decoded with `jsonbody.loads` (depth bound included), and
    refused for not being JSON only after the route's dependencies have accepted the caller:
    pass `route_class=CredentialsFirstRoute` to an `APIRouter`. Building one raises
    TypeError if its body model would accept an undecodable body."""

    @override
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self.body_field is not None:
            _, errors = self.body_field.validate(_UNDECODABLE, {}, loc=("body",))
            if not errors:
                raise TypeError(
                    f"{path}: the body model accepts any value, so a body that is not JSON "
                    "could reach the endpoint; use a model or a typed container."
                )

    @override
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def credentials_first(request: Request) -> Response:
            deferred = _DeferredJsonRequest(request.scope, request.receive)
            token = _request.set(deferred)
            try:
                return await handler(deferred)
            except RequestValidationError:
                # The dependencies let the caller through and the body model refused
                # `_UNDECODABLE`: answer what the body itself is.
                if deferred.body_error is not None:
                    raise deferred.body_error from None
                raise
            finally:
                _request.reset(token)

        return credentials_first


# The request a `CredentialsFirstRoute` is handling, for its endpoint's query check.
_request: ContextVar[Request] = ContextVar("switchyard_auth_request")


class StrictQueryRoute(CredentialsFirstRoute):
    """A `CredentialsFirstRoute` that also refuses a query parameter the route does not
    read (400 `unknown_parameter`, `refuse_unknown_parameters`): an admin filtering
    `GET /v1/admin/api-keys?tenant=x` would otherwise take the whole list for the
    filtered one. The check runs once the route's dependencies have accepted the caller
    (as the body check does), so a stranger gets 401 and a member on an admin route 403,
    not a list of the route's parameters: FastAPI runs a router's dependencies before
    the route's, so the check wraps the endpoint instead (every endpoint is async)."""

    @override
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            raise TypeError(f"{path}: a StrictQueryRoute's endpoint must be async")

        @functools.wraps(endpoint)
        async def checked(*args: Any, **kwargs: Any) -> Any:
            await refuse_unknown_parameters(_request.get())
            return await endpoint(*args, **kwargs)

        super().__init__(path, checked, **kwargs)

"""Query parameters given more than once.

A parameter that takes a list (`group_by`, `status`, `include`) may be written three
ways: comma-separated once (`group_by=model,day`), repeated (`group_by=model&group_by=day`)
or repeated with brackets (`include[]=a&include[]=b`, how the official OpenAI and
Anthropic SDKs write an array). All three mean the same list. Every other parameter takes
one value: given twice, the request is refused naming it, where frameworks silently keep
one of the two. A parameter the endpoint does not read at all is refused too
(`refuse_unknown_parameters`, Switchyard's own APIs), where frameworks ignore it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.requests import Request

from switchyard.common.errors import APIError

# The parameters of Switchyard's APIs that take a list (comma-separated).
LIST_PARAMETERS = frozenset({"group_by", "status", "include"})


def list_parameter(request: Request, name: str) -> str | None:
    """The list parameter `name` of `request` as one comma-separated value (its repeated
    and `name[]` values joined in order); None when it is not given."""
    values = request.query_params.getlist(name) + request.query_params.getlist(name + "[]")
    return ",".join(values) if values else None


def merged_parameters(
    request: Request, lists: Collection[str] = LIST_PARAMETERS
) -> tuple[tuple[str, str], ...]:
    """`request`'s query parameters as (name, value) pairs, in order, each list parameter (`lists`)
    once with its values joined (`list_parameter`), every other as given.

    Raises:
        APIError: 400 `invalid_request` naming the first parameter that takes one value
            and was given more than once.
    """
    merged: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw_name, _ in request.query_params.multi_items():
        # `since[]` names `since` too: given beside it, the parameter is given twice.
        base = raw_name.removesuffix("[]")
        name = base if base in lists else raw_name
        if base in seen:
            if base in lists:
                continue
            raise APIError(
                400,
                f"The query parameter '{base}' was given more than once; it takes one value.",
                param=base,
                code="invalid_request",
            )
        seen.add(base)
        value = list_parameter(request, name) if name in lists else request.query_params[name]
        merged.append((name, value or ""))
    return tuple(merged)


def refusing_repeated(
    lists: Collection[str] = LIST_PARAMETERS,
) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that raises `merged_parameters`'s APIError when a parameter
    that takes one value (any not in `lists`) is given more than once."""

    async def refuse_repeated(request: Request) -> None:
        merged_parameters(request, lists)

    return refuse_repeated


# The APIs' dependency: `group_by`, `status` and `include` may be repeated.
refuse_repeated_parameters = refusing_repeated()


def _declared(dependant: Any) -> set[str]:
    """The query parameter names (aliases) a FastAPI `Dependant` and its sub-dependencies
    read."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _declared(sub)
    return names


async def refuse_unknown_parameters(request: Request) -> None:
    """A FastAPI dependency refusing a query parameter the matched route does not read:
    frameworks ignore it, so a client paging with a parameter of another API (`after`,
    OpenAI's) would get the first page again and again. List parameters may carry `[]`.

    Raises:
        APIError: 400 `unknown_parameter` naming the first such parameter and the route's own.
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    declared = _declared(dependant)
    for raw_name in request.query_params:
        name = raw_name.removesuffix("[]")
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise APIError(
                400,
                f"Unrecognized query parameter: '{raw_name}'. This endpoint takes: {known}.",
                param=raw_name,
                code="unknown_parameter",
            )

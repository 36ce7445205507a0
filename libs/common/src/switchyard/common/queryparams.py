"""Query parameters given more than once.

A parameter that takes a list (`group_by`, `status`, `include`) may be written three
ways: comma-separated once (`group_by=model,day`), repeated (`group_by=model&group_by=day`)
or repeated with brackets (`include[]=a&include[]=b`, how the official OpenAI and
Anthropic SDKs write an array). All three mean the same list. Every other parameter takes
one value: given twice, the request is refused naming it, where frameworks silently keep
one of the two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

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

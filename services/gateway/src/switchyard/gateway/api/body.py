"""Reading request bodies on the hot path: one orjson parse and one pydantic validation,
and the parsed dict (unknown fields included) is what travels on, never re-serialised
from the model. Errors are 400s in the API's error format naming the offending field; a
body nesting deeper than `switchyard.common.jsonbody.MAX_JSON_DEPTH` is one of them.

Routes that read bodies this way document them with `openapi_body`, so Swagger UI still
shows the request schema."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ValidationError

from switchyard.common.errors import APIError, validation_message
from switchyard.common.jsonbody import JsonTooDeep, check_json_depth

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise APIError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return check_json_depth(data)
    except JsonTooDeep as exc:
        raise APIError(400, str(exc), code="json_too_deep") from None


def validate_body(model: type[ModelT], raw: bytes) -> tuple[ModelT, dict[str, Any]]:
    """The validated model and the parsed body it came from."""
    data = parse_json_object(raw)
    try:
        return model.model_validate(data), data
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors(include_url=False)))
        raise APIError(400, message, param=param, code="invalid_request") from None


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body of `model` (see `install_openapi_models`)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def install_openapi_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add models referenced by `openapi_body` to the app's OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

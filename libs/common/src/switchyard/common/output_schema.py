"""The JSON Schemas of structured outputs, as the two providers' rules for them differ: what
a schema written for one API needs before the other takes it, and what the simulator checks
as the real APIs do.

- Anthropic's structured outputs (`output_config.format`, `strict` tools) take an object
  schema only with `additionalProperties: false` ("For 'object' type, 'additionalProperties'
  must be explicitly set to false"), and allow optional properties (those left out of
  `required`). Source: https://platform.claude.com/docs/en/build-with-claude/structured-outputs
  ("Supported features" / "Not supported").
- OpenAI's strict mode (`response_format.json_schema.strict: true`) needs every object closed
  the same way AND every property listed in `required`; a non-strict schema is followed
  without those rules. Source:
  https://platform.openai.com/docs/guides/structured-outputs#supported-schemas

Schemas are JSON objects as parsed (dicts); nothing here validates JSON Schema as a whole.
Nesting is bounded by the gateway's JSON depth limit (64 levels), so recursion is safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Keywords whose value is one schema, a list of schemas, or a mapping of names to schemas
# (JSON Schema 2020-12 and draft 7, as both providers read them).
_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains")
_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems", "items")
_MAPPINGS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The schemas directly inside `schema` (its properties, items, `anyOf` branches, `$defs`
    and the like); values that are not objects (`true`, `false`) are left out."""
    for key in _ONE:
        value = schema.get(key)
        if isinstance(value, dict):
            yield value
    for key in _LISTS:
        value = schema.get(key)
        if isinstance(value, list):
            yield from (item for item in value if isinstance(item, dict))
    for key in _MAPPINGS:
        value = schema.get(key)
        if isinstance(value, dict):
            yield from (item for item in value.values() if isinstance(item, dict))


def is_object_schema(schema: dict[str, Any]) -> bool:
    """Whether `schema` describes an object: `type` is `"object"` or a list holding it."""
    kind = schema.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind)


def object_schemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every object schema in `schema`, itself included, outermost first."""
    if is_object_schema(schema):
        yield schema
    for inner in subschemas(schema):
        yield from object_schemas(inner)


# Keywords whose schemas describe parts of the value itself (not conditions on it):
# where `close_objects` looks for objects to close.
_STRUCTURAL_ONE = ("items",)
_STRUCTURAL_LISTS = ("anyOf", "oneOf", "prefixItems", "items")
_STRUCTURAL_MAPPINGS = ("properties", "$defs", "definitions")


def close_objects(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` in which every object schema that declares its `properties` and
    names no `additionalProperties` has `additionalProperties: false`, as Anthropic's
    structured outputs require. Left as written: an explicit value (`true`, a schema: the
    client's contract), an object declaring no properties (a free-form map, which closing
    would narrow to `{}`; Anthropic refuses it in its own words), and whatever sits under
    `allOf`, `not`, `if`/`then`/`else` or `contains` (closing a branch there changes what
    the whole accepts). `schema` is not changed."""
    copied = {key: _closed_value(key, value) for key, value in schema.items()}
    if (
        is_object_schema(copied)
        and isinstance(copied.get("properties"), dict)
        and "additionalProperties" not in copied
    ):
        copied["additionalProperties"] = False
    return copied


def _closed_value(key: str, value: Any) -> Any:
    if key in _STRUCTURAL_ONE and isinstance(value, dict):
        return close_objects(value)
    if key in _STRUCTURAL_LISTS and isinstance(value, list):
        return [close_objects(item) if isinstance(item, dict) else item for item in value]
    if key in _STRUCTURAL_MAPPINGS and isinstance(value, dict):
        return {
            name: close_objects(item) if isinstance(item, dict) else item
            for name, item in value.items()
        }
    return value


def open_object(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The first object schema in `schema` whose `additionalProperties` is not `false` (what
    Anthropic's structured outputs refuse); None when every object is closed."""
    return next(
        (
            found
            for found in object_schemas(schema)
            if found.get("additionalProperties") is not False
        ),
        None,
    )


def strict_violation(schema: dict[str, Any]) -> str | None:
    """Why OpenAI's strict mode would refuse `schema`, in the words of its error ("'required'
    is required to be supplied and to be an array including every key in properties.
    Missing 'x'." / "'additionalProperties' is required to be supplied and to be false."),
    for the first object schema that breaks a rule; None when every object is closed and
    requires all of its properties."""
    for found in object_schemas(schema):
        if found.get("additionalProperties") is not False:
            return "'additionalProperties' is required to be supplied and to be false."
        properties = found.get("properties")
        names = list(properties) if isinstance(properties, dict) else []
        required = found.get("required")
        listed = (
            {name for name in required if isinstance(name, str)}
            if isinstance(required, list)
            else set()
        )
        missing = [name for name in names if name not in listed]
        if missing:
            return (
                "'required' is required to be supplied and to be an array including every "
                f"key in properties. Missing '{missing[0]}'."
            )
    return None


# OpenAI's refusals of JSON mode without the word "json" in the prompt (its Chat
# Completions and Responses APIs; the model is told to answer JSON only by the prompt).
JSON_MODE_CHAT_MESSAGE = (
    "'messages' must contain the word 'json' in some form, to use 'response_format' of "
    "type 'json_object'."
)
JSON_MODE_RESPONSES_MESSAGE = (
    "Response input messages must contain the word 'json' in some form to use "
    "'text.format' of type 'json_object'."
)


def mentions_json(*prompt: Any) -> bool:
    """Whether the text of `prompt` (messages, input items, instructions: JSON values as
    parsed) holds the word "json" in any case, which OpenAI requires of a JSON-mode
    request. Text is a string given whole, or under `content`, `text` or `instructions`;
    names, ids, tool arguments and image data are not read."""
    return any("json" in text.lower() for part in prompt for text in _texts(part, None))


_TEXT_KEYS = frozenset({"content", "text", "instructions"})


def _texts(value: Any, key: str | None) -> Iterator[str]:
    if isinstance(value, str):
        if key is None or key in _TEXT_KEYS:
            yield value
    elif isinstance(value, dict):
        for name, inner in value.items():
            yield from _texts(inner, name)
    elif isinstance(value, list):
        for inner in value:
            yield from _texts(inner, key)

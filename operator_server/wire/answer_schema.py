"""Answer forms: the restricted JSON Schema an ``ask`` may carry, and answers checked against it.

The subset is the one MCP elicitation uses, so every operator interface can
draw a form from it: a flat object whose properties are each a string, number,
integer, boolean or a string enum, with ``title``, ``description``, ``default``
and ``required``.  ``check_schema`` refuses anything else, naming the part that
is not allowed; ``answer_problem`` validates an answer with ``jsonschema``.

Shared by the HTTP layer (a worker's ``answer_schema``), the operator session
(an ``answer`` frame) and the clients (the MCP bridge checks before sending).
"""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]

# Keywords allowed at the top of the schema, and per property type.
_TOP = frozenset({"type", "properties", "required", "title", "description", "$schema"})
_COMMON = frozenset({"type", "title", "description", "default"})
_BY_TYPE: dict[str, frozenset[str]] = {
    "string": _COMMON | {"enum", "enumNames", "minLength", "maxLength", "format"},
    "number": _COMMON | {"minimum", "maximum"},
    "integer": _COMMON | {"minimum", "maximum"},
    "boolean": _COMMON,
}
_FORMATS = frozenset({"email", "uri", "date", "date-time"})


class SchemaNotAllowed(ValueError):
    """``answer_schema`` is outside the subset; ``str(exc)`` names the part."""


def check_schema(schema: Any, where: str = "answer_schema") -> None:
    """Raise ``SchemaNotAllowed`` naming the first part outside the subset."""
    if not isinstance(schema, dict):
        raise SchemaNotAllowed(f"{where}: must be an object")
    for key in schema:
        if key not in _TOP:
            raise SchemaNotAllowed(
                f"{where}.{key}: not allowed (a flat object schema has only "
                f"{', '.join(sorted(_TOP))})"
            )
    if schema.get("type") != "object":
        raise SchemaNotAllowed(f'{where}.type: must be "object"')
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        raise SchemaNotAllowed(f"{where}.properties: must be a non-empty object")
    for name, prop in properties.items():
        _check_property(prop, f"{where}.properties.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaNotAllowed(f"{where}.required: must be a list of property names")
    for name in required:
        if name not in properties:
            raise SchemaNotAllowed(f"{where}.required: {name!r} is not a property")
    for key in ("title", "description"):
        if key in schema and not isinstance(schema[key], str):
            raise SchemaNotAllowed(f"{where}.{key}: must be a string")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        raise SchemaNotAllowed(f"{where}.{path}: {exc.message}" if path else exc.message) from None


def _check_property(prop: Any, where: str) -> None:
    if not isinstance(prop, dict):
        raise SchemaNotAllowed(f"{where}: must be an object")
    kind = prop.get("type")
    allowed = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if allowed is None:
        raise SchemaNotAllowed(
            f"{where}.type: must be one of {', '.join(_BY_TYPE)} (got {kind!r}); "
            "nested objects and arrays are not allowed"
        )
    for key in prop:
        if key not in allowed:
            raise SchemaNotAllowed(f"{where}.{key}: not allowed for a {kind} property")
    if "enum" in prop:
        enum = prop["enum"]
        if not isinstance(enum, list) or not enum or not all(isinstance(e, str) for e in enum):
            raise SchemaNotAllowed(f"{where}.enum: must be a non-empty list of strings")
    if "format" in prop and prop["format"] not in _FORMATS:
        raise SchemaNotAllowed(f"{where}.format: must be one of {', '.join(sorted(_FORMATS))}")
    if "default" in prop:
        default_schema = {k: v for k, v in prop.items() if k != "default"}
        problem = _first_problem(default_schema, prop["default"])
        if problem is not None:
            raise SchemaNotAllowed(f"{where}.default: {problem[1]}")


def _first_problem(schema: dict[str, Any], value: Any) -> tuple[str, str] | None:
    """(field path, message) of the most relevant error, or None when valid."""
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(value)
    )
    if error is None:
        return None
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        # The missing field is in the message, not the path; name it in both.
        missing = next(
            (n for n in error.validator_value if isinstance(value, dict) and n not in value), ""
        )
        return missing, f"{missing!r} is required"
    return path, error.message


def answer_problem(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` does not answer ``schema`` (naming the field), or None when it does."""
    problem = _first_problem(schema, value)
    if problem is None:
        return None
    path, message = problem
    return f"value.{path}: {message}" if path else f"value: {message}"

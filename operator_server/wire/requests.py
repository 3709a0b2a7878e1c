"""Reading a request: JSON bodies, query strings, bearer credentials."""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError

from operator_server.errors import ApiError, Code, describe_validation


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, Code.BAD_JSON, "request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, Code.BAD_JSON, f"request body is not valid JSON: {exc}") from None


def validate(schema: Schema, data: Any, what: str = "body") -> Any:
    """Load ``data`` with ``schema``; a 400 naming each bad field otherwise."""
    if not isinstance(data, Mapping):
        raise ApiError(400, Code.BAD_REQUEST, f"{what} must be a JSON object")
    try:
        return schema.load(data)
    except ValidationError as exc:
        message = "; ".join(describe_validation(exc.messages))
        raise ApiError(400, Code.BAD_REQUEST, message, fields=exc.messages) from None


def query(request: web.Request, schema: Schema) -> Any:
    return validate(schema, dict(request.query), "query")


def bearer_of(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None if absent, empty or not Bearer."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def require_bearer(request: web.Request, expected: str, what: str) -> None:
    """Constant-time check of a fixed bearer token (the API token)."""
    token = bearer_of(request)
    if token is None:
        raise ApiError(401, Code.UNAUTHORIZED, f"send Authorization: Bearer <{what}>")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, Code.UNAUTHORIZED, f"wrong {what}")

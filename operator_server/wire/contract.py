"""The HTTP contract a route declares, next to its handler.

Each route module decorates its handler with ``@documented(...)``: a summary,
the marshmallow schemas it reads its body and query with, the schema of each
answer it gives, the error statuses it can answer with, and who may call it.
``http/openapi.py`` reads these declarations off the app's router and builds
the OpenAPI document from them, so the schemas the handlers validate with are
the schemas the document shows: there is no second, hand-written copy.

It lives here, below both surfaces, so ``http/`` and ``operators/`` declare
their routes the same way without importing each other.  The error body and
the security schemes are declared here once, for every route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from marshmallow import INCLUDE, Schema, fields, validate

from operator_server.errors import Code

JSON = "application/json"
EVENT_STREAM = "text/event-stream"

SchemaLike = Schema | type[Schema]


class Security(StrEnum):
    """The credentials a route may accept; each is an HTTP bearer token."""

    API_TOKEN = "api_token"
    SESSION_TOKEN = "session_token"
    WORKER = "worker_credential"
    METRICS_TOKEN = "metrics_token"


SECURITY_SCHEMES: dict[Security, dict[str, str]] = {
    Security.API_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "The admin's `api_token` from config. When none is configured the daemon "
            "binds loopback only and these routes are open to loopback callers."
        ),
    },
    Security.SESSION_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "An operator session's token, from `POST /v1/operators`. On the WebSocket "
            "upgrade it may instead come as the subprotocol `bearer.<token>`."
        ),
    },
    Security.WORKER: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "capability token or wh-<hex> worker handle",
        "description": (
            "A running attempt's capability token or worker handle, from its `spawn` "
            "frame. Revoked when the attempt ends."
        ),
    },
    Security.METRICS_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": "The scraper's `metrics_token`, when one is configured.",
    },
}


class ErrorDetailSchema(Schema):
    """``code`` is stable (a program may branch on it); ``message`` says what to fix.
    Some errors carry more: ``fields`` (per-field validation messages),
    ``conflicts`` (roles already held), ``task`` (the task as it is)."""

    class Meta:
        unknown = INCLUDE

    code = fields.String(required=True, validate=validate.OneOf([str(c) for c in Code]))
    message = fields.String(required=True)


class ErrorSchema(Schema):
    """Every non-2xx answer: ``{"error": {"code", "message", ...}}``."""

    error = fields.Nested(ErrorDetailSchema, required=True)


@dataclass(frozen=True)
class Body:
    """One success answer: a JSON body of ``schema``, or another ``media`` type.

    For ``text/event-stream``, ``schema`` is what each event's ``data:`` line
    holds (JSON); the document describes each event as ``{id, event, data}``.
    """

    description: str
    schema: SchemaLike | None = None
    media: tuple[str, ...] = (JSON,)
    headers: Mapping[str, str] = field(default_factory=dict)


# Statuses any route reading a body can answer with, whatever the route.
BODY_ERRORS: dict[int, str] = {
    400: "the body is not acceptable JSON or fails validation (the message names the field)",
    408: "the body did not arrive within request_read_timeout_s",
    413: "the body is larger than max_body_bytes",
}


# What any route answers before routing when no api_token is set and the Host
# header names another host (DNS rebinding; ``http/admission.py``).
HOST_REFUSED = (
    "with no api_token set, Host names neither a loopback host nor public_url's "
    "host (host_not_allowed)"
)


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, Body]
    errors: Mapping[int, str] = field(default_factory=dict)
    security: tuple[Security, ...] = ()
    # True when the credential is optional (``metrics_token`` unset: open).
    anonymous: bool = False
    body: SchemaLike | None = None
    body_required: bool = True
    # A raw ``text/plain`` body instead of JSON: what it holds.
    text_body: str = ""
    query: SchemaLike | None = None
    description: str = ""
    tags: tuple[str, ...] = ()

    def all_errors(self) -> dict[int, str]:
        """The error statuses of this route, with those every route and every
        body route has."""
        errors = {403: HOST_REFUSED}
        if self.body is not None or self.text_body:
            errors.update(BODY_ERRORS)
        for status, text in self.errors.items():
            errors[status] = f"{text}; or {HOST_REFUSED}" if status == 403 else text
        return errors


_ATTR = "__operation__"
H = TypeVar("H", bound=Callable[..., Any])


def documented(operation: Operation) -> Callable[[H], H]:
    """Attach ``operation`` to a handler (the handler itself is left unchanged)."""

    def mark(handler: H) -> H:
        setattr(handler, _ATTR, operation)
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    found = getattr(handler, _ATTR, None)
    return found if isinstance(found, Operation) else None

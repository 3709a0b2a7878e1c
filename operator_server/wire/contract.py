"""The HTTP contract a route declares, next to its handler.

Each route module decorates its handler with ``@documented(...)``: a summary,
the marshmallow schemas it reads its body and query with, the schema of each
answer it gives, the error statuses it can answer with, and who may call it.
``http/openapi.py`` reads these declarations off the app's router and builds
the OpenAPI document from them.

The declaration is also what runs: before the handler, the decorator answers
404 for a route whose ``switch`` setting is off, finds the caller's principal
and checks it holds the route's ``scopes`` (401 without a credential, 403
``forbidden`` naming the scope it lacks; ``auth/authenticator.py``), checks
the fixed ``metrics_token``, and loads the query and the body with the
declared schemas, handing them to the handler as ``query=`` and ``body=``
when its signature takes them.  So the document cannot promise a credential,
a scope or a schema the handler does not get.  (A worker credential and a
session token are checked by the handler: what they grant depends on the
route's verb and on the session they name.  So is a principal offered beside
a session token, as on the "its holder or an admin" routes.)

It lives here, below both surfaces, so ``http/`` and ``operators/`` declare
their routes the same way without importing each other.  The error body and
the security schemes are declared here once, for every route.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web
from marshmallow import INCLUDE, Schema, fields, validate

from operator_server.auth.principal import Principal
from operator_server.errors import ApiError, Code
from operator_server.wire.requests import query as load_query
from operator_server.wire.requests import read_json, require_bearer
from operator_server.wire.requests import validate as load_body

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
HTML = "text/html"
FORM = "application/x-www-form-urlencoded"

SchemaLike = Schema | type[Schema]


class Security(StrEnum):
    """The credentials a route may accept; each is an HTTP bearer token."""

    # A principal's credential: an API key, the bootstrap ``api_token`` or a
    # JWT.  A route accepting it declares the ``scopes`` it needs.
    API_KEY = "api_key"
    SESSION_TOKEN = "session_token"
    WORKER = "worker_credential"
    METRICS_TOKEN = "metrics_token"


# The credentials that are one fixed token from the settings, by the setting's
# name; with the setting empty the route is open.
FIXED_TOKENS = frozenset({Security.METRICS_TOKEN})


class Principals(Protocol):
    """What the decorator asks who a caller is (``auth.authenticator.Authenticator``)."""

    async def require(self, request: web.Request, scopes: tuple[str, ...]) -> Principal: ...


# The app's authenticator; ``auth.authenticator.AUTHENTICATOR`` is this very key.
PRINCIPALS: web.AppKey[Principals] = web.AppKey("principals")


class RouteSettings(Protocol):
    """What a declaration needs of the settings to be enforced (``Settings``
    has all of it, and each ``switch`` and fixed token by name)."""

    @property
    def max_json_depth(self) -> int: ...


# The app's settings; ``appkeys.SETTINGS`` is this very key, typed as ``Settings``.
SETTINGS: web.AppKey[RouteSettings] = web.AppKey("settings")


SECURITY_SCHEMES: dict[Security, dict[str, str]] = {
    Security.API_KEY: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "osk_<id>_<secret> API key, the bootstrap api_token, or a JWT",
        "description": (
            "A principal's credential: an API key (`operator-server keys create`, "
            "`POST /v1/keys`), the bootstrap `api_token` from config (every scope), or a "
            "JWT from the configured identity provider. Each operation lists the scopes "
            "it needs (`admin` implies every other). When no `api_token` is configured "
            "the daemon binds loopback only, and a loopback caller that sends no "
            "credential holds every scope."
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
    # What a principal (``Security.API_KEY``) must hold, every one of them;
    # required when ``security`` names API_KEY (``auth/principal.py``).
    scopes: tuple[str, ...] = ()
    # True: any principal may call it, whatever it holds (``scopes`` stays
    # empty on purpose): a route about the caller itself, such as who it is.
    any_principal: bool = False
    # True when the credential is optional (``metrics_token`` unset: open).
    anonymous: bool = False
    body: SchemaLike | None = None
    body_required: bool = True
    # A raw ``text/plain`` body instead of JSON: what it holds.
    text_body: str = ""
    # A form (``application/x-www-form-urlencoded``) instead of JSON: what it
    # holds.  The handler reads it itself.
    form_body: str = ""
    # True: a refusal is an HTML page for a browser (``text/html``), and the
    # JSON error only for a client that asks for ``application/json`` alone.
    error_pages: bool = False
    query: SchemaLike | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    # (setting, what it turns on): with that boolean setting off the route
    # answers 404, as if it did not exist, before any credential is checked.
    switch: tuple[str, str] | None = None

    def all_errors(self) -> dict[int, str]:
        """The error statuses of this route, with those every route and every
        body route has."""
        errors = {403: HOST_REFUSED}
        if Security.API_KEY in self.security:
            errors[401] = "no credential, or one that is not accepted (the code says why)"
            if self.scopes:
                errors[403] = f"the principal lacks {' and '.join(self.scopes)} (`forbidden`)"
        if self.body is not None or self.text_body or self.form_body:
            errors.update(BODY_ERRORS)
        for status, text in self.errors.items():
            errors[status] = text
        if errors[403] != HOST_REFUSED:
            errors[403] = f"{errors[403]}; or {HOST_REFUSED}"
        return errors


_ATTR = "__operation__"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _instance(schema: SchemaLike | None) -> Schema | None:
    # Once per route: building a schema deep-copies every field.
    return schema() if isinstance(schema, type) else schema


def documented(
    operation: Operation, *, subject: Callable[[web.Request], Awaitable[Any]] | None = None
) -> Callable[[Callable[..., Awaitable[Any]]], Handler]:
    """Enforce ``operation`` around a handler, and attach it for the document.

    ``subject`` finds what the path names (a task, say) once the caller is
    allowed in and before its input is read, so a missing one is a 404
    whatever the query or body; the handler receives it as ``subject=`` if it
    takes one (a check that finds nothing returns None).
    """
    # ``security`` lists alternatives: a credential is checked here only when
    # it is the one way in (with a session token beside it, the handler decides).
    only = operation.security[0] if len(operation.security) == 1 else None
    token = str(only) if only in FIXED_TOKENS else None
    scopes = operation.scopes if only is Security.API_KEY else None
    if Security.API_KEY in operation.security and not (operation.scopes or operation.any_principal):
        raise ValueError(
            f"{operation.summary!r}: a route taking an API key declares its scopes "
            "(or any_principal=True)"
        )
    query_schema = _instance(operation.query)
    body_schema = _instance(operation.body)

    def wrap(handler: Callable[..., Awaitable[Any]]) -> Handler:
        takes = inspect.signature(handler).parameters
        wants_query = query_schema if "query" in takes else None
        wants_body = body_schema if "body" in takes else None

        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            settings: Any = request.app[SETTINGS]
            if operation.switch is not None and not getattr(settings, operation.switch[0]):
                name, what = operation.switch
                raise ApiError(Code.NOT_FOUND, f"{what} are turned off ({name} = false)")
            if scopes is not None:
                await request.app[PRINCIPALS].require(request, scopes)
            elif token is not None and (expected := getattr(settings, token)):
                require_bearer(request, expected, token)
            given: dict[str, Any] = {}
            if subject is not None:
                found = await subject(request)
                if "subject" in takes:
                    given["subject"] = found
            if wants_query is not None:
                given["query"] = load_query(request, wants_query)
            if wants_body is not None:
                if operation.body_required or request.can_read_body:
                    raw = await read_json(request, settings.max_json_depth)
                    given["body"] = load_body(wants_body, raw)
                else:
                    given["body"] = {}
            response: web.StreamResponse = await handler(request, **given)
            return response

        setattr(run, _ATTR, operation)
        return run

    return wrap


def operation_of(handler: Any) -> Operation | None:
    found = getattr(handler, _ATTR, None)
    return found if isinstance(found, Operation) else None

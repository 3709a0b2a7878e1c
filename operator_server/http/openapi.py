"""``GET /v1/openapi.json``: the OpenAPI 3.1 document of this server's routes.

Built from the app's own router: every route's handler carries its
``Operation`` (``wire/contract.py``), and apispec's marshmallow plugin turns
the schemas named there (the very ones the handlers validate with) into JSON
Schema.  A route without a declaration is left out of the document, and a test
fails on it.  The document depends only on the routes, so it is built once per
set of routes and served from memory.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import hdrs, web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from operator_server import __version__
from operator_server.wire import json
from operator_server.wire.contract import (
    EVENT_STREAM,
    FORM,
    HTML,
    JSON,
    SECURITY_SCHEMES,
    Body,
    ErrorSchema,
    Operation,
    Security,
    documented,
    operation_of,
)

routes = web.RouteTableDef()

OPENAPI_VERSION = "3.1.0"
_PATH_PARAM = re.compile(r"\{([^}:]+)")
_DESCRIPTION = (
    "Seat external operators (humans, AI agents, processes) inside an agent-work "
    'engine. Every error answer is `{"error": {"code", "message", ...}}` with a '
    "stable code. The operator WebSocket protocol is described in the README."
)

Documented = tuple[tuple[str, str, Callable[..., Any]], ...]


def documented_routes(app: web.Application) -> Documented:
    """(method, path, handler) of every route, HEAD left out (GET implies it)."""
    return tuple(
        (route.method, route.resource.canonical, route.handler)
        for route in app.router.routes()
        if route.method != hdrs.METH_HEAD and route.resource is not None
    )


def build_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes, as a JSON-ready dict."""
    return _build(documented_routes(app))


def _build(found: Documented) -> dict[str, Any]:
    spec = APISpec(
        title="operator-server",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": _DESCRIPTION},
    )
    for scheme, definition in SECURITY_SCHEMES.items():
        spec.components.security_scheme(str(scheme), definition)
    spec.components.schema("Error", schema=ErrorSchema)
    for method, path, handler in found:
        operation = operation_of(handler)
        if operation is None:
            continue
        spec.path(
            path=path,
            operations={method.lower(): _operation(spec, operation, handler.__name__, path)},
        )
    document: dict[str, Any] = spec.to_dict()
    return document


def _operation(spec: APISpec, op: Operation, operation_id: str, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": operation_id, "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.tags:
        out["tags"] = list(op.tags)
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
        }
        for name in _PATH_PARAM.findall(path)
    ]
    if op.query is not None:
        parameters.append({"in": "query", "schema": op.query})
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {JSON: {"schema": op.body}},
        }
    elif op.text_body:
        out["requestBody"] = {
            "required": True,
            "description": op.text_body,
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    elif op.form_body:
        out["requestBody"] = {
            "required": True,
            "description": op.form_body,
            "content": {FORM: {"schema": {"type": "object"}}},
        }
    responses = {str(status): _response(spec, body) for status, body in op.responses.items()}
    for status, why in sorted(op.all_errors().items()):
        content: dict[str, Any] = {JSON: {"schema": ErrorSchema}}
        if op.error_pages:
            content[HTML] = {"schema": {"type": "string"}}
        responses[str(status)] = {"description": why, "content": content}
    out["responses"] = responses
    if op.security:
        # OpenAPI 3.1 lets an http scheme's requirement list role names: the scopes.
        out["security"] = [
            {str(s): list(op.scopes) if s is Security.API_KEY else []} for s in op.security
        ] + ([{}] if op.anonymous else [])
    return out


def _response(spec: APISpec, body: Body) -> dict[str, Any]:
    out: dict[str, Any] = {"description": body.description}
    if body.media == (EVENT_STREAM,) and body.schema is not None:
        out["content"] = {EVENT_STREAM: {"schema": _sse_event(spec, body.schema)}}
    elif body.media:
        schema: Any = body.schema or (
            {"type": "object"} if body.media == (JSON,) else {"type": "string"}
        )
        out["content"] = {media: {"schema": schema} for media in body.media}
    if body.headers:
        out["headers"] = {
            name: {"description": why, "schema": {"type": "string"}}
            for name, why in body.headers.items()
        }
    return out


def _sse_event(spec: APISpec, data: Any) -> dict[str, Any]:
    """One event of a stream (OpenAPI 3.1 has no ``itemSchema``: for a
    ``text/event-stream``, ``schema`` describes each event, as schemathesis
    reads it): its ``id``, ``event`` and ``data``, which holds ``data`` as JSON."""
    cls = data if isinstance(data, type) else type(data)
    name = cls.__name__.removesuffix("Schema")
    if name not in spec.components.schemas:
        spec.components.schema(name, schema=cls)
    return {
        "type": "object",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "event": {"type": "string"},
            "data": {
                "type": "string",
                "contentMediaType": JSON,
                "contentSchema": {"$ref": f"#/components/schemas/{name}"},
            },
        },
    }


@functools.lru_cache(maxsize=8)
def _document_bytes(found: Documented) -> bytes:
    return json.dumps(_build(found)).encode()


def undocumented(app: web.Application) -> Iterable[str]:
    """``METHOD path`` of each route that declares no ``Operation``."""
    return [
        f"{method} {path}"
        for method, path, handler in documented_routes(app)
        if operation_of(handler) is None
    ]


@routes.get("/v1/openapi.json")
@documented(
    Operation(
        "This document: the OpenAPI 3.1 contract of every route",
        {200: Body("the OpenAPI document")},
        tags=("operations",),
    )
)
async def openapi_document(request: web.Request) -> web.Response:
    body = _document_bytes(documented_routes(request.app))
    return web.Response(body=body, content_type=JSON)

"""The operator console: ``/console/`` serves the static web app, ``/`` points there.

Only the files shipped in ``operator_server/console/static`` are served (read
once, at start), so no request path ever reaches the file system.  Every console
response carries a Content-Security-Policy that allows scripts, styles, images
and connections from the daemon's own origin only: no inline script, no
third-party origin.  "Every" includes what no handler here writes — the
redirects of ``/`` and ``/console``, a 404 for an unknown file, a 405 from the
router — so ``secure_console_response`` adds the CSP and ``nosniff`` to any
response under ``/``, ``/console`` and ``/console/...`` as it is prepared.

``GET /console/config.json`` tells the page, before sign-in, whether the server
needs an API token (so the field is shown only then).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web
from marshmallow import Schema, fields

from operator_server.appkeys import SETTINGS
from operator_server.console import STATIC_DIR
from operator_server.wire.contract import Body, Operation, documented
from operator_server.wire.requests import json_response

routes = web.RouteTableDef()

_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _content_type(path: Path) -> str:
    return (
        _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


def _load(folder: Path) -> dict[str, tuple[bytes, str]]:
    return {
        p.name: (p.read_bytes(), _content_type(p))
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


_FILES = _load(STATIC_DIR)
_MEDIA = tuple(sorted({content_type for _, content_type in _FILES.values()}))


class ConsoleConfigSchema(Schema):
    api_token_required = fields.Boolean(required=True)


_TO_CONSOLE = Operation(
    "Redirect to the operator console",
    {302: Body("to /console/", media=(), headers={"Location": "/console/"})},
    tags=("console",),
)


def content_security_policy(request: web.Request) -> str:
    # 'self' covers ws: to the same host in CSP3 browsers; the explicit ws(s)
    # origin keeps older engines working and is still our own origin only.
    ws = "wss" if request.scheme == "https" else "ws"
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            f"connect-src 'self' {ws}://{request.host}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def _is_console(path: str) -> bool:
    return path == "/" or path == "/console" or path.startswith("/console/")


async def secure_console_response(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the console's CSP and ``nosniff`` on every response
    under it, whoever made the response (a handler, the router, the error middleware)."""
    if _is_console(request.path):
        headers = response.headers
        if "Content-Security-Policy" not in headers:
            headers["Content-Security-Policy"] = content_security_policy(request)
        headers["X-Content-Type-Options"] = "nosniff"


def _headers(request: web.Request, content_type: str) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Content-Security-Policy": content_security_policy(request),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Small files, and a daemon upgrade must never run yesterday's script.
        "Cache-Control": "no-cache",
    }


@routes.get("/")
@documented(_TO_CONSOLE)
async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/")


@routes.get("/console")
@documented(_TO_CONSOLE)
async def console_no_slash(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/")


@routes.get("/console/config.json")
@documented(
    Operation(
        "What the console needs to know before sign-in",
        {200: Body("whether the server needs an api token", ConsoleConfigSchema)},
        tags=("console",),
    )
)
async def console_config(request: web.Request) -> web.Response:
    body = {"api_token_required": bool(request.app[SETTINGS].api_token)}
    resp = json_response(body)
    resp.headers.update(_headers(request, "application/json"))
    return resp


@routes.get("/console/{name:[^/]*}")
@documented(
    Operation(
        "A file of the operator console (`/console/` is its index.html)",
        {200: Body("the file", media=_MEDIA)},
        errors={404: "no such console file"},
        tags=("console",),
    )
)
async def console_file(request: web.Request) -> web.Response:
    name = request.match_info["name"] or "index.html"
    found = _FILES.get(name)
    if found is None:
        raise web.HTTPNotFound(text=f"no console file {name!r}")
    body, content_type = found
    return web.Response(body=body, headers=_headers(request, content_type))

"""Liveness, with enough numbers to see the daemon is doing something."""

from __future__ import annotations

import time

from aiohttp import web

from operator_server import __version__
from operator_server.appkeys import ENGINE, OPERATOR_COUNTS, SETTINGS

routes = web.RouteTableDef()
_STARTED = time.monotonic()


@routes.get("/v1/healthz")
async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response(
        {
            "status": "ok" if engine.accepting else "shutting_down",
            "version": __version__,
            "node_id": request.app[SETTINGS].node_id,
            "uptime_s": round(time.monotonic() - _STARTED, 3),
            "tasks": engine.counts.view(),
            "operators": request.app[OPERATOR_COUNTS](),
        }
    )

"""Every HTTP request, counted and timed (metrics) and, if enabled, logged.

The outermost middleware, so it sees the status the error middleware chose.
Requests are labelled by route pattern (``/v1/tasks/{task_id}``), never by raw
path, so the label values stay bounded; a request matching no route is
``unmatched``.

The access log is one ``info`` line per request (``access_log = true``): method,
route, path, status, duration, remote.  Never the query string (it is where a
careless client would put a credential) and never a header.  It is off by
default: at several requests per task it would outnumber the one info line per
task, and log rendering is the largest cost a request has (see bench/).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from operator_server.appkeys import METRICS, SETTINGS
from operator_server.logs import get_logger

access_log = get_logger("operator_server.access")
UNMATCHED = "unmatched"


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def observe_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500  # an exception escaping the error middleware
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's convention)
        raise
    finally:
        seconds = time.perf_counter() - started
        route = route_of(request)
        request.app[METRICS].http_request(route, status, seconds)
        if request.app[SETTINGS].access_log:
            access_log.info(
                "http request",
                method=request.method,
                route=route,
                path=request.path,
                status=status,
                duration_s=round(seconds, 6),
                remote=request.remote,
            )

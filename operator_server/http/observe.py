"""Every HTTP request, counted and timed (metrics) and, if enabled, logged.

The outermost middleware, so it sees the status the error middleware chose.
Requests are labelled by route pattern (``/v1/tasks/{task_id}``), never by raw
path, so the label values stay bounded; a request matching no route is
``unmatched``.

The access log is one ``info`` line per request (``access_log = true``): method,
route, path, status, duration, remote.  Never the query string (it is where a
careless client would put a credential), never a header, and never a path
whose route names a ``{token}`` (an action link: the path is the credential;
its route pattern is logged as its path).  It is off by
default: at several requests per task it would outnumber the one info line per
task, and log rendering is the largest cost a request has (see bench/).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from operator_server.logs import get_logger
from operator_server.metrics import Metrics

access_log = get_logger("operator_server.access")
UNMATCHED = "unmatched"
# A path segment that is itself a credential (``/v1/links/{token}``).
_TOKEN = "{token}"


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def loggable_path(request: web.Request) -> str:
    """The path a log line may hold: the route's pattern where a path segment
    is itself a credential (an action link's token), else the path."""
    route = route_of(request)
    return route if _TOKEN in route else request.path


def observe_middleware(metrics: Metrics, log_access: bool) -> Middleware:
    """The middleware of one app.  It runs for every request, so what it needs
    is bound here once: the metrics, whether to log, and per route (by its
    resource, ``None`` for unmatched) the pattern and its pre-bound series."""
    routes: dict[Any, tuple[str, Callable[[int, float], None]]] = {}
    clock = time.perf_counter

    @web.middleware
    async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
        started = clock()
        status = 500  # an exception escaping the error middleware
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's convention)
            raise
        finally:
            seconds = clock() - started
            resource = request.match_info.route.resource
            found = routes.get(resource)
            if found is None:
                route = route_of(request)
                found = routes[resource] = (route, metrics.http_route(route))
            found[1](status, seconds)
            if log_access:
                access_log.info(
                    "http request",
                    method=request.method,
                    route=found[0],
                    path=loggable_path(request),
                    status=status,
                    duration_s=round(seconds, 6),
                    remote=request.remote,
                )

    return observe

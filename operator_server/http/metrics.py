"""``GET /metrics``: Prometheus text exposition of this server's metrics.

Open unless ``metrics_token`` is set; then it needs
``Authorization: Bearer <metrics_token>`` (a scraper's credential, separate
from the api token so a monitoring system never holds admin rights).
"""

from __future__ import annotations

from aiohttp import web

from operator_server.appkeys import METRICS, SETTINGS
from operator_server.metrics import CONTENT_TYPE
from operator_server.wire.requests import require_bearer

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    if token:
        require_bearer(request, token, "metrics_token")
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

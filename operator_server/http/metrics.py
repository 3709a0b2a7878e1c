"""``GET /metrics``: Prometheus text exposition of this server's metrics.

Open unless ``metrics_token`` is set; then it needs
``Authorization: Bearer <metrics_token>`` (a scraper's credential, separate
from the api token so a monitoring system never holds admin rights).
"""

from __future__ import annotations

from aiohttp import web

from operator_server.appkeys import METRICS, SETTINGS
from operator_server.metrics import CONTENT_TYPE
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.requests import require_bearer

routes = web.RouteTableDef()


@routes.get("/metrics")
@documented(
    Operation(
        "Prometheus metrics (text exposition format)",
        {200: Body("the metrics", media=(CONTENT_TYPE,))},
        errors={401: "metrics_token is set and was not sent, or is wrong"},
        security=(Security.METRICS_TOKEN,),
        anonymous=True,
        tags=("operations",),
    )
)
async def metrics(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    if token:
        require_bearer(request, token, "metrics_token")
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

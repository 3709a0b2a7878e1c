"""``GET /metrics``: Prometheus text exposition of this server's metrics.

``metrics = false`` turns metrics off: nothing is counted and this answers
404.  Otherwise open unless ``metrics_token`` is set; then it needs
``Authorization: Bearer <metrics_token>`` (a scraper's credential, separate
from the api token so a monitoring system never holds admin rights).
"""

from __future__ import annotations

from aiohttp import web

from operator_server.appkeys import METRICS
from operator_server.metrics import CONTENT_TYPE
from operator_server.wire.contract import Body, Operation, Security, documented

routes = web.RouteTableDef()


@routes.get("/metrics")
@documented(
    Operation(
        "Prometheus metrics (text exposition format)",
        {200: Body("the metrics", media=(CONTENT_TYPE,))},
        errors={
            401: "metrics_token is set and was not sent, or is wrong",
            404: "metrics are turned off (metrics = false)",
        },
        security=(Security.METRICS_TOKEN,),
        anonymous=True,
        # As if the route did not exist: nothing is counted, so nothing to show.
        switch=("metrics", "metrics"),
        tags=("operations",),
    )
)
async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

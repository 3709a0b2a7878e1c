"""Liveness, with enough numbers to see the daemon is doing something.

503 (``store_failed``) while the store's database does not answer (a
PostgreSQL store that lost its connection): a load balancer then sends work
elsewhere; the node takes no new tasks meanwhile, and answers 200 again as soon
as the database does.  A SQLite store answers 503 from a write its file could
not take (disk full, I/O error) until one commits again.
"""

from __future__ import annotations

import time

from aiohttp import web
from marshmallow import Schema, fields, validate

from operator_server import __version__
from operator_server.appkeys import ENGINE, OPERATOR_COUNTS, SETTINGS, STORE
from operator_server.engine.tasks import TaskStatus
from operator_server.errors import ApiError, Code
from operator_server.wire.contract import Body, Operation, documented
from operator_server.wire.requests import json_response

routes = web.RouteTableDef()
_STARTED = time.monotonic()


class OperatorCountsSchema(Schema):
    sessions = fields.Integer(required=True)
    connected = fields.Integer(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "shutting_down"]))
    version = fields.String(required=True)
    node_id = fields.String(
        required=True, metadata={"description": "which daemon answered (config node_id)"}
    )
    uptime_s = fields.Float(required=True)
    tasks = fields.Dict(
        keys=fields.Enum(TaskStatus, by_value=True),
        values=fields.Integer(),
        required=True,
        metadata={"description": "how many tasks are in each status (statuses with none left out)"},
    )
    operators = fields.Nested(OperatorCountsSchema, required=True)


@routes.get("/v1/healthz")
@documented(
    Operation(
        "Liveness, with task and session counts",
        {200: Body("alive", HealthSchema)},
        errors={503: "the node's database does not answer (store_failed): it takes no new tasks"},
    )
)
async def healthz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    if not request.app[STORE].healthy:
        raise ApiError(
            Code.STORE_FAILED, "the database does not answer; this node takes no new tasks"
        )
    return json_response(
        {
            "status": "ok" if engine.accepting else "shutting_down",
            "version": __version__,
            "node_id": request.app[SETTINGS].node_id,
            "uptime_s": round(time.monotonic() - _STARTED, 3),
            "tasks": engine.counts.view(),
            "operators": await request.app[OPERATOR_COUNTS](),
        }
    )

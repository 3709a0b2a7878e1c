"""Operator admin: list the sessions, see what one holds pending.

``GET /v1/operators`` is for the admin only (see ``access.py``);
``GET /v1/operators/{sid}/pending`` also answers the session's own holder.
In a cluster both read the stored rows, so any node lists every node's
sessions, connected wherever their socket is (``census.py``), and their requests.  The
forced leave is ``DELETE /v1/operators/{sid}`` with the admin's credential
(``login.py``).  No view holds a token, a token hash, a capability or a worker
handle: each is built field by field from what is safe to show.

The list is in creation order and pages by keyset: ``next`` is an opaque
cursor naming the last session shown (its creation time and sid), so a page
costs the same at any depth and a session ending between pages shifts nothing.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from marshmallow import Schema, fields, validate

from operator_server.auth.principal import Scope
from operator_server.cluster.store import cluster_store
from operator_server.errors import ApiError, Code
from operator_server.operators.access import (
    LOOKUP_ERRORS,
    authorize_session_or_admin,
)
from operator_server.operators.census import SeenSession, session_views
from operator_server.operators.keys import DIRECTORY
from operator_server.operators.login import SessionSchema
from operator_server.operators.session import PendingRequest
from operator_server.store import PendingRow
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.frames import REQ_KIND
from operator_server.wire.requests import json_response
from operator_server.wire.times import iso

routes = web.RouteTableDef()


# What ``_cursor`` writes: microseconds, a dot, a sid.
_CURSOR = r"^[0-9]+\..*"


class OperatorListQuerySchema(Schema):
    role = fields.String(validate=validate.Length(min=1, max=200))
    # Query text, but only the two JSON spellings: no "yes", "1" or "on".
    connected = fields.Boolean(truthy={"true"}, falsy={"false"})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    after = fields.String(
        validate=[validate.Length(min=1, max=300), validate.Regexp(_CURSOR)],
        metadata={"description": "the `next` of the previous page"},
    )


class OperatorPageSchema(Schema):
    operators = fields.List(fields.Nested(SessionSchema), required=True)
    next = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "cursor for `after`; null at the end"},
    )


class PendingSchema(Schema):
    req_id = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(list(REQ_KIND)))
    task_id = fields.String(required=True)
    attempt = fields.Integer(required=True, allow_none=True)
    agent = fields.String(required=True, allow_none=True)
    issued_at = fields.DateTime(required=True)
    waiting_s = fields.Float(required=True)


class PendingListSchema(Schema):
    pending = fields.List(fields.Nested(PendingSchema), required=True)


def _order(session: SeenSession) -> tuple[int, str]:
    return int(session.created_at * 1_000_000), session.sid


def _cursor(key: tuple[int, str]) -> str:
    return f"{key[0]}.{key[1]}"


def _parse_cursor(text: str) -> tuple[int, str]:
    head, _, sid = text.partition(".")
    try:
        return int(head), sid
    except ValueError:
        raise ApiError(
            Code.BAD_REQUEST, "after: not a cursor; pass the `next` of the previous page"
        ) from None


def pending_view(req: PendingRequest, now: float) -> dict[str, Any]:
    return _view(req.frame, req.issued_at, now)


def row_view(row: PendingRow, now: float) -> dict[str, Any]:
    return _view(row.frame, row.issued_at, now)


def _view(frame: dict[str, Any], issued_at: float, now: float) -> dict[str, Any]:
    return {
        "req_id": frame["req_id"],
        "type": frame["type"],
        "task_id": frame["task_id"],
        # An ask carries no attempt or agent on the wire: null for those.
        "attempt": frame.get("attempt"),
        "agent": frame.get("agent"),
        "issued_at": iso(issued_at),
        "waiting_s": round(max(0.0, now - issued_at), 3),
    }


@routes.get("/v1/operators")
@documented(
    Operation(
        "List operator sessions, oldest first, a page at a time (admin)",
        {
            200: Body(
                "a page of sessions; pass `next` as `after` for the following one",
                OperatorPageSchema,
            )
        },
        errors={
            400: "a bad query parameter or `after` cursor",
            403: "the principal lacks admin (`forbidden`), or no api_token is configured and "
            "the caller is not a credential-less loopback one",
        },
        security=(Security.API_KEY,),
        scopes=(Scope.ADMIN,),
        query=OperatorListQuerySchema,
        tags=("operators",),
    ),
)
async def list_operators(request: web.Request, query: dict[str, Any]) -> web.Response:
    role, connected = query.get("role"), query.get("connected")
    after = _parse_cursor(query["after"]) if "after" in query else None
    chosen = [
        s
        for s in await session_views(request.app[DIRECTORY])
        if (role is None or role in s.view["roles"])
        and (connected is None or s.view["connected"] is connected)
        and (after is None or _order(s) > after)
    ]
    chosen.sort(key=_order)
    limit = query["limit"]
    page = chosen[:limit]
    more = len(chosen) > limit
    return json_response(
        {
            "operators": [s.view for s in page],
            "next": _cursor(_order(page[-1])) if more else None,
        }
    )


@routes.get("/v1/operators/{sid}/pending")
@documented(
    Operation(
        "What an operator session holds pending (its holder, or the admin)",
        {200: Body("requests awaiting a reply, in issue order", PendingListSchema)},
        errors={
            401: "no usable Bearer credential, or neither the session's token nor an admin's",
            403: "a principal that lacks admin (`forbidden`)",
            **LOOKUP_ERRORS,
        },
        security=(Security.SESSION_TOKEN, Security.API_KEY),
        scopes=(Scope.ADMIN,),
        tags=("operators",),
    )
)
async def pending_requests(request: web.Request) -> web.Response:
    session, _ = await authorize_session_or_admin(request)
    now = time.time()
    store = request.app[DIRECTORY].engine.store
    shared = cluster_store(store)
    if shared is not None:  # a cluster: the rows hold every node's, in issue order
        rows = await shared.pending_of(session.sid)
        views = [row_view(row, now) for row in rows]
    else:
        views = [pending_view(r, now) for r in session.pending.values()]
    return json_response({"pending": views})

"""``GET /v1/audit``: the audit trail, a page at a time (admin).

Oldest first, keyset-paged on ``seq`` (``after`` = the ``next`` of the page
before), filtered by task, principal, action and time.  A task's page
(``?task_id=``) is who decided each of its requests: what the console's task
page shows.  The chain's hashes are in every entry; checking them is
``operator-server audit verify``'s job, on the store itself.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate

from operator_server.appkeys import ENGINE
from operator_server.audit.record import Action
from operator_server.auth.principal import Scope
from operator_server.store.base import AuditQuery
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.fields import QueryInteger
from operator_server.wire.requests import json_response
from operator_server.wire.times import parse_instant

routes = web.RouteTableDef()


class Instant(fields.Field):
    """ISO 8601 or epoch seconds, loaded as epoch seconds."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        try:
            return parse_instant(str(value))
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class AuditQuerySchema(Schema):
    task_id = fields.String(validate=validate.Length(min=1, max=200))
    principal = fields.String(validate=validate.Length(min=1, max=500))
    action = fields.String(validate=validate.OneOf([str(a) for a in Action]))
    since = Instant(
        metadata={
            "type": "string",
            "description": "entries at or after this instant (ISO 8601, or epoch seconds)",
        }
    )
    after = QueryInteger(
        load_default=0,
        validate=validate.Range(min=0),
        metadata={"description": "the `next` of the page before (a seq)"},
    )
    limit = QueryInteger(load_default=100, validate=validate.Range(min=1, max=1000))


class AuditEntrySchema(Schema):
    seq = fields.Integer(required=True)
    at = fields.String(required=True, metadata={"description": "ISO 8601 UTC"})
    at_s = fields.Float(
        required=True, metadata={"description": "`at` in epoch seconds, as the hash covers it"}
    )
    node = fields.String(required=True, metadata={"description": "the node that wrote it"})
    principal = fields.String(required=True)
    session_id = fields.String(required=True, allow_none=True)
    action = fields.String(required=True, validate=validate.OneOf([str(a) for a in Action]))
    task_id = fields.String(required=True, allow_none=True)
    req_id = fields.String(required=True, allow_none=True)
    outcome = fields.String(required=True, allow_none=True)
    reason = fields.String(
        required=True, allow_none=True, metadata={"description": "a reason or a note"}
    )
    payload_sha256 = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "SHA-256 of the answer's or result's canonical JSON"},
    )
    prev_hash = fields.String(required=True)
    hash = fields.String(required=True)


class AuditPageSchema(Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema), required=True)
    next = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "cursor for `after`; null at the end"},
    )


@routes.get("/v1/audit")
@documented(
    Operation(
        "Read the audit trail, oldest first, a page at a time (admin)",
        {
            200: Body(
                "a page of entries; pass `next` as `after` for the following one",
                AuditPageSchema,
            )
        },
        errors={
            400: "a bad filter, `after` or `limit`",
            503: "the store could not be read",
        },
        security=(Security.API_KEY,),
        scopes=(Scope.ADMIN,),
        query=AuditQuerySchema,
        tags=("audit",),
    )
)
async def read_audit(request: web.Request, query: dict[str, Any]) -> web.Response:
    limit = query["limit"]
    rows = await request.app[ENGINE].store.audit_page(
        AuditQuery(
            task_id=query.get("task_id"),
            principal=query.get("principal"),
            action=query.get("action"),
            since=query.get("since"),
            after=query["after"],
            limit=limit + 1,  # one more: is there a next page?
        )
    )
    page = rows[:limit]
    more = len(rows) > limit
    return json_response(
        {
            "entries": [r.view() for r in page],
            "next": str(page[-1].seq) if more else None,
        }
    )

"""Operator requests over REST: list them, read one, reply to one or many.

``GET /v1/requests`` and ``GET /v1/requests/{req_id}`` show every pending
request a principal may operate (``inbox.py`` finds them on every node);
``POST /v1/requests/{req_id}/reply`` takes the very body a socket's reply
frame carries, ``type`` included; ``POST /v1/requests/reply`` takes up to
``BATCH_MAX`` of them and answers each on its own.  The first reply wins,
whatever path it came by; the session that issued the request judges it
(``OperatorSession.settle_reply``).

Any principal may call these (``any_principal``): what it sees and may answer
is decided per request by the roles it may operate.  The list is in issue
order and pages by keyset: ``next`` names the last request shown (its issue
time in microseconds and its req_id).
"""

from __future__ import annotations

import time
from itertools import islice
from typing import Any

from aiohttp import web
from marshmallow import INCLUDE, Schema, fields, validate

from operator_server.auth.principal import principal_of
from operator_server.errors import ApiError, Code
from operator_server.operators import inbox
from operator_server.operators.keys import DIRECTORY
from operator_server.operators.pending_index import Key, key_of
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.frames import REPLY_TO
from operator_server.wire.requests import json_response, read_json
from operator_server.wire.values import ReplyVia

routes = web.RouteTableDef()

# How many replies one batch may carry.
BATCH_MAX = 100
# What ``_cursor`` writes: microseconds, a dot, a req_id.
_CURSOR = r"^[0-9]+\..+"
STATES = ("pending",)


class RequestListQuerySchema(Schema):
    role = fields.String(validate=validate.Length(min=1, max=200))
    kind = fields.String(validate=validate.OneOf(inbox.ANSWERABLE))
    task_id = fields.String(validate=validate.Length(min=1, max=200))
    state = fields.String(
        validate=validate.OneOf(STATES),
        metadata={"description": "only pending requests are kept (settled ones: the audit trail)"},
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    after = fields.String(
        validate=[validate.Length(min=1, max=400), validate.Regexp(_CURSOR)],
        metadata={"description": "the `next` of the previous page"},
    )


class HolderSchema(Schema):
    sid = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "null: held by no session, waiting for its role's first holder"},
    )
    roles = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "the holding session's roles, or the one role it waits for"},
    )


class MoveSchema(Schema):
    """One move of the request (``operators/moves.move_record``)."""

    at = fields.DateTime(required=True)
    from_ = fields.String(
        data_key="from", required=True, metadata={"description": "the role or sid it left"}
    )
    to = fields.String(required=True, metadata={"description": "the role or sid it went to"})
    reason = fields.String(
        required=True, validate=validate.OneOf(("escalated", "reassigned", "handed_over"))
    )
    step = fields.Integer(
        required=True, metadata={"description": "its place in its escalation chain after the move"}
    )
    by = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the principal who moved it; null when its chain did"},
    )
    note = fields.String(required=True, allow_none=True)


class RequestSchema(Schema):
    """The request as its frame shows it (a spawn's credentials and directive
    left out), and where it is."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(required=True, validate=validate.OneOf(inbox.ANSWERABLE))
    req_id = fields.String(required=True)
    task_id = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(STATES))
    holder = fields.Nested(HolderSchema, required=True)
    issued_at = fields.DateTime(required=True)
    waiting_s = fields.Float(required=True)
    deadline_at = fields.DateTime(
        required=True,
        allow_none=True,
        metadata={
            "description": "when its on-timeout action decides it, or (with an escalation "
            "step ahead) when it moves on; null: no deadline"
        },
    )
    step = fields.Integer(
        required=True, metadata={"description": "its place in an escalation chain"}
    )
    moves = fields.List(
        fields.Nested(MoveSchema),
        required=True,
        metadata={"description": "how it came to its holder, oldest first"},
    )


class RequestPageSchema(Schema):
    requests = fields.List(fields.Nested(RequestSchema), required=True)
    next = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "cursor for `after`; null at the end"},
    )


class ReplyBodySchema(Schema):
    """A socket's reply frame as an object: ``answer`` (``value``, or ``error``
    to decline an ask), ``hook_ack`` (``ok``, ``reason``), ``spawn_ack``
    (``value``, ``ok``, ``error``) or ``spawn_halt`` (``reason``, ``value``)."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(required=True, validate=validate.OneOf(list(REPLY_TO)))
    req_id = fields.String(metadata={"description": "optional; must be the path's"})
    value = fields.Raw(allow_none=True)
    ok = fields.Boolean()
    reason = fields.String(allow_none=True)
    error = fields.String(allow_none=True)


class ReplyBatchSchema(Schema):
    replies = fields.List(
        fields.Nested(ReplyBodySchema),
        required=True,
        metadata={"description": f"1 to {BATCH_MAX} replies, each naming its req_id"},
    )


class RepliedSchema(Schema):
    req_id = fields.String(required=True)
    type = fields.String(required=True)
    via = fields.String(required=True)


class ItemResultSchema(Schema):
    req_id = fields.String(required=True, allow_none=True)
    status = fields.Integer(required=True)
    error = fields.Dict(metadata={"description": "`{code, message}` when status is not 200"})


class BatchResultSchema(Schema):
    results = fields.List(fields.Nested(ItemResultSchema), required=True)


def _key(found: inbox.Found) -> Key:
    return key_of(found.issued_at, found.req_id)


def _parse_cursor(text: str) -> tuple[int, str]:
    head, _, req_id = text.partition(".")
    return int(head), req_id  # the query schema checked the digits


_REPLY_ERRORS = {
    400: "a malformed reply, a req_id unlike the path's, a reply of the wrong type "
    "(`wrong_reply`) or an answer that does not fill the ask's form (`bad_answer`)",
    403: "the principal may not operate the request's role (`forbidden`, naming it)",
    404: "no such pending request (`request_not_found`)",
    409: "the request was already answered (`already_answered`) or moved on to another "
    "holder (`already_moved`); this reply changed nothing",
    503: "the store, or the node that issued the request, could not be reached",
}


@routes.get("/v1/requests")
@documented(
    Operation(
        "Pending operator requests the caller may operate, oldest first, a page at a time",
        {
            200: Body(
                "a page of requests; pass `next` as `after` for the following one",
                RequestPageSchema,
            )
        },
        errors={400: "a bad query parameter or `after` cursor", 503: "the store could not be read"},
        security=(Security.API_KEY,),
        any_principal=True,
        query=RequestListQuerySchema,
        tags=("requests",),
    )
)
async def list_requests(request: web.Request, query: dict[str, Any]) -> web.Response:
    principal = principal_of(request)
    role, kind, task_id = query.get("role"), query.get("kind"), query.get("task_id")
    after = _parse_cursor(query["after"]) if "after" in query else None
    limit = query["limit"]
    # One past the page tells whether there is a next one; no more is read.
    chosen = list(
        islice(
            (
                found
                for found in await inbox.listed(request.app[DIRECTORY], after)
                if inbox.may_see(principal, found)
                and (role is None or role in found.roles)
                and (kind is None or found.kind == kind)
                and (task_id is None or found.frame.get("task_id") == task_id)
            ),
            limit + 1,
        )
    )
    page = chosen[:limit]
    now = time.time()
    more = len(chosen) > limit
    return json_response(
        {
            "requests": [inbox.view(found, now) for found in page],
            "next": "{}.{}".format(*_key(page[-1])) if more else None,
        }
    )


@routes.get("/v1/requests/{req_id}")
@documented(
    Operation(
        "One pending operator request",
        {200: Body("the request", RequestSchema)},
        errors={k: v for k, v in _REPLY_ERRORS.items() if k in (403, 404, 409, 503)},
        security=(Security.API_KEY,),
        any_principal=True,
        tags=("requests",),
    )
)
async def get_request(request: web.Request) -> web.Response:
    found = await inbox.find(
        request.app[DIRECTORY], principal_of(request), request.match_info["req_id"]
    )
    return json_response(inbox.view(found, time.time()))


@routes.post("/v1/requests/reply")
@documented(
    Operation(
        f"Reply to up to {BATCH_MAX} operator requests at once, each on its own",
        {200: Body("each reply's outcome, in the order given", BatchResultSchema)},
        errors={
            400: 'the body is not `{"replies": [...]}` with at least one reply',
            413: f"more than {BATCH_MAX} replies (`too_large`), or a body past max_body_bytes",
        },
        security=(Security.API_KEY,),
        any_principal=True,
        body=ReplyBatchSchema,
        tags=("requests",),
    )
)
async def reply_batch(request: web.Request) -> web.Response:
    directory = request.app[DIRECTORY]
    body = await read_json(request, directory.settings.max_json_depth)
    if not isinstance(body, dict) or set(body) != {"replies"}:
        raise ApiError(Code.BAD_REQUEST, 'the body must be {"replies": [<reply>, ...]} and no more')
    replies = body["replies"]
    if not isinstance(replies, list) or not replies:
        raise ApiError(Code.BAD_REQUEST, "replies: must be a non-empty list of replies")
    if len(replies) > BATCH_MAX:
        raise ApiError(
            Code.TOO_LARGE, f"replies: {len(replies)} given, at most {BATCH_MAX} per batch"
        )
    principal = principal_of(request)
    results = []
    for item in replies:
        req_id = item.get("req_id") if isinstance(item, dict) else None
        if not isinstance(req_id, str) or not req_id:
            problem = ApiError(Code.BAD_MESSAGE, "req_id: each reply in a batch names its request")
            results.append(_failed(None, problem))
            continue
        try:
            await inbox.reply(directory, principal, req_id, item, ReplyVia.BATCH)
        except ApiError as exc:
            results.append(_failed(req_id, exc))
        else:
            results.append({"req_id": req_id, "status": 200})
    return json_response({"results": results})


def _failed(req_id: str | None, exc: ApiError) -> dict[str, Any]:
    return {
        "req_id": req_id,
        "status": exc.status,
        "error": {"code": str(exc.code), "message": exc.message},
    }


@routes.post("/v1/requests/{req_id}/reply")
@documented(
    Operation(
        "Reply to a pending operator request without a socket (the first reply wins)",
        {200: Body("the reply counted", RepliedSchema)},
        errors=_REPLY_ERRORS,
        security=(Security.API_KEY,),
        any_principal=True,
        body=ReplyBodySchema,
        tags=("requests",),
    )
)
async def reply_one(request: web.Request) -> web.Response:
    directory = request.app[DIRECTORY]
    body = await read_json(request, directory.settings.max_json_depth)
    req_id = request.match_info["req_id"]
    kind = await inbox.reply(directory, principal_of(request), req_id, body, ReplyVia.REST)
    return json_response({"req_id": req_id, "type": kind, "via": str(ReplyVia.REST)})

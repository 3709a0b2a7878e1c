"""Reassignment and seat handover over REST (the moves are ``handover.py``'s).

``POST /v1/requests/{req_id}/reassign`` may be called by the request's holder,
proved by the **holding session's own token**, or by a principal allowed to
operate the role the request is at (``operate:<glob>`` matching one of its
holder's roles, or the role it waits for), or by an admin.  Any other
session's token is 403: a seat moves only what it holds.  Checks run in the
order 401 (no credential) -> 404 / 409 (no such pending request) -> 403 ->
400 (the body, the target).

``POST /v1/operators/{sid}/handover`` may be called with the source session's
own token or an admin's credential (as ``DELETE /v1/operators/{sid}``).

In a cluster a request lives on the node that issued it: these routes find
the requests of this node (a request shown on a socket here but issued by
another node is answered 404 here).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from operator_server.appkeys import SETTINGS
from operator_server.audit.principals import session_principal
from operator_server.auth.authenticator import AUTHENTICATOR
from operator_server.auth.principal import OPERATE_ANY, Principal, Scope, principal_of
from operator_server.errors import ApiError, Code
from operator_server.operators.access import LOOKUP_ERRORS, authorize_session_or_admin
from operator_server.operators.directory import OperatorDirectory
from operator_server.operators.handover import Handovers, MoveRefused, Target
from operator_server.operators.keys import DIRECTORY
from operator_server.operators.session import OperatorSession, PendingRequest, hash_token
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.requests import bearer_of, json_response, read_json
from operator_server.wire.requests import validate as load

routes = web.RouteTableDef()

_NAME = validate.Length(min=1, max=200)


class ReassignBodySchema(Schema):
    role = fields.String(validate=_NAME, metadata={"description": "the role to move it to"})
    sid = fields.String(validate=_NAME, metadata={"description": "or the session to move it to"})
    note = fields.String(
        validate=validate.Length(max=2000),
        metadata={"description": "for the next holder: on the event and the audit row"},
    )

    @validates_schema
    def _one_target(self, data: dict[str, Any], **_: Any) -> None:
        if ("role" in data) == ("sid" in data):
            raise ValidationError("name exactly one target: role or sid", "role")


class ReassignedSchema(Schema):
    req_id = fields.String(required=True)
    from_ = fields.String(
        data_key="from", required=True, metadata={"description": "the sid (or role) it left"}
    )
    to = fields.String(required=True, metadata={"description": "the role or sid it went to"})


class HandoverBodySchema(Schema):
    sid = fields.String(
        required=True, validate=_NAME, metadata={"description": "the session taking the seat"}
    )


class HandedOverSchema(Schema):
    sid = fields.String(required=True, metadata={"description": "the source, left with no roles"})
    target = fields.String(required=True)
    roles = fields.List(fields.String(), required=True, metadata={"description": "roles moved"})
    moved = fields.List(
        fields.String(), required=True, metadata={"description": "req_ids of the requests moved"}
    )


def _refused(exc: MoveRefused) -> ApiError:
    return ApiError(exc.code, exc.message, status=exc.status)


# Built once: building a schema deep-copies every field.
_REASSIGN_BODY = ReassignBodySchema()
_HANDOVER_BODY = HandoverBodySchema()


async def _body(request: web.Request, schema: Schema) -> dict[str, Any]:
    raw = await read_json(request, request.app[SETTINGS].max_json_depth)
    loaded: dict[str, Any] = load(schema, raw)
    return loaded


@routes.post("/v1/requests/{req_id}/reassign")
@documented(
    Operation(
        "Move a pending request to another role or session (its holder, or an admin)",
        {200: Body("withdrawn from its holder and on its way to the target", ReassignedSchema)},
        errors={
            400: "the body names no target, both, or a session that does not exist, or the "
            "target already holds it (the message names it)",
            401: "no usable Bearer credential",
            403: "neither the holding session's token, nor a principal that may operate its "
            "role, nor an admin (`forbidden`)",
            404: "no pending request with this req_id (`unknown_req_id`)",
            409: "answered first (`already_answered`), or moving right now (`already_moved`)",
            503: "the store could not be read to find the target session (`store_failed`)",
        },
        # Read by the handler once the caller is known to be allowed (401/403 first).
        body=ReassignBodySchema,
        security=(Security.SESSION_TOKEN, Security.API_KEY),
        scopes=(OPERATE_ANY,),
        description="The request keeps its req_id, clock and escalation chain; its holder "
        "gets `cancel` with reason `reassigned`; a late reply there gets `already_moved`. "
        "A target not connected gets it when its socket attaches; a role nobody holds "
        "waits for its first holder.",
        tags=("requests",),
    )
)
async def reassign_request(request: web.Request) -> web.Response:
    directory = request.app[DIRECTORY]
    caller = await _caller(request, directory)
    req_id = request.match_info["req_id"]
    handovers: Handovers = directory.handovers
    try:
        holder, req = handovers.held(req_id)
    except MoveRefused as exc:
        raise _refused(exc) from None
    principal = _may_move(caller, holder, req)
    body = await _body(request, _REASSIGN_BODY)
    target = Target(role=body.get("role"), sid=body.get("sid"))
    left = holder.sid if holder is not None else str(req.waiting_for)
    try:
        await handovers.reassign(holder, req, target, principal=principal, note=body.get("note"))
    except MoveRefused as exc:
        raise _refused(exc) from None
    return json_response({"req_id": req_id, "from": left, "to": target.name})


async def _caller(
    request: web.Request, directory: OperatorDirectory
) -> OperatorSession | Principal:
    """A session (by its own token), or a principal holding some operate scope; 401/403."""
    authenticator = request.app[AUTHENTICATOR]
    token = bearer_of(request)
    if token is not None:
        digest = hash_token(token)
        for session in directory.sessions.values():
            if session.token_hash == digest:
                return session
    try:
        principal = await authenticator.principal(request)
    except ApiError as exc:
        if exc.code != Code.UNAUTHORIZED:
            raise
        raise ApiError(
            Code.UNAUTHORIZED,
            "send Authorization: Bearer <the holding session's token, or a principal's>",
        ) from exc
    if not principal.allows(OPERATE_ANY):
        raise ApiError(
            Code.FORBIDDEN,
            f"{principal.name} lacks the scope {OPERATE_ANY!r}; send the holding session's "
            "token, or a credential that may operate the request's role",
            scope=OPERATE_ANY,
        )
    return principal


def _may_move(
    caller: OperatorSession | Principal, holder: OperatorSession | None, req: PendingRequest
) -> str:
    """Who is moving ``req`` (for the audit row), or 403."""
    if isinstance(caller, OperatorSession):
        if caller is not holder:
            raise ApiError(
                Code.FORBIDDEN,
                f"{req.req_id} is held by another session; only its holder (or an admin) moves it",
            )
        return session_principal(caller)
    roles = holder.roles if holder is not None else [str(req.waiting_for)]
    if not caller.may_operate_any(roles):
        scope = f"operate:{roles[0]}" if roles else str(Scope.ADMIN)
        raise ApiError(
            Code.FORBIDDEN,
            f"{caller.name} may not operate {', '.join(roles) or 'its holder'}: send the "
            "holding session's token, or a credential with operate:<its role> or admin",
            scope=scope,
        )
    return caller.name


@routes.post("/v1/operators/{sid}/handover")
@documented(
    Operation(
        "Hand a session's seat (its roles and pending requests) to another session",
        {200: Body("the target holds the roles and the requests", HandedOverSchema)},
        errors={
            400: "the body names no session, an unknown one, or the source itself",
            401: "no usable Bearer credential, or neither the session's token nor an admin's",
            403: "a principal that lacks admin (`forbidden`)",
            409: "either session is being handed over right now (`already_moved`)",
            **LOOKUP_ERRORS,
            503: "the store could not be read, or could not save the handover (`store_failed`)",
        },
        body=HandoverBodySchema,
        security=(Security.SESSION_TOKEN, Security.API_KEY),
        scopes=(Scope.ADMIN,),
        description="Atomic: both sessions' rows are written in one commit with the "
        "`session.handed_over` audit row; then every role and every pending request "
        "moves at once (`cancel` reason `handed_over`). The source stays, with no roles; "
        "its late replies get `already_moved`.",
        tags=("operators",),
    )
)
async def hand_over_seat(request: web.Request) -> web.Response:
    source, admin = await authorize_session_or_admin(request)
    body = await _body(request, _HANDOVER_BODY)
    principal = principal_of(request).name if admin else session_principal(source)
    try:
        target, roles, moved = await request.app[DIRECTORY].handovers.hand_over(
            source, body["sid"], principal=principal
        )
    except MoveRefused as exc:
        raise _refused(exc) from None
    return json_response({"sid": source.sid, "target": target.sid, "roles": roles, "moved": moved})

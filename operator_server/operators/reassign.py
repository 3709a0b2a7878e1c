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

In a cluster either route may be called on any node.  A request issued by
another node is moved there (``Handovers.reassign_on``): found through its
row, or, with no row (settled, or waiting for a role nobody holds), by asking
the other live nodes in turn; the holding session's token is checked against
the session its row (or its req_id) names, read from the store.  The answers
are the node's that holds it, so the same as on one node, except that a
malformed body is then answered 400 before a missing request's 404.  A
handover moves the source's requests on every node (``Handovers.hand_over``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from operator_server.appkeys import SETTINGS
from operator_server.audit.principals import session_principal
from operator_server.auth.authenticator import AUTHENTICATOR
from operator_server.auth.principal import OPERATE_ANY, Scope, principal_of
from operator_server.cluster.store import cluster_store
from operator_server.errors import ApiError, Code
from operator_server.operators import inbox
from operator_server.operators.access import LOOKUP_ERRORS, authorize_session_or_admin
from operator_server.operators.directory import OperatorDirectory
from operator_server.operators.handover import Caller, Handovers, MoveRefused, Target, authorize
from operator_server.operators.keys import DIRECTORY
from operator_server.operators.session import hash_token
from operator_server.store import StoreError
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
    # Over REST a request that is nowhere is ``request_not_found``, as on
    # ``GET`` and ``reply``; the socket's frames keep ``unknown_req_id``.
    if exc.code == Code.UNKNOWN_REQ_ID:
        return ApiError(Code.REQUEST_NOT_FOUND, exc.message, **exc.detail)
    return ApiError(exc.code, exc.message, status=exc.status, **exc.detail)


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
            404: "no pending request with this req_id (`request_not_found`)",
            409: "answered first (`already_answered`), or moving right now (`already_moved`)",
            503: "the store could not be read to find the request or the target session "
            "(`store_failed`), or the node that issued the request did not answer "
            "(`node_unreachable`)",
        },
        # Read by the handler once the caller is known to be allowed (401/403 first).
        body=ReassignBodySchema,
        security=(Security.SESSION_TOKEN, Security.API_KEY),
        scopes=(OPERATE_ANY,),
        description="The request keeps its req_id, clock and escalation chain; its holder "
        "gets `cancel` with reason `reassigned`; a late reply there gets `already_moved`. "
        "A target not connected gets it when its socket attaches; a role nobody holds "
        "waits for its first holder. In a cluster any node takes it: the node that "
        "issued the request moves it.",
        tags=("requests",),
    )
)
async def reassign_request(request: web.Request) -> web.Response:
    directory = request.app[DIRECTORY]
    req_id = request.match_info["req_id"]
    caller = await _caller(request, directory, req_id)
    handovers: Handovers = directory.handovers
    try:
        holder, req = handovers.held(req_id)
    except MoveRefused as exc:
        if exc.code != Code.UNKNOWN_REQ_ID:
            raise _refused(exc) from None
        return await _reassign_elsewhere(request, directory, caller, req_id, exc)
    roles = holder.roles if holder is not None else [str(req.waiting_for)]
    left = holder.sid if holder is not None else str(req.waiting_for)
    try:
        authorize(caller, req_id, holder.sid if holder is not None else None, roles)
        body = await _body(request, _REASSIGN_BODY)
        target = Target(role=body.get("role"), sid=body.get("sid"))
        await handovers.reassign(holder, req, target, principal=caller.name, note=body.get("note"))
    except MoveRefused as exc:
        raise _refused(exc) from None
    return json_response({"req_id": req_id, "from": left, "to": target.name})


async def _reassign_elsewhere(
    request: web.Request,
    directory: OperatorDirectory,
    caller: Caller,
    req_id: str,
    not_here: MoveRefused,
) -> web.Response:
    """``req_id`` is not pending on this node: move it on the node that issued
    it (its row names it), or on the first other node that knows it."""
    found = await inbox.pending(directory, req_id)
    if found and found[0].owner in ("", directory.relay.node_id):
        raise _refused(not_here)  # settled here while we looked
    try:
        if found:
            authorize(caller, req_id, found[0].sid, found[0].roles)
            nodes = [found[0].owner]
        else:
            nodes = await directory.relay.other_nodes()
    except MoveRefused as exc:
        raise _refused(exc) from None
    except StoreError as exc:
        raise ApiError(Code.STORE_FAILED, f"could not read the live nodes: {exc}") from exc
    if not nodes:
        raise _refused(not_here)
    body = await _body(request, _REASSIGN_BODY)
    target = Target(role=body.get("role"), sid=body.get("sid"))
    refused = not_here
    for node in nodes:
        try:
            moved = await directory.handovers.reassign_on(
                node, req_id, target, caller, body.get("note")
            )
        except MoveRefused as exc:
            if exc.code == Code.UNKNOWN_REQ_ID:
                refused = exc
                continue  # not that node's: ask the next
            raise _refused(exc) from None
        return json_response({"req_id": req_id, **moved})
    raise _refused(refused)


async def _caller(request: web.Request, directory: OperatorDirectory, req_id: str) -> Caller:
    """A session (by its own token), or a principal holding some operate scope; 401/403."""
    authenticator = request.app[AUTHENTICATOR]
    token = bearer_of(request)
    if token is not None:
        digest = hash_token(token)
        for session in directory.sessions.values():
            if session.token_hash == digest:
                return Caller.of_session(session)
        elsewhere = await _holder_elsewhere(directory, req_id, digest)
        if elsewhere is not None:
            return elsewhere
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
    return Caller.of_principal(principal)


async def _holder_elsewhere(
    directory: OperatorDirectory, req_id: str, digest: str
) -> Caller | None:
    """In a cluster, the session holding ``req_id`` (its row's) or the one that
    was issued it (its req_id's), from the store, if ``digest`` is its token's."""
    if cluster_store(directory.engine.store) is None:
        return None  # one process: every session is in memory
    try:
        found = await inbox.pending(directory, req_id)
        sids = [p.sid for p in found if p.sid is not None]  # None: waiting for a role
        for sid in dict.fromkeys([*sids, inbox.sid_of(req_id)]):
            session = await directory.find(sid)
            if session is not None and session.token_hash == digest:
                return Caller.of_session(session)
    except StoreError as exc:
        raise ApiError(Code.STORE_FAILED, f"could not look up the session: {exc}") from exc
    return None


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
        "its late replies get `already_moved`. In a cluster every node moves the requests "
        "it issued to the source and routes the roles to the target from then on.",
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

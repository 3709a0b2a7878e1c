"""REST-like operator session resource and its WebSocket upgrade.

``POST /v1/operators`` mints, for a principal that may operate every role
claimed (``operate:<glob>`` scopes; 403 naming the roles refused), and the
session remembers that principal's name (``minted_by``); ``GET /v1/operators/{sid}`` and
``GET /v1/operators/{sid}/ws`` need the session's token, checked in the order:
401 (missing, empty or not Bearer) -> 404 (unknown sid) -> 401 (mismatch).
``DELETE /v1/operators/{sid}`` takes the session's token or the admin's (a
forced leave), in the same order (see ``access.py``).  On the upgrade the token
may instead come as the subprotocol ``bearer.<token>`` (browsers cannot set
headers on a WebSocket); it is echoed back.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError, fields, validate, validates

from operator_server.appkeys import BACKGROUND, METRICS, SETTINGS
from operator_server.audit.record import Action
from operator_server.auth.principal import OPERATE_ANY, Scope, principal_of
from operator_server.config import Settings
from operator_server.engine.registries import RolesConflict
from operator_server.errors import ApiError, Code
from operator_server.operators.access import (
    LOOKUP_ERRORS,
    authorize_session,
    authorize_session_or_admin,
)
from operator_server.operators.census import session_view, session_views
from operator_server.operators.directory import SessionGone
from operator_server.operators.keys import DIRECTORY
from operator_server.operators.pump import SocketPump
from operator_server.wire.contract import Body, Operation, Security, documented
from operator_server.wire.requests import json_response, read_json
from operator_server.wire.requests import validate as load

routes = web.RouteTableDef()
# A token a client chooses: long enough to be a secret, and a valid Bearer credential.
TOKEN_PATTERN = r"^[A-Za-z0-9._~+/=-]{32,256}$"


class MintSchema(Schema):
    """The mint body; the role limits come from config (``max_roles``, ``max_role_length``).

    Every check on ``roles`` is linear: a body holding tens of thousands of roles
    is refused in milliseconds instead of stalling the event loop.
    """

    # The rules ``_roles`` enforces, stated for the OpenAPI document (checked
    # there, in one linear pass, rather than per item).
    roles = fields.List(
        fields.String(metadata={"pattern": r"\S"}),
        load_default=list,
        metadata={"uniqueItems": True},
    )
    desc = fields.String(load_default="", validate=validate.Length(max=2000))
    # A client that keeps its session across restarts writes the token down
    # *before* it mints: killed before the answer arrives, it can still prove
    # the minted session is its own (the 409 names the holder; the token opens it).
    token = fields.String(
        load_default=None,
        validate=validate.Regexp(
            TOKEN_PATTERN,
            error="a chosen token is 32 to 256 characters of A-Z a-z 0-9 . _ ~ + / = -",
        ),
        metadata={
            "pattern": TOKEN_PATTERN,
            "description": "the session token, chosen by the caller (random, at least 32 "
            "characters; the server makes one when omitted)",
        },
    )

    def __init__(self, *, max_roles: int, max_role_length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_roles = max_roles
        self.max_role_length = max_role_length

    @validates("roles")
    def _roles(self, roles: list[str], **_: Any) -> None:
        if len(roles) > self.max_roles:
            raise ValidationError(f"at most {self.max_roles} roles (max_roles), got {len(roles)}")
        if any(len(r) > self.max_role_length for r in roles):
            raise ValidationError(
                f"a role name is at most {self.max_role_length} characters (max_role_length)"
            )
        if any(not r.strip() for r in roles):
            raise ValidationError("role names must not be empty")
        dupes = sorted(role for role, n in Counter(roles).items() if n > 1)
        if dupes:
            raise ValidationError(f"duplicate role(s): {', '.join(dupes)}")


@functools.cache
def mint_schema(max_roles: int, max_role_length: int) -> MintSchema:
    """Built once per limits (construction deep-copies every field)."""
    return MintSchema(max_roles=max_roles, max_role_length=max_role_length)


class MintedSchema(Schema):
    sid = fields.String(required=True)
    token = fields.String(
        required=True, metadata={"description": "the session token; shown only this once"}
    )
    roles = fields.List(fields.String(), required=True)


class SessionSchema(Schema):
    """An operator session as anyone may see it: never a token or its hash."""

    sid = fields.String(required=True)
    roles = fields.List(fields.String(), required=True)
    desc = fields.String(required=True)
    connected = fields.Boolean(
        required=True, metadata={"description": "a socket is attached, on any node of a cluster"}
    )
    node = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the node (config node_id) holding its socket, if connected"},
    )
    pending = fields.Integer(required=True, metadata={"description": "requests awaiting a reply"})
    created_at = fields.DateTime(required=True)
    last_seen_at = fields.DateTime(required=True, allow_none=True)
    remote = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "the socket's peer, if connected (known on its node only)"},
    )
    minted_by = fields.String(
        required=True,
        metadata={
            "description": "the principal that minted it: `bootstrap`, `local`, `key:<name>`, "
            "or `<issuer>#<subject>`; empty for sessions minted before principals existed"
        },
    )


_SESSION_ERRORS = {
    401: "no usable Bearer credential, or it does not match this session",
    **LOOKUP_ERRORS,
}
_SESSION = (Security.SESSION_TOKEN,)
_SESSION_OR_ADMIN = (Security.SESSION_TOKEN, Security.API_KEY)


def _origin_allowed(request: web.Request, origin: str, allowed: tuple[str, ...]) -> bool:
    # The console the daemon serves is same-origin with this socket and must
    # always be able to open it, whatever allowed_origins lists.
    return origin == f"{request.scheme}://{request.host}" or origin in allowed


@routes.post("/v1/operators")
@documented(
    Operation(
        "Mint an operator session holding the given roles",
        {201: Body("the new session and its token", MintedSchema, headers={"Location": "its URL"})},
        errors={
            403: "the principal holds no operate:<glob> scope, or none matching a role "
            "claimed (`forbidden`; `error.roles` names those refused)",
            409: "a role is already held (`roles_conflict`; `error.conflicts` names the holders)",
            503: "the store could not save the session",
        },
        # Seating an operator is a privileged act: otherwise anyone who can reach
        # the port could claim roles and receive work.
        security=(Security.API_KEY,),
        scopes=(OPERATE_ANY,),
        # Documented with the shipped limits; max_roles and max_role_length set them.
        body=mint_schema(Settings.max_roles, Settings.max_role_length),
        body_required=False,
        tags=("operators",),
    )
)
async def mint_operator(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    schema = mint_schema(settings.max_roles, settings.max_role_length)
    raw = await read_json(request, settings.max_json_depth) if request.can_read_body else {}
    body = load(schema, raw)
    principal = principal_of(request)
    refused = principal.roles_refused(body["roles"])
    if refused:
        raise ApiError(
            Code.FORBIDDEN,
            f"{principal.name} may not operate the role(s) {', '.join(refused)}: each needs "
            "an operate:<glob> scope whose glob matches it (operate:* for every role)",
            roles=refused,
            scope=OPERATE_ANY,
        )
    try:
        session, token = await request.app[DIRECTORY].mint(
            body["roles"], body["desc"], body["token"], minted_by=principal.name
        )
    except RolesConflict as exc:
        conflicts = [{"role": r, "sid": s} for r, s in exc.conflicts.items()]
        raise ApiError(
            Code.ROLES_CONFLICT, f"roles already held: {exc}", conflicts=conflicts
        ) from None
    body = {"sid": session.sid, "token": token, "roles": session.roles}
    return json_response(body, status=201, headers={"Location": f"/v1/operators/{session.sid}"})


@routes.get("/v1/operators/{sid}")
@documented(
    Operation(
        "Read an operator session",
        {200: Body("the session", SessionSchema)},
        errors=_SESSION_ERRORS,
        security=_SESSION,
        tags=("operators",),
    )
)
async def operator_info(request: web.Request) -> web.Response:
    session, _ = await authorize_session(request)
    directory = request.app[DIRECTORY]
    seen = await session_views(directory, session.sid)
    # Deleted meanwhile on another node: this node's copy is all there is.
    view = seen[0].view if seen else session_view(session, directory.settings.node_id)
    return json_response(view)


@routes.delete("/v1/operators/{sid}")
@documented(
    Operation(
        "End an operator session (its own holder, or the admin forcing it out)",
        {204: Body("ended: roles released, socket closed, pending requests failed", media=())},
        errors={
            **_SESSION_ERRORS,
            403: "a principal that lacks admin (`forbidden`)",
            503: "the store could not be read or save the change",
        },
        security=_SESSION_OR_ADMIN,
        scopes=(Scope.ADMIN,),
        tags=("operators",),
    )
)
async def delete_operator(request: web.Request) -> web.Response:
    session, admin = await authorize_session_or_admin(request)
    # Same code either way: the session's requests fail ``operator_deleted``.
    message = "operator session deleted by an admin" if admin else "operator session deleted"
    # A forced leave is the admin's act; a leave, the session holder's.
    action, by = (
        (Action.SESSION_FORCE_LEFT, principal_of(request).name)
        if admin
        else (Action.SESSION_LEFT, None)
    )
    try:
        await request.app[DIRECTORY].delete(
            session.sid, Code.OPERATOR_DELETED, message, action=action, principal=by
        )
    except SessionGone as exc:
        raise ApiError(Code.OPERATOR_NOT_FOUND, str(exc)) from None
    return web.Response(status=204)


@routes.get("/v1/operators/{sid}/ws")
@documented(
    Operation(
        "Open the operator's WebSocket (the wire protocol is in the README)",
        {101: Body("switching to the WebSocket protocol", media=())},
        errors={
            400: "not a WebSocket upgrade request",
            403: "the Origin is not in allowed_origins",
            **_SESSION_ERRORS,
        },
        security=_SESSION,
        tags=("operators",),
    )
)
async def operator_socket(request: web.Request) -> web.WebSocketResponse:
    session, subprotocol = await authorize_session(request, websocket=True)
    settings = request.app[SETTINGS]
    origin = request.headers.get("Origin")
    if origin is not None and not _origin_allowed(request, origin, settings.allowed_origins):
        raise ApiError(Code.FORBIDDEN_ORIGIN, f"Origin {origin!r} is not in allowed_origins")
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat_s or None,
        protocols=(subprotocol,) if subprotocol else (),
        # aiohttp closes the socket past this; frames between max_frame_bytes and
        # it get a ``too_large`` error frame and the socket stays up.
        max_msg_size=settings.max_frame_bytes * 4,
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(Code.BAD_REQUEST, "expected a WebSocket upgrade request")
    await ws.prepare(request)
    pump = SocketPump(
        ws,
        request.transport,
        queue_max=settings.outbound_queue_max,
        write_timeout_s=settings.write_timeout_s,
        max_frame_bytes=settings.max_frame_bytes,
        background=request.app[BACKGROUND],
        name=session.sid,
        log=session.log,
        metrics=request.app[METRICS],
        remote=request.remote,
    )
    directory = request.app[DIRECTORY]
    try:
        if await session.attach(pump):
            directory.seen(session, attached=True)
            await pump.read_loop(session.handle_text)
    finally:
        session.detach(pump)
        directory.seen(session)
        pump.close(1000, "bye")
        await pump.wait_closed(settings.shutdown_timeout_s)
    return ws

"""Who may act on an operator session: its own token, or an admin.

Session-token routes check, in order: 401 (no usable Bearer credential) ->
404 (unknown sid) -> 401 (the token does not match).  Admin-capable routes
(``GET /v1/operators/{sid}/pending``, ``DELETE /v1/operators/{sid}``) accept a
principal holding ``admin`` in place of the session's token, in the same order;
a principal without it is answered 403 ``forbidden``.  The session's own token
is tried first, so a token its client chose never passes for a key.

An admin is a principal with the ``admin`` scope (``auth/``): the bootstrap
``api_token``, an API key or JWT granting it, or — with no ``api_token``
configured, when the daemon only binds loopback — a caller on a loopback
address that sends no ``Authorization`` header at all.  A caller that sends a
credential has it checked, so a wrong token is always a 401.  Behind a reverse
proxy on the same host every caller looks local: set ``api_token`` there.
"""

from __future__ import annotations

from aiohttp import web

from operator_server.auth.authenticator import AUTHENTICATOR
from operator_server.auth.principal import PRINCIPAL_ON_REQUEST, Scope
from operator_server.errors import ApiError, Code
from operator_server.operators.keys import DIRECTORY
from operator_server.operators.session import OperatorSession
from operator_server.store import StoreError
from operator_server.wire.requests import bearer_of, text_token

SUBPROTOCOL_PREFIX = "bearer."
# What looking a session up can answer besides the session itself: every
# route naming one documents these (OpenAPI ``errors``).
LOOKUP_ERRORS = {
    404: "no such operator session (`operator_not_found`)",
    503: "the store could not be read to find the session (`store_failed`)",
}
_MISSING = "send Authorization: Bearer <token> (the token from the mint)"


def subprotocol_token(request: web.Request) -> tuple[str | None, str | None]:
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    for proto in (p.strip() for p in offered.split(",")):
        if proto.startswith(SUBPROTOCOL_PREFIX):
            token = proto[len(SUBPROTOCOL_PREFIX) :]
            if not token:
                return None, None
            # Header bytes that are not UTF-8 are a 401, never a crash.
            return text_token(token, "Sec-WebSocket-Protocol"), proto
    return None, None


async def _session(request: web.Request) -> OperatorSession:
    sid = request.match_info["sid"]
    # Known here, or minted on another node of a cluster (read from the store).
    try:
        session = await request.app[DIRECTORY].find(sid)
    except StoreError as exc:
        raise ApiError(Code.STORE_FAILED, f"could not look up the session: {exc}") from exc
    if session is None:
        raise ApiError(Code.OPERATOR_NOT_FOUND, f"no operator session {sid!r}")
    return session


async def authorize_session(
    request: web.Request, *, websocket: bool = False
) -> tuple[OperatorSession, str | None]:
    """The session named in the path, for a caller holding its token."""
    token, subprotocol = bearer_of(request), None
    if token is None and websocket:
        token, subprotocol = subprotocol_token(request)
    if token is None:
        raise ApiError(Code.UNAUTHORIZED, _MISSING)
    session = await _session(request)
    if not session.verify_token(token):
        raise ApiError(Code.UNAUTHORIZED, "the token does not match this session")
    return session, subprotocol


async def authorize_session_or_admin(request: web.Request) -> tuple[OperatorSession, bool]:
    """The session named in the path, for its own holder or an admin; and
    whether the caller is an admin (then its principal is on the request).

    The session's own token is tried first: a token its client chose (which
    may look like a key or a JWT) always opens its own session."""
    authenticator = request.app[AUTHENTICATOR]
    token = bearer_of(request)
    if token is None:
        # No credential: the open daemon's loopback admin; else the session's
        # token is what is missing.
        try:
            principal = await authenticator.principal(request)
        except ApiError as exc:
            raise ApiError(Code.UNAUTHORIZED, f"{_MISSING}, or an admin's credential") from exc
        session = await _session(request)
    else:
        session = await _session(request)
        if session.verify_token(token):
            return session, False
        found = await authenticator.of_token(token)
        if found is None:
            raise ApiError(Code.UNAUTHORIZED, "the token does not match this session")
        principal = found
    if not principal.allows(Scope.ADMIN):
        raise ApiError(
            Code.FORBIDDEN,
            f"{principal.name} lacks the scope 'admin'; send the session's own token "
            "or an admin's credential",
            scope=str(Scope.ADMIN),
        )
    request[PRINCIPAL_ON_REQUEST] = principal
    return session, True

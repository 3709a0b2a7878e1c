"""Who may act on an operator session: its own token, or the admin.

Session-token routes check, in order: 401 (no usable Bearer credential) ->
404 (unknown sid) -> 401 (the token does not match).  Admin-capable routes
(``GET /v1/operators/{sid}/pending``, ``DELETE /v1/operators/{sid}``) accept the
``api_token`` in place of the session's token, in the same order.

The admin is whoever holds ``api_token``.  With no ``api_token`` configured the
daemon only binds loopback (config refuses anything else), and the admin is a
caller on a loopback address that sends no ``Authorization`` header at all — the
same trust the open task routes give it.  A caller that sends a credential has
it checked, so a wrong token is always a 401.  Behind a reverse proxy on the same
host every caller looks local: set ``api_token`` there.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from operator_server.appkeys import SETTINGS
from operator_server.config import is_loopback
from operator_server.errors import ApiError, Code
from operator_server.operators.keys import DIRECTORY
from operator_server.operators.session import OperatorSession
from operator_server.store import StoreError
from operator_server.wire.requests import bearer_of, require_bearer, text_token

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


def _local_admin(request: web.Request) -> bool:
    """No api_token configured: a credential-less caller on loopback is the admin."""
    return "Authorization" not in request.headers and is_loopback(request.remote or "")


def require_admin(request: web.Request) -> None:
    api_token = request.app[SETTINGS].api_token
    if api_token:
        require_bearer(request, api_token, "api_token")
    elif "Authorization" in request.headers:
        # A credential that is sent is checked, and none is the admin's here.
        raise ApiError(
            Code.UNAUTHORIZED,
            "no api_token is configured: the admin is a loopback caller that sends no "
            "Authorization header",
        )
    elif not _local_admin(request):
        raise ApiError(
            Code.FORBIDDEN,
            "with no api_token configured, admin routes answer loopback callers that send "
            "no Authorization header; set api_token to administer from elsewhere",
        )


async def authorize_session_or_admin(request: web.Request) -> tuple[OperatorSession, bool]:
    """The session named in the path, for its own holder or the admin; and
    whether the caller is the admin."""
    api_token = request.app[SETTINGS].api_token
    token = bearer_of(request)
    if api_token:
        if token is None:
            raise ApiError(Code.UNAUTHORIZED, f"{_MISSING}, or the api_token")
        admin = hmac.compare_digest(token.encode(), api_token.encode())
    else:
        admin = _local_admin(request)
        if token is None and not admin:
            raise ApiError(Code.UNAUTHORIZED, _MISSING)
    session = await _session(request)
    if not admin and not session.verify_token(token or ""):
        raise ApiError(Code.UNAUTHORIZED, "the token does not match this session")
    return session, admin

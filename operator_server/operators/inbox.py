"""Every pending operator request, found by ``req_id`` from any node, and
replied to without a socket.

A request lives in the session that issued it (``session.py``), which alone
judges a reply (``OperatorSession.settle_reply``).  This module finds it:

* with one process, in the sessions' memory;
* in a cluster, in the stored rows (``pending_requests``), which hold every
  node's requests; a reply to one another node issued is passed there by the
  relay, exactly as a socket's reply on the wrong node is.

Who may see and answer a request: a principal that may operate one of the
roles of the session holding it (``Principal.may_operate``), or an admin.  A
session with no role is held by its sid alone: only an admin sees its requests.

Only pending requests are found: a settled one leaves the session (its story
is in the task's events and the audit trail).  The session remembers the last
``ANSWERED_MEMORY`` req_ids it settled, so a late reply is told
``already_answered`` rather than "not found".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from heapq import merge
from typing import Any

from operator_server.auth.principal import Principal
from operator_server.cluster.store import cluster_store
from operator_server.errors import (
    ApiError,
    AttemptFailed,
    Code,
    NodeUnreachable,
    ProtocolError,
)
from operator_server.operators.directory import OperatorDirectory
from operator_server.operators.pending_index import Key, key_of
from operator_server.operators.session import OperatorSession, PendingRequest
from operator_server.store import NO_COURSE, RequestCourse, StoreError
from operator_server.wire import frames as p
from operator_server.wire.times import iso
from operator_server.wire.values import ReplyVia

# A spawn's credentials and its directive (which names the worker handle) are
# for the operator's socket only: no REST view shows them.
_SECRET = frozenset({"capability_token", "worker_handle", "directive"})
ANSWERABLE = tuple(p.REPLY_TO.values())


@dataclass(frozen=True)
class Found:
    """One pending request: its session, that session's roles, the node that
    issued it (``""`` with one process) and, when issued here, the request.
    A request held by no session (it waits for a role nobody holds) has no
    ``sid``; its roles are the one it waits for."""

    sid: str | None
    roles: list[str]
    owner: str
    frame: dict[str, Any]
    issued_at: float
    here: PendingRequest | None
    # As its row was stored (cluster); the request itself says, when issued here.
    stored_course: RequestCourse = NO_COURSE

    @property
    def course(self) -> RequestCourse:
        return self.here.course if self.here is not None else self.stored_course

    @property
    def req_id(self) -> str:
        return str(self.frame["req_id"])

    @property
    def kind(self) -> str:
        return str(self.frame["type"])


def sid_of(req_id: str) -> str:
    """The session a req_id names (``<sid>-<kind tag>-<uuid4>``)."""
    return req_id.rsplit("-", 6)[0]


async def pending(directory: OperatorDirectory, req_id: str | None = None) -> list[Found]:
    """Every pending request that awaits a reply (or only ``req_id``), on
    every node, oldest first.  Raises ``ApiError`` (``store_failed``)."""
    shared = cluster_store(directory.engine.store)
    if shared is None:
        # One process: the sessions' index holds them in list order, and finds
        # one by its req_id without reading every session's requests.
        if req_id is None:
            return list(await listed(directory, None))
        held = directory.pending_index.held(req_id, directory.sessions)
        return [_here(*held)] if held is not None else _waiting(directory, req_id)
    else:
        try:
            rows = await shared.pending_requests(req_id)
            # The roles of the sessions that hold them now: a moved request is
            # stored under its new holder, not the session its req_id names.
            if req_id is None:
                placed = await shared.placed_sessions()
            else:
                placed = [
                    p for sid in {sid for sid, _ in rows} for p in await shared.placed_sessions(sid)
                ]
            roles = {p.record.sid: list(p.record.roles) for p in placed}
        except StoreError as exc:
            raise ApiError(
                Code.STORE_FAILED, f"could not read the pending requests: {exc}"
            ) from exc
        me = directory.relay.node_id
        found = []
        for sid, row in rows:
            if row.frame.get("type") not in ANSWERABLE:
                continue  # a hook_after only tells
            session = directory.sessions.get(sid) if row.owner_node == me else None
            here = session.pending.get(row.req_id) if session is not None else None
            found.append(
                Found(
                    sid,
                    roles.get(sid, []),
                    row.owner_node,
                    row.frame,
                    row.issued_at,
                    here,
                    row.course,
                )
            )
        # Held by nobody, so in no row: known to the node that issued them.
        found += _waiting(directory, req_id)
    found.sort(key=lambda f: (f.issued_at, f.req_id))
    return found


async def listed(directory: OperatorDirectory, cursor: Key | None) -> Iterator[Found]:
    """The pending requests past ``cursor`` in list order, read lazily: with
    one process from the sessions' index, so a page costs what it shows
    rather than what is pending; in a cluster from the store, as ``pending``.
    Raises ``ApiError`` (``store_failed``)."""
    if cluster_store(directory.engine.store) is not None:
        return (
            found
            for found in await pending(directory)
            if cursor is None or key_of(found.issued_at, found.req_id) > cursor
        )
    held = (
        _here(session, req)
        for session, req in directory.pending_index.after(cursor, directory.sessions)
    )
    # Those waiting for a role are few and kept apart: merged in, in order.
    waiting = (f for f in _waiting(directory) if cursor is None or _key(f) > cursor)
    return merge(held, waiting, key=_key)


def _key(found: Found) -> Key:
    return key_of(found.issued_at, found.req_id)


def _here(session: OperatorSession, req: PendingRequest) -> Found:
    """A request a session of this process holds."""
    return Found(session.sid, list(session.roles), "", req.frame, req.issued_at, req)


def _waiting(directory: OperatorDirectory, req_id: str | None = None) -> list[Found]:
    """The requests this node issued that wait for a role nobody holds (or
    only ``req_id``), in list order: pending, held by no session."""
    found = [
        Found(None, [role], directory.relay.node_id, req.frame, req.issued_at, req)
        for role, waiting in directory.moves.waiting.items()
        for req in waiting
        if isinstance(req, PendingRequest)
        and req.expects_reply
        and not req.future.done()
        and (req_id is None or req.req_id == req_id)
    ]
    return sorted(found, key=_key)


def may_see(principal: Principal, found: Found) -> bool:
    return principal.may_operate_any(found.roles)


def authorize(principal: Principal, found: Found) -> None:
    """403 naming the roles, unless ``principal`` may see and answer it."""
    if may_see(principal, found):
        return
    held = ", ".join(repr(r) for r in found.roles) or f"none (held by session {found.sid} alone)"
    raise ApiError(
        Code.FORBIDDEN,
        f"{principal.name} may not operate the role of {found.req_id} (roles: {held}); "
        "it needs an operate:<glob> scope matching one of them, or admin",
        roles=found.roles,
    )


def view(found: Found, now: float) -> dict[str, Any]:
    """The request as its frame shows it (no credentials), and where it is."""
    frame = {k: v for k, v in found.frame.items() if k not in _SECRET}
    course = found.course
    return {
        **frame,
        "state": "pending",
        "holder": {"sid": found.sid, "roles": found.roles},
        "issued_at": iso(found.issued_at),
        "waiting_s": round(max(0.0, now - found.issued_at), 3),
        # From the request on the node that issued it, else from its row.
        "deadline_at": iso(course.deadline_at) if course.deadline_at is not None else None,
        "step": course.step,
        "moves": list(course.moves),
    }


async def find(directory: OperatorDirectory, principal: Principal, req_id: str) -> Found:
    """The pending request ``req_id`` for a principal allowed to see it; 404
    when none is pending, 409 when one was answered (or moved) here."""
    for found in await pending(directory, req_id):
        authorize(principal, found)
        return found
    raise _not_pending(directory, principal, req_id)


def _not_pending(directory: OperatorDirectory, principal: Principal, req_id: str) -> ApiError:
    session = directory.sessions.get(sid_of(req_id))
    if session is not None and may_see(
        principal, Found(session.sid, list(session.roles), "", {"req_id": req_id}, 0.0, None)
    ):
        why = session.why_not_pending(req_id)
        if why.code != Code.UNKNOWN_REQ_ID:
            return ApiError(why.code, why.message, req_id=req_id)
    return ApiError(
        Code.REQUEST_NOT_FOUND,
        f"no pending request {req_id!r} (never issued, withdrawn, timed out, or settled)",
        req_id=req_id,
    )


def reply_of(req_id: str, body: Any) -> tuple[str, dict[str, Any]]:
    """The reply in ``body`` (a socket's reply frame as an object, ``req_id``
    optional) for ``req_id``; 400 ``bad_message`` naming what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(Code.BAD_MESSAGE, "the reply must be a JSON object with a `type`")
    given = body.get("req_id", req_id)
    if given != req_id:
        raise ApiError(
            Code.BAD_MESSAGE,
            f"req_id: {given!r} in the body is not {req_id!r}, the request replied to",
            req_id=req_id,
        )
    try:
        return p.parse_reply({**body, "req_id": req_id})
    except ProtocolError as exc:
        raise ApiError(exc.code, exc.message, req_id=req_id) from None


async def reply(
    directory: OperatorDirectory,
    principal: Principal,
    req_id: str,
    body: Any,
    via: ReplyVia,
) -> str:
    """Settle ``req_id`` with the reply in ``body`` on ``principal``'s authority,
    wherever it was issued; its kind.  Raises ``ApiError`` saying why not."""
    kind, data = reply_of(req_id, body)
    found = await find(directory, principal, req_id)
    await settle(directory, principal, found, kind, data, via)
    return kind


async def settle(
    directory: OperatorDirectory,
    principal: Principal,
    found: Found,
    kind: str,
    data: dict[str, Any],
    via: ReplyVia,
) -> None:
    """Settle ``found`` with ``data`` (a reply of ``kind``, from ``reply_of``),
    attributed to ``principal``, whom the caller has allowed to answer it (an
    action link is allowed by its signature, not by a scope).  Raises
    ``ApiError`` saying why not."""
    req_id = found.req_id
    try:
        if found.sid is None:
            # Held by no session: the one that issued it (its req_id names
            # it) judges the reply and hands it to the attempt awaiting it.
            issuer = directory.sessions.get(sid_of(req_id))
            if issuer is None or found.here is None:
                raise _not_pending(directory, principal, req_id)
            issuer.settle_unheld(found.here, kind, data, via=via, principal=principal.name)
        elif found.owner in ("", directory.relay.node_id):
            session = directory.sessions.get(found.sid)
            if session is None:
                raise _not_pending(directory, principal, req_id)
            session.settle_reply(kind, data, via=via, principal=principal.name)
        else:
            await directory.relay.reply(
                found.owner,
                found.sid,
                kind,
                data,
                str(via),
                principal.name,
                trace=found.frame.get(p.TRACE),
            )
    except ProtocolError as exc:
        if exc.code == Code.UNKNOWN_REQ_ID:  # settled or withdrawn while we looked
            raise _not_pending(directory, principal, req_id) from None
        raise ApiError(exc.code, exc.message, req_id=req_id) from None
    except NodeUnreachable as exc:
        raise ApiError(exc.code, f"{exc.message}; {req_id} was not answered") from None
    except AttemptFailed as exc:  # the issuing node failed to take it
        raise ApiError(exc.code, f"{exc.message}; {req_id} was not answered", status=503) from None
    except StoreError as exc:
        raise ApiError(Code.STORE_FAILED, f"{exc}; {req_id} was not answered") from None

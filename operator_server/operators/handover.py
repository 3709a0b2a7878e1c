"""Moves a person asks for: one pending request to another holder
(reassignment), or a whole seat to another session (handover).

Both go through the one move primitive (``operators/moves.py``): a request is
withdrawn from its holder synchronously (``cancel`` with reason
``reassigned`` / ``handed_over``) and issued to the target exactly once; a late
reply from the earlier holder gets ``already_moved``.  A target that is not
connected holds it stored and is shown it when its socket attaches; a role
nobody holds makes it wait for that role's first holder.  The request keeps
its clock: a reassignment neither resets its deadline nor its escalation chain,
whose next step moves it on from wherever it is.

A **handover** writes both sessions' rows (roles and all) in one commit with
its audit row, and only then, with no await between, gives the roles to the
target in memory and moves every request the source holds.  A reply racing it
either is handled before that instant (it counts, and there is nothing left to
move) or after it (``already_moved``): exactly one counts, none is lost.
The seat is the target's from then on: a request still issued through the
source (by an attempt that found the source before the handover, or a task
naming its sid) goes straight on to the target.

Who may ask is the caller's business (the socket's holder, or the route's
check in ``operators/reassign.py``); refusals are ``MoveRefused`` with a code
each path answers in its own way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from operator_server.audit.principals import session_principal
from operator_server.audit.record import Action, AuditEntry
from operator_server.engine import Engine
from operator_server.engine.events import EventType
from operator_server.errors import Code, CodedError, ProtocolError
from operator_server.logs import get_logger
from operator_server.operators.moves import RequestMoves, move_record
from operator_server.operators.session import HANDED_OVER, OperatorSession, PendingRequest
from operator_server.store import SessionRecord
from operator_server.wire.frames import FACE_OF

log = get_logger(__name__)

# The ``cancel`` (and ``request_moved``) reason of a reassignment.
REASSIGNED = "reassigned"


class MoveRefused(CodedError):
    """A move that cannot be done; ``status`` is its HTTP answer."""

    def __init__(self, code: Code, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status


@dataclass(frozen=True)
class Target:
    """Where a request goes: exactly one of a role or a session."""

    role: str | None = None
    sid: str | None = None

    @property
    def name(self) -> str:
        return self.role if self.role is not None else str(self.sid)


class Seats(Protocol):
    """What a move needs of the directory (``directory.OperatorDirectory``)."""

    engine: Engine
    sessions: dict[str, OperatorSession]
    moves: RequestMoves

    async def find(self, sid: str) -> OperatorSession | None: ...


class Handovers:
    def __init__(self, directory: Seats) -> None:
        self._directory = directory
        # Sessions a handover is writing: another move of theirs waits its turn.
        self._busy: set[str] = set()

    # -- finding a request ------------------------------------------------

    def held(self, req_id: str) -> tuple[OperatorSession | None, PendingRequest]:
        """The request ``req_id`` pending on this node and its holder (None
        while it waits for a role nobody holds); ``MoveRefused`` says why not."""
        sessions = self._directory.sessions.values()
        for session in sessions:
            req = session.pending.get(req_id)
            if req is not None:
                return session, req
        for waiting in self._directory.moves.waiting.values():
            for waiter in waiting:
                if waiter.req_id == req_id and isinstance(waiter, PendingRequest):
                    return None, waiter
        if any(s.answered(req_id) for s in sessions):
            raise MoveRefused(
                Code.ALREADY_ANSWERED, f"{req_id} was already answered; nothing to move", 409
            )
        if any(s.moved(req_id) for s in sessions):
            raise MoveRefused(
                Code.ALREADY_MOVED,
                f"{req_id} is moving to another holder right now; read it again and retry",
                409,
            )
        raise MoveRefused(
            Code.UNKNOWN_REQ_ID,
            f"no pending request {req_id!r} (never issued, withdrawn, or timed out)",
            404,
        )

    # -- reassignment -----------------------------------------------------

    async def reassign_frame(self, session: OperatorSession, data: dict[str, Any]) -> None:
        """A ``reassign`` frame from ``session``'s socket: it must hold the request."""
        req_id = data["req_id"]
        req = session.pending.get(req_id)
        try:
            if req is None:
                raise self._not_held_by(session, req_id)
            await self.reassign(
                session,
                req,
                Target(role=data.get("role"), sid=data.get("sid")),
                principal=session_principal(session),
                note=data.get("note"),
            )
        except MoveRefused as exc:
            raise ProtocolError(Code(exc.code), exc.message, req_id) from None

    def _not_held_by(self, session: OperatorSession, req_id: str) -> MoveRefused:
        if session.moved(req_id):
            return MoveRefused(Code.ALREADY_MOVED, f"{req_id} has moved on to another holder", 409)
        if session.answered(req_id):
            return MoveRefused(Code.ALREADY_ANSWERED, f"{req_id} was already answered", 409)
        if req_id in session.routed:
            # Its issuer is another node of the cluster: it holds the request.
            return MoveRefused(
                Code.BAD_MESSAGE,
                f"{req_id} was issued by another node; reassign it over REST there",
                400,
            )
        self.held(req_id)  # raises what it is if it is pending nowhere
        return MoveRefused(
            Code.FORBIDDEN, f"{req_id} is held by another session; only its holder moves it", 403
        )

    async def reassign(
        self,
        holder: OperatorSession | None,
        req: PendingRequest,
        target: Target,
        *,
        principal: str,
        note: str | None,
    ) -> None:
        """Move ``req`` from ``holder`` to ``target``; audited as ``principal``'s act."""
        if target.sid is not None:
            found = await self._directory.find(target.sid)
            if found is None:
                raise MoveRefused(
                    Code.BAD_REQUEST, f"sid: no operator session {target.sid!r} to move it to", 400
                )
        if holder is not None and (target.sid == holder.sid or target.role in holder.roles):
            raise MoveRefused(
                Code.BAD_REQUEST,
                f"{'sid' if target.sid else 'role'}: {target.name!r} already holds {req.req_id}",
                400,
            )
        if holder is not None and holder.sid in self._busy:
            raise MoveRefused(
                Code.ALREADY_MOVED, f"{req.req_id} is being handed over with its seat", 409
            )
        left = holder.sid if holder is not None else (req.waiting_for or "")
        if not self._directory.moves.move(req, target.name, REASSIGNED):
            raise MoveRefused(
                Code.ALREADY_ANSWERED, f"{req.req_id} was answered first; nothing moved", 409
            )
        log.info("request reassigned", req_id=req.req_id, to=target.name, by=principal)
        self._report(req, left, target.name, REASSIGNED, principal, note, Action.REQUEST_REASSIGNED)

    def _report(
        self,
        req: PendingRequest,
        left: str,
        to: str,
        reason: str,
        principal: str,
        note: str | None,
        action: Action | None,
    ) -> None:
        req.moved_on(move_record(time.time(), left, to, reason, req.step, principal or None, note))
        entry = (
            None
            if action is None
            else AuditEntry(
                action,
                principal,
                task_id=req.task_id,
                req_id=req.req_id,
                session_id=left if left.startswith("op-") else None,
                outcome=f"{left} -> {to}",
                reason=note,
            )
        )
        self._directory.engine.operator_event(
            EventType.REQUEST_MOVED,
            req.task_id,
            req.req_id,
            str(FACE_OF[req.kind]),
            left,
            entry,
            (left, to, None, reason, None, note),
        )

    # -- seat handover ----------------------------------------------------

    async def hand_over(
        self, source: OperatorSession, target_sid: str, *, principal: str
    ) -> tuple[OperatorSession, list[str], list[str]]:
        """``source``'s roles and pending requests to the session ``target_sid``:
        the target, the roles it took, the req_ids that moved."""
        if target_sid == source.sid:
            raise MoveRefused(Code.BAD_REQUEST, "sid: a session cannot take over itself", 400)
        target = await self._directory.find(target_sid)
        if target is None:
            raise MoveRefused(
                Code.BAD_REQUEST, f"sid: no operator session {target_sid!r} to hand over to", 400
            )
        if self._busy & {source.sid, target.sid}:
            raise MoveRefused(
                Code.ALREADY_MOVED, "one of these sessions is being handed over right now", 409
            )
        self._busy |= {source.sid, target.sid}
        try:
            roles = list(source.roles)
            taken = target.roles + [r for r in roles if r not in target.roles]
            entry = AuditEntry(
                Action.SESSION_HANDED_OVER,
                principal,
                session_id=source.sid,
                outcome=f"{source.sid} -> {target.sid}",
                reason=",".join(roles) or None,
            )
            await self._directory.engine.store.hand_over_session(
                _record(source, []), _record(target, taken), audit=[entry]
            )
            # From here to the end nothing awaits: no reply sees half a handover.
            aliases = self._directory.engine.resolution.roles
            aliases.release(source.sid)
            aliases.claim(target.sid, taken)
            source.roles, target.roles = [], taken
            for session in self._directory.sessions.values():
                if session.successor == source.sid:
                    session.successor = target.sid
            source.successor, target.successor = target.sid, None
            moved = [req.req_id for req in self._move_all(source, target, principal)]
            self._directory.moves.seated(target)
        finally:
            self._busy -= {source.sid, target.sid}
        log.info("seat handed over", source=source.sid, target=target.sid, roles=roles, moved=moved)
        return target, roles, moved

    def _move_all(
        self, source: OperatorSession, target: OperatorSession, principal: str
    ) -> Iterator[PendingRequest]:
        for req in list(source.pending.values()):
            if req.expects_reply and self._directory.moves.move(req, target.sid, HANDED_OVER):
                # Audited once, as the handover's own row; each move names who asked.
                self._report(req, source.sid, target.sid, HANDED_OVER, principal, None, None)
                yield req


def _record(session: OperatorSession, roles: list[str]) -> SessionRecord:
    return SessionRecord(
        session.sid,
        session.token_hash,
        roles,
        session.desc,
        session.created_at,
        session.last_seen_at,
        session.minted_by,
    )

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

Who may move a request is decided here (``authorize``) for every path: the
session holding it (its socket, or its token over REST), or a principal that
may operate its holder's roles (or the role it waits for), or an admin.
Refusals are ``MoveRefused`` with a code each path answers in its own way.

**In a cluster** a request lives on the node that issued it, whichever node
shows it on a socket.  A move asked for elsewhere (a REST reassign on any
node, a ``reassign`` frame on the socket's node) is done there
(``reassign_here``, through the relay), with the same checks and answers.  A
handover is committed by the node it was asked of, which then has every
other live node do the rest for what it issued and what its role map says
(``handed_over_here``): each withdraws what it issued to the source, sends it
on to the target, and routes the roles to the target from then on.  A reply
racing it is judged on the request's own node, before or after that node's
move: exactly one counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from operator_server.audit.principals import session_principal
from operator_server.audit.record import Action, AuditEntry
from operator_server.auth.principal import Principal, Scope, Via
from operator_server.engine import Engine
from operator_server.engine.events import EventType
from operator_server.engine.registries import RolesConflict
from operator_server.errors import Code, CodedError, ProtocolError
from operator_server.logs import get_logger
from operator_server.operators.moves import RequestMoves, move_record
from operator_server.operators.relay import RequestRelay
from operator_server.operators.session import (
    HANDED_OVER,
    REASSIGNED,
    OperatorSession,
    PendingRequest,
)
from operator_server.store import SessionRecord, StoreError
from operator_server.wire.frames import FACE_OF

log = get_logger(__name__)


class MoveRefused(CodedError):
    """A move that cannot be done; ``status`` is its HTTP answer."""

    def __init__(self, code: Code | str, message: str, status: int, **detail: Any) -> None:
        super().__init__(code, message, **detail)
        self.status = status

    def wire(self) -> dict[str, Any]:
        """As another node's answer carries it back (``from_wire``)."""
        return {"code": self.code, "message": self.message, "status": self.status, **self.detail}

    @classmethod
    def from_wire(cls, refused: dict[str, Any]) -> MoveRefused:
        code, message, status = refused["code"], refused["message"], refused["status"]
        detail = {k: v for k, v in refused.items() if k not in ("code", "message", "status")}
        return cls(str(code), str(message), int(status), **detail)


@dataclass(frozen=True)
class Caller:
    """Who asks for a move: a session (over its socket, or with its own token)
    or a principal; ``name`` is whom the audit row names."""

    name: str
    sid: str | None = None
    principal: Principal | None = None

    @classmethod
    def of_session(cls, session: OperatorSession) -> Caller:
        return cls(session_principal(session), sid=session.sid)

    @classmethod
    def of_principal(cls, principal: Principal) -> Caller:
        return cls(principal.name, principal=principal)

    def wire(self) -> dict[str, Any]:
        """What the node holding the request is told (it trusts the node that
        checked the credential, as it does for a reply passed on)."""
        if self.principal is None:
            return {"name": self.name, "sid": self.sid}
        return {
            "name": self.name,
            "via": str(self.principal.via),
            "scopes": sorted(self.principal.scopes),
        }

    @classmethod
    def from_wire(cls, caller: dict[str, Any]) -> Caller:
        name = str(caller["name"])
        if "scopes" not in caller:
            return cls(name, sid=str(caller["sid"]))
        scopes = frozenset(str(s) for s in caller["scopes"])
        return cls(name, principal=Principal(name, Via(caller["via"]), scopes))


def authorize(caller: Caller, req_id: str, holder_sid: str | None, roles: list[str]) -> None:
    """``MoveRefused`` (403) unless ``caller`` may move ``req_id``, held by
    ``holder_sid`` with ``roles`` (or waiting, with no holder, for ``roles``)."""
    if caller.principal is None:
        if caller.sid != holder_sid:
            raise MoveRefused(
                Code.FORBIDDEN,
                f"{req_id} is held by another session; only its holder (or an admin) moves it",
                403,
            )
        return
    if not caller.principal.may_operate_any(roles):
        scope = f"operate:{roles[0]}" if roles else str(Scope.ADMIN)
        raise MoveRefused(
            Code.FORBIDDEN,
            f"{caller.name} may not operate {', '.join(roles) or 'its holder'}: send the "
            "holding session's token, or a credential with operate:<its role> or admin",
            403,
            scope=scope,
        )


def _not_moved(req_id: str, exc: CodedError | StoreError) -> MoveRefused:
    """The node holding ``req_id`` could not be asked, or failed: 503, nothing moved."""
    code = Code.STORE_FAILED if isinstance(exc, StoreError) else exc.code
    return MoveRefused(code, f"{exc}; {req_id} was not moved", 503)


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
    relay: RequestRelay

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
        """A ``reassign`` frame from ``session``'s socket: it must hold the
        request (issued here, or by the node it is passed to)."""
        req_id = data["req_id"]
        req = session.pending.get(req_id)
        target = Target(role=data.get("role"), sid=data.get("sid"))
        caller = Caller.of_session(session)
        try:
            if req is not None:
                await self.reassign(
                    session, req, target, principal=caller.name, note=data.get("note")
                )
            elif (routed := session.routed.get(req_id)) is not None:
                await self.reassign_on(routed.owner, req_id, target, caller, data.get("note"))
            else:
                raise self._not_held_by(session, req_id)
        except MoveRefused as exc:
            raise ProtocolError(Code(exc.code), exc.message, req_id) from None

    def _not_held_by(self, session: OperatorSession, req_id: str) -> MoveRefused:
        if session.moved(req_id):
            return MoveRefused(Code.ALREADY_MOVED, f"{req_id} has moved on to another holder", 409)
        if session.answered(req_id):
            return MoveRefused(Code.ALREADY_ANSWERED, f"{req_id} was already answered", 409)
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

    async def reassign_on(
        self, node: str, req_id: str, target: Target, caller: Caller, note: str | None
    ) -> dict[str, str]:
        """Have ``node``, which issued ``req_id``, move it (``reassign_here``):
        ``{"from", "to"}``, or its refusal raised here."""
        args = {
            "req_id": req_id,
            "role": target.role,
            "sid": target.sid,
            "note": note,
            "caller": caller.wire(),
        }
        try:
            answer = await self._directory.relay.reassign(node, args)
        except (CodedError, StoreError) as exc:  # unreachable, or it failed
            raise _not_moved(req_id, exc) from None
        if "refused" in answer:
            raise MoveRefused.from_wire(answer["refused"])
        return {"from": str(answer["from"]), "to": str(answer["to"])}

    async def reassign_here(self, args: dict[str, Any]) -> dict[str, Any]:
        """A move another node was asked for, of a request this node issued:
        checked and done as if it had been asked here."""
        req_id, caller = str(args["req_id"]), Caller.from_wire(args["caller"])
        target = Target(role=args.get("role"), sid=args.get("sid"))
        try:
            holder, req = self.held(req_id)
            roles = holder.roles if holder is not None else [str(req.waiting_for)]
            authorize(caller, req_id, holder.sid if holder is not None else None, roles)
            left = holder.sid if holder is not None else str(req.waiting_for)
            await self.reassign(holder, req, target, principal=caller.name, note=args.get("note"))
        except MoveRefused as exc:
            return {"refused": exc.wire()}
        return {"from": left, "to": target.name}

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
            # From here to this node's last move nothing awaits: no reply here
            # sees half a handover (each other node keeps the same rule for its own).
            aliases = self._directory.engine.resolution.roles
            aliases.release(source.sid)
            aliases.claim(target.sid, taken)
            source.roles, target.roles = [], taken
            for session in self._directory.sessions.values():
                if session.successor == source.sid:
                    session.successor = target.sid
            source.successor, target.successor = target.sid, None
            moved = [req.req_id for req in self._move_all(source, target.sid, principal)]
            self._directory.moves.seated(target)
            # Then every other node, for what it issued and what its role map says.
            moved += await self._directory.relay.hand_over(source.sid, target.sid, taken, principal)
        finally:
            self._busy -= {source.sid, target.sid}
        log.info("seat handed over", source=source.sid, target=target.sid, roles=roles, moved=moved)
        return target, roles, moved

    async def handed_over_here(
        self, source_sid: str, target_sid: str, roles: list[str], by: str
    ) -> list[str]:
        """Another node committed a handover from ``source_sid`` to
        ``target_sid`` (``roles``: all the target holds now): this node's role
        map says so from now on, and what this node issued to the source moves
        to the target; the req_ids moved."""
        aliases = self._directory.engine.resolution.roles
        source = self._directory.sessions.get(source_sid)
        # Nothing awaits until the source holds nothing more here: a reply
        # judged here either came first (it counts) or finds it moved.
        aliases.release(source_sid)
        for session in self._directory.sessions.values():
            if session.successor == source_sid:
                session.successor = target_sid
        moved: list[str] = []
        if source is not None:
            source.roles, source.successor = [], target_sid
            moved = [req.req_id for req in self._move_all(source, target_sid, by)]
        # Known here: it holds the roles now; else it is read from the store
        # (with them) when it is next named.
        target = self._directory.sessions.get(target_sid)
        if target is not None:
            try:
                aliases.claim(target_sid, roles)
            except RolesConflict as exc:
                log.warning("a handed-over role is held here by another session", error=str(exc))
            else:
                target.roles, target.successor = list(roles), None
                self._directory.moves.seated(target)
        elif any(role in self._directory.moves.waiting for role in roles):
            found = await self._directory.find(target_sid)
            if found is not None:
                self._directory.moves.seated(found)
        log.info(
            "seat handed over on another node", source=source_sid, target=target_sid, moved=moved
        )
        return moved

    def _move_all(
        self, source: OperatorSession, target_sid: str, principal: str
    ) -> Iterator[PendingRequest]:
        for req in list(source.pending.values()):
            if req.expects_reply and self._directory.moves.move(req, target_sid, HANDED_OVER):
                # Audited once, as the handover's own row; each move names who asked.
                self._report(req, source.sid, target_sid, HANDED_OVER, principal, None, None)
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

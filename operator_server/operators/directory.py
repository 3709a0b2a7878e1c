"""Every operator session the server knows, from mint to teardown.

A session is registered with the engine's operator resolution under its sid the
moment it is minted — never by the connect path — and unregistered (roles
released, pending requests failed, socket closed) when it is deleted or expires.

Mint and delete are durable: the store write happens before the answer, and a
failed write leaves memory as it was (a failed mint releases its roles).  At
start-up ``restore`` brings back stored sessions before the server listens.

With a store many nodes share, a session minted on another node is brought
here the first time it is named (``find``: its sid on a route; ``find_name``:
a task naming its sid or one of its roles), so mint on one node and connect on
any other.  The relay the directory is handed (``operators/relay.py``) then
carries each session's requests, replies and socket changes between the nodes;
what other nodes send is handed to ``sessions``, ``remove``,
``resync_sockets`` and the moves other nodes ask of this one
(``reassign_here``, ``handed_over_here``, ``seated_elsewhere``,
``resync_waiting``; ``cluster/relay.py``, wired at start-up by ``app.py``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import Any

from operator_server.audit.principals import SERVER, session_principal
from operator_server.audit.record import Action, AuditEntry
from operator_server.config import Settings, listen_url
from operator_server.engine import Engine
from operator_server.engine.faces import Face
from operator_server.engine.registries import RolesConflict
from operator_server.errors import AttemptFailed, Code
from operator_server.logs import get_logger
from operator_server.metrics import Metrics
from operator_server.operators.directive import DirectiveTemplate
from operator_server.operators.handover import Handovers
from operator_server.operators.moves import RequestMoves
from operator_server.operators.pending_index import PendingIndex
from operator_server.operators.pump import SocketPump
from operator_server.operators.relay import NoRelay, RequestRelay
from operator_server.operators.session import OperatorSession, PendingRequest, hash_token
from operator_server.operators.vacancies import Covered, StandInSeats
from operator_server.store import RolesTaken, SessionRecord, StoreError
from operator_server.wire.frames import FACE_OF

log = get_logger(__name__)


class SessionGone(LookupError):
    """The session does not exist (any more), or another delete already owns it."""

    def __init__(self, sid: str) -> None:
        super().__init__(f"no operator session {sid!r}")
        self.sid = sid


class OperatorDirectory:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        directive: DirectiveTemplate,
        relay: RequestRelay | None = None,
        covered: Covered | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.directive = directive
        self.metrics: Metrics = engine.metrics  # one set per app, owned by the engine's maker
        self.sessions: dict[str, OperatorSession] = {}
        # Every session's pending requests in list order (``GET /v1/requests``).
        self.pending_index: PendingIndex[OperatorSession, PendingRequest] = PendingIndex()
        # What spawn directives name: public_url, else where the daemon listens.
        # Until the daemon says (``listening_on``), the configured address.
        self.base_url = settings.public_url or listen_url(settings.host, settings.port)
        # How requests reach sockets (on any node, with a shared store).
        self.relay: RequestRelay = relay or NoRelay()
        # Moves pending requests between sessions (escalation steps).
        self.moves = RequestMoves(self._holder_of, engine.background.spawn)
        # Moves a person asks for: reassignment, seat handover.
        self.handovers = Handovers(self)
        # Roles nobody holds that a notification rule covers: their requests
        # wait on a stand-in seat (``vacancies.py``) rather than fail.
        self.stand_ins = StandInSeats(self, covered) if covered is not None else None
        if self.stand_ins is not None:
            engine.resolution.stand_in = self.stand_ins.stand_in

    def resync_sockets(self) -> None:
        """The listener was cut: frames sent to this node meanwhile were lost, so
        re-read the requests of every socket held here (each is sent once)."""
        for session in self.sessions.values():
            if session.connected:
                self.engine.background.spawn(session.resync(), name=f"resync:{session.sid}")

    # -- moves other nodes ask of this one (cluster mode) -------------------

    async def reassign_here(self, args: dict[str, Any]) -> dict[str, Any]:
        """Another node was asked to move a request this node issued."""
        return await self.handovers.reassign_here(args)

    async def handed_over_here(
        self, source: str, target: str, roles: list[str], by: str
    ) -> list[str]:
        """Another node handed ``source``'s seat to ``target``: the req_ids moved here."""
        return await self.handovers.handed_over_here(source, target, roles, by)

    def seated_elsewhere(self, sid: str, roles: list[str]) -> None:
        """A session of another node holds ``roles`` now: if a request here
        waits for one of them, bring the session here and issue it."""
        if any(role in self._waited_for() for role in roles):
            self.engine.background.spawn(self._seat(sid), name=f"seat:{sid}")

    def _waited_for(self) -> set[str]:
        """The roles nobody holds that requests here wait for: moved to one,
        or issued to its stand-in seat."""
        seats = self.stand_ins.seats if self.stand_ins is not None else {}
        return {*self.moves.waiting, *seats}

    def resync_waiting(self) -> None:
        """A ``seated`` notice may have been lost: look each waited-for role up again."""
        for role in self._waited_for():
            self.engine.background.spawn(self._seat(role), name=f"seat:{role}")

    def holds_socket(self, name: str) -> bool:
        """A session with its socket on this node answers to ``name`` (a sid,
        or a role it holds): a task naming it is run here."""
        sid = name if name in self.sessions else self.engine.resolution.roles.resolve(name)
        session = self.sessions.get(sid) if sid is not None else None
        return session is not None and session.connected

    async def _seat(self, name: str) -> None:
        session = await self._holder_of(name)
        if session is not None:
            self._seated(session)

    async def _tell_seated(self, session: OperatorSession) -> None:
        if not session.roles:
            return
        try:
            await self.relay.seated(session.sid, list(session.roles))
        except OSError as exc:  # a node waiting for its roles finds it at its next resync
            log.warning("could not tell the other nodes of a new session", error=str(exc))

    def listening_on(self, url: str) -> None:
        """The daemon is bound at ``url``; directives use it unless public_url is set."""
        if not self.settings.public_url:
            self.base_url = url

    async def mint(
        self, roles: list[str], desc: str, token: str | None = None, *, minted_by: str = SERVER
    ) -> tuple[OperatorSession, str]:
        """A new session and its token (the caller's ``token``, if it chose one),
        on disk, audited as ``minted_by``'s act in the same commit.

        Raises ``RolesConflict`` or ``StoreError``; either way nothing is taken.
        """
        sid = f"op-{uuid.uuid4()}"
        token = token or secrets.token_urlsafe(32)  # 256 bits
        now = time.time()
        record = SessionRecord(sid, hash_token(token), list(roles), desc, now, now, minted_by)
        self.engine.resolution.roles.claim(sid, roles)
        session = self._session(record)
        self._add(session)
        try:
            minted = AuditEntry(
                Action.SESSION_MINTED,
                minted_by,
                session_id=sid,
                outcome=",".join(roles),
                at=now,
            )
            await self.engine.store.put_session(record, audit=[minted])
        except RolesTaken as exc:  # held by a session of another node (shared store)
            self._drop(sid)
            raise RolesConflict(exc.conflicts) from None
        except StoreError:
            self._drop(sid)
            raise
        self._seated(session)
        await self._tell_seated(session)
        log.info("operator minted", sid=sid, roles=roles, minted_by=minted_by)
        return session, token

    def _session(self, record: SessionRecord) -> OperatorSession:
        return OperatorSession(
            sid=record.sid,
            token_hash=record.token_sha256,
            roles=record.roles,
            desc=record.desc,
            settings=self.settings,
            directive=self.directive,
            base_url=lambda: self.base_url,
            created_at=record.created_at,
            last_seen_at=record.last_seen_at,
            minted_by=record.minted_by,
            metrics=self.metrics,
            tracing=self.engine.tracing,
            report=self.engine.operator_event,
            relay=self.relay,
            spawn=self.engine.background.spawn,
            clock=self.engine.deadline_heap,
            due_soon=self.engine.request_due_soon,
            moves=self.moves,
            reassign=self.handovers.reassign_frame,
            index=self.pending_index,
        )

    def _add(self, session: OperatorSession) -> None:
        self.sessions[session.sid] = session
        self.engine.resolution.register(session.sid, session)

    def restore(self, record: SessionRecord, now: float) -> bool:
        """Bring back a stored session; False when it has expired or clashes."""
        ttl = self.settings.session_idle_ttl_s
        if ttl and now - record.last_seen_at >= ttl:
            log.info("stored session expired while the server was down", sid=record.sid)
            return False
        try:
            self.engine.resolution.roles.claim(record.sid, record.roles)
        except RolesConflict as exc:
            log.warning(
                "stored session skipped: its roles are taken", sid=record.sid, error=str(exc)
            )
            return False
        session = self._session(record)
        self._add(session)
        self._seated(session)
        return True

    def _seated(self, session: OperatorSession) -> None:
        """``session`` serves here now: what waits for its roles goes to it."""
        self.moves.seated(session)
        if self.stand_ins is not None:
            self.stand_ins.seated(session)

    def seat_stand_in(self, record: SessionRecord) -> OperatorSession:
        """A stand-in seat (``vacancies.py``): known here by its sid, holding
        its role for the listings without claiming it, never stored."""
        session = self._session(record)
        session.stand_in = True
        self._add(session)
        self.relay.stand_in(record)
        return session

    def unseat_stand_in(self, sid: str) -> None:
        """Its requests went to the role's holder: it goes, failing nothing."""
        if sid in self.sessions:
            self._drop(sid)
            self.relay.unseat(sid)

    async def _holder_of(self, role: str) -> OperatorSession | None:
        """The session holding ``role``, here or (brought from) the store; a
        sid (a reassignment or handover to one session) names that session."""
        if role.startswith("op-"):
            try:
                return await self.find(role)
            except StoreError as exc:
                log.warning("could not look up a session in the store", sid=role, error=str(exc))
                return None
        sid = self.engine.resolution.roles.resolve(role)
        if sid is None:
            try:
                await self.find_name(role)
            except StoreError as exc:
                log.warning("could not look up a role in the store", role=role, error=str(exc))
            sid = self.engine.resolution.roles.resolve(role)
        return self.sessions.get(sid) if sid is not None else None

    async def find(self, sid: str) -> OperatorSession | None:
        """The session ``sid``: known here, or stored by another node (then it is
        restored here, lazily); None when there is none, or it cannot be.  (A
        one-process store knows no session this directory does not: it answers
        None.)"""
        session = self.sessions.get(sid)
        if session is not None:
            return session
        record = await self.engine.store.get_session(sid)
        if (session := self.sessions.get(sid)) is not None:  # restored meanwhile
            return session
        if record is None or not self.restore(record, time.time()):
            return None
        log.info("operator session found in the store", sid=sid)
        return self.sessions.get(sid)

    async def find_name(self, name: str) -> None:
        """A task names ``name`` (a sid or a role) unknown here: bring its
        session from the store if another node minted it."""
        sid = name if name.startswith("op-") else await self.engine.store.role_holder(name)
        if sid is not None:
            await self.find(sid)

    def seen(self, session: OperatorSession, *, attached: bool = False) -> None:
        """Record that the session was just seen (socket attached or detached);
        a socket attached is its holder taking the session up (audited)."""
        audit = (
            [AuditEntry(Action.SESSION_RESUMED, session_principal(session), session_id=session.sid)]
            if attached
            else []
        )
        self.engine.store.touch_session_soon(session.sid, session.last_seen_at, audit=audit)

    async def delete(
        self,
        sid: str,
        code: Code,
        message: str,
        *,
        action: Action = Action.SESSION_LEFT,
        principal: str | None = None,
    ) -> SocketPump | None:
        """Forget the session on disk first, then everywhere in memory; audited
        as ``action`` by ``principal`` (default: the session's own) in the same commit.

        Exactly one of any number of concurrent deletes (a DELETE, a forced
        admin delete, the idle sweep) does the work; it claims the session
        before its first await, and the others get ``SessionGone``.
        """
        session = self.sessions.get(sid)
        if session is None or session.deleting:
            raise SessionGone(sid)
        session.deleting = True
        try:
            left = AuditEntry(
                action,
                principal or session_principal(session),
                session_id=sid,
                reason=message,
            )
            await self.engine.store.delete_session(sid, audit=[left])
        except BaseException:
            session.deleting = False
            raise
        try:  # every other node forgets it too
            await self.relay.gone(sid, str(code), message)
        except Exception as exc:  # they find it gone at their next store read
            log.warning("could not tell the other nodes of a deleted session", error=str(exc))
        return self.remove(sid, code, message)

    def remove(
        self, sid: str, code: Code, message: str, close_code: int = 1000
    ) -> SocketPump | None:
        """Unregister everywhere, fail what is pending, close the socket."""
        session = self._drop(sid)
        return session.end(AttemptFailed(code, message), close_code, message)

    def _drop(self, sid: str) -> OperatorSession:
        """Out of the directory, the engine's session map and the role map."""
        session = self.sessions.pop(sid)
        self.engine.resolution.unregister(sid)
        return session

    def counts(self) -> dict[str, int]:
        connected = sum(1 for s in self.sessions.values() if s.connected)
        return {"sessions": len(self.sessions), "connected": connected}

    def pending_by_face(self) -> dict[str, int]:
        """Pending requests over all sessions, by the face they serve (read at
        scrape time): the same names as the ``face`` of task events."""
        counts = dict.fromkeys(map(str, Face), 0)
        for session in self.sessions.values():
            for req in session.pending.values():
                counts[FACE_OF[req.kind]] += 1
        return counts

    def expired(self, now: float | None = None) -> list[str]:
        ttl = self.settings.session_idle_ttl_s
        if not ttl:
            return []
        now = time.time() if now is None else now
        return [
            sid
            for sid, s in self.sessions.items()
            if not s.stand_in and (idle := s.idle_since()) is not None and now - idle >= ttl
        ]

    async def sweep(self) -> list[str]:
        """Tear down sessions idle with no socket for ``session_idle_ttl_s``.

        Connected sessions are touched on disk, so after a crash their idle time
        counts from the last sweep, not from when they connected.
        """
        now = time.time()
        for session in self.sessions.values():
            if session.connected:
                session.last_seen_at = now
                self.seen(session)
        gone = self.expired(now)
        ttl = self.settings.session_idle_ttl_s
        gone = [sid for sid in gone if not await self._seen_elsewhere(sid, now)]
        for sid in gone:
            try:
                await self.delete(
                    sid,
                    Code.OPERATOR_EXPIRED,
                    f"session idle with no socket for {ttl:g}s",
                    action=Action.SESSION_EXPIRED,
                    principal=SERVER,
                )
            except SessionGone:
                continue  # deleted meanwhile by someone else: nothing left to expire
            except StoreError as exc:
                log.error("could not expire session; will retry", sid=sid, error=str(exc))
                continue
            log.info("operator session expired", sid=sid)
        return gone

    async def _seen_elsewhere(self, sid: str, now: float) -> bool:
        """Another node has seen the session lately (its socket is there, and
        that node touches it every sweep), so it is not idle.  Never, with a
        one-process store (it knows no other node's sessions: None)."""
        try:
            record = await self.engine.store.get_session(sid)
        except StoreError:
            return True  # cannot tell: expire it next time
        session = self.sessions.get(sid)
        ttl = self.settings.session_idle_ttl_s
        if record is None or session is None or now - record.last_seen_at >= ttl:
            return False
        session.last_seen_at = max(session.last_seen_at, record.last_seen_at)
        return True

    async def close_sockets(self, code: int, reason: str) -> None:
        """Close every attached socket (shutdown); sessions stay."""
        pumps = [p for s in self.sessions.values() if (p := s.close_socket(code, reason))]
        if pumps:
            await asyncio.gather(*(p.wait_closed(self.settings.shutdown_timeout_s) for p in pumps))

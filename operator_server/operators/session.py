"""``OperatorSession``: one operator, three faces, any number of sockets over time.

The session owns its pending requests; a socket (``SocketPump``) only carries
frames.  That split is what makes reconnects lose nothing:

* A request issued while a socket is attached is written at once and waits for
  its reply, across disconnects, until its deadline (``engine/deadlines.py``:
  what it then becomes is its on-timeout action), a cancel, or the session's end.
* A request issued while no socket is attached waits ``reconnect_grace_s`` for
  one, then fails with ``operator_unavailable``.
* ``attach`` re-sends every unanswered request in issue order before anything
  new can be queued, and a newer socket replaces an older one; ``detach`` from a
  socket that was already replaced changes nothing.
* The first reply to a ``req_id`` wins, wherever it came from (this socket,
  another node's, ``POST /v1/requests/{req_id}/reply``): ``settle_reply`` is
  the one place a reply is checked and counted (``settle_unheld`` for one
  that waits for a role nobody holds, judged and counted alike).  A later one gets
  ``already_answered``; one to a request that moved to another holder gets
  ``already_moved``.  A socket shown a request someone else answered is told
  with ``cancel`` (reason ``answered_elsewhere``).
* A withdrawn request (cancel, timeout) is told to the operator with ``cancel``.
* A request can move to another holder (``operators/moves.py``: an escalation
  step): it keeps its ``req_id``, this session ``release``s it (a ``cancel``
  with the move's reason) and the next one ``adopt``s it; a late reply here gets
  ``already_moved``.  Whoever holds it, the coroutine that issued it awaits it.

Where requests are recorded and which node shows them is the relay's business
(``operators/relay.py``), chosen at start-up: with one process (``NoRelay``)
memory is the only record and the socket is here; with a store many nodes share
(``cluster/relay.py``) each request is stored before it is shown, the socket's
node gets the frame, and replies come back through the relay.  ``routed`` maps
the requests this node shows on its socket for other nodes to their issuer.
"""

# size: one session's pending requests behind its three faces, replay and timeouts
# included; the socket's own I/O is apart (pump.py).
from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from operator_server import entropy
from operator_server.audit.principals import SERVER, session_principal
from operator_server.audit.record import Action, AuditEntry
from operator_server.audit.replies import reply_entry
from operator_server.config import Settings
from operator_server.engine.deadlines import DueSoon, RequestDeadline, config_rules, fresh
from operator_server.engine.events import EventType
from operator_server.engine.faces import AttemptContext, HookVerdict, Issued, WorkerResult
from operator_server.engine.schedule import DeadlineHeap, LoopTimers, TimedSteps
from operator_server.errors import AttemptFailed, Code, NodeUnreachable, ProtocolError
from operator_server.logs import get_logger
from operator_server.metrics import Metrics
from operator_server.operators.directive import DirectiveTemplate
from operator_server.operators.moves import RequestMoves, move_record
from operator_server.operators.pending_index import PendingIndex
from operator_server.operators.pump import SocketPump
from operator_server.operators.relay import NoRelay, RequestRelay
from operator_server.store import RequestCourse, StoreError
from operator_server.tracing import NoTracing, Tracing
from operator_server.wire import frames as p
from operator_server.wire.answer_schema import answer_problem
from operator_server.wire.values import OnTimeout, ReplyVia

log = get_logger(__name__)
# How many answered (and moved) req_ids to remember for ``already_answered``
# (``already_moved``).
ANSWERED_MEMORY = 4096
Reply = tuple[str, dict[str, Any]]
# How many of a request's moves it shows (the newest).
MOVES_KEPT = 50
Spawn = Callable[..., "asyncio.Task[None]"]
# The ``cancel`` reason of a request moved on by its escalation chain.
ESCALATED = "escalated"
# ... and of one that went with its seat to another session, or was passed on
# by its holder (``operators/handover.py``).
HANDED_OVER = "handed_over"
REASSIGNED = "reassigned"
# The reasons a request leaves a holder for another: a late reply gets ``already_moved``.
MOVED_ON = frozenset({ESCALATED, HANDED_OVER, REASSIGNED})
# Request kinds a reply answers (a hook_after is only told).
_ANSWERABLE = frozenset(p.REPLY_TO.values())


class Routed(NamedTuple):
    """A request another node issued and this socket shows: where its reply
    goes, and its frame's trace context (the reply's hop joins the task's trace)."""

    owner: str
    trace: dict[str, str] | None


# What a ``reassign`` frame asks of the session that sent it (``operators/handover.py``):
# refusals come back as ``ProtocolError``.
Reassign = Callable[["OperatorSession", dict[str, Any]], Awaitable[None]]
# (event type "request" | "reply" | "request_moved", task_id, req_id, face, sid,
# the audit entry of what it decided or asked for, if anything[, the type's own
# fields after those]; a reply: ``via=`` where it came from)
Report = Callable[..., None]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class PendingRequest:
    req_id: str
    kind: str
    task_id: str
    frame: dict[str, Any]
    future: asyncio.Future[Reply]
    expects_reply: bool = True
    delivered: bool = False
    grace: asyncio.TimerHandle | None = field(default=None, repr=False)
    issued_at: float = field(default_factory=time.time)
    # For the wait histogram: immune to wall-clock jumps.
    issued_mono: float = field(default_factory=time.monotonic, repr=False)
    # An ``ask``'s answer form: an answer that does not fill it is refused.
    answer_schema: dict[str, Any] | None = None
    # Who holds it now (``operators/moves.py``): the issuing session until it
    # moves; None while it moves or waits for a role nobody holds.
    holder: OperatorSession | None = field(default=None, repr=False)
    moving: bool = False
    then: tuple[str, str] | None = None
    waiting_for: str | None = None
    # Its clock's next entry (deadline, reminder, escalation step).
    timer: TimedSteps | None = field(default=None, repr=False)
    # Its deadline and place in an escalation chain (``engine/deadlines.py``),
    # moved on by each step: what ``GET /v1/requests`` shows.
    deadline: RequestDeadline | None = field(default=None, repr=False)
    # Its moves (``moves.move_record``), oldest first, the newest
    # ``MOVES_KEPT`` of them (``moved_on``).  Kept here and
    # stored with the request's row each time a holder stores it, rather than
    # read back from the task's ``request_moved`` events: a list of pending
    # requests then costs one read on any node, not one per request, and the
    # row a move writes carries its own history (nothing to lag behind it).
    moves: tuple[dict[str, Any], ...] = ()

    @property
    def deadline_at(self) -> float | None:
        """When its deadline (or its current step's end) decides it; None: never."""
        if self.deadline is None:
            return None
        return self.deadline.step_until or self.deadline.due_at

    @property
    def step(self) -> int:
        return self.deadline.step if self.deadline is not None else 0

    @property
    def course(self) -> RequestCourse:
        return RequestCourse(self.deadline_at, self.step, self.moves)

    def moved_on(self, move: dict[str, Any]) -> None:
        """Record a move (``moves.move_record``): called as the move is made,
        before its target stores the request, so the new row carries it.
        Only the newest ``MOVES_KEPT`` are kept: a request passed back and
        forth must not make every move rewrite an ever longer row (the
        task's ``request_moved`` events keep them all)."""
        self.moves = (*self.moves, move)[-MOVES_KEPT:]


class OperatorSession:
    """SeniorBridge + SpawnHook + Operator over one operator's sockets."""

    def __init__(
        self,
        *,
        sid: str,
        token_hash: str,
        roles: list[str],
        desc: str,
        settings: Settings,
        directive: DirectiveTemplate,
        base_url: Callable[[], str],
        created_at: float | None = None,
        last_seen_at: float | None = None,
        minted_by: str = "",
        metrics: Metrics | None = None,
        report: Report | None = None,
        relay: RequestRelay | None = None,
        spawn: Spawn | None = None,
        clock: DeadlineHeap | LoopTimers | None = None,
        due_soon: Callable[[DueSoon], None] | None = None,
        moves: RequestMoves | None = None,
        reassign: Reassign | None = None,
        index: PendingIndex[OperatorSession, PendingRequest] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.sid = sid
        self.token_hash = token_hash
        self.roles = roles
        self.desc = desc
        self.created_at = created_at or time.time()
        self.last_seen_at = last_seen_at or self.created_at
        # The name of the principal that minted it (``auth/principal.py``):
        # whoever acts through this session acts on that principal's authority.
        self.minted_by = minted_by
        self.pending: dict[str, PendingRequest] = {}
        # What it holds, kept in list order for ``GET /v1/requests``.
        self._index: PendingIndex[OperatorSession, PendingRequest] = (
            index if index is not None else PendingIndex()
        )
        self._settings = settings
        self._directive = directive
        self._answered: OrderedDict[str, None] = OrderedDict()
        # req_ids this session held and gave up to another holder: req_id ->
        # why, or where it went (``release``, ``moved_away``).
        self._moved: OrderedDict[str, str] = OrderedDict()
        self._moves = moves
        self._reassign = reassign
        # The session this one handed its seat to: what is still issued through
        # this one (an attempt that found it before the handover) goes there.
        self.successor: str | None = None
        self._pump: SocketPump | None = None
        # Read when a spawn is issued: the directory's URL is final once the daemon is bound.
        self._base_url = base_url
        self._ended: AttemptFailed | None = None
        self._metrics = metrics or Metrics()
        self._tracing: Tracing = tracing or NoTracing()
        # Tells the task's event stream of each request issued and answered.
        self._report = report
        # Claimed by the one delete that tears this session down (see the directory).
        self.deleting = False
        # A stand-in for a role nobody holds (``vacancies.py``): its requests
        # wait for their deadline, not for a socket nobody will attach; only
        # the kinds a notification rule tells of (``serves``).
        self.stand_in = False
        self.serves: Callable[[str], bool] = lambda kind: True
        self._relay: RequestRelay = relay or NoRelay()
        # Replies on their way to the node that issued them (cluster mode),
        # started through the server's one place for background tasks.
        self._spawn = spawn
        self._passing: set[asyncio.Task[None]] = set()
        self.routed: dict[str, Routed] = {}  # req_id -> where its reply goes
        self._sent: set[str] = set()  # req_ids written to the current socket
        self._epoch = 0  # of the current socket's attach (cluster mode)
        # While an attach reads the stored requests: frames sent meanwhile, held
        # so that they follow the replay rather than overtake it.
        self._held: list[tuple[str, str, dict[str, Any]]] | None = None
        # One replay at a time: a resync (two follow a lapse) and a new socket's
        # attach may overlap, and each holds frames in ``_held`` while it reads.
        self._replaying = asyncio.Lock()
        # Deadlines and reminders: the engine's one heap for every session.
        self._clock = clock if clock is not None else LoopTimers()
        self._due_soon = due_soon
        self._config_rules = config_rules(settings)
        self.log = log.bind(sid=sid)

    # -- identity and sockets --------------------------------------------

    def verify_token(self, token: str) -> bool:
        return hmac.compare_digest(hash_token(token), self.token_hash)

    @property
    def connected(self) -> bool:
        return self._pump is not None

    @property
    def remote(self) -> str | None:
        """The peer address of the attached socket, if any."""
        return self._pump.remote if self._pump is not None else None

    def idle_since(self) -> float | None:
        """When the session was last seen, if no socket is attached."""
        return None if self._pump is not None else self.last_seen_at

    async def attach(self, pump: SocketPump) -> bool:
        """Make ``pump`` the session's socket and replay what is unanswered;
        False when it is not the session's socket after all (the store could
        not record it, or a newer one replaced it meanwhile): it is closed."""
        old, self._pump = self._pump, pump
        self._sent = set()
        self.last_seen_at = time.time()
        if old is not None:
            old.close(p.REPLACED_CLOSE_CODE, p.REPLACED_REASON)
            self.log.info("socket replaced by a newer one")
        await self._replay_stored(pump)
        return self._pump is pump

    async def resync(self) -> None:
        """Re-read the stored requests for the socket attached here (frames sent
        to this node may have been lost) and have the store say again that the
        socket is here (the other nodes may have taken this one for dead);
        nothing already shown is sent again.  A socket that a newer one on
        another node replaced meanwhile (that news may have been lost too) is
        closed, as ``replaced_elsewhere`` closes it."""
        if self._pump is not None:
            await self._replay_stored(self._pump, again=True)

    async def _replay_stored(self, pump: SocketPump, *, again: bool = False) -> None:
        async with self._replaying:
            if self._pump is pump:  # not replaced while waiting its turn
                await self._replay_stored_now(pump, again=again)

    async def _replay_stored_now(self, pump: SocketPump, *, again: bool) -> None:
        """Every unanswered request of the session, whichever node issued it,
        from the relay's record (with one process: none) and then from memory,
        in issue order, once."""
        self._held = []
        unstored = None
        try:
            epoch, rows = await self._relay.attach(self.sid, self._epoch if again else None)
        except StoreError as exc:
            # Attached again: the store still names this node, so only this
            # node's own requests are shown (from memory) until the next resync.
            self.log.error("could not read stored requests", error=str(exc))
            epoch, rows = self._epoch, []
            unstored = None if again else exc
        finally:
            held, self._held = self._held, None
        if self._pump is not pump:
            return  # replaced while reading
        if unstored is not None:
            # A new socket the store does not know of: no other node could
            # reach it, and its epoch is unknown (whether a socket attached on
            # another node is newer cannot be told).  The client is told to
            # try again; its next attach is stored or refused in turn.
            self.close_socket(p.UNSTORED_CLOSE_CODE, p.UNSTORED_REASON)
            self._relay.detach(self.sid)  # in case the attach committed after all
            return
        if again and epoch != self._epoch:
            self.replaced_elsewhere(epoch)
            return
        self._epoch = epoch
        for row in rows:
            req = self.pending.get(row.req_id)
            if req is not None:
                self._deliver(req, replay=True)
            elif row.owner_node != self._relay.node_id:
                self._show_for(row.owner_node, row.req_id, row.frame, replay=True)
        for req in list(self.pending.values()):  # issued here, not yet stored
            if req.req_id not in self._sent:
                self._deliver(req, replay=True)
        for owner, req_id, frame in held:
            self.deliver_from(owner, req_id, frame)
        self.log.info("socket attached", pending=len(self._sent), epoch=epoch)

    def _send_once(self, req_id: str, frame: dict[str, Any], *, replay: bool = False) -> bool:
        if req_id in self._sent:
            return True
        if self._pump is None or not self._pump.send(frame, replay=replay):
            return False
        self._sent.add(req_id)
        return True

    # -- frames routed from other nodes (cluster mode) ---------------------

    def deliver_from(self, owner: str, req_id: str, frame: dict[str, Any]) -> None:
        """Another node issued a request and this node holds the socket."""
        if self._held is not None:
            self._held.append((owner, req_id, frame))
        elif self._pump is not None:
            self._show_for(owner, req_id, frame)

    def _show_for(
        self, owner: str, req_id: str, frame: dict[str, Any], *, replay: bool = False
    ) -> None:
        """Show the operator a request ``owner`` issued; its reply goes there."""
        answerable = frame.get("type") in _ANSWERABLE  # a hook_after is only told
        if answerable:
            self.routed[req_id] = Routed(owner, frame.get(p.TRACE))
        if self._send_once(req_id, frame, replay=replay) and not answerable:
            self._sent.discard(req_id)  # nothing will come back to forget it

    def withdrawn_elsewhere(self, req_id: str, reason: str) -> None:
        """Its issuer withdrew a request this node showed: tell the operator."""
        self.routed.pop(req_id, None)
        # A late reply here is then told what became of it.
        if reason == p.ANSWERED_ELSEWHERE:
            self._remember_answered(req_id)
        elif reason in MOVED_ON:
            self.moved_away(req_id, reason)
        if req_id in self._sent and self._pump is not None:
            self._sent.discard(req_id)
            self._pump.send(p.cancel_frame(req_id, reason))

    def delivered_elsewhere(self) -> None:
        """A socket attached on another node and was shown every pending request."""
        for req in self.pending.values():
            req.delivered = True
            if req.grace is not None:
                req.grace.cancel()
                req.grace = None

    def replaced_elsewhere(self, epoch: int) -> None:
        """A newer socket attached on another node: close this node's (unless it
        is newer still)."""
        if self._pump is not None and epoch > self._epoch:
            self.close_socket(p.REPLACED_CLOSE_CODE, p.REPLACED_REASON)
            self.log.info("socket replaced by a newer one on another node")

    def reply_from_elsewhere(
        self, kind: str, data: dict[str, Any], via: str = ReplyVia.SOCKET, principal: str = ""
    ) -> None:
        """A reply that reached another node: the operator's, through that
        node's socket, or a principal's over REST there."""
        if via == ReplyVia.SOCKET:
            self.last_seen_at = time.time()
        self.settle_reply(kind, data, via=ReplyVia(via), principal=principal or None)

    def detach(self, pump: SocketPump) -> None:
        """Forget ``pump`` — unless a newer socket already took its place."""
        if self._pump is not pump:
            return
        self._pump = None
        self._sent = set()
        self.routed.clear()
        self.last_seen_at = time.time()
        self._relay.detach(self.sid)
        self.log.info("socket detached", pending=len(self.pending))

    def close_socket(self, code: int, reason: str) -> SocketPump | None:
        pump, self._pump = self._pump, None
        self._sent = set()
        self.routed.clear()
        if pump is not None:
            pump.close(code, reason)
        return pump

    def end(self, error: AttemptFailed, close_code: int, reason: str) -> SocketPump | None:
        """Tear down: withdraw and fail every pending request, close the socket."""
        self._ended = error
        for req in list(self.pending.values()):
            self._withdraw(req, reason)
            if not req.future.done():
                req.future.set_exception(error)
        self.pending.clear()
        self.log.info("session ended", code=error.code)
        return self.close_socket(close_code, reason)

    # -- requests ---------------------------------------------------------

    def _deliver(self, req: PendingRequest, *, replay: bool = False) -> None:
        if req.grace is not None and self._pump is not None:
            req.grace.cancel()
            req.grace = None
        if not self._send_once(req.req_id, req.frame, replay=replay):
            return
        req.delivered = True
        if not req.expects_reply:
            self._forget(req)
            if not req.future.done():
                req.future.set_result(("delivered", {}))

    def _forget(self, req: PendingRequest, withdrawn: str | None = None) -> None:
        """Out of the pending map (and the store; ``withdrawn``: the node showing
        it on another socket sends the ``cancel``)."""
        if self.pending.pop(req.req_id, None) is not None:
            self._index.discard(self, req.req_id)
            self._relay.finish(self.sid, req.req_id, withdrawn)
        self._sent.discard(req.req_id)
        if req.grace is not None:
            req.grace.cancel()
            req.grace = None

    def _give_up(self, req: PendingRequest) -> None:
        """Reconnect grace ran out for a request that never reached a socket."""
        req.grace = None
        if req.req_id not in self.pending or req.delivered:
            return
        self._forget(req)
        grace = self._settings.reconnect_grace_s
        if not req.future.done():
            req.future.set_exception(
                AttemptFailed(
                    Code.OPERATOR_UNAVAILABLE,
                    f"operator {self.sid} was not connected within {grace:g}s "
                    f"(reconnect_grace_s) to receive {req.kind}",
                )
            )

    def _withdraw(self, req: PendingRequest, reason: str) -> None:
        shown = req.req_id in self._sent
        self._forget(req, reason if req.delivered else None)
        if shown and self._pump is not None:
            self._pump.send(p.cancel_frame(req.req_id, reason))

    def release(self, req: PendingRequest, reason: str) -> bool:
        """Give ``req`` up to be moved (``operators/moves.py``): withdrawn here
        (``cancel`` with ``reason``); a reply to it here gets ``already_moved``.
        False when it is not held here."""
        if self.pending.get(req.req_id) is not req:
            return False
        self._withdraw(req, reason)
        req.holder = None
        self.moved_away(req.req_id, reason)
        return True

    async def adopt(self, req: PendingRequest) -> bool:
        """Hold ``req``, moved here from another holder: stored and shown as a
        request issued here would be (at once, or at the next attach).  No
        reconnect grace: the request's own clock bounds its wait.  False when
        this session has ended (deleted, expired): it cannot hold anything."""
        if self._ended is not None:
            return False
        if req.future.done():
            return True
        req.holder, req.delivered = self, False
        self._moved.pop(req.req_id, None)
        self.pending[req.req_id] = req
        self._index.add(self, req)
        try:
            await self._issue_stored(req)
        except AttemptFailed as exc:
            self._forget(req)
            if not req.future.done():
                req.future.set_exception(exc)
            return True
        if req.future.done():  # settled meanwhile
            self._forget(req)
        elif self._pump is not None and not req.delivered:
            self._deliver(req)
        return True

    async def _request(
        self,
        kind: str,
        task_id: str,
        build: Callable[[str], dict[str, Any]],
        deadline: RequestDeadline,
        *,
        expects_reply: bool = True,
        ctx: AttemptContext | None = None,
        answer_schema: dict[str, Any] | None = None,
        issued: Issued | None = None,
    ) -> Reply:
        """Issue a request and await its reply; its span (``tracing.py``) runs
        from here to the reply, and its frame carries the span's W3C context."""
        if self._ended is not None:
            raise self._ended
        if self.stand_in and expects_reply and not self.serves(kind):
            raise AttemptFailed(
                Code.OPERATOR_NOT_FOUND,
                f"no operator holds role {', '.join(self.roles)!r} and no [[notify]] rule tells "
                f"anyone of its {kind} requests: start an operator with that role, or add "
                f"{kind!r} to a rule's kinds",
            )
        req_id = f"{self.sid}-{p.REQ_KIND[kind]}-{entropy.uuid4_text()}"
        carrier = self._tracing.request_issued(kind, req_id, task_id, self.sid, self.roles)
        frame = build(req_id)
        if carrier is not None:
            p.with_trace(frame, carrier)
        outcome = "failed"
        try:
            reply = await self._issue(
                req_id,
                kind,
                task_id,
                frame,
                deadline,
                expects_reply=expects_reply,
                ctx=ctx,
                answer_schema=answer_schema,
                issued=issued,
            )
            outcome = "replied"
            return reply
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._tracing.request_ended(req_id, task_id, outcome)

    async def _issue(
        self,
        req_id: str,
        kind: str,
        task_id: str,
        frame: dict[str, Any],
        deadline: RequestDeadline,
        *,
        expects_reply: bool,
        ctx: AttemptContext | None,
        answer_schema: dict[str, Any] | None,
        issued: Issued | None,
    ) -> Reply:
        loop = asyncio.get_running_loop()
        req = PendingRequest(
            req_id,
            kind,
            task_id,
            frame,
            loop.create_future(),
            expects_reply,
            answer_schema=answer_schema,
            holder=self,
            deadline=deadline,
        )
        self.pending[req_id] = req
        self._index.add(self, req)
        if issued is not None:
            issued(req_id)
        if self._report is not None:
            # A hook_after only tells: it asks nobody to decide anything.
            issued_entry = (
                None
                if not expects_reply
                else AuditEntry(
                    Action.REQUEST_ISSUED,
                    session_principal(self),
                    task_id=task_id,
                    req_id=req_id,
                    session_id=self.sid,
                    outcome=kind,
                )
            )
            self._report(
                EventType.REQUEST,
                task_id,
                req_id,
                str(p.FACE_OF[kind]),
                self.sid,
                issued_entry,
            )
        resumed = deadline.step and self._moves is not None and deadline.chain
        if resumed and self._moves is not None:
            # Re-issued past its chain's first step (``engine/deadlines.py``):
            # straight to where the chain had got, before anyone here saw it.
            self._moves.move(req, deadline.holder_name(deadline.step), "resumed")
        elif self.successor is not None and self._moves is not None:
            self._moves.move(req, self.successor, HANDED_OVER)
        else:
            try:
                await self._issue_stored(req)
            except BaseException:
                self._forget(req)
                raise
            if self._pump is not None and not req.delivered:
                self._deliver(req)
            if not req.delivered and not self.stand_in:
                req.grace = loop.call_later(self._settings.reconnect_grace_s, self._give_up, req)
        if ctx is not None:
            ctx.open_request = req_id
        self._arm(req, deadline, deadline.write_at, deadline.write)
        try:
            reply = await req.future
        except _NoReply:
            deadline.settle()
            self._tracing.request_ended(req_id, task_id, "timed_out")
            return self._timed_out(req, deadline)
        except asyncio.CancelledError as exc:
            # Not settled: an attempt cut short keeps its stored due time.
            if req.holder is not None:
                req.holder._withdraw(req, _cancel_reason(exc))
            raise
        finally:
            if req.timer is not None:
                req.timer.cancel()
                req.timer = None
            if req.holder is not None:
                req.holder._forget(req)
            if self._moves is not None:
                self._moves.settled(req)
            if ctx is not None:
                ctx.open_request = None
        deadline.settle()
        return reply

    def _arm(
        self,
        req: PendingRequest,
        deadline: RequestDeadline,
        write_at: float | None = None,
        write: Callable[[], None] | None = None,
    ) -> None:
        """The request's clock for the step it is at: on the engine's one heap
        rather than a timer per request (``engine/schedule.py``), one entry at
        a time, so a reply cancels it with a flag."""
        steps: list[tuple[float, Callable[[], None]]] = []
        if write_at is not None and write is not None:
            steps.append((write_at, write))
        if deadline.escalating and self._moves is not None and deadline.step_until is not None:
            steps.append((deadline.step_until, lambda: self._escalate(req, deadline)))
        else:
            if deadline.remind_at is not None and self._due_soon is not None:
                steps.append((deadline.remind_at, lambda: self._remind(req, deadline)))
            if deadline.due_at is not None:
                steps.append((deadline.due_at, lambda: _no_reply(req.future)))
        req.timer = TimedSteps(self._clock, steps) if steps else None

    def _escalate(self, req: PendingRequest, deadline: RequestDeadline) -> None:
        """Its step's time passed with no reply: on to the chain's next role."""
        if req.future.done() or self._moves is None:
            return
        step = deadline.step + 1
        source, to = deadline.holder_name(deadline.step), deadline.holder_name(step)
        left = req.holder.sid if req.holder is not None else None
        if not self._moves.move(req, to, ESCALATED):
            return  # settled or on its way: a reply beat the clock
        waited = deadline.chain[deadline.step].after_s
        now = time.time()
        deadline.reach(step, now, self._settings.remind_at_fraction)
        req.moved_on(move_record(now, source, to, ESCALATED, step))
        self.log.info("request escalated", req_id=req.req_id, to=to, step=step)
        if self._report is not None:
            entry = AuditEntry(
                Action.REQUEST_ESCALATED,
                SERVER,
                task_id=req.task_id,
                req_id=req.req_id,
                session_id=left,
                outcome=f"{source} -> {to}",
                reason=f"no reply within {waited:g}s",
            )
            self._report(
                EventType.REQUEST_MOVED,
                req.task_id,
                req.req_id,
                str(p.FACE_OF[req.kind]),
                left,
                entry,
                (source, to, step, ESCALATED, waited),
            )
        self._arm(req, deadline)

    def _timed_out(self, req: PendingRequest, deadline: RequestDeadline) -> Reply:
        """Nobody replied by ``deadline``: withdraw the request and do what its
        on-timeout action says."""
        waited = f"no reply within {deadline.deadline_s:g}s"
        action = deadline.on_timeout
        holder = req.holder
        if holder is not None:
            holder._withdraw(req, waited if action is OnTimeout.FAIL else f"{waited}: {action}")
        where = {"req_id": req.req_id, "task_id": req.task_id, "kind": req.kind}
        if action is OnTimeout.DECLINE:
            self.log.info("request declined by its deadline", **where)
            # As an operator's decline: an answer carrying ``error``.
            return "answer", {"req_id": req.req_id, "error": f"{waited} (on_timeout: decline)"}
        if action is OnTimeout.APPROVE:
            # Loud on purpose: a spawn went ahead that no one approved.
            self.log.warning("hook_before APPROVED by its deadline, nobody replied", **where)
            reason = f"{waited} (on_timeout: approve)"
            return "hook_ack", {"req_id": req.req_id, "ok": True, "reason": reason}
        self.log.info("request timed out", **where)
        raise AttemptFailed(
            Code.OPERATOR_TIMEOUT,
            f"operator {holder.sid} did not answer {req.kind} within {deadline.deadline_s:g}s"
            if holder is not None
            # Escalated to a role nobody came to hold.
            else f"nobody holding {deadline.holder_name(deadline.step)!r} answered {req.kind} "
            f"within {deadline.deadline_s:g}s",
        )

    def _remind(self, req: PendingRequest, deadline: RequestDeadline) -> None:
        if req.future.done() or self._due_soon is None or deadline.due_at is None:
            return
        self._due_soon(
            DueSoon(
                req.task_id,
                req.req_id,
                req.kind,
                str(p.FACE_OF[req.kind]),
                req.holder.sid if req.holder is not None else "",
                deadline.due_at,
                str(deadline.on_timeout),
            )
        )

    async def _issue_stored(self, req: PendingRequest) -> None:
        """The relay records the request before anyone sees it; when another
        node holds the socket, it was sent there (with one process: never)."""
        try:
            elsewhere = await self._relay.issue(
                self.sid,
                req.req_id,
                req.frame,
                req.issued_at,
                req.course,
                attached_here=self._pump is not None,
            )
        except (StoreError, OSError) as exc:
            raise AttemptFailed(
                Code.STORE_FAILED, f"could not store the {req.kind} request: {exc}"
            ) from None
        if elsewhere and self._pump is None:
            req.delivered = True
            if not req.expects_reply:
                self._forget(req)
                if not req.future.done():
                    req.future.set_result(("delivered", {}))

    # -- frames from the operator ----------------------------------------

    def handle_text(self, text: str) -> Awaitable[None] | None:
        """One client frame; problems go back as an ``error`` frame.

        A reply to a request another node issued is passed on in the
        background, so a slow or dead issuer holds up nothing else; a ``ping``
        after such replies returns what to await before its ``pong`` (and
        before the next frame): "everything before it is done" holds."""
        self.last_seen_at = time.time()
        try:
            kind, data = p.parse_client_frame(text, self._settings.max_json_depth)
        except ProtocolError as exc:
            # Only parsed types become label values: the peer controls the rest.
            self._metrics.frame_received(p.INVALID_FRAME)
            self._refuse(exc)
            return None
        self._metrics.frame_received(kind)
        if kind == "reassign":
            return self._reassign_frame(data)
        routed = self.routed.get(str(data.get("req_id"))) if self.routed else None
        if routed is not None and data["req_id"] not in self.pending and self._spawn is not None:
            try:
                passing = self._spawn(
                    self._reply_elsewhere(routed, kind, data), name=f"reply:{data['req_id']}"
                )
            except RuntimeError:  # the server is shutting down: nothing is started now
                self._refuse(
                    ProtocolError(Code.SHUTTING_DOWN, "the server is shutting down", data["req_id"])
                )
                return None
            self._passing.add(passing)
            passing.add_done_callback(self._passing.discard)
            return None
        if kind == "ping" and self._passing:
            return self._pong_after(list(self._passing), data)
        try:
            self._resolve(kind, data)
        except ProtocolError as exc:
            self._refuse(exc)
        return None

    async def _reassign_frame(self, data: dict[str, Any]) -> None:
        """Handled before the next frame, so a reply after it sees it done."""
        try:
            if self._reassign is None:
                raise ProtocolError(Code.BAD_MESSAGE, "reassign is not served here", data["req_id"])
            await self._reassign(self, data)
        except ProtocolError as exc:
            self._refuse(exc)

    def answered(self, req_id: str) -> bool:
        """A reply to ``req_id`` counted here (lately: ``ANSWERED_MEMORY``)."""
        return req_id in self._answered

    def moved(self, req_id: str) -> bool:
        """``req_id`` was held here and has moved on."""
        return req_id in self._moved

    async def _pong_after(self, passing: list[asyncio.Task[None]], data: dict[str, Any]) -> None:
        await asyncio.wait(passing)
        self._resolve("ping", data)

    async def _reply_elsewhere(self, routed: Routed, kind: str, data: dict[str, Any]) -> None:
        req_id = data["req_id"]
        try:
            await self._relay.reply(routed.owner, self.sid, kind, data, trace=routed.trace)
        except ProtocolError as exc:
            self._refuse(exc)
            return
        except (NodeUnreachable, AttemptFailed) as exc:  # the issuer did not take it
            code = Code.NODE_UNREACHABLE if isinstance(exc, NodeUnreachable) else Code.INTERNAL
            self._refuse(ProtocolError(code, f"{exc.message}; {req_id} was not answered", req_id))
            return
        self.routed.pop(req_id, None)
        self._sent.discard(req_id)
        self._remember_answered(req_id)

    def _refuse(self, exc: ProtocolError) -> None:
        self.log.info("bad frame from operator", code=exc.code, req_id=exc.req_id)
        if self._pump is not None:
            self._pump.send(p.error_frame(exc.code, exc.message, exc.req_id))

    def _resolve(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "ping":  # frames are handled in order: everything before it is done
            if self._pump is not None:
                self._pump.send(p.pong_frame(data["id"]))
            return
        self.settle_reply(kind, data, via=ReplyVia.SOCKET)

    def settle_reply(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        via: ReplyVia,
        principal: str | None = None,
    ) -> None:
        """Settle a request this node issued with ``data``, a reply of ``kind``
        (its schema already checked), whatever path it came by; raises
        ``ProtocolError`` naming why it changed nothing.

        The one place a reply is judged: it must be pending here (not answered
        already, not moved to another holder), of the kind that answers it, and
        fill an ask's answer form.  ``principal``: who replied over REST (a
        socket's reply is its session minter's).  A reply from anywhere but
        the socket withdraws the request from the socket with ``cancel``
        (``answered_elsewhere``)."""
        req_id = data["req_id"]
        req = self.pending.get(req_id)
        # A done future with the request still here: its deadline has just
        # fired and the attempt has not yet woken to withdraw it.  The clock
        # won; counting this reply too would end the request twice.
        if req is None or req.future.done():
            raise self.why_not_pending(req_id)
        _judge(req, kind, data)
        self._remember_answered(req_id)
        if via is ReplyVia.SOCKET:
            self._forget(req)
        else:
            shown = req_id in self._sent
            self._forget(req, p.ANSWERED_ELSEWHERE)
            if shown and self._pump is not None:
                self._pump.send(p.cancel_frame(req_id, p.ANSWERED_ELSEWHERE))
        self._count(req, kind, data, via, principal or session_principal(self), self.sid)

    def settle_unheld(
        self, req: PendingRequest, kind: str, data: dict[str, Any], *, via: ReplyVia, principal: str
    ) -> None:
        """Settle ``req``, a request this session issued that no session holds
        now (it waits for a role nobody holds: ``operators/moves.py``), with
        ``data`` on ``principal``'s authority; judged as ``settle_reply``
        judges a held one.  Raises ``ProtocolError`` naming why it changed nothing."""
        if req.holder is not None or req.waiting_for is None or req.future.done():
            raise self.why_not_pending(req.req_id)
        _judge(req, kind, data)
        self._remember_answered(req.req_id)
        self._count(req, kind, data, via, principal, None)

    def _count(
        self,
        req: PendingRequest,
        kind: str,
        data: dict[str, Any],
        via: ReplyVia,
        principal: str,
        held_by: str | None,
    ) -> None:
        """``data`` answers ``req``: counted, reported (event and audit row), and
        handed to the attempt awaiting it."""
        face = str(p.FACE_OF[req.kind])
        self._metrics.reply_received(face, time.monotonic() - req.issued_mono, via, kind)
        self._tracing.request_replied(req.req_id, kind, principal, via)
        if self._report is not None:
            decided = reply_entry(
                kind,
                data,
                req.answer_schema,
                principal=principal,
                task_id=req.task_id,
                session_id=held_by,
            )
            self._report(EventType.REPLY, req.task_id, req.req_id, face, held_by, decided, via=via)
        if not req.future.done():
            req.future.set_result((kind, data))

    def why_not_pending(self, req_id: str) -> ProtocolError:
        """Why a reply to ``req_id`` finds nothing pending here.  Answered
        comes first: a request this session moved on and then settled while
        nobody held it (``settle_unheld``) is answered, not moving."""
        if req_id in self._answered:
            return ProtocolError(
                Code.ALREADY_ANSWERED,
                f"{req_id} was already answered; the first reply won and this one changed nothing",
                req_id,
            )
        if req_id in self._moved:
            return ProtocolError(
                Code.ALREADY_MOVED,
                f"{req_id} has moved on to another holder ({self._moved[req_id]}); "
                "this reply changed nothing",
                req_id,
            )
        return ProtocolError(
            Code.UNKNOWN_REQ_ID,
            f"{req_id} is not pending (never issued, withdrawn, or timed out)",
            req_id,
        )

    def moved_away(self, req_id: str, why: str) -> None:
        """``req_id`` went on to another holder (``why``: the move's reason, as
        ``release`` gives it): a late reply here gets ``already_moved``."""
        self._moved[req_id] = why
        if len(self._moved) > ANSWERED_MEMORY:
            self._moved.popitem(last=False)

    def _remember_answered(self, req_id: str) -> None:
        self._answered[req_id] = None
        if len(self._answered) > ANSWERED_MEMORY:
            self._answered.popitem(last=False)

    # -- the three faces --------------------------------------------------

    async def ask(
        self,
        task_id: str,
        question: Any,
        *,
        parent_req_id: str | None = None,
        answer_schema: dict[str, Any] | None = None,
        issued: Issued | None = None,
        deadline: RequestDeadline | None = None,
    ) -> Any:
        _, reply = await self._request(
            "ask",
            task_id,
            lambda req_id: p.ask_frame(req_id, task_id, question, parent_req_id, answer_schema),
            deadline or self._config_deadline("ask"),
            answer_schema=answer_schema,
            issued=issued,
        )
        if reply.get("error"):
            raise AttemptFailed(
                Code.OPERATOR_ERROR, f"senior reported: {reply['error']}", reason=reply["error"]
            )
        return reply["value"]

    async def before(self, ctx: AttemptContext) -> HookVerdict:
        _, reply = await self._request(
            "hook_before",
            ctx.task_id,
            lambda req_id: p.hook_before_frame(
                req_id, ctx.task_id, ctx.agent, ctx.attempt, ctx.parent_req_id
            ),
            self._deadline_of(ctx, "hook_before"),
        )
        return HookVerdict(reply["ok"], reply.get("reason"))

    def _config_deadline(self, kind: str) -> RequestDeadline:
        """A request no task rule covers: the config's own deadline for its kind."""
        return fresh(kind, self._config_rules[kind], self._settings.remind_at_fraction)

    def _deadline_of(self, ctx: AttemptContext, kind: str) -> RequestDeadline:
        if ctx.deadlines is None:
            return self._config_deadline(kind)
        return ctx.deadlines.for_request(kind)

    async def after(self, ctx: AttemptContext, result: WorkerResult) -> None:
        await self._request(
            "hook_after",
            ctx.task_id,
            lambda req_id: p.hook_after_frame(
                req_id, ctx.task_id, ctx.agent, ctx.attempt, result.as_dict(), ctx.parent_req_id
            ),
            _TOLD,
            expects_reply=False,
        )

    async def execute(
        self, ctx: AttemptContext, system: str | None, prompt: Any, capability: str
    ) -> WorkerResult | None:
        # ``system`` and ``prompt`` stay server-side: the sub-agent fetches them
        # with its credential ("thin control").
        directive = self._directive.render(
            base_url=self._base_url(),
            task_id=ctx.task_id,
            attempt=ctx.attempt,
            agent=ctx.agent,
            worker_handle=ctx.worker_handle,
        )
        kind, reply = await self._request(
            "spawn",
            ctx.task_id,
            lambda req_id: p.spawn_frame(
                req_id,
                ctx.task_id,
                ctx.agent,
                ctx.attempt,
                capability,
                ctx.worker_handle,
                directive,
                ctx.parent_req_id,
            ),
            self._deadline_of(ctx, "spawn"),
            ctx=ctx,
        )
        if kind == "spawn_halt":
            value = {"halted": True, "reason": reply.get("reason"), "value": reply.get("value")}
            return WorkerResult(value, ok=True, halted=True)
        if reply.get("error"):
            raise AttemptFailed(Code.OPERATOR_ERROR, f"operator reported: {reply['error']}")
        return WorkerResult(reply["value"], reply["ok"])


# A hook_after is only told: nothing to wait for.
_TOLD = RequestDeadline("hook_after", 0, OnTimeout.FAIL, None, None)


def _judge(req: PendingRequest, kind: str, data: dict[str, Any]) -> None:
    """A reply of ``kind`` must answer ``req``'s kind and fill an ask's answer
    form; ``ProtocolError`` says why not (refused before it counts: the
    request stays pending)."""
    if p.REPLY_TO.get(kind) != req.kind:
        raise ProtocolError(
            Code.WRONG_REPLY, f"{kind} cannot answer a {req.kind} request", req.req_id
        )
    if req.answer_schema is not None and not data.get("error"):
        problem = answer_problem(req.answer_schema, data.get("value"))
        if problem is not None:
            raise ProtocolError(
                Code.BAD_ANSWER, f"{problem}; the ask is still pending, answer it again", req.req_id
            )


def _cancel_reason(exc: asyncio.CancelledError) -> str:
    return str(exc.args[0]) if exc.args and exc.args[0] else "cancelled"


class _NoReply(Exception):
    """A request's own timer ran out before its reply came."""


def _no_reply(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_NoReply())

"""``RequestMoves``: a pending request passes from its holder to another, exactly once.

The one primitive behind every move of a request (an escalation step today;
reassignment and seat handover use the same): the request keeps its
``req_id``, ``parent_req_id``, frame, clock and the future its issuer awaits;
only who holds it changes.

* **Withdrawn first, synchronously.**  ``move`` takes the request out of its
  holder's pending map (a ``cancel`` frame with the move's reason goes to its
  socket, on whichever node) before anything awaits, so a reply racing the
  move either arrived first (then there is nothing to move) or finds the
  request gone and gets ``already_moved``.  A second ``move`` of the same
  request while the first is under way finds it held by nobody and does
  nothing: exactly once.
* **Then issued to the target** (stored before it is shown, as any request:
  ``OperatorSession.adopt``), in the background, named, through the server's
  one place for tasks.  With a shared store the withdrawal's row delete and
  the new holder's insert go through the store's one ordered write queue, so
  the same ``req_id`` is never stored twice.
* **A role nobody holds**: the request waits for it here, with no holder,
  until a session with that role is seated on this node (minted, restored,
  found in the store, or minted on another node, which says so: the
  directory's ``seated_elsewhere``), which is then issued it and shows it as
  it would any request (at once, or at its socket's next attach).  Only the
  request's own clock ends that wait: its next step, or its deadline.  (Unlike a dispatch,
  which fails ``operator_not_found`` at once when a task names a role nobody
  holds: a request already issued is not failed for where it was sent.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from operator_server.logs import get_logger
from operator_server.wire.times import iso

log = get_logger(__name__)


def move_record(
    at: float,
    source: str,
    to: str,
    reason: str,
    step: int,
    by: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One move in a request's history as ``GET /v1/requests`` shows it and
    its stored row keeps it: when, from which role or sid to which, why
    (``escalated``, ``reassigned``, ``handed_over``), the chain step it is at
    after it, who moved it (a principal's name; null when its chain did) and
    their note."""
    return {
        "at": iso(at),
        "from": source,
        "to": to,
        "reason": reason,
        "step": step,
        "by": by,
        "note": note,
    }


class Movable(Protocol):
    """What a move needs of a pending request (``session.Movable``)."""

    req_id: str
    future: asyncio.Future[Any]
    holder: Any  # the ``Holder`` holding it, or None
    moving: bool
    then: tuple[str, str] | None  # a move asked for while one was under way
    waiting_for: str | None


class Holder(Protocol):
    """What a move needs of a session (``session.OperatorSession``)."""

    roles: list[str]

    def release(self, req: Any, reason: str) -> bool: ...

    async def adopt(self, req: Any) -> bool:
        """Hold ``req``; False when this session has ended meanwhile."""
        ...


# Finds the session holding a role (here, or brought from the store): None when nobody does.
HolderOf = Callable[[str], Awaitable[Holder | None]]
Spawn = Callable[..., "asyncio.Task[Any]"]


class RequestMoves:
    def __init__(self, holder_of: HolderOf, spawn: Spawn) -> None:
        self._holder_of = holder_of
        self._spawn = spawn
        # role -> requests sent to it while nobody held it, in the order sent.
        self.waiting: dict[str, list[Movable]] = {}

    def move(self, req: Movable, role: str, reason: str) -> bool:
        """Withdraw ``req`` from its holder (``cancel`` with ``reason``) and
        issue it to whoever holds ``role``.  False, and nothing changed, when
        it is settled or no longer held where it was.  Asked while an earlier
        move of it is still under way (a step shorter than a store round
        trip), it is done right after that one: steps are never skipped."""
        if req.future.done():
            return False
        if req.moving:
            req.then = (role, reason)
            return True
        if not self._withdraw(req, reason):
            return False
        req.moving = True
        try:
            self._spawn(self._issue_to(req, role), name=f"move:{req.req_id}")
        except RuntimeError:  # shutting down: the request's issuer is being cancelled too
            req.moving = False
        return True

    def _withdraw(self, req: Movable, reason: str) -> bool:
        source = req.holder
        if source is not None and not source.release(req, reason):
            return False
        self._unwait(req)
        return True

    async def _issue_to(self, req: Movable, role: str, target: Holder | None = None) -> None:
        try:
            while True:
                if target is None:
                    target = await self._holder_of(role)
                if req.future.done():
                    return
                if target is None or not await target.adopt(req):
                    log.info("request waits for a role nobody holds", req_id=req.req_id, role=role)
                    req.waiting_for = role
                    self.waiting.setdefault(role, []).append(req)
                target = None
                # A move asked for meanwhile (``then``) follows this one.
                if req.then is None or req.future.done():
                    return
                (role, reason), req.then = req.then, None
                if not self._withdraw(req, reason):
                    return
        finally:
            req.moving = False
            req.then = None

    def seated(self, session: Holder) -> None:
        """``session`` now serves here: it is issued what waits for its roles."""
        for role in session.roles:
            for req in self.waiting.pop(role, []):
                req.waiting_for = None
                if not req.future.done():
                    req.moving = True
                    self._spawn(self._issue_to(req, role, session), name=f"move:{req.req_id}")

    def settled(self, req: Movable) -> None:
        """``req`` has its outcome: it waits for no role any more."""
        self._unwait(req)

    def _unwait(self, req: Movable) -> None:
        role, req.waiting_for = req.waiting_for, None
        if role is not None:
            queue = self.waiting.get(role, [])
            if req in queue:
                queue.remove(req)
            if not queue:
                self.waiting.pop(role, None)

"""Stand-in seats: a role nobody holds, that a notification rule covers, waits.

A task naming a role no session holds fails ``operator_not_found`` at once
(``engine/resolution.py``).  When a ``[[notify]]`` rule covers that role,
someone is told of its requests and may answer them from where they are: so
every face the task names it for is served instead by the role's
*stand-in seat*: a session of this process that holds the role without
claiming it (anyone may still join with it), has no socket and no token
anyone knows, and is never stored or expired.  Its requests:

* wait, with no reconnect grace, until their own deadline (and its
  on-timeout action) or escalation step — a kind the rules do not list too
  (nobody is told of it, but it is listed and may be answered);
* are listed by ``GET /v1/requests`` under the role, so whoever may operate
  it sees them and may answer over REST or through a notification's link;
* move, when a session with the role is seated here (minted or restored),
  to that session (``cancel`` reason ``handed_over`` on nothing: the seat has
  no socket), which shows them as any request it holds.

With a store many nodes share, the dispatch first looks the role up in the
store (a session of another node may hold it); only when none does is the
seat made, on the node running the task, and kept through the relay
(``RequestRelay.stand_in``: a stored row that claims no role), so that its
requests are rows every node lists and passes replies to.  A session minted
on another node is announced (``seated``) and brought here, then handed
the seat's requests.  Each node has its own seat for a role; a dead node's
seats go with it at its burial (docs/cluster.md, "Notifications").
"""

from __future__ import annotations

import functools
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from operator_server.audit.principals import SERVER
from operator_server.engine.faces import Face
from operator_server.logs import get_logger
from operator_server.operators.moves import RequestMoves
from operator_server.operators.session import HANDED_OVER, OperatorSession, hash_token
from operator_server.store import SessionRecord

log = get_logger(__name__)
# Whether a notification rule tells of requests of a kind (ask, hook_before,
# spawn) held under a role.
Covered = Callable[[str, str], bool]
# The kinds that wait for an answer (``hook_after`` is only told).
AWAITED = ("ask", "hook_before", "spawn")


class Seating(Protocol):
    """What the seats need of the operator directory."""

    moves: RequestMoves
    sessions: dict[str, OperatorSession]

    def seat_stand_in(self, record: SessionRecord) -> OperatorSession: ...

    def unseat_stand_in(self, sid: str) -> None: ...


class StandInSeats:
    def __init__(self, directory: Seating, covered: Covered) -> None:
        self._directory = directory
        self._covered = covered
        self.seats: dict[str, OperatorSession] = {}  # role -> its stand-in seat

    def stand_in(self, name: str, face: Face) -> OperatorSession | None:
        """The seat serving ``face`` for role ``name`` nobody holds; None when
        no rule covers the role (or ``name`` is a sid: a session that left).
        One seat serves every face of its role, but waits only with the kinds
        of request some rule tells of: any other kind issued to it fails
        ``operator_not_found`` at once (``OperatorSession.serves``), as it
        would with no seat, rather than wait with nobody told."""
        del face
        if name.startswith("op-") or not any(self._covered(name, kind) for kind in AWAITED):
            return None
        seat = self.seats.get(name)
        if seat is None or seat.sid not in self._directory.sessions:  # none, or forced out
            now = time.time()
            record = SessionRecord(
                f"op-{uuid.uuid4()}",
                hash_token(secrets.token_urlsafe(32)),  # a token nobody is given
                [name],
                f"stand-in for role {name!r} until someone holds it (notifications)",
                now,
                now,
                SERVER,
            )
            seat = self._directory.seat_stand_in(record)
            seat.serves = functools.partial(self._covered, name)
            self.seats[name] = seat
            log.info("a stand-in seat waits for a role nobody holds", role=name, sid=seat.sid)
        return seat

    def seated(self, session: OperatorSession) -> None:
        """``session`` now holds its roles here: their seats' requests go to it."""
        for role in session.roles:
            seat = self.seats.pop(role, None)
            if seat is None:
                continue
            for req in list(seat.pending.values()):
                self._directory.moves.move(req, role, HANDED_OVER)
            self._directory.unseat_stand_in(seat.sid)

"""Where a session's requests are kept and how they reach a socket on any node.

``OperatorSession`` and ``OperatorDirectory`` are handed a ``RequestRelay`` at
start-up (``app.py``) and never ask whether they are clustered:

* ``NoRelay`` (here): one process.  The session's memory is the only record of
  its requests, and its socket, when there is one, is here; nothing is stored,
  nothing is sent, and no other node can speak of a session.
* ``cluster.relay.Relay``: a store many nodes share.  Every request is a row
  before it is shown, and frames and replies travel to and from whichever node
  holds the socket.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from operator_server.store import NO_COURSE, PendingRow, RequestCourse, SessionRecord


class RequestRelay(Protocol):
    @property
    def node_id(self) -> str:
        """This node: a stored request it did not issue was issued elsewhere."""
        ...

    async def issue(
        self,
        sid: str,
        req_id: str,
        frame: dict[str, Any],
        issued_at: float,
        course: RequestCourse = NO_COURSE,
        *,
        attached_here: bool = False,
    ) -> bool:
        """Record a request (and its course as it stands: a move or an
        escalation step records it again) before it is shown; True when
        another node holds the socket and was sent the frame.
        ``attached_here``: the session's socket is on this node as far as it
        knows (then the frame is not made ready for another node in advance)."""
        ...

    def finish(self, sid: str, req_id: str, withdrawn: str | None) -> None:
        """The request is answered or withdrawn (``withdrawn``: the reason the
        node showing it gives the operator in its ``cancel``)."""
        ...

    async def attach(self, sid: str, again: int | None = None) -> tuple[int, list[PendingRow]]:
        """A socket attached here: its epoch, and every stored request of the
        session in issue order, whichever node issued it.  ``again``: the
        epoch of the socket already attached here, to be the session's again
        (other nodes may have taken it for gone); an epoch returned that is
        not ``again`` is a newer socket's, elsewhere (and no request comes)."""
        ...

    def detach(self, sid: str) -> None: ...

    async def reply(
        self,
        owner: str,
        sid: str,
        kind: str,
        data: dict[str, Any],
        via: str = "socket",
        principal: str = "",
        *,
        trace: Mapping[str, str] | None = None,
    ) -> None:
        """Hand a reply to ``owner``, the node that issued the request (``via``
        and ``principal``: where it came from and who sent it over REST)."""
        ...

    async def gone(self, sid: str, code: str, message: str) -> None:
        """The session was deleted: every other node forgets it."""
        ...

    async def other_nodes(self) -> list[str]:
        """Every other live node (where a request may be that this one does not hold)."""
        ...

    async def reassign(self, node: str, args: dict[str, Any]) -> dict[str, Any]:
        """Have ``node``, which issued a request, move it
        (``Handovers.reassign_here``): its answer.  Raises ``NodeUnreachable``."""
        ...

    async def hand_over(self, source: str, target: str, roles: list[str], by: str) -> list[str]:
        """Every other node gives ``source``'s roles (``roles``: the target's
        now) and the requests it issued to ``source`` to ``target``
        (``Handovers.handed_over_here``), each move naming ``by`` (the principal
        that asked for the handover): the req_ids they moved."""
        ...

    async def seated(self, sid: str, roles: list[str]) -> None:
        """``sid`` holds ``roles`` now: other nodes with requests waiting for
        one of them issue them to it."""
        ...

    def stand_in(self, record: SessionRecord) -> None:
        """A stand-in seat was made here (``vacancies.py``): keep it where its
        requests are kept, without claiming its role, before any is issued."""

    def unseat(self, sid: str) -> None:
        """The stand-in seat ``sid`` went (its requests went to a holder)."""


class NoRelay:
    """One process: the session's memory is the whole record (see the module)."""

    # No row is ever read back (``attach`` returns none), so no request is
    # ever compared with it.
    node_id = ""

    async def issue(
        self,
        sid: str,
        req_id: str,
        frame: dict[str, Any],
        issued_at: float,
        course: RequestCourse = NO_COURSE,
        *,
        attached_here: bool = False,
    ) -> bool:
        return False

    def finish(self, sid: str, req_id: str, withdrawn: str | None) -> None:
        pass

    async def attach(self, sid: str, again: int | None = None) -> tuple[int, list[PendingRow]]:
        return again or 0, []

    def detach(self, sid: str) -> None:
        pass

    async def reply(
        self,
        owner: str,
        sid: str,
        kind: str,
        data: dict[str, Any],
        via: str = "socket",
        principal: str = "",
        *,
        trace: Mapping[str, str] | None = None,
    ) -> None:
        # Only a request another node issued is replied to through the relay,
        # and with one process there is none.
        raise AssertionError(f"{data.get('req_id')} has no other node to go to")

    async def gone(self, sid: str, code: str, message: str) -> None:
        pass

    async def other_nodes(self) -> list[str]:
        return []

    async def reassign(self, node: str, args: dict[str, Any]) -> dict[str, Any]:
        # Only a request another node holds is moved through the relay.
        raise AssertionError(f"{args.get('req_id')} has no other node to go to")

    async def hand_over(self, source: str, target: str, roles: list[str], by: str) -> list[str]:
        return []

    async def seated(self, sid: str, roles: list[str]) -> None:
        pass

    def stand_in(self, record: SessionRecord) -> None:
        pass

    def unseat(self, sid: str) -> None:
        pass

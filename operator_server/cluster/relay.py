"""Operator requests between nodes (cluster mode): any node holds the socket.

A task's requests are issued by the node running it; the operator's socket may
be on any node.  So, with a shared store:

* Every request is a durable row (``pending_requests``) before it is shown,
  written under a lock on its session's row that a socket attach also takes:
  either the attach reads the request, or the issuer reads where the socket
  now is and sends the frame there (``deliver``).
* Attaching a socket on a node tells the node that held it before to close
  its socket (``replaced``, with an epoch so that a late notice never closes a
  newer socket), and replays every unanswered request of the session, from the
  rows, in issue order, once; the nodes waiting for them are told they were
  delivered (``delivered``), so their reconnect grace stops.
* A reply arriving on the socket's node (or over REST on any node) for a
  request issued elsewhere is passed to the issuer (``operator_reply``, a
  ``Cluster.call``), which checks it exactly as a local reply — wrong kind,
  answer form, already answered — and the sender gets back whatever error it
  raised.
* A withdrawn request (timeout, cancel, attempt end) loses its row, and the
  socket's node sends the operator its ``cancel`` (``withdraw``).
* A deleted session is forgotten by every node (``session_gone``).
* A move asked for on a node that did not issue the request (a REST
  reassign, a socket's ``reassign`` frame, a seat handover) is done by the
  node that did (``reassign_request``, ``hand_over_seat``: ``Cluster.call``s):
  its requests, its copy of the sessions and its role map live there.  A
  session newly holding roles is announced to every node (``seated``), so a
  request waiting on another node for one of them is issued to it at once.

``route`` handles each of those messages for the operator directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from operator_server.cluster.calls import Cluster
from operator_server.cluster.messages import (
    Deliver,
    Delivered,
    M,
    Replaced,
    Seated,
    SessionGone,
    Withdraw,
)
from operator_server.cluster.store import ClusterStore
from operator_server.errors import Code, CodedError, ProtocolError
from operator_server.logs import get_logger
from operator_server.store import (
    NO_COURSE,
    Fenced,
    PendingRow,
    RequestCourse,
    SessionRecord,
    StoreError,
)

log = get_logger(__name__)


class RelayedSession(Protocol):
    """What the relay does to a session held here when another node speaks of it
    (the operators' session keeps it; named here so cluster/ imports nothing of
    operators/)."""

    def deliver_from(self, node: str, req_id: str, frame: dict[str, Any]) -> None: ...
    def withdrawn_elsewhere(self, req_id: str, reason: str) -> None: ...
    def delivered_elsewhere(self) -> None: ...
    def replaced_elsewhere(self, epoch: int) -> None: ...
    def reply_from_elsewhere(
        self, kind: str, data: dict[str, Any], via: str = ..., principal: str = ...
    ) -> None: ...


class SessionsHere(Protocol):
    """The sessions this node holds (the operator directory)."""

    @property
    def sessions(self) -> Mapping[str, RelayedSession]: ...
    def remove(self, sid: str, code: Code, message: str) -> Any: ...
    def resync_sockets(self) -> None: ...
    def reassign_here(self, args: dict[str, Any]) -> Awaitable[dict[str, Any]]: ...
    def handed_over_here(
        self, source: str, target: str, roles: list[str], by: str
    ) -> Awaitable[list[str]]: ...
    def seated_elsewhere(self, sid: str, roles: list[str]) -> None: ...
    def resync_waiting(self) -> None: ...
    def holds_socket(self, name: str) -> bool: ...


class Relay:
    def __init__(self, store: ClusterStore, cluster: Cluster) -> None:
        self.store = store
        self.cluster = cluster
        self.node_id = cluster.node_id

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
        """Store the request with its course; True when another node holds the
        socket and was sent the frame.  Raises ``StoreError`` (``Fenced``
        while this node's leases have lapsed)."""
        if self.store.leases_lapsed:
            # Woken after its leases lapsed (a freeze): the request's run may be
            # another node's now, and the operator must not do its work twice.
            # Nothing is shown; the run's end is refused in turn, and it is let go.
            raise Fenced(f"{req_id} not issued: this node's leases lapsed")
        deliver = Deliver(sid, req_id, frame)
        # Sent by the insert's own transaction when it fits in a NOTIFY.  Not
        # encoded for a socket attached here (the usual case once tasks run on
        # their operator's node): if it moved meanwhile, it is sent after.
        notice = None if attached_here else self.cluster.bus.inline(deliver)
        where, told = await self.store.issue_request(sid, req_id, frame, issued_at, notice, course)
        if where is None or where == self.node_id:
            return False
        if not told:
            # Not delivered if this notice is lost: the row is replayed by that
            # node's resync, or at the next attach.
            await self.cluster.send(where, deliver)
        return True

    def finish(self, sid: str, req_id: str, withdrawn: str | None) -> None:
        self.store.finish_request_soon(sid, req_id, withdrawn)

    async def attach(self, sid: str, again: int | None = None) -> tuple[int, list[PendingRow]]:
        return await self.store.attach_socket(sid, again)

    def detach(self, sid: str) -> None:
        self.store.detach_socket_soon(sid)

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
        """Hand a reply to the node that issued the request; raises its
        ``ProtocolError``, or ``NodeUnreachable``.  ``via`` and ``principal``:
        where it came from (a socket, REST) and who sent it, for the event and
        the audit trail written there; ``trace``: the request frame's context,
        so the hop is part of the task's trace."""
        args = {"sid": sid, "kind": kind, "data": data, "via": via, "principal": principal}
        await self.cluster.call(owner, "operator_reply", args, parent=trace)

    async def gone(self, sid: str, code: str, message: str) -> None:
        await self.cluster.send(None, SessionGone(sid, code, message))

    async def other_nodes(self) -> list[str]:
        return [node for node in await self.store.live_nodes() if node != self.node_id]

    async def reassign(self, node: str, args: dict[str, Any]) -> dict[str, Any]:
        return await self.cluster.call(node, "reassign_request", args)

    async def hand_over(self, source: str, target: str, roles: list[str], by: str) -> list[str]:
        """Asked of every live node at once; one that cannot be reached is
        logged (it moves nothing, and its role map learns the roles' new
        holder from the store only when it next looks them up)."""
        try:
            nodes = await self.other_nodes()
        except StoreError as exc:
            log.error("could not read the live nodes to hand a seat over", error=str(exc))
            return []
        args = {"source": source, "target": target, "roles": roles, "by": by}
        answers = await asyncio.gather(
            *(self.cluster.call(node, "hand_over_seat", args) for node in nodes),
            return_exceptions=True,
        )
        moved: list[str] = []
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, CodedError | StoreError):
                log.error("a node did not take a handover", node=node, error=str(answer))
            elif isinstance(answer, BaseException):
                raise answer
            else:
                moved.extend(str(req_id) for req_id in answer["moved"])
        return moved

    async def seated(self, sid: str, roles: list[str]) -> None:
        await self.cluster.send(None, Seated(sid, roles))

    def stand_in(self, record: SessionRecord) -> None:
        # Its requests are rows like any (every node lists them and passes
        # replies here), and a row names a stored session; through the one
        # ordered write queue, the seat is stored before its first request.
        self.store.put_stand_in_soon(record)

    def unseat(self, sid: str) -> None:
        self.store.delete_stand_in_soon(sid)

    def route(self, directory: SessionsHere) -> None:
        """Handle what other nodes send about the sessions ``directory`` holds here."""
        cluster = self.cluster

        def to_session(
            act: Callable[[RelayedSession, str, M], None],
        ) -> Callable[[str, M], None]:
            """A handler for a message about one session: ignored unless it is here."""

            def handle(node: str, message: M) -> None:
                session = directory.sessions.get(message.sid)  # type: ignore[attr-defined]
                if session is not None:
                    act(session, node, message)

            return handle

        def gone(node: str, message: SessionGone) -> None:
            if node != cluster.node_id and message.sid in directory.sessions:
                directory.remove(message.sid, Code(message.code), message.message)

        async def operator_reply(args: dict[str, Any]) -> dict[str, Any]:
            session = directory.sessions.get(args["sid"])
            if session is None:
                raise ProtocolError(
                    Code.UNKNOWN_REQ_ID,
                    f"{args['data']['req_id']} is not pending (its session is gone here)",
                    args["data"]["req_id"],
                )
            session.reply_from_elsewhere(
                args["kind"],
                args["data"],
                str(args.get("via", "socket")),
                str(args.get("principal", "")),
            )
            return {}

        async def reassign_request(args: dict[str, Any]) -> dict[str, Any]:
            return await directory.reassign_here(args)

        async def hand_over_seat(args: dict[str, Any]) -> dict[str, Any]:
            roles = [str(role) for role in args["roles"]]
            moved = await directory.handed_over_here(
                args["source"], args["target"], roles, str(args.get("by") or "")
            )
            return {"moved": moved}

        def seated(node: str, message: Seated) -> None:
            if node != cluster.node_id:
                directory.seated_elsewhere(message.sid, message.roles)

        def deliver(s: RelayedSession, node: str, m: Deliver) -> None:
            s.deliver_from(node, m.req_id, m.frame)

        def withdraw(s: RelayedSession, node: str, m: Withdraw) -> None:
            s.withdrawn_elsewhere(m.req_id, m.reason)

        def delivered(s: RelayedSession, node: str, m: Delivered) -> None:
            s.delivered_elsewhere()

        def replaced(s: RelayedSession, node: str, m: Replaced) -> None:
            s.replaced_elsewhere(m.epoch)

        cluster.on(Deliver, to_session(deliver))
        cluster.on(Withdraw, to_session(withdraw))
        cluster.on(Delivered, to_session(delivered))
        cluster.on(Replaced, to_session(replaced))
        cluster.on(SessionGone, gone)
        cluster.on(Seated, seated)
        cluster.serve("operator_reply", operator_reply)
        cluster.serve("reassign_request", reassign_request)
        cluster.serve("hand_over_seat", hand_over_seat)
        cluster.bus.on_resync(directory.resync_sockets)
        # A ``seated`` notice may have been lost: look for the roles again.
        cluster.bus.on_resync(directory.resync_waiting)

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
* A reply arriving on the socket's node for a request issued elsewhere is
  passed to the issuer (``operator_reply``, a ``Cluster.call``), which checks
  it exactly as a local reply — wrong kind, answer form, already answered —
  and the socket's node sends back whatever error it raised.
* A withdrawn request (timeout, cancel, attempt end) loses its row, and the
  socket's node sends the operator its ``cancel`` (``withdraw``).
* A deleted session is forgotten by every node (``session_gone``).
"""

from __future__ import annotations

from typing import Any

from operator_server.cluster.store import ClusterStore
from operator_server.engine.cluster import Cluster
from operator_server.store import Fenced, PendingRow


class Relay:
    def __init__(self, store: ClusterStore, cluster: Cluster) -> None:
        self.store = store
        self.cluster = cluster
        self.node_id = cluster.node_id

    async def issue(self, sid: str, req_id: str, frame: dict[str, Any], issued_at: float) -> bool:
        """Store the request; True when another node holds the socket and was
        sent the frame.  Raises ``StoreError`` (``Fenced`` while this node's
        leases have lapsed)."""
        if self.store.leases_lapsed:
            # Woken after its leases lapsed (a freeze): the request's run may be
            # another node's now, and the operator must not do its work twice.
            # Nothing is shown; the run's end is refused in turn, and it is let go.
            raise Fenced(f"{req_id} not issued: this node's leases lapsed")
        body = {"sid": sid, "req_id": req_id, "frame": frame}
        # Sent by the insert's own transaction when it fits in a NOTIFY.
        notice = self.cluster.bus.inline("deliver", body)
        where, told = await self.store.issue_request(sid, req_id, frame, issued_at, notice)
        if where is None or where == self.node_id:
            return False
        if not told:
            # Not delivered if this notice is lost: the row is replayed by that
            # node's resync, or at the next attach.
            await self.cluster.send(where, "deliver", body)
        return True

    def finish(self, sid: str, req_id: str, withdrawn: str | None) -> None:
        self.store.finish_request_soon(sid, req_id, withdrawn)

    async def attach(self, sid: str) -> tuple[int, list[PendingRow]]:
        return await self.store.attach_socket(sid)

    def detach(self, sid: str) -> None:
        self.store.detach_socket_soon(sid)

    async def reply(self, owner: str, sid: str, kind: str, data: dict[str, Any]) -> None:
        """Hand a reply to the node that issued the request; raises its
        ``ProtocolError``, or ``NodeUnreachable``."""
        await self.cluster.call(owner, "operator_reply", {"sid": sid, "kind": kind, "data": data})

    async def gone(self, sid: str, code: str, message: str) -> None:
        await self.cluster.send(
            None, "session_gone", {"sid": sid, "code": code, "message": message}
        )

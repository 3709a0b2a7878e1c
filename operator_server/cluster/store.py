"""What a store must do to be shared by many nodes, beyond ``Store``.

Only the PostgreSQL store keeps this contract; the memory and SQLite stores
do not carry it at all (one process has no other nodes, and keeps its
operator requests in memory).  Cluster code takes a ``ClusterStore``; single
-node code never sees one.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol, runtime_checkable

from operator_server.store.base import (
    NO_COURSE,
    Audit,
    Events,
    Notice,
    NoticeMessage,
    PendingRow,
    PlacedSession,
    RequestCourse,
    Row,
    SessionRecord,
    Store,
)


@runtime_checkable
class ClusterStore(Protocol):
    """Routing between nodes: who runs a task, where an operator's socket is,
    and the operator requests waiting on it, as rows every node reads."""

    @property
    def leases_lapsed(self) -> bool:
        """No lease renewal succeeded for a whole lease (``Store.leases_lapsed``)."""

    @property
    def bus(self) -> Any:
        """The nodes' message bus (``cluster.bus.PgBus``)."""

    async def bury_dead_nodes(self) -> list[str]:
        """Forget the nodes that stopped beating; which ones."""

    async def live_nodes(self) -> list[str]:
        """Every node whose heartbeat is current, this one included."""

    async def task_owner(self, task_id: str) -> str | None:
        """The node whose lease on ``task_id`` is current, if any."""

    async def socket_node_of(self, name: str) -> str | None:
        """The live node holding the socket of the session ``name`` names (its
        sid, or a role it holds), if any."""

    async def place_new_task(
        self,
        record: dict[str, Any],
        events: Events,
        operator: str,
        notice: str,
        *,
        audit: Audit = (),
    ) -> str | None:
        """Store a new task (durably) leased to the live node holding the
        socket of the session ``operator`` names (its sid, or a role it holds)
        and send that node ``notice`` (a bus message), by the same
        transaction: that node.  With no such socket on another live node,
        store it leased here, as ``put_task`` would: None."""

    async def hand_task(self, task_id: str, node: str, notice: str) -> bool:
        """Lease a live task this node holds to ``node`` instead, and send it
        ``notice`` in the same transaction (after every write queued before);
        False when the lease was not this node's."""

    async def claim_placed(
        self, task_ids: Collection[str] | None, running: Collection[str]
    ) -> list[Row]:
        """Take the tasks leased to this node by another's ``place_new_task``
        (those of ``task_ids``; None: all) that are not ``running`` here and
        whose lease is still current: each at a new epoch, its lease renewed."""

    async def issue_request(
        self,
        sid: str,
        req_id: str,
        frame: dict[str, Any],
        issued_at: float,
        notice: str | None = None,
        course: RequestCourse = NO_COURSE,
    ) -> tuple[str | None, bool]:
        """Store an operator request (durably) with its ``course`` as it
        stands: the node holding the session's socket as the row commits, if
        any, and whether it was sent ``notice`` (a bus message) by the same
        transaction, when it is another node."""

    def finish_request_soon(self, sid: str, req_id: str, withdrawn: str | None) -> None:
        """Forget a request; ``withdrawn`` (a reason): also have the node showing
        it to the operator send a ``cancel``."""

    async def attach_socket(
        self, sid: str, again: int | None = None
    ) -> tuple[int, list[PendingRow]]:
        """This node now holds the session's socket (the node before it is told
        so): the attach's epoch (one more than the last), and every request
        still unanswered, in issue order.  ``again``: the epoch of the socket
        attached here, to be this node's again in the store (after a cut
        listener, or a burial that unplugged it) at the same epoch; when a
        newer one attached since, nothing changes and the stored epoch is
        returned with no requests."""

    def detach_socket_soon(self, sid: str) -> None:
        """This node no longer holds the session's socket."""

    async def pending_of(self, sid: str) -> list[PendingRow]:
        """Every unanswered request of the session, whichever node issued it."""

    async def pending_requests(self, req_id: str | None = None) -> list[tuple[str, PendingRow]]:
        """Every unanswered request of every session (or only ``req_id``), in
        issue order, each with its session's sid."""

    async def placed_sessions(self, sid: str | None = None) -> list[PlacedSession]:
        """Every session (or only ``sid``), oldest first, with the node holding
        its socket — only a node whose heartbeat is current — and its count of
        unanswered requests."""

    def put_stand_in_soon(self, record: SessionRecord) -> None:
        """Store a stand-in seat (``operators/vacancies.py``) of this node: a
        session row every node lists with its role, that claims no role,
        that no node restores or finds by its sid, and that goes when this
        node is buried."""

    def delete_stand_in_soon(self, sid: str) -> None:
        """Forget a stand-in seat of this node (and any request row it still has)."""

    async def adopt_notices(self) -> tuple[list[Notice], list[NoticeMessage]]:
        """Make this node the sender of every notification a node whose
        heartbeat lapsed had queued or still owed (each adopted by exactly
        one node): the notices no message carries yet, and the messages
        still to be tried, as ``Store.load_notices`` gives them."""


def cluster_store(store: Store) -> ClusterStore | None:
    """``store`` as a shared store, or None for a one-process one."""
    return store if isinstance(store, ClusterStore) else None

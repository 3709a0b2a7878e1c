"""Owner routing: where a task's work is done.

Only the node running a task's attempt can take its worker's calls or cancel
it.  The engine asks its ``routing`` before doing such work itself:
``LocalRouting`` (one process) always says "here"; ``ClusterRouting`` asks
the store which node holds the task's lease and, when it is another node,
runs the method there (``cluster/serving.py`` serves it) and returns its
answer.  It also waits for an end committed by another node, and decides where a new
task runs (``place``: ``cluster/placement.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from operator_server.cluster.calls import Cluster
from operator_server.cluster.store import ClusterStore
from operator_server.store.base import Audit, Events

if TYPE_CHECKING:
    from operator_server.engine.tasks import Task

Args = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Placing:
    """Where a new task went: ``node`` runs it (None: this node), and
    whether the placing write ``stored`` it already."""

    node: str | None
    stored: bool


# To be stored and run here, as on one process.
HERE = Placing(None, stored=False)


class Places(Protocol):
    """Where a new task runs (``cluster/placement.py``, which imports the engine)."""

    async def place(
        self, task: Task, record: dict[str, Any], events: Events, audit: Audit
    ) -> Placing: ...

    async def place_next(self, task: Task) -> str | None: ...

    async def wait_for_socket(self, task: Task) -> str | None: ...


class Routing(Protocol):
    @property
    def shared(self) -> bool:
        """Other nodes may run tasks (and end them) too."""

    async def on_owner(
        self, task_id: str, method: str, args: Args, *, longer: float = 0
    ) -> dict[str, Any] | None:
        """``method`` run on the node that owns ``task_id``, with ``args()``
        (built only then), and its answer; None when it is to be done here."""

    async def place(
        self, task: Task, record: dict[str, Any], events: Events, audit: Audit
    ) -> Placing:
        """Where a new task runs: stored (with ``events`` and ``audit``) and
        handed to another node, stored to run here, or ``HERE`` (to be
        stored and run here)."""

    async def place_next(self, task: Task) -> str | None:
        """Before a later attempt of ``task``, running here: the node it was
        handed to, which runs that attempt; None when it runs here."""

    async def wait_for_socket(self, task: Task) -> str | None:
        """Before the first attempt of ``task``, created here: the node it was
        handed to once its operator's socket attached there; None when its
        attempt runs here."""

    def watch_ended(self, task_id: str) -> asyncio.Future[str | None]:
        """Set when another node announces ``task_id`` ended: to its record as
        it ended (JSON text) when the news carried it, else None (look again)."""

    def unwatch(self, task_id: str, future: asyncio.Future[str | None]) -> None: ...


class LocalRouting:
    """One process: every task is run here."""

    shared = False

    async def on_owner(
        self, task_id: str, method: str, args: Args, *, longer: float = 0
    ) -> dict[str, Any] | None:
        del task_id, method, args, longer
        return None

    async def place(
        self, task: Task, record: dict[str, Any], events: Events, audit: Audit
    ) -> Placing:
        del task, record, events, audit
        return HERE

    async def place_next(self, task: Task) -> str | None:
        del task
        return None

    async def wait_for_socket(self, task: Task) -> str | None:
        del task
        return None

    def watch_ended(self, task_id: str) -> asyncio.Future[str | None]:
        del task_id  # nothing else ends a task: never set
        return asyncio.get_running_loop().create_future()

    def unwatch(self, task_id: str, future: asyncio.Future[str | None]) -> None:
        del task_id, future


class ClusterRouting:
    """Many nodes: the task's lease says which one runs it."""

    shared = True

    def __init__(self, cluster: Cluster, store: ClusterStore, placement: Places) -> None:
        self.cluster = cluster
        self._store = store
        self._placement = placement

    async def on_owner(
        self, task_id: str, method: str, args: Args, *, longer: float = 0
    ) -> dict[str, Any] | None:
        owner = await self._store.task_owner(task_id)
        if owner is None or owner == self.cluster.node_id:
            return None
        return await self.cluster.call(owner, method, args(), longer=longer)

    async def place(
        self, task: Task, record: dict[str, Any], events: Events, audit: Audit
    ) -> Placing:
        return await self._placement.place(task, record, events, audit)

    async def place_next(self, task: Task) -> str | None:
        return await self._placement.place_next(task)

    async def wait_for_socket(self, task: Task) -> str | None:
        return await self._placement.wait_for_socket(task)

    def watch_ended(self, task_id: str) -> asyncio.Future[str | None]:
        return self.cluster.watch_ended(task_id)

    def unwatch(self, task_id: str, future: asyncio.Future[str | None]) -> None:
        self.cluster.unwatch(task_id, future)

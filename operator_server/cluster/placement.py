"""Where a new task runs: on the node holding its operator's socket.

Behind a load balancer a task is created on whichever node the request
reached, and its operator's socket may be on another.  Run there, every one
of its requests, replies and worker calls would cross between the nodes
(``relay.py``, ``calls.py``: a NOTIFY transaction each way).  So the work
moves once instead: the creating node stores the task leased to the node
holding the socket, found by the storing statement itself
(``ClusterStore.place_new_task``: no read before it), and the same
transaction tells that node (``Placed``, one message); that node claims it
(``ClusterStore.claim_placed``: like a takeover, at a new epoch, but only
while the lease is still current) and runs its attempts there.  Its spawn
directives then name that node's ``public_url``, so the sub-agent's calls go
straight there too.

What stays as before:

* The task names an operator whose socket is on this node, on no live node
  (nobody connected: its requests wait for a socket, on this node, as
  before), or it cannot be looked up: it runs here.
* A child task created while its parent's spawn is held here runs here, so
  its requests nest under that spawn.
* An attempt in flight stays where it runs when the socket moves or a seat is
  handed over (the relay carries its requests); the task's next attempt, if
  it has one, is handed to the socket's new node (``place_next``: the lease
  moves there, and that node claims it), as is the next task.
* A task created while no live node holds a socket of its operator, whose
  session exists (its socket dropped, within or past its reconnect grace),
  waits before its first attempt (``wait_for_socket``): nothing is issued
  yet, so nothing the operator was shown has to be withdrawn.  When a socket
  for it attaches on another node (``SocketAttached``, sent by the attach
  itself), the task is handed there (``hand_task`` and ``Placed``, as for a
  next attempt), which runs it; attached here, it runs here.  The wait lasts
  at most ``reconnect_grace_s``: then the attempt starts here as before, and
  its first request waits its own reconnect grace (so the operator has up to
  twice the grace, never less than before).  An attempt whose requests were
  issued already is never moved: the relay carries them.
* A ``Placed`` lost with the listener is claimed on the resync (every task
  leased here and not running is claimed); a target that dies before claiming
  lets the lease lapse, and any node takes the task over as it would a dead
  node's (fencing and exactly-once as for any takeover).

The operator looked up is the one that serves the task's worker (its backend
face), else its spawn hook, else its senior bridge: the face whose calls are
the most frequent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from operator_server.background import Background
from operator_server.cluster.calls import Cluster
from operator_server.cluster.messages import Placed, SocketAttached
from operator_server.cluster.routing import HERE, Placing
from operator_server.cluster.store import ClusterStore
from operator_server.engine.reads import decode_row
from operator_server.logs import get_logger
from operator_server.store import StoreError
from operator_server.store.base import Audit, Events
from operator_server.wire.values import Face

if TYPE_CHECKING:
    from operator_server.engine.engine import Engine
    from operator_server.engine.tasks import Task

log = get_logger(__name__)
# The face whose operator decides where a task runs, first found first.
PLACED_BY = (Face.BACKEND, Face.SPAWN_HOOK, Face.SENIOR_BRIDGE)


class Placement:
    def __init__(
        self,
        cluster: Cluster,
        store: ClusterStore,
        background: Background,
        reconnect_grace_s: float,
    ) -> None:
        self.cluster = cluster
        self._store = store
        self._background = background
        self._grace_s = reconnect_grace_s
        # Set (and replaced) each time a socket attaches on any node, or such
        # news may have been missed: each waiting task looks again.
        self._attached = asyncio.Event()
        # Whether a session with a socket on this node answers to a name (a sid
        # or a role): set by the operator directory (``Wired.route``).
        self.held_here: Callable[[str], bool] = lambda name: False
        self._engine: Engine | None = None
        # One claim at a time: a task is claimed, then adopted, before the next
        # claim reads which tasks run here.  What is heard meanwhile is
        # claimed together next (a burst of tasks: a few round trips, not one
        # each, so their leases do not lapse waiting in line).
        self._claiming = asyncio.Lock()
        self._wanted: set[str] = set()
        self._want_all = False
        self._claimer: asyncio.Task[None] | None = None
        cluster.on(Placed, self._heard)
        cluster.on(SocketAttached, lambda _node, _message: self._look_again())
        cluster.bus.on_resync(lambda: self._claim_soon(None))
        cluster.bus.on_resync(self._look_again)

    def runs(self, engine: Engine) -> None:
        """Claimed tasks are run by ``engine``."""
        self._engine = engine

    @staticmethod
    def operator_of(task: Task) -> str | None:
        """The name (sid or role) whose socket decides where ``task`` runs."""
        spec = task.operator
        if spec is None:
            return None
        names = spec.face_names()
        return next((name for face in PLACED_BY if (name := names[face])), None)

    async def place(
        self, task: Task, record: dict[str, Any], events: Events, audit: Audit
    ) -> Placing:
        """Store the new task leased to the node holding its operator's socket
        and hand it there, or, with that socket on no other live node, leased
        here: where it runs.  ``HERE`` (not stored) when its operator's socket
        is here or it names none: it is stored and run here as any task.
        Raises ``StoreError`` when the write fails (nothing is stored then)."""
        name = self.operator_of(task)
        if name is None or self.held_here(name):
            return HERE
        notice = Placed([task.id]).encode(self.cluster.node_id)
        node = await self._store.place_new_task(record, events, name, notice, audit=audit)
        return Placing(node, stored=True)

    async def place_next(self, task: Task) -> str | None:
        """Before a later attempt of a task running here: when its operator's
        socket is now on another node (it moved, or the seat was handed over),
        hand the task there, which runs the next attempt: that node.  None:
        the next attempt runs here."""
        name = self.operator_of(task)
        if name is None or self.held_here(name):
            return None
        try:
            node = await self._store.socket_node_of(name)
        except StoreError as exc:  # then here, as before
            log.warning("could not look up where an operator's socket is", error=str(exc))
            return None
        if node is None or node == self.cluster.node_id:
            return None
        return await self._hand(task, node)

    async def wait_for_socket(self, task: Task) -> str | None:
        """Before the first attempt of a task created here: while its
        operator's session has no socket on any live node, wait (at most
        ``reconnect_grace_s``) for one to attach; attached on another node,
        hand the task there: that node.  None: the attempt runs here (the
        socket is here, there is no such session, or the wait ran out)."""
        name, engine = self.operator_of(task), self._engine
        if name is None or engine is None:
            return None
        loop = asyncio.get_running_loop()
        until = loop.time() + self._grace_s
        while not self.held_here(name):
            attached = self._attached  # before the look: an attach meanwhile wakes it
            try:
                node = await self._store.socket_node_of(name)
                if node is None and not await self._session_waits(engine, task, name):
                    return None
            except StoreError as exc:  # then here, as before
                log.warning("could not look up where an operator's socket is", error=str(exc))
                return None
            if node == self.cluster.node_id:
                return None
            if node is not None:
                return await self._hand(task, node)
            left = until - loop.time()
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(left):
                    await attached.wait()
            except TimeoutError:
                return None
        return None

    @staticmethod
    async def _session_waits(engine: Engine, task: Task, name: str) -> bool:
        """A session answers to ``name`` and none of its sockets is attached:
        the task waits for one.  With no such session the attempt fails at
        once (``operator_not_found``) or waits on a stand-in seat, as before."""
        resolution = engine.resolution
        await resolution.find_operators(task)
        sid = name if name in resolution.sessions else resolution.roles.resolve(name)
        session = resolution.get(sid) if sid is not None else None
        return session is not None and not getattr(session, "stand_in", False)

    async def _hand(self, task: Task, node: str) -> str | None:
        """Hand ``task``, running here, to ``node``: that node, or None when
        it stays here (its lease is not this node's, or the write failed)."""
        notice = Placed([task.id]).encode(self.cluster.node_id)
        try:
            return node if await self._store.hand_task(task.id, node, notice) else None
        except StoreError as exc:  # then here, as before
            log.warning("could not hand a task to its operator's node", error=str(exc))
            return None

    def _look_again(self) -> None:
        self._attached.set()
        self._attached = asyncio.Event()

    # -- this node's side: claim what was placed here -----------------------

    def _heard(self, node: str, message: Placed) -> None:
        del node
        self._claim_soon(message.ids)

    def _claim_soon(self, ids: list[str] | None) -> None:
        if ids is None:
            self._want_all = True
        else:
            self._wanted.update(ids)
        if self._claimer is None or self._claimer.done():
            self._claimer = self._background.spawn(self._claim_wanted(), name="claim-placed")

    async def _claim_wanted(self) -> None:
        while self._wanted or self._want_all:
            ids = None if self._want_all else list(self._wanted)
            self._wanted.clear()
            self._want_all = False
            await self.claim(ids)

    async def claim(self, ids: list[str] | None) -> int:
        """Take and run the tasks placed here (``ids``; None: every one leased
        here and not running); how many."""
        engine = self._engine
        if engine is None:
            return 0
        async with self._claiming:
            try:
                rows = await self._store.claim_placed(ids, engine.held())
            except StoreError as exc:  # its lease lapses and another node takes it over
                log.warning("could not claim tasks placed here", error=str(exc))
                return 0
            for row in rows:
                task = decode_row(row)
                if task is not None:
                    await engine.recover_task(task)
        return len(rows)

"""Leases and takeover: the rounds every node of a cluster runs, renewing
every ``cluster.lease_s / 3`` and looking for dead nodes every ``/ 6``.

Each round renews the leases of the runs this node holds (never a lease
without a run here), gives up those it let go, buries the nodes that stopped
beating, takes over the tasks whose leases lapsed elsewhere, and recounts
the cluster's tasks.  Cut off from the store for a whole lease, the node lets
its running tasks go: the other nodes take them over now, and whatever it
still wrote would be refused (``Fenced``).  It takes back whatever nobody
took once the store answers again.  At a graceful stop it hands its tasks
over (``hand_over``): another node takes them at its next look rather than
after ``lease_s``.

One process leases nothing: ``NoLeases`` is passed instead.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Protocol

from operator_server.background import Background
from operator_server.cluster.store import ClusterStore
from operator_server.engine import Engine
from operator_server.logs import get_logger
from operator_server.recovery import take_over_lapsed
from operator_server.store import Store, StoreError

log = get_logger(__name__)


class Leases(Protocol):
    @property
    def hands_over(self) -> bool:
        """A stop hands the running tasks to other nodes (they do not end)."""

    def start(self) -> None:
        """Start the rounds (once the store is open and recovered)."""

    async def hand_over(self) -> None:
        """At a graceful stop, after the runs ended: let go of every lease."""


class NoLeases:
    """One process: nothing is leased, nothing is handed over."""

    hands_over = False

    def start(self) -> None:
        pass

    async def hand_over(self) -> None:
        pass


class LeaseKeeper:
    hands_over = True

    def __init__(
        self,
        engine: Engine,
        store: Store,
        shared: ClusterStore,
        background: Background,
        lease_s: float,
    ) -> None:
        self.engine = engine
        self.store = store
        self.shared = shared
        self.background = background
        self.lease_s = lease_s
        # When this node last renewed its leases (monotonic clock).
        self.renewed = time.monotonic()

    def start(self) -> None:
        self.renewed = time.monotonic()
        self.background.spawn(self._keep_forever(), name="lease-keeper")

    async def keep_once(self) -> None:
        """Renew this node's leases, then take over any that lapsed elsewhere."""
        store, engine = self.store, self.engine
        # Woken after its leases lapsed (SIGSTOP, a stalled host): another node may
        # run its tasks now.  Drop every run without a word, then renew; what
        # nobody took is taken back next round (not this one: the runs must end first).
        lapsed = store.leases_lapsed
        lapsed_runs = lapsed and engine.let_go_all("this node's leases lapsed")
        if lapsed_runs:
            log.warning(
                "leases lapsed; let every run go to whichever node takes it", tasks=lapsed_runs
            )
        try:
            await store.renew_leases(engine.held())  # never a lease without a run here
            if engine.unleased:  # let go: taken over now, not once their leases lapse
                let_go = list(engine.unleased)
                await store.release_leases(let_go)
                engine.unleased.difference_update(let_go)
            dead = await self.shared.bury_dead_nodes()
        except StoreError as exc:  # healthz says so; the next round tries again
            log.error("could not renew task leases", error=str(exc))
            cut_off = time.monotonic() - self.renewed >= self.lease_s
            if cut_off and (dropped := engine.let_go_all("lost the store for a whole lease")):
                log.warning("let running tasks go to the other nodes", tasks=dropped)
            return
        self.renewed = time.monotonic()
        if lapsed:
            # Beating again, after the other nodes may have buried this one and
            # unplugged the sockets it holds: requests for those would wait,
            # unseen, for an attach that never comes.  Re-read as after a cut
            # listener (sockets attached again, their requests replayed), now
            # that the heartbeat is back: a socket plugged in before it would
            # be unplugged again as a dead node's.
            log.warning("beating again after this node's leases lapsed; re-reading what changed")
            self.shared.bus.resync()
        if dead:
            log.warning("nodes stopped beating; their requests are withdrawn", nodes=dead)
        if not lapsed_runs:
            await take_over_lapsed(engine, store)
        await engine.recount()

    async def look_once(self) -> None:
        """Between renewals: bury the nodes that stopped beating and take over
        what they ran (and any lease that lapsed elsewhere)."""
        if self.store.leases_lapsed:
            return  # this node's own rounds come first (``keep_once``)
        try:
            dead = await self.shared.bury_dead_nodes()
        except StoreError as exc:  # the next round tries again
            log.warning("could not look for dead nodes", error=str(exc))
            return
        if dead:
            log.warning("nodes stopped beating; their requests are withdrawn", nodes=dead)
        await take_over_lapsed(self.engine, self.store)

    async def _keep_forever(self) -> None:
        # Renewals every third of a lease: two may fail before another node
        # takes over.  Looks for dead nodes twice as often, so a dead node's
        # tasks are taken at most a sixth of a lease after its heartbeat
        # lapsed.  On a fixed cadence (each round's own time not added to
        # the next wait), so that bound holds however long a round takes.
        step = self.lease_s / 6
        due = time.monotonic()
        for n in itertools.count(1):
            due = max(due + step, time.monotonic())
            await asyncio.sleep(due - time.monotonic())
            try:
                await (self.keep_once() if n % 2 == 0 else self.look_once())
            except Exception:  # one bad round must not end renewal
                log.exception("lease round failed; the next one runs in cluster.lease_s / 6")

    async def hand_over(self) -> None:
        try:
            await self.store.flush()
            await self.store.release_leases()
        except StoreError as exc:  # then they lapse after cluster.lease_s instead
            log.error("could not hand over running tasks", error=str(exc))
        else:
            log.info("handed over running tasks to the other nodes")

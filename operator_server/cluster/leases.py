"""Leases and takeover: the rounds every node of a cluster runs, renewing
every ``cluster.lease_s / 3`` and looking for dead nodes every ``/ 6``.

A renewal renews the leases of the runs this node holds (never a lease
without a run here) and its heartbeat.  A look gives up the leases of runs
it let go, buries the nodes that stopped beating, takes over the tasks whose
leases lapsed elsewhere, and recounts the cluster's tasks.  Cut off from the
store for a whole lease, the node lets its running tasks go: the other nodes
take them over now, and whatever it still wrote would be refused
(``Fenced``).  It takes back whatever nobody took once the store answers
again.  At a graceful stop it hands its tasks
over (``hand_over``): another node takes them at its next look rather than
after ``lease_s``.

One process leases nothing: ``NoLeases`` is passed instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from operator_server.background import Background
from operator_server.cluster.store import ClusterStore
from operator_server.engine import Engine
from operator_server.logs import get_logger
from operator_server.recovery import take_over_lapsed
from operator_server.store import Store, StoreError

log = get_logger(__name__)

# Renewing rounds that re-read what changed once a node beats again after its
# leases lapsed (``renew_once``): that one, and the next.
RESYNCS_AFTER_LAPSE = 2


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
        # Renewals still to re-read what changed after this node's leases lapsed.
        self._resyncs_due = 0
        # The runs let go at a lapse are still ending: the next look takes
        # nothing back (it would take their tasks back from under them).
        self._runs_ending = False
        self._looks = 0

    def start(self) -> None:
        self.renewed = time.monotonic()
        # Two loops, not one: a look waits behind this node's queued writes
        # (each read does), and those may wait on rows a frozen node holds
        # (up to ``lease_s``); renewals must never wait on them, or this node's
        # own leases would lapse.
        # The first renewal at once: recovery may have taken a while since the
        # store opened (and beat), and leases count from that beat.
        self.background.spawn(self._every(3, self.renew_once, at_once=True), name="lease-renewer")
        self.background.spawn(self._every(6, self.look_once), name="lease-looker")

    async def renew_once(self) -> None:
        """Renew this node's leases (and its heartbeat, in the same statement)."""
        store, engine = self.store, self.engine
        # Woken after its leases lapsed (SIGSTOP, a stalled host): another node may
        # run its tasks now.  Drop every run without a word, then renew; what
        # nobody took is taken back by a later look (not the next: the runs
        # must end first).
        lapsed = store.leases_lapsed
        lapsed_runs = lapsed and engine.let_go_all("this node's leases lapsed")
        if lapsed_runs:
            self._runs_ending = True
            log.warning(
                "leases lapsed; let every run go to whichever node takes it", tasks=lapsed_runs
            )
        try:
            await store.renew_leases(engine.held())  # never a lease without a run here
        except StoreError as exc:  # healthz says so; the next round tries again
            log.error("could not renew task leases", error=str(exc))
            cut_off = time.monotonic() - self.renewed >= self.lease_s
            if cut_off and (dropped := engine.let_go_all("lost the store for a whole lease")):
                self._runs_ending = True
                log.warning("let running tasks go to the other nodes", tasks=dropped)
            return
        self.renewed = time.monotonic()
        if lapsed:
            # Beating again, after the other nodes may have buried this one and
            # unplugged the sockets it holds: requests for those would wait,
            # unseen, for an attach that never comes.  Re-read as after a cut
            # listener (sockets attached again, their requests replayed), now
            # that the heartbeat is back (a socket plugged in before it would
            # be unplugged again as a dead node's).  Once more a round later:
            # a survivor's burial that read the cluster before this heartbeat
            # may still unplug a socket re-attached after it (it re-checks a
            # row it locks against its older snapshot); by the next round any
            # such statement has ended (its lock waits are bounded).
            log.warning("beating again after this node's leases lapsed; re-reading what changed")
            self._resyncs_due = RESYNCS_AFTER_LAPSE
        if self._resyncs_due:
            self._resyncs_due -= 1
            self.shared.bus.resync()

    async def look_once(self) -> None:
        """Give up the leases of runs let go, bury the nodes that stopped
        beating, take over what they ran (and any lease that lapsed
        elsewhere), and every other look recount the cluster's tasks."""
        store, engine = self.store, self.engine
        if store.leases_lapsed:
            return  # this node's own renewal comes first (``renew_once``)
        try:
            if engine.unleased:  # let go: taken over now, not once their leases lapse
                let_go = list(engine.unleased)
                await store.release_leases(let_go)
                engine.unleased.difference_update(let_go)
            dead = await self.shared.bury_dead_nodes()
        except StoreError as exc:
            # The next look tries again.  Leases lapse on their own, so this
            # one still takes over what lapsed: a burial held up (a frozen
            # node's lock, past ``lock_timeout``) must not hold the takeover up.
            log.warning("could not look for dead nodes", error=str(exc))
            dead = []
        if dead:
            log.warning("nodes stopped beating; their requests are withdrawn", nodes=dead)
        try:
            if self._runs_ending or store.leases_lapsed:
                self._runs_ending = False
            elif engine.accepting:  # not while stopping: what it took would be handed back
                await take_over_lapsed(engine, store)
            self._looks += 1
            if self._looks % 2 == 0:
                await engine.recount()
        except StoreError as exc:  # the next look tries again
            log.warning("could not take over lapsed tasks", error=str(exc))

    async def _every(
        self, per_lease: int, round_once: Callable[[], Awaitable[None]], *, at_once: bool = False
    ) -> None:
        """``round_once`` every ``lease_s / per_lease``.  Renewals every third of
        a lease: two may fail before another node takes over.  Looks twice as
        often, so a dead node's tasks are taken at most a sixth of a lease
        after its heartbeat lapsed.  On a fixed cadence (a round's own time is
        not added to the next wait), so those bounds hold however long a round
        takes."""
        step = self.lease_s / per_lease
        due = time.monotonic() - (step if at_once else 0)
        while True:
            due = max(due + step, time.monotonic())
            await asyncio.sleep(due - time.monotonic())
            try:
                await round_once()
            except Exception:  # one bad round must not end the rounds
                log.exception("lease round failed; the next one runs as due")

    async def hand_over(self) -> None:
        try:
            await self.store.flush()
            await self.store.release_leases()
        except StoreError as exc:  # then they lapse after cluster.lease_s instead
            log.error("could not hand over running tasks", error=str(exc))
        else:
            log.info("handed over running tasks to the other nodes")

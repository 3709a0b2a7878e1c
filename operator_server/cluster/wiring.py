"""Cluster mode is set up here, and only here, at start-up.

With a store many nodes share (one that keeps ``ClusterStore``), the engine
routes each task's work to the node that owns it, streams follow every
node's events from the store (in the order of the one sequence, never this
node's own ahead of the others'), other nodes' calls are served, operator
requests are relayed to whichever node holds the socket, and leases are kept.
With a one-process store none of it exists: the engine keeps its
``LocalRouting``, the operator sessions keep their requests in memory
(``app.py`` hands them ``operators.relay.NoRelay``), and ``NoLeases`` keeps
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from operator_server.background import Background
from operator_server.cluster.calls import Cluster
from operator_server.cluster.leases import LeaseKeeper, Leases, NoLeases
from operator_server.cluster.messages import KeyRevoked
from operator_server.cluster.placement import Placement
from operator_server.cluster.relay import Relay, SessionsHere
from operator_server.cluster.routing import ClusterRouting, LocalRouting, Routing
from operator_server.cluster.serving import serve_calls
from operator_server.cluster.store import ClusterStore, cluster_store
from operator_server.config import Settings
from operator_server.engine import Engine
from operator_server.store import AdoptNotices, Events, Store
from operator_server.tracing import Tracing


@dataclass
class Wired:
    """What the rest of the app is handed: a relay for the operator directory
    (None: one process, whose sessions keep their requests in memory), and the
    lease keeper."""

    relay: Relay | None = None
    leases: Leases = field(default_factory=NoLeases)
    bus: Any = None  # ``cluster.bus.PgBus``; None: one process
    cluster: Cluster | None = None
    shared: ClusterStore | None = None
    placement: Placement | None = None

    @property
    def adopt_notices(self) -> AdoptNotices | None:
        """How notifications take over what stopped nodes owed; None: one
        process (a restart loads what it owed itself)."""
        return None if self.shared is None else self.shared.adopt_notices

    def follow_stopped_nodes(self, heard: Callable[[], None]) -> None:
        """Have ``heard()`` called when other nodes are found stopped, and when
        such news may have been missed (the listener was cut)."""
        if self.cluster is not None and self.bus is not None:
            self.cluster.on_nodes_gone(lambda _nodes: heard())
            self.bus.on_resync(heard)

    def route(self, directory: SessionsHere) -> None:
        """Hand what other nodes send about sessions to ``directory`` (the
        sessions held here); with one process nothing is sent.  New tasks
        stay here when ``directory`` holds their operator's socket."""
        if self.relay is not None:
            self.relay.route(directory)
        if self.placement is not None:
            self.placement.held_here = directory.holds_socket

    def follow_revocations(self, forget: Callable[[str | None], None]) -> None:
        """Have ``forget(key_id)`` called as any node revokes an API key, and
        ``forget(None)`` (everything) when notices may have been missed (the
        listener was cut); with one process the revoking route calls it."""
        if self.bus is not None:
            self.bus.on(KeyRevoked, lambda _node, message: forget(message.key_id))
            self.bus.on_resync(lambda: forget(None))


class ClusterWiring:
    """Built before the engine, whose routing it decides; ``finish`` wires
    the rest once the engine exists (the engine is never told it is clustered)."""

    def __init__(
        self,
        store: Store,
        background: Background,
        settings: Settings,
        tracing: Tracing | None = None,
    ) -> None:
        self._store, self._background, self._settings = store, background, settings
        self._shared = cluster_store(store)
        self._cluster = (
            None
            if self._shared is None
            else Cluster(self._shared.bus, background, settings.cluster.lease_s, tracing)
        )
        self._placement = (
            None
            if self._cluster is None or self._shared is None
            else Placement(self._cluster, self._shared, background, settings.reconnect_grace_s)
        )
        self.routing: Routing = (
            LocalRouting()
            if self._cluster is None or self._shared is None or self._placement is None
            else ClusterRouting(self._cluster, self._shared, self._placement)
        )

    def finish(self, engine: Engine) -> Wired:
        """Set up the rest of cluster mode if the store is shared; before it opens."""
        cluster, shared, placement = self._cluster, self._shared, self._placement
        if cluster is None or shared is None or placement is None:
            return Wired()
        # Streams publish what the tail reads from the rows, not this node's commits.
        self._store.observe_events(_published_by_the_tail)
        cluster.follow_events(engine.tail_events)
        serve_calls(engine, cluster)
        placement.runs(engine)
        lease_s = self._settings.cluster.lease_s
        leases = LeaseKeeper(engine, self._store, shared, self._background, lease_s)
        return Wired(
            Relay(shared, cluster), leases, shared.bus, cluster, shared, placement=placement
        )


def _published_by_the_tail(events: Events) -> None:
    del events

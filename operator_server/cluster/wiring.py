"""Cluster mode is set up here, and only here, at start-up.

With a store many nodes share (one that keeps ``ClusterStore``), the engine
routes each task's work to the node that owns it, streams follow every
node's events from the store (in the order of the one sequence, never this
node's own ahead of the others'), other nodes' calls are served, operator
requests are relayed to whichever node holds the socket, and leases are kept.
With a one-process store none of it exists: the engine keeps its
``LocalRouting``, there is no relay, and ``NoLeases`` keeps nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from operator_server.background import Background
from operator_server.cluster.calls import Cluster
from operator_server.cluster.leases import LeaseKeeper, Leases, NoLeases
from operator_server.cluster.relay import Relay
from operator_server.cluster.routing import ClusterRouting
from operator_server.cluster.serving import serve_calls
from operator_server.cluster.store import cluster_store
from operator_server.config import Settings
from operator_server.engine import Engine
from operator_server.store import Events, Store


@dataclass
class Wired:
    """What the rest of the app is handed: a relay for the operator directory
    (None: one process), and the lease keeper."""

    relay: Relay | None = None
    leases: Leases = field(default_factory=NoLeases)


def wire_cluster(engine: Engine, store: Store, background: Background, settings: Settings) -> Wired:
    """Set up cluster mode if ``store`` is shared; before the store opens."""
    shared = cluster_store(store)
    if shared is None:
        return Wired()
    cluster = Cluster(shared.bus, background, settings.cluster.lease_s)
    engine.routing = ClusterRouting(cluster, shared)
    # Streams publish what the tail reads from the rows, not this node's commits.
    store.observe_events(_published_by_the_tail)
    cluster.follow_events(engine._tail_events)
    serve_calls(engine, cluster)
    leases = LeaseKeeper(engine, store, shared, background, settings.cluster.lease_s)
    return Wired(Relay(shared, cluster), leases)


def _published_by_the_tail(events: Events) -> None:
    del events

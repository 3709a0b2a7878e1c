"""Cluster mode: many nodes on one shared PostgreSQL store.

Everything a node does with the others lives here, and nowhere else knows
the shape of what they say to each other (``tests/test_layering.py``):

* ``messages``: every message kind, declared once (fields, builder, parser);
* ``bus``: how messages travel (PostgreSQL ``LISTEN/NOTIFY``);
* ``calls``: a call to another node and its answer, waiting for other nodes'
  ends, following their events;
* ``serving``: the engine methods other nodes may call here;
* ``routing``: where a task's work is done (``LocalRouting`` in one process);
* ``placement``: a new task goes to the node holding its operator's socket;
* ``relay``: operator requests to whichever node holds the socket;
* ``leases``: the lease round and the hand-over at stop (``NoLeases`` in one
  process);
* ``store``: the contract a shared store keeps (``ClusterStore``; only the
  PostgreSQL store does);
* ``wiring``: the one place all of it is set up, at start-up.
"""

"""Cluster mode: many nodes on one shared PostgreSQL store.

Everything a node does with the others lives here, and nowhere else knows
the shape of what they say to each other:

* ``messages`` declares every message kind once (fields, builder, parser);
* ``store`` is the contract a store must keep to be shared (``ClusterStore``:
  only the PostgreSQL store keeps it; the one-process stores do not carry it).
"""

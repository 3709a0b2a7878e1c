"""PostgreSQL, through ``asyncpg``, with group commit: the store many nodes share.

Same records and semantics as ``store/sqlite.py``.  Writes — durable and
"soon" alike — go through one queue to one writer task, so they commit in the
order they were made; the writer takes what is queued (up to ``BATCH``) and
runs it in one transaction, so many writes under load cost one commit.
Durable callers are answered after the commit.

The writer is a single server, so what bounds a node is the round trips it
spends per operation, not the commit (docs/cluster.md).  Hence: the writes
a task makes most — its own write (fence check, row, lease, delivery), a
request issued, a request finished, an output, an ask — are each a row of
an array statement, and a batch sends all of its rows of one kind in one
statement (``writer.Gathered``: in rounds, so that two writes of one task or
one request keep their order; a batch of a few hundred operations is a
handful of statements, not one each); a batch runs without a savepoint per
operation, and only if one of them fails is it rolled back and run again
with a savepoint each, so a failing operation still fails alone; a run of
other plain "soon" writes of one statement is pipelined; and a batch's
events are stored together as it ends, in one statement (their ids drawn
under ``EVENTS_LOCK``, which is then held only from there to the commit).

Reads run on a pool, concurrently with the writer, but never ahead of a write
made before them: a read first waits until everything already queued has
committed (read-your-writes, as the SQLite store's single queue gives).

The schema is versioned in ``operator_server_schema`` and migrated at open
under a PostgreSQL advisory lock, so nodes starting together take turns: the
first migrates, the others find the work done.  ``claim`` takes nothing: the
database is made to be shared, and each node is told apart by its ``node_id``.

A lost connection fails the batch in flight (durable callers get
``StoreError``); the next batch takes a fresh connection from the pool.
Meanwhile ``healthy`` is False (healthz answers 503) until the database
answers again — the lease renewal asks it every ``lease_s / 3``.

Leases (cluster mode): every live task a node writes is leased to that node
(``task_leases``, in the same statement as the task row, so no other node ever
sees a live task without its lease), renewed for all of them in one UPDATE,
and dropped when the task ends.  ``take_over`` is how a node gets tasks:
those whose lease lapsed (or was let go at a graceful stop, or never written
by an older server), locked ``FOR UPDATE SKIP LOCKED`` and re-checked on the
lease row itself, so two nodes never take the same task.  Lease times are the
database's clock, never a node's.  Each takeover also moves the task's epoch
on (v8), and every write must match the epoch its node holds: a node that lost
a task cannot write it, even once the task ended and its lease row is gone.

Event ids come from a database sequence, not from the node, because several
nodes write events: the events each write publishes carry the ids it stored.
"""

from operator_server.store.postgres.schema import MIGRATIONS
from operator_server.store.postgres.store import PostgresStore

__all__ = ["MIGRATIONS", "PostgresStore"]

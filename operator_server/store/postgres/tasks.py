"""The task SQL: a task's fenced write, its asks, outputs and events, retention."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import asyncpg

from operator_server.audit.record import COLUMNS
from operator_server.cluster.bus import SQL_CHANNEL
from operator_server.store.base import TaskEvent
from operator_server.store.postgres.writer import Op
from operator_server.wire import json as wire_json

# The audit log's columns and their types, in ``COLUMNS`` order: a batch's
# rows go in one statement, an array per column.
AUDIT_COLUMNS = ", ".join(COLUMNS)
AUDIT_TYPES = ("bigint", "text", "float8", *["text"] * 10)
# As the batch's last statement takes them (``STORE_EVENTS_AND_TELL``: ``$7`` on).
AUDIT_ARRAYS = ", ".join(f"${i}::{t}[]" for i, t in enumerate(AUDIT_TYPES, 7))
# The end of a statement that takes tasks over (``TAKE_OVER``) or claims those
# placed here (``CLAIM_PLACED``): each task of its CTE ``{0}`` (a ``task_id``
# column) moves to a new epoch, so whatever its former holder still writes is
# refused, and is read back in creation order.
BUMP_EPOCHS = """bumped AS (
        UPDATE tasks t SET epoch = t.epoch + 1 FROM {0} k WHERE t.id = k.task_id
        RETURNING t.id, t.data, t.epoch, t.seq
    )
    SELECT id, data, epoch FROM bumped ORDER BY seq"""
# Tasks' writes, any number in one statement (one round trip: an array per
# column, ``$1`` to ``$11``, one row per task; the writer gathers a batch's,
# and never two of one task).  Each task's lease row and task row are locked
# first — a takeover waits for this write's commit, or this write sees the
# new holder and epoch — and a task is not written while another node holds
# its lease (``holder``: this node), nor unless its row's epoch is the one
# the writer holds (``expected``; NULL: a task new to this node, epoch 0): a
# takeover moves it on and the row keeps it after its lease is gone, so a
# node woken after its task was taken over and ended elsewhere is refused too
# (``Fenced``).  A missing row may be written (a new task).  A live task's
# first write leases it to its writer (a lease someone else holds stays
# theirs); a task's end drops its lease.  The row is an upsert, so it keeps
# its seq.  Its webhook delivery rides along; its events are stored by the
# writer.
#
# A new task may be placed (``place_by``: the session, by sid or a role it
# holds, whose socket decides where it runs; ``cluster/placement.py``): when
# that socket is on another live node, the task is leased to that node
# instead, which ``notice`` tells as the batch commits (it claims the task,
# ``CLAIM_PLACED``).  Deciding in the write, not in a read before it, saves
# the creating node a round trip and a wait for its writer's queue per task,
# and placing writes gather like any other.  One result row per task, in
# order: ``ok``, the lease's holder before, the row's epoch, and the node it
# was placed on (NULL: here).
WRITE_TASKS = f"""
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::text[],
                             $6::text[], $7::bool[], $8::float8[], $9::bigint[], $10::text[],
                             $11::text[])
            WITH ORDINALITY
            AS i(id, status, created_at, updated_at, data, holder, live, delivery, expected,
                 notice, place_by, n)
    ), holders AS MATERIALIZED (
        SELECT task_id, node_id FROM task_leases WHERE task_id = ANY($1::text[])
        ORDER BY task_id FOR UPDATE
    ), stored AS MATERIALIZED (
        SELECT id, epoch FROM tasks WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
    ), target AS MATERIALIZED (
        SELECT i.n, c.node_id FROM input i
        JOIN operator_sessions s ON s.sid = COALESCE(
            (SELECT sid FROM operator_roles WHERE role = i.place_by), i.place_by)
        JOIN cluster_nodes c ON c.node_id = s.socket_node AND c.expires_at > now()
        WHERE i.place_by IS NOT NULL AND c.node_id <> i.holder
    ), mine AS MATERIALIZED (
        SELECT i.*, h.node_id AS held_by, COALESCE(s.epoch, 0) AS epoch,
            t.node_id AS placed_on,
            (h.node_id IS NULL OR h.node_id = i.holder)
            AND (s.epoch IS NULL OR s.epoch = COALESCE(i.expected, 0)) AS ok
        FROM input i
        LEFT JOIN holders h ON h.task_id = i.id
        LEFT JOIN stored s ON s.id = i.id
        LEFT JOIN target t ON t.n = i.n
    ), task AS (
        INSERT INTO tasks (id, status, created_at, updated_at, data)
        SELECT id, status, created_at, updated_at, data FROM mine WHERE ok ORDER BY n
        ON CONFLICT (id) DO UPDATE SET
            status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, data = EXCLUDED.data
    ), leased AS (
        INSERT INTO task_leases (task_id, node_id, expires_at)
        SELECT id, COALESCE(placed_on, holder), now() + make_interval(secs => $12)
        FROM mine WHERE ok AND live
        ON CONFLICT (task_id) DO NOTHING
    ), unleased AS (
        DELETE FROM task_leases l USING mine m WHERE l.task_id = m.id AND m.ok AND NOT m.live
    ), delivery AS (
        INSERT INTO webhook_deliveries (task_id, due_at)
        SELECT id, delivery FROM mine WHERE ok AND delivery IS NOT NULL
        ON CONFLICT (task_id) DO UPDATE SET due_at = EXCLUDED.due_at
    ), told AS MATERIALIZED (
        SELECT pg_notify({SQL_CHANNEL.format("placed_on")}, notice) FROM mine
        WHERE ok AND placed_on IS NOT NULL AND notice IS NOT NULL
    )
    SELECT ok, held_by AS holder, epoch, placed_on, (SELECT count(*) FROM told) AS told
    FROM mine ORDER BY n
"""
# Event-storing transactions take turns (this lock, taken at a batch's end and
# held to commit): event ids from the shared sequence increase in commit order
# across nodes, so a reader following ``id > last`` never passes an id that
# commits later.
EVENTS_LOCK = 0x6F70_7365_7276_0002
# The lock and the ids in one round trip: every id is drawn in the projection
# of a row joined to the lock's, so after the lock is held.
NEXT_EVENT_IDS = """
    WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock($1))
    SELECT nextval('task_event_ids') FROM locked, generate_series(1, $2)
"""
# Retention on several nodes at once: SKIP LOCKED lets each sweep take rows the
# others are not already deleting, rather than queueing behind them.
DELETE_FINISHED = """
    WITH victims AS (
        SELECT seq FROM tasks
        WHERE status = ANY($1::text[]) AND updated_at < $2
        ORDER BY updated_at LIMIT $3
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM tasks t USING victims v WHERE t.seq = v.seq RETURNING t.id, t.status
    ), events AS (
        DELETE FROM task_events e USING gone g WHERE e.task_id = g.id
    ), deliveries AS (
        DELETE FROM webhook_deliveries d USING gone g WHERE d.task_id = g.id
    ), asks AS (
        DELETE FROM task_asks a USING gone g WHERE a.task_id = g.id
    ), outputs AS (
        DELETE FROM task_outputs o USING gone g WHERE o.task_id = g.id
    )
    SELECT status FROM gone
"""
# Asks, any number in one statement (``$1`` to ``$5``: task, attempt, ask id,
# data, the epoch its writer holds; one row per task), each written only
# while no other node (``$6``: this one) holds its task's lease and the task's
# epoch is the one its writer holds, as a task's own write is
# (``WRITE_TASKS``): a node that lost the task does not add to it, even after
# the task ended elsewhere.  (Skipped, not refused: nobody waits for an ask's
# write.)  One row per ask, in order.
UPSERT_ASKS = """
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bigint[])
            WITH ORDINALITY AS i(task_id, attempt, ask_id, data, expected, n)
    ), written AS (
        INSERT INTO task_asks (task_id, attempt, ask_id, data)
        SELECT task_id, attempt, ask_id, data FROM input i
        WHERE NOT EXISTS (SELECT 1 FROM task_leases WHERE task_id = i.task_id AND node_id <> $6)
          AND NOT EXISTS (
              SELECT 1 FROM tasks WHERE id = i.task_id AND epoch <> COALESCE(i.expected, 0))
        ORDER BY n
        ON CONFLICT (task_id, ask_id) DO UPDATE
            SET attempt = EXCLUDED.attempt, data = EXCLUDED.data
    )
    SELECT n FROM input ORDER BY n
"""
# Outputs, any number in one statement (``$1`` to ``$4``: task, attempt, data,
# epoch held; one row per task), fenced exactly as asks are (``UPSERT_ASKS``);
# each answers its seq when written, NULL when fenced off: a worker waits on
# this write (its 200 says the result is on disk), so a fenced one is
# refused, not skipped.
INSERT_OUTPUTS = """
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::bigint[])
            WITH ORDINALITY AS i(task_id, attempt, data, expected, n)
    ), written AS (
        INSERT INTO task_outputs (task_id, attempt, data)
        SELECT task_id, attempt, data FROM input i
        WHERE NOT EXISTS (SELECT 1 FROM task_leases WHERE task_id = i.task_id AND node_id <> $5)
          AND NOT EXISTS (
              SELECT 1 FROM tasks WHERE id = i.task_id AND epoch <> COALESCE(i.expected, 0))
        ORDER BY n
        RETURNING task_id, seq
    )
    SELECT w.seq FROM input i LEFT JOIN written w ON w.task_id = i.task_id ORDER BY i.n
"""
OUTPUTS_OF_TASKS = (
    "SELECT task_id, attempt, data FROM task_outputs WHERE task_id = ANY($1::text[]) ORDER BY seq"
)
ASKS_OF_TASKS = (
    "SELECT task_id, attempt, data FROM task_asks WHERE task_id = ANY($1::text[]) ORDER BY seq"
)
# A batch's last statement: its events, its audit rows (``$7`` to ``$19``,
# chained by the writer: ``audit.chain_audit``), and what it tells the other
# nodes (``$4``: the channel every node hears; ``$5``: the messages) — told
# only when another node has a row to hear them by (``$6``: this node).  Run
# with ``EVENTS_LOCK`` already held, so its snapshot sees every node that
# finished joining before this batch took the lock (``JOINED``).  The number
# of messages sent.
STORE_EVENTS_AND_TELL = f"""
    WITH stored AS (
        INSERT INTO task_events (id, task_id, data)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])
    ), audited AS (
        INSERT INTO audit_log ({AUDIT_COLUMNS}) SELECT * FROM unnest({AUDIT_ARRAYS})
    ), told AS (
        SELECT pg_notify($4, body) FROM unnest($5::text[]) AS body
        WHERE EXISTS (SELECT 1 FROM cluster_nodes WHERE node_id <> $6)
    )
    SELECT count(*) FROM told
"""
# A node joining reads the newest event id under ``EVENTS_LOCK``, after its
# heartbeat row committed: a batch that did not see the row (and told nobody)
# held the lock from before, so it has committed and is read; every later
# batch sees the row and tells.
JOINED = "SELECT MAX(id) FROM task_events"


async def with_asks_of(
    c: asyncpg.Connection, fetching: Awaitable[list[Any]]
) -> tuple[list[Any], dict[str, list[tuple[int, str]]], dict[str, list[tuple[int, str]]]]:
    """The task rows ``fetching`` reads (each with an ``id``) and their tasks'
    stored asks and outputs, by task: ``(attempt, data)`` in the order first
    stored."""
    rows = list(await fetching)
    asks: dict[str, list[tuple[int, str]]] = {}
    outputs: dict[str, list[tuple[int, str]]] = {}
    if rows:
        ids = [r["id"] for r in rows]
        for sql, found in ((ASKS_OF_TASKS, asks), (OUTPUTS_OF_TASKS, outputs)):
            for task_id, attempt, data in await c.fetch(sql, ids):
                found.setdefault(task_id, []).append((attempt, data))
    return rows, asks, outputs


async def number_events(c: asyncpg.Connection, done: list[Op]) -> list[TaskEvent]:
    """Number the events of the batch's operations that succeeded, under ids
    from the shared sequence in the batch's order, taking ``EVENTS_LOCK`` (one
    round trip, none without events); ``store_and_tell`` stores them.  The
    lock is held to commit, for this and the batch's last statement only, so
    writers of several nodes run their operations side by side.  A run that
    rolls back leaves its ids unused: gaps, never a reuse."""
    wanted = sum(len(op.given) for op in done)
    if not wanted:
        return []
    rows = await c.fetch(NEXT_EVENT_IDS, EVENTS_LOCK, wanted)
    ids = iter(sorted(int(r[0]) for r in rows))
    stored: list[TaskEvent] = []
    for op in done:
        numbered = []
        for event in op.given:
            numbered.append(event.renumbered(next(ids)))
        op.events[:] = numbered
        stored += numbered
    return stored


async def store_and_tell(
    c: asyncpg.Connection,
    events: list[TaskEvent],
    audit: list[Any],
    channel: str,
    messages: list[str],
    node: str,
) -> int:
    """Store ``events`` and ``audit`` (chained rows' column arrays, or none)
    and send ``messages`` on ``channel`` if another node may hear them, in one
    round trip, ``EVENTS_LOCK`` held; how many were sent."""
    columns = audit or [[] for _ in AUDIT_TYPES]
    return int(
        await c.fetchval(
            STORE_EVENTS_AND_TELL, *_event_columns(events), channel, messages, node, *columns
        )
    )


def _event_columns(events: list[TaskEvent]) -> tuple[list[int], list[str], list[str]]:
    texts = [wire_json.dumps_bytes(e.stored()).decode() for e in events]
    return [e.id for e in events], [e.task_id for e in events], texts

"""A task's write, and where the task runs: placed on the node holding its
operator's socket (a new one by the write that stores it), a later attempt
handed on, and the claim of what was placed here (``cluster/placement.py``
says why it moves)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import asyncpg

from operator_server.cluster.bus import SQL_CHANNEL
from operator_server.store.base import Audit, Events, Fenced, Row, decode_task, decode_task_row
from operator_server.store.postgres.tasks import (
    ASKS_OF_TASKS,
    BUMP_EPOCHS,
    OUTPUTS_OF_TASKS,
    WRITE_TASKS,
)
from operator_server.store.postgres.writer import Bulk, GroupCommitWriter
from operator_server.wire import json as wire_json

# Tasks another node created and leased to this one (``place_new_task``) that this
# node does not run yet (``$5``): ``$3`` names them, or NULL for all of them.
# Only a lease still current is claimed — one that lapsed is anybody's
# takeover — and, as a takeover, each moves to a new epoch and a fresh lease.
CLAIM_PLACED = f"""
    WITH placed AS (
        SELECT l.task_id FROM task_leases l JOIN tasks t ON t.id = l.task_id
        WHERE l.node_id = $1 AND l.expires_at > now() AND t.status = ANY($4::text[])
          AND ($3::text[] IS NULL OR l.task_id = ANY($3::text[]))
          AND NOT l.task_id = ANY($5::text[])
        FOR UPDATE OF l, t
    ), renewed AS (
        UPDATE task_leases l SET expires_at = now() + make_interval(secs => $2)
        FROM placed p WHERE l.task_id = p.task_id
    ), {BUMP_EPOCHS.format("placed")}
"""
# A live task this node holds, leased to node ``$2`` instead, which the same
# statement notifies (``$5``): it claims the task as it claims a new one
# handed to it (``CLAIM_PLACED``).  Nothing when the lease is not this node's.
HAND_TASK = f"""
    WITH moved AS (
        UPDATE task_leases SET node_id = $2, expires_at = now() + make_interval(secs => $3)
        WHERE task_id = $1 AND node_id = $4 RETURNING task_id
    )
    SELECT pg_notify({SQL_CHANNEL.format("$2::text")}, $5) FROM moved
"""
# The live node holding the socket of the session named ``$1`` (its sid, or
# a role it holds), if any.
SOCKET_NODE_OF = """
    SELECT n.node_id FROM operator_sessions s
    JOIN cluster_nodes n ON n.node_id = s.socket_node AND n.expires_at > now()
    WHERE s.sid = COALESCE((SELECT sid FROM operator_roles WHERE role = $1), $1)
"""


class PlacingOps(GroupCommitWriter):
    """The PostgreSQL store's task write and placing, a mixin (``ClusterStore``)."""

    _node_id: str
    _lease_s: float
    _live: frozenset[str]
    # The epoch of each live task this node writes (v8).
    _epochs: dict[str, int]
    _ended: list[str]  # tasks the batch being written ends

    def _task_write(
        self,
        record: dict[str, Any],
        deliver_at: float | None = None,
        *,
        place_by: str | None = None,
        notice: str | None = None,
    ) -> Bulk:
        """The write for ``record``, snapshotted now, not when the writer gets
        to it: one row of ``WRITE_TASKS``, whose value is the node the task was
        placed on (None: here).  ``place_by``: a new task's operator, whose
        socket decides where it runs; ``notice``: what tells that node."""
        task_id = record["id"]
        live = record["status"] in self._live
        expected = self._epochs.get(task_id)  # as of now, like the record
        row = (
            task_id,
            record["status"],
            float(record["created_at"]),
            float(record["updated_at"]),
            wire_json.dumps_bytes(record).decode(),
            self._node_id,
            live,
            None if deliver_at is None else float(deliver_at),
            expected,
            notice,
            place_by,
        )

        def finish(found: asyncpg.Record) -> str | None:
            if not found["ok"]:
                self._epochs.pop(task_id, None)
                owner = found["holder"]
                if owner is not None and owner != self._node_id:
                    raise Fenced(f"task {task_id} is run by node {owner} now")
                raise Fenced(
                    f"task {task_id} was taken over since this node last wrote it "
                    f"(epoch {found['epoch']}, not {expected or 0})"
                )
            if (node := found["placed_on"]) is not None:  # it claims it at an epoch of its own
                return str(node)
            if live:
                self._epochs[task_id] = int(found["epoch"])
            else:
                self._ended.append(task_id)  # announced as the batch commits
            return None

        return Bulk(WRITE_TASKS, row, frozenset({f"task:{task_id}"}), finish, (self._lease_s,))

    async def place_new_task(
        self,
        record: dict[str, Any],
        events: Events,
        operator: str,
        notice: str,
        *,
        audit: Audit = (),
    ) -> str | None:
        """Store a new task leased to the node holding ``operator``'s socket,
        told by ``notice``, or here when no other live node holds it
        (``WRITE_TASKS`` decides, as it writes): that node, None for here."""
        bulk = self._task_write(record, place_by=operator, notice=notice)
        node: str | None = await self._bulk_future(
            bulk, f"place task {record['id']}", events, audit=audit
        )
        return node

    async def claim_placed(
        self, task_ids: Collection[str] | None, running: Collection[str]
    ) -> list[Row]:
        args = (
            self._node_id,
            self._lease_s,
            None if task_ids is None else list(task_ids),
            list(self._live),
            list(running),
        )

        async def work(c: asyncpg.Connection) -> list[Row]:
            # One statement, atomic by itself: no transaction round trips.  A
            # task new from its creator has no attempt, so no asks or outputs
            # to read back; only one handed on between attempts does.
            claimed, tried = [], []
            for row in await c.fetch(CLAIM_PLACED, *args):
                try:
                    record = decode_task(row["data"])
                except Exception:  # decoded again below, and skipped with a reason
                    record = None
                claimed.append((row, record))
                if record is None or record.get("attempts"):
                    tried.append(row["id"])
            asks: dict[str, list[Any]] = {}
            outputs: dict[str, list[Any]] = {}
            if tried:
                for sql, found in ((ASKS_OF_TASKS, asks), (OUTPUTS_OF_TASKS, outputs)):
                    for task_id, attempt, data in await c.fetch(sql, tried):
                        found.setdefault(task_id, []).append((attempt, data))
            for row, _ in claimed:
                self._epochs[row["id"]] = int(row["epoch"])
            return [
                Row(str(row["id"]), record)
                if record is not None and row["id"] not in tried
                else decode_task_row(
                    row["id"], row["data"], asks.get(row["id"], ()), outputs.get(row["id"], ())
                )
                for row, record in claimed
            ]

        found: list[Row] = await self._read(work, "claim placed tasks")
        return found

    async def hand_task(self, task_id: str, node: str, notice: str) -> bool:
        args = (task_id, node, self._lease_s, self._node_id, notice)

        async def work(c: asyncpg.Connection) -> bool:
            return await c.fetchrow(HAND_TASK, *args) is not None

        # Through the writer: after every write of the task queued before it.
        moved: bool = await self._call(work, f"hand {task_id} to {node}")
        if moved:
            self._epochs.pop(task_id, None)
        return moved

    async def socket_node_of(self, name: str) -> str | None:
        node = await self._read(lambda c: c.fetchval(SOCKET_NODE_OF, name), f"socket of {name}")
        return None if node is None else str(node)

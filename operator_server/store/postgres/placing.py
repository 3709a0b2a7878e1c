"""A new task placed on the node holding its operator's socket, in the one
write that stores it (``cluster/placement.py`` says why it moves)."""

from __future__ import annotations

from typing import Any

import asyncpg

from operator_server.cluster.bus import SQL_CHANNEL
from operator_server.store.base import Audit, Events
from operator_server.store.postgres.writer import GroupCommitWriter
from operator_server.wire import json as wire_json

# A new task whose operator's socket (the session ``$9`` names: its sid, or a
# role it holds) is on another live node: stored leased to that node, which
# the same statement notifies (``$8``: it claims the task, ``CLAIM_PLACED``);
# with the socket on no other live node, stored leased here (``$6``), as a
# task's first write would.  Where it went: ``node`` (NULL: here) and its
# ``epoch``.  Deciding in the write, not in a read before it, saves the
# creating node a round trip and a wait for its writer's queue per task.
PLACE_NEW_TASK = f"""
    WITH target AS (
        SELECT n.node_id FROM operator_sessions s
        JOIN cluster_nodes n ON n.node_id = s.socket_node AND n.expires_at > now()
        WHERE s.sid = COALESCE((SELECT sid FROM operator_roles WHERE role = $9), $9)
          AND n.node_id <> $6
    ), task AS (
        INSERT INTO tasks (id, status, created_at, updated_at, data)
        VALUES ($1, $2, $3, $4, $5) RETURNING epoch
    ), leased AS (
        INSERT INTO task_leases (task_id, node_id, expires_at)
        SELECT $1, COALESCE((SELECT node_id FROM target), $6),
            now() + make_interval(secs => $7)
    ), told AS (
        SELECT pg_notify({SQL_CHANNEL.format("node_id")}, $8) FROM target
    )
    SELECT (SELECT node_id FROM target) AS node, (SELECT epoch FROM task) AS epoch,
        (SELECT count(*) FROM told) AS told
"""


class PlacingOps(GroupCommitWriter):
    """The PostgreSQL store's placing write, a mixin (``ClusterStore``)."""

    _node_id: str
    _lease_s: float
    # The epoch of each live task this node writes (v8).
    _epochs: dict[str, int]

    async def place_new_task(
        self,
        record: dict[str, Any],
        events: Events,
        operator: str,
        notice: str,
        *,
        audit: Audit = (),
    ) -> str | None:
        task_id = record["id"]
        args = (
            task_id,
            record["status"],
            float(record["created_at"]),
            float(record["updated_at"]),
            wire_json.dumps_bytes(record).decode(),
            self._node_id,
            self._lease_s,
            notice,
            operator,
        )

        async def work(c: asyncpg.Connection) -> str | None:
            found = await c.fetchrow(PLACE_NEW_TASK, *args)
            if found["node"] is not None:
                return str(found["node"])
            self._epochs[task_id] = int(found["epoch"])  # stored and leased here
            return None

        node: str | None = await self._call(work, f"place task {task_id}", events, audit=audit)
        return node

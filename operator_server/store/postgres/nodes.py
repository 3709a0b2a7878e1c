"""What the nodes of a cluster share in the database: leases, heartbeats, and
the routing of operator requests between nodes."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import asyncpg

from operator_server.cluster.bus import ALL, SQL_CHANNEL, channel
from operator_server.cluster.messages import (
    Delivered,
    NodesGone,
    Replaced,
    SocketAttached,
    Withdraw,
)
from operator_server.logs import get_logger
from operator_server.store.base import (
    NO_COURSE,
    PendingRow,
    PlacedSession,
    RequestCourse,
    Row,
    StoreError,
    decode_session,
    decode_task_row,
)
from operator_server.store.postgres.sessions import STAND_IN
from operator_server.store.postgres.tasks import BUMP_EPOCHS, with_asks_of
from operator_server.store.postgres.writer import Bulk, GroupCommitWriter, ignore
from operator_server.wire import json as wire_json
from operator_server.wire.json import STORED_MAX_DEPTH

log = get_logger(__name__)

# Only the runs a node holds: a lease of its without a run (an end it could not
# store, a run it let go) lapses, and the task is taken over.  Leases a batch
# of this node is writing right now are skipped here, so the renewal never
# waits in a batch's way (or it in its), and renewed right after by
# ``RENEW_LOCKED_LEASES``, which waits for that batch: the node trusts every
# lease it holds for ``lease_s`` from the renewal, so none may be left behind.
# The node's heartbeat is written by the same statement: a node trusts its
# leases from its last renewal, and its heartbeat, by which the other nodes
# bury it (and let its leases go at once, ``BURY_NODES``), must never be older.
HEARTBEAT = (
    "INSERT INTO cluster_nodes (node_id, expires_at) "
    "VALUES ($1, now() + make_interval(secs => $2)) "
    "ON CONFLICT (node_id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
)
RENEW_HELD_LEASES = f"""
    WITH renewed AS (
        UPDATE task_leases SET expires_at = now() + make_interval(secs => $2)
        WHERE task_id IN (
            SELECT task_id FROM task_leases WHERE node_id = $1 AND task_id = ANY($3::text[])
            FOR UPDATE SKIP LOCKED
        )
        RETURNING task_id
    ), beat AS ({HEARTBEAT})
    SELECT task_id FROM renewed
"""
RENEW_LOCKED_LEASES = """
    UPDATE task_leases SET expires_at = now() + make_interval(secs => $2)
    WHERE node_id = $1 AND task_id = ANY($3::text[])
"""
RELEASE_LEASES = "UPDATE task_leases SET expires_at = '-infinity' WHERE node_id = $1"
# Live tasks with a lapsed or missing lease, locked so that concurrent reapers
# skip each other's; the upsert re-checks the lease row as it is now (a lease
# renewed or taken since the scan's snapshot does not come back).  Each task
# taken moves to a new epoch: whatever its former node still writes is refused.
TAKE_OVER = f"""
    WITH lapsed AS (
        SELECT t.id FROM tasks t LEFT JOIN task_leases l ON l.task_id = t.id
        WHERE t.status = ANY($3::text[]) AND (l.task_id IS NULL OR l.expires_at < now())
        ORDER BY t.seq LIMIT $4
        FOR UPDATE OF t SKIP LOCKED
    ), taken AS (
        INSERT INTO task_leases (task_id, node_id, expires_at)
        SELECT id, $1, now() + make_interval(secs => $2) FROM lapsed
        ON CONFLICT (task_id) DO UPDATE
            SET node_id = EXCLUDED.node_id, expires_at = EXCLUDED.expires_at
            WHERE task_leases.expires_at < now()
        RETURNING task_id
    ), {BUMP_EPOCHS.format("taken")}
"""
# Cluster routing (v5).  A request is inserted under a share lock on its
# session's row, and a socket attaches under an update lock on it, so the two
# take turns: either the attach's replay reads the request, or the request's
# writer reads the new socket node and sends the frame there.  (The lock is
# held to commit, and the insert is seen only at commit, whatever order the
# statement runs its parts in.)  Any number of requests in one statement (one
# round trip; an array per column, ``$1`` to ``$8``, one row per request; ``$9``:
# this node, their issuer).  ``notice``, when given, is the frame's notice to
# the node holding the socket, sent by the same statement (as it commits):
# one transaction, not two.  One result row per request, in order: where its
# session's socket is, and whether it was told.
ISSUE_REQUESTS = f"""
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::text[],
                             $6::float8[], $7::int[], $8::text[])
            WITH ORDINALITY
            AS i(req_id, sid, frame, issued_at, notice, deadline_at, step, moves, n)
    ), session AS MATERIALIZED (
        SELECT sid, socket_node FROM operator_sessions WHERE sid = ANY($2::text[])
        ORDER BY sid FOR SHARE
    ), request AS (
        INSERT INTO pending_requests
            (req_id, sid, owner_node, frame, issued_at, deadline_at, step, moves)
        SELECT req_id, sid, $9, frame, issued_at, deadline_at, step, moves
        FROM input ORDER BY n
    ), told AS MATERIALIZED (
        SELECT i.n, pg_notify({SQL_CHANNEL.format("s.socket_node")}, i.notice)
        FROM input i JOIN session s ON s.sid = i.sid
        WHERE i.notice IS NOT NULL AND s.socket_node IS NOT NULL AND s.socket_node <> $9
    )
    SELECT s.socket_node, i.n = ANY(ARRAY(SELECT n FROM told)) AS told
    FROM input i LEFT JOIN session s ON s.sid = i.sid ORDER BY i.n
"""
SOCKET_NODE = "SELECT socket_node, socket_epoch FROM operator_sessions WHERE sid = $1 FOR UPDATE"
ATTACH_SOCKET = "UPDATE operator_sessions SET socket_node = $2, socket_epoch = $3 WHERE sid = $1"
_PENDING_COLUMNS = "req_id, owner_node, frame, issued_at, deadline_at, step, moves"
PENDING_OF = f"SELECT {_PENDING_COLUMNS} FROM pending_requests WHERE sid = $1 ORDER BY seq"
# Every unanswered request (or the one ``$1`` names), with its session, in issue order.
PENDING_ALL = (
    f"SELECT sid, {_PENDING_COLUMNS} FROM pending_requests "
    "WHERE $1::text IS NULL OR req_id = $1 ORDER BY seq"
)
# Notify the node holding a session's socket, if another node holds it.
NOTIFY_SOCKET_NODE = (
    f"SELECT pg_notify({SQL_CHANNEL.format('socket_node')}, $2) FROM operator_sessions "
    "WHERE sid = $1 AND socket_node IS NOT NULL AND socket_node <> $3"
)
# Requests answered, any number in one statement (``$1``: their ids): their
# rows go.  One result row per request, in order.
FINISH_REQUESTS = """
    WITH finished AS (DELETE FROM pending_requests WHERE req_id = ANY($1::text[]))
    SELECT n FROM unnest($1::text[]) WITH ORDINALITY AS i(req_id, n) ORDER BY n
"""
# A request answered whose withdrawal is told to the node holding the
# socket: its row goes, and the notice, in one statement.
FINISH_WITHDRAWN = (
    "WITH finished AS (DELETE FROM pending_requests WHERE req_id = $4) " + NOTIFY_SOCKET_NODE
)
DETACH_SOCKET = (
    "UPDATE operator_sessions SET socket_node = NULL WHERE sid = $1 AND socket_node = $2"
)
# Every session with where its socket is and how much waits on it.  A socket
# counts only on a node whose heartbeat is current: a dead node's sockets are
# gone the moment it stops beating, before any survivor buries it.
PLACED_SESSIONS = """
    SELECT s.sid, s.token_sha256, s.roles, s.description, s.created_at, s.last_seen_at,
           s.minted_by, n.node_id AS socket_node,
           (SELECT count(*) FROM pending_requests p WHERE p.sid = s.sid) AS pending
    FROM operator_sessions s
    LEFT JOIN cluster_nodes n ON n.node_id = s.socket_node AND n.expires_at > now()
    WHERE $1::text IS NULL OR s.sid = $1
    ORDER BY s.created_at, s.sid
"""
# The nodes whose heartbeat is current (a move asks each for what it holds).
LIVE_NODES = "SELECT node_id FROM cluster_nodes WHERE expires_at > now() ORDER BY node_id"
# A node that stopped beating: its sockets are gone and its requests' waiters
# too (their attempts are interrupted and taken over).  A node beats from the
# moment its store opens, so a node with no row at all is gone as well.
#
# Their leases lapse with them, all at once: the takeover that follows takes
# every task they ran, not only those whose own lease ran out.  A lease a dead
# node wrote after its last renewal would run up to a third of a lease longer,
# but its node stopped trusting it already: a node counts all of its leases as
# lapsed one ``lease_s`` after its last renewal was sent (``leases_lapsed``),
# which is before its heartbeat, written after that renewal, lapses.
#
# A row still locked (a node frozen mid-batch keeps its transaction open, up
# to ``idle_in_transaction_session_timeout``) is skipped, never waited for, so
# that the burial, and with it this node's whole lease round, does not hang on
# it: a lease lapses on its own, as before; a socket or a request of a node
# that has no row is found again by the next round.
BURY_NODES = """
    WITH dead AS (
        DELETE FROM cluster_nodes WHERE expires_at < now() RETURNING node_id
    ), unplugged AS (
        UPDATE operator_sessions SET socket_node = NULL
        WHERE sid IN (
            SELECT sid FROM operator_sessions
            WHERE socket_node IN (SELECT node_id FROM dead)
               OR socket_node NOT IN (SELECT node_id FROM cluster_nodes)
            FOR NO KEY UPDATE SKIP LOCKED
        )
    ), lapsed AS (
        UPDATE task_leases SET expires_at = now()
        WHERE task_id IN (
            SELECT task_id FROM task_leases
            WHERE node_id IN (SELECT node_id FROM dead) AND expires_at > now()
            FOR UPDATE SKIP LOCKED
        )
    )
    SELECT node_id FROM dead
"""
# Their requests (and any whose node has no row), to be withdrawn wherever a
# live node shows them to an operator.
DEAD_REQUESTS = """
    DELETE FROM pending_requests p USING operator_sessions s
    WHERE s.sid = p.sid AND p.req_id IN (
        SELECT req_id FROM pending_requests
        WHERE owner_node = ANY($1::text[])
           OR NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node_id = owner_node)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING p.req_id, p.sid, p.owner_node, s.socket_node
"""
# Their stand-in seats (``sessions.STAND_IN``): nobody else issues to them.
# (One still locked is left: it only ever takes requests its node issues.)
DEAD_SEATS = f"""
    DELETE FROM operator_sessions WHERE sid IN (
        SELECT sid FROM operator_sessions
        WHERE token_sha256 = ANY(SELECT '{STAND_IN}' || unnest($1::text[]))
        FOR UPDATE SKIP LOCKED
    )
"""
OLD_MESSAGES = "DELETE FROM cluster_messages WHERE created_at < now() - interval '1 minute'"
TASK_OWNER = "SELECT node_id FROM task_leases WHERE task_id = $1 AND expires_at > now()"


def withdraw_notice(from_node: str, sid: str, req_id: str, reason: str) -> str:
    """The message that has the node showing ``req_id`` send the operator its
    ``cancel`` (handled by the operator directory)."""
    return Withdraw(sid, req_id, reason).encode(from_node)


def pending_rows(rows: list[Any]) -> list[PendingRow]:
    out = []
    for req_id, owner, frame, issued_at, deadline_at, step, moves in rows:
        try:
            decoded = wire_json.loads(frame, STORED_MAX_DEPTH)
        except ValueError as exc:  # one bad row is skipped, never fatal
            log.warning(
                "skipping a stored request that cannot be decoded", req_id=req_id, error=str(exc)
            )
            continue
        course = RequestCourse(
            None if deadline_at is None else float(deadline_at), int(step), _moves(req_id, moves)
        )
        out.append(PendingRow(req_id, owner, decoded, float(issued_at), course))
    return out


def _moves(req_id: str, text: str) -> tuple[dict[str, Any], ...]:
    """A row's moves; a history that cannot be read is shown empty, never
    fatal: the request itself is still answerable."""
    try:
        moves = wire_json.loads(text, STORED_MAX_DEPTH)
    except ValueError as exc:
        log.warning("a stored request's moves cannot be decoded", req_id=req_id, error=str(exc))
        return ()
    if not isinstance(moves, list) or not all(isinstance(m, dict) for m in moves):
        log.warning("a stored request's moves are not a list of moves", req_id=req_id)
        return ()
    return tuple(moves)


class NodeOps(GroupCommitWriter):
    """The PostgreSQL store's operations between nodes, a mixin: leases and
    takeover, heartbeats and burials, who owns a task, and the operator
    requests routed to whichever node holds the socket (``ClusterStore``)."""

    _node_id: str
    _lease_s: float
    _live: frozenset[str]
    # The epoch of each live task this node writes (v8).
    _epochs: dict[str, int]
    # When the last lease renewal that succeeded was sent (monotonic).
    _renewal_sent: float

    async def take_over(self, *, at_start: bool, limit: int) -> list[Row]:
        del at_start  # the same at start-up: a live node's tasks keep their lease
        args = (self._node_id, self._lease_s, list(self._live), limit)

        async def work(
            c: asyncpg.Connection,
        ) -> tuple[list[Any], dict[str, list[Any]], dict[str, list[Any]]]:
            async with c.transaction():
                return await with_asks_of(c, c.fetch(TAKE_OVER, *args))

        rows, asks, outputs = await self._read(work, "take over tasks")
        for row in rows:
            self._epochs[row["id"]] = int(row["epoch"])
        return [
            decode_task_row(
                row["id"], row["data"], asks.get(row["id"], ()), outputs.get(row["id"], ())
            )
            for row in rows
        ]

    async def renew_leases(self, task_ids: Collection[str]) -> None:
        sent = time.monotonic()
        held = list(task_ids)
        rows = await self._direct(
            RENEW_HELD_LEASES, self._node_id, self._lease_s, held, what="renew leases"
        )
        renewed = {row["task_id"] for row in rows}
        if skipped := [task_id for task_id in held if task_id not in renewed]:
            # Locked by a batch of this node's (or ended, or taken: then no row).
            args = (self._node_id, self._lease_s, skipped)
            await self._direct(RENEW_LOCKED_LEASES, *args, what="renew leases")
        # Every lease held, and the heartbeat, run at least lease_s from ``sent``.
        self._renewal_sent = sent

    async def release_leases(self, task_ids: Collection[str] | None = None) -> None:
        if task_ids is not None:
            sql = RELEASE_LEASES + " AND task_id = ANY($2::text[])"
            await self._direct(sql, self._node_id, list(task_ids), what="release leases")
            for task_id in task_ids:  # taken again (here or elsewhere) at a new epoch
                self._epochs.pop(task_id, None)
            return
        await self._direct(RELEASE_LEASES, self._node_id, what="release leases")
        # Its stand-in seats go with it: a node that left is never buried.
        await self._direct(DEAD_SEATS, [self._node_id], what="unseat stand-ins")
        await self._direct(
            "DELETE FROM cluster_nodes WHERE node_id = $1", self._node_id, what="leave"
        )

    async def bury_dead_nodes(self) -> list[str]:
        """Forget the nodes whose heartbeat lapsed: their sockets and the requests
        they were waiting on; each such request still shown to an operator on a
        live node is withdrawn there, and every node hears which nodes died."""
        me = self._node_id
        lock_wait = f"{max(1, int(self._lease_s * 1000 / 6))}ms"  # the time to the next look

        async def work(c: asyncpg.Connection) -> list[str]:
            async with c.transaction():
                # Locked rows are skipped (``BURY_NODES``); any other lock a
                # stalled node holds fails the round, and the next one tries again.
                await c.execute("SELECT set_config('lock_timeout', $1, true)", lock_wait)
                dead = {str(row["node_id"]) for row in await c.fetch(BURY_NODES)}
                for req_id, sid, owner, node in await c.fetch(DEAD_REQUESTS, list(dead)):
                    dead.add(owner)
                    if node is None or node in dead:
                        continue
                    withdraw = withdraw_notice(me, sid, req_id, "its node stopped")
                    await c.execute("SELECT pg_notify($1, $2)", channel(node), withdraw)
                if dead:
                    await c.execute(DEAD_SEATS, list(dead))
                    gone = NodesGone(sorted(dead)).encode(me)
                    await c.execute("SELECT pg_notify($1, $2)", ALL, gone)
                await c.execute(OLD_MESSAGES)
                return sorted(dead)

        found: list[str] = await self._read(work, "bury dead nodes")
        return found

    async def live_nodes(self) -> list[str]:
        rows = await self._read(lambda c: c.fetch(LIVE_NODES), "read live nodes")
        return [str(row["node_id"]) for row in rows]

    async def task_owner(self, task_id: str) -> str | None:
        node = await self._read(lambda c: c.fetchval(TASK_OWNER, task_id), f"owner of {task_id}")
        return None if node is None else str(node)

    async def issue_request(
        self,
        sid: str,
        req_id: str,
        frame: dict[str, Any],
        issued_at: float,
        notice: str | None = None,
        course: RequestCourse = NO_COURSE,
    ) -> tuple[str | None, bool]:
        row = (
            req_id,
            sid,
            wire_json.dumps(frame),
            float(issued_at),
            notice,
            course.deadline_at,
            course.step,
            wire_json.dumps(list(course.moves)),
        )

        def finish(found: asyncpg.Record) -> tuple[str | None, bool]:
            if found["socket_node"] is None:
                return None, False
            return str(found["socket_node"]), bool(found["told"])

        keys = frozenset({f"request:{req_id}"})
        # Its seq numbers it among its session's requests (replayed in that order).
        follows = frozenset({f"issued:{sid}"})
        bulk = Bulk(ISSUE_REQUESTS, row, keys, finish, (self._node_id,), follows)
        found: tuple[str | None, bool] = await self._bulk_future(bulk, f"issue request {req_id}")
        return found

    def finish_request_soon(self, sid: str, req_id: str, withdrawn: str | None) -> None:
        me = self._node_id
        what = f"finish request {req_id}"
        if withdrawn is None:
            bulk = Bulk(FINISH_REQUESTS, (req_id,), frozenset({f"request:{req_id}"}), ignore)
            self._soon_bulk(bulk, what)
        else:
            notice = withdraw_notice(me, sid, req_id, withdrawn)
            self._soon_plain(what, FINISH_WITHDRAWN, sid, notice, me, req_id)

    async def attach_socket(
        self, sid: str, again: int | None = None
    ) -> tuple[int, list[PendingRow]]:
        me = self._node_id

        async def work(c: asyncpg.Connection) -> tuple[int, list[Any]]:
            before = await c.fetchrow(SOCKET_NODE, sid)
            if before is None:
                raise StoreError(f"no operator session {sid}")
            stored = int(before["socket_epoch"])
            if again is not None and stored != again:
                return stored, []  # a newer socket attached since: that one is the session's
            epoch = stored + 1 if again is None else again
            await c.execute(ATTACH_SOCKET, sid, me, epoch)
            old = before["socket_node"]
            if old is not None and old != me:
                replaced = Replaced(sid, epoch).encode(me)
                await c.execute("SELECT pg_notify($1, $2)", channel(old), replaced)
            rows = list(await c.fetch(PENDING_OF, sid))
            delivered = Delivered(sid).encode(me)
            for owner in {row["owner_node"] for row in rows} - {me}:
                await c.execute("SELECT pg_notify($1, $2)", channel(owner), delivered)
            # Tasks waiting on any node for a socket of this session go where
            # it is now (``cluster/placement.py``): told as the attach commits.
            await c.execute("SELECT pg_notify($1, $2)", ALL, SocketAttached(sid).encode(me))
            return epoch, rows

        epoch, rows = await self._call(work, f"attach socket of {sid}")
        return epoch, pending_rows(rows)

    async def pending_of(self, sid: str) -> list[PendingRow]:
        rows = await self._read(lambda c: c.fetch(PENDING_OF, sid), f"pending of {sid}")
        return pending_rows(rows)

    async def pending_requests(self, req_id: str | None = None) -> list[tuple[str, PendingRow]]:
        rows = await self._read(lambda c: c.fetch(PENDING_ALL, req_id), "read pending requests")
        sids = {row["req_id"]: row["sid"] for row in rows}
        decoded = pending_rows([tuple(row)[1:] for row in rows])
        return [(sids[row.req_id], row) for row in decoded]

    async def placed_sessions(self, sid: str | None = None) -> list[PlacedSession]:
        rows = await self._read(lambda c: c.fetch(PLACED_SESSIONS, sid), "read sessions")
        out = []
        for row in rows:
            try:
                record = decode_session(*tuple(row)[:7])
            except ValueError as exc:  # one bad row is skipped, never fatal
                log.warning("skipping a stored session that cannot be decoded", error=str(exc))
                continue
            node = row["socket_node"]
            out.append(PlacedSession(record, None if node is None else str(node), row["pending"]))
        return out

    def detach_socket_soon(self, sid: str) -> None:
        self._soon_plain(f"detach {sid}", DETACH_SOCKET, sid, self._node_id)

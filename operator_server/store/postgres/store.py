"""The PostgreSQL store itself: its lifecycle and every operation of the ``Store``
contract, in SQL declared beside it (``tasks``, ``sessions``, ``nodes``) and run
by the group-commit writer (``writer``).  The package docstring says how."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import asyncpg

from operator_server.cluster.bus import ALL, INLINE_MAX, PgBus
from operator_server.cluster.messages import (
    EndedAs,
    EventsStored,
    Message,
    TasksEnded,
)
from operator_server.logs import get_logger
from operator_server.store.base import (
    Audit,
    Delivery,
    Events,
    Fenced,
    Row,
    Store,
    StoredTask,
    StoreError,
    TaskEvent,
    ask_row,
    decode_event_rows,
    decode_task_row,
    output_row,
)
from operator_server.store.postgres.audit import AuditOps, chain_audit
from operator_server.store.postgres.keys import KeyOps
from operator_server.store.postgres.links import LinkOps
from operator_server.store.postgres.nodes import (
    HEARTBEAT,
    NodeOps,
)
from operator_server.store.postgres.notices import NoticeOps
from operator_server.store.postgres.placing import PlacingOps
from operator_server.store.postgres.schema import migrate
from operator_server.store.postgres.sessions import SessionOps
from operator_server.store.postgres.tasks import (
    DELETE_FINISHED,
    EVENTS_LOCK,
    INSERT_OUTPUTS,
    JOINED,
    UPSERT_ASKS,
    number_events,
    store_and_tell,
    with_asks_of,
)
from operator_server.store.postgres.writer import (
    CONNECTION_ERRORS,
    Bulk,
    Op,
    ignore,
    nothing,
)
from operator_server.wire import json as wire_json

log = get_logger(__name__)
# Task ids per "ended" notice: well within a NOTIFY payload.
ENDED_PER_NOTIFY = 100
# The ended records per "ended_as" notice (room left for the envelope).
ENDED_BUDGET = INLINE_MAX - 200
# One task with its stored asks and outputs, in one round trip, not three (a
# long-poll on a task another node ended reads it so, once per task).
READ_TASK = """
    SELECT t.data,
        ARRAY(SELECT attempt FROM task_asks WHERE task_id = $1 ORDER BY seq) AS ask_attempts,
        ARRAY(SELECT data FROM task_asks WHERE task_id = $1 ORDER BY seq) AS asks,
        ARRAY(SELECT attempt FROM task_outputs WHERE task_id = $1 ORDER BY seq) AS output_attempts,
        ARRAY(SELECT data FROM task_outputs WHERE task_id = $1 ORDER BY seq) AS outputs
    FROM tasks t WHERE t.id = $1
"""
POOL_MAX = 8
CONNECT_TIMEOUT_S = 10
CLOSE_TIMEOUT_S = 5


async def keep_session(conn: asyncpg.Connection) -> None:
    """A connection going back to the pool keeps its session as it is.  The
    default reset (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``, unlocking
    advisory locks) was one more round trip per acquire, a third of one per
    task, for state this store never leaves behind: no ``SET``, no ``LISTEN``
    (the bus listens on its own connection), no cursors, advisory locks only
    per transaction but the migration's, which it unlocks itself.  A
    transaction left open is still rolled back (asyncpg does that first)."""
    del conn


@dataclass(frozen=True)
class Ending:
    """What a batch's transaction did as it ended: the tasks it ended, and the
    messages it told nobody (no other node to hear them)."""

    ended: list[str]
    untold: list[Message]


class PostgresStore(NodeOps, PlacingOps, SessionOps, KeyOps, LinkOps, AuditOps, NoticeOps, Store):
    def __init__(self, url: str) -> None:
        self.url = url
        self._writer_init()
        self._writer: asyncio.Task[None] | None = None
        self._node_id = ""
        self._lease_s = 10.0
        self._live: frozenset[str] = frozenset()
        self._bus = PgBus(url)
        self._ended: list[str] = []  # tasks the batch being written ends
        # The whole record (text, encoded size) of a task ``put_task`` is ending.
        self._ended_as: dict[str, tuple[str, int]] = {}
        # The epoch of each live task this node writes (v8): every write of it
        # must match the row's, and a takeover moves the row's on.
        self._epochs: dict[str, int] = {}
        # When the last lease renewal that succeeded was sent (monotonic): every
        # lease this node holds runs at least ``lease_s`` from then.
        self._renewal_sent = time.monotonic()

    # -- lifecycle --------------------------------------------------------

    @property
    def shared(self) -> bool:
        return True

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def bus(self) -> PgBus:
        return self._bus

    @property
    def leases_lapsed(self) -> bool:
        """No renewal has succeeded for a whole lease (the node was frozen, or
        cut off): its leases may be another node's now.  Told by this node's
        own clock, so a node woken from SIGSTOP knows it before its first
        round trip."""
        return time.monotonic() - self._renewal_sent >= self._lease_s

    def lease_tasks(self, node_id: str, lease_s: float, live_statuses: Collection[str]) -> None:
        super().lease_tasks(node_id, lease_s, live_statuses)
        self._node_id, self._lease_s = node_id, float(lease_s)
        self._bus.node_id = node_id
        self._live = frozenset(live_statuses)

    def claim(self) -> None:
        """Nothing to take: every node of a cluster opens the same database."""

    async def open(self) -> None:
        """Connect, migrate under the advisory lock, start the writer."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=POOL_MAX,
                timeout=CONNECT_TIMEOUT_S,
                server_settings={
                    # Whose task_counts rows this connection's writes move (v6).
                    "operator_server.node_id": self._node_id,
                    # A node frozen (or stalled) mid-transaction keeps its row
                    # locks, and every other node's write of those rows (a
                    # socket attaching there, a burial) waits on it.  Past a
                    # whole lease its leases have lapsed and whatever it would
                    # still write is refused anyway: PostgreSQL ends its
                    # transaction then and the locks go.
                    "idle_in_transaction_session_timeout": str(max(1, int(self._lease_s * 1000))),
                },
                reset=keep_session,
            )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            await migrate(self._pool)
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        # Owned by the store, like the SQLite store's thread: it lives exactly as
        # long as the store is open, and ``close`` drains and awaits it.
        self._writer = asyncio.get_running_loop().create_task(
            self._write_forever(), name="store-postgres-writer"
        )
        self._accepting = True
        # Pinged as often as leases are renewed: a cut is noticed as soon.
        await self._bus.start(self._pool, self._lease_s / 3)
        # Beating from the start: the other nodes count this node in at once
        # (and a node with no row is one they bury).
        self._renewal_sent = time.monotonic()
        await self._direct(HEARTBEAT, self._node_id, self._lease_s, what="node heartbeat")

    async def close(self) -> None:
        """Commit everything queued, stop the writer and the listener, close the pool."""
        self._accepting = False  # nothing may queue behind the stop marker
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
            self._writer = None
        await self._bus.stop()
        if self._pool is not None:
            try:
                # A connection broken mid-way (the database went away and came
                # back) can hold a graceful close forever: then cut them all.
                await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("PostgreSQL connections did not close in time; cut them")
                self._pool.terminate()
            self._pool = None

    async def flush(self) -> None:
        await self.flush_queue()

    def observe_commits(self, observer: Callable[[float], None]) -> None:
        self._commit_observer = observer

    # -- what a batch does as it ends --------------------------------------

    def _batch_starts(self) -> None:
        self._ended = []

    async def _batch_ends(
        self, conn: asyncpg.Connection, batch: list[Op], done: list[Op]
    ) -> Ending:
        events = await number_events(conn, done)
        audit = await chain_audit(conn, self.audit_node, done)
        ended, self._ended = self._ended, []
        messages = self._announcements(events, ended)
        if not events and not messages and not audit:
            return Ending(ended, [])
        if not events and not audit:
            # Taken before the statement that looks for other nodes (``JOINED``).
            await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
        texts = [m.encode(self._node_id) for m in messages]
        sent = await store_and_tell(conn, events, audit, ALL, texts, self._node_id)
        return Ending(ended, [] if sent else messages)

    def _announcements(self, events: list[TaskEvent], ended: list[str]) -> list[Message]:
        """What the batch tells every node as it commits: which tasks it ended
        (their long-polls wake) and the newest event it stored (their streams
        read on) — a few messages per batch, not one per write."""
        messages: list[Message] = []
        if events:
            messages.append(EventsStored(max(e.id for e in events)))
        messages += EndedAs.packed(ended, self._ended_as, ENDED_BUDGET)  # before the ids
        for i in range(0, len(ended), ENDED_PER_NOTIFY):
            messages.append(TasksEnded(ended[i : i + ENDED_PER_NOTIFY]))
        return messages

    def _batch_committed(self, ending: Ending) -> None:
        # Forgotten once the end is committed, not before: an end whose commit
        # failed is written again at the same epoch.
        for task_id in ending.ended:
            self._epochs.pop(task_id, None)
        # Told nobody (no other node): this node still acts on its own news,
        # once the writer has settled the batch (a read it starts need not wait
        # for the next one).
        for message in ending.untold:
            asyncio.get_running_loop().call_soon(self._bus.hear_own, message)

    def _ops_committed(self, op: Op) -> None:
        self._events_committed(op.events)

    # -- operations -------------------------------------------------------

    async def put_task(
        self,
        record: dict[str, Any],
        events: Events = (),
        *,
        deliver_at: float | None = None,
        audit: Audit = (),
        ended_as: dict[str, Any] | None = None,
    ) -> None:
        if ended_as is not None:  # told with the end as the batch commits (``_announcements``)
            text = wire_json.dumps(ended_as)
            self._ended_as[record["id"]] = (text, len(wire_json.dumps_bytes(text)))
        try:
            bulk = self._task_write(record, deliver_at)
            await self._bulk_future(bulk, f"save task {record['id']}", events, audit=audit)
        finally:
            self._ended_as.pop(record["id"], None)

    def put_task_soon(
        self,
        record: dict[str, Any],
        events: Events = (),
        *,
        deliver_at: float | None = None,
        audit: Audit = (),
    ) -> None:
        bulk = self._task_write(record, deliver_at)
        self._soon_bulk(bulk, f"save task {record['id']}", events, audit=audit)

    def put_ask_soon(self, task_id: str, attempt: int, ask: dict[str, Any]) -> None:
        epoch = self._epochs.get(task_id)  # as of now, like the ask
        row = (*ask_row(task_id, attempt, ask), epoch)
        bulk = Bulk(UPSERT_ASKS, row, frozenset({f"task:{task_id}"}), ignore, (self._node_id,))
        self._soon_bulk(bulk, f"save ask {row[2]} of {task_id}")

    async def put_output(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> None:
        await self.put_output_soon(task_id, attempt, output, audit=audit)

    def put_output_soon(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> asyncio.Future[None]:
        """Queued now, not when first awaited: the future says it committed."""
        epoch = self._epochs.get(task_id)  # as of now, like the output
        row = (*output_row(task_id, attempt, output), epoch)

        def finish(found: asyncpg.Record) -> None:
            if found["seq"] is None:
                raise Fenced(f"task {task_id} was taken over; its output was not stored")

        bulk = Bulk(INSERT_OUTPUTS, row, frozenset({f"task:{task_id}"}), finish, (self._node_id,))
        return self._bulk_future(bulk, f"save output of {task_id}", audit=audit)

    def put_events_soon(self, events: Events, *, audit: Audit = ()) -> None:
        self._soon(nothing, "save events", events, audit=audit)  # stored by the writer

    async def last_event_id(self) -> int:
        async def joined(c: asyncpg.Connection) -> Any:
            async with c.transaction():
                await c.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
                return await c.fetchval(JOINED)

        found = await self._read(joined, "last event id")
        return int(found or 0)

    async def load_events(self, after_id: int, task_id: str | None, limit: int) -> list[TaskEvent]:
        if task_id is None:
            sql = "SELECT id, task_id, data FROM task_events WHERE id > $1 ORDER BY id LIMIT $2"
            args: tuple[Any, ...] = (after_id, limit)
        else:
            sql = (
                "SELECT id, task_id, data FROM task_events WHERE task_id = $1 AND id > $2 "
                "ORDER BY id LIMIT $3"
            )
            args = (task_id, after_id, limit)
        rows = await self._read(lambda c: c.fetch(sql, *args), "load events")
        return decode_event_rows(rows)

    async def next_deliveries(self, limit: int) -> list[Delivery]:
        rows = await self._read(
            lambda c: c.fetch(
                "SELECT task_id, due_at FROM webhook_deliveries ORDER BY due_at LIMIT $1", limit
            ),
            "load deliveries",
        )
        return [Delivery(str(task_id), float(due)) for task_id, due in rows]

    async def record_delivery(
        self, task_id: str, record: dict[str, Any] | None, due_at: float | None
    ) -> None:
        data = None if record is None else wire_json.dumps_bytes(record).decode()

        async def work(c: asyncpg.Connection) -> None:
            # An UPDATE, never an upsert: a task retention deleted stays deleted.
            found = await c.fetchval("SELECT 1 FROM tasks WHERE id = $1", task_id)
            if found and data is not None:
                await c.execute("UPDATE tasks SET data = $1 WHERE id = $2", data, task_id)
            if due_at is None or not found:
                await c.execute("DELETE FROM webhook_deliveries WHERE task_id = $1", task_id)
            else:
                await c.execute(
                    "UPDATE webhook_deliveries SET due_at = $1 WHERE task_id = $2",
                    float(due_at),
                    task_id,
                )

        await self._call(work, f"record delivery of {task_id}")

    async def load_tasks(self, statuses: Collection[str]) -> list[Row]:
        wanted = list(statuses)
        rows, asks, outputs = await self._read(
            lambda c: with_asks_of(
                c,
                c.fetch(
                    "SELECT id, data FROM tasks WHERE status = ANY($1::text[]) ORDER BY seq",
                    wanted,
                ),
            ),
            "load tasks",
        )
        return [
            decode_task_row(task_id, data, asks.get(task_id, ()), outputs.get(task_id, ()))
            for task_id, data in rows
        ]

    async def get_task(self, task_id: str) -> Row | None:
        row = await self._read(lambda c: c.fetchrow(READ_TASK, task_id), f"read task {task_id}")
        if row is None:
            return None
        asks = zip(row["ask_attempts"], row["asks"], strict=True)
        outputs = zip(row["output_attempts"], row["outputs"], strict=True)
        return decode_task_row(task_id, row["data"], asks, outputs)

    async def task_seq(self, task_id: str) -> int | None:
        seq = await self._read(
            lambda c: c.fetchval("SELECT seq FROM tasks WHERE id = $1", task_id),
            f"find task {task_id}",
        )
        return None if seq is None else int(seq)

    async def list_tasks(self, status: str | None, after_seq: int, limit: int) -> list[StoredTask]:
        # Keyset paging: a seek on (status, seq) or on seq, then ``limit`` rows.
        if status is None:
            sql = "SELECT seq, id, data FROM tasks WHERE seq > $1 ORDER BY seq LIMIT $2"
            args: tuple[Any, ...] = (after_seq, limit)
        else:
            sql = (
                "SELECT seq, id, data FROM tasks WHERE status = $1 AND seq > $2 "
                "ORDER BY seq LIMIT $3"
            )
            args = (status, after_seq, limit)
        rows, asks, outputs = await self._read(
            lambda c: with_asks_of(c, c.fetch(sql, *args)), "list tasks"
        )
        return [
            StoredTask(
                int(seq),
                decode_task_row(task_id, data, asks.get(task_id, ()), outputs.get(task_id, ())),
            )
            for seq, task_id, data in rows
        ]

    async def count_tasks(self) -> dict[str, int]:
        rows = await self._read(
            lambda c: c.fetch(
                "SELECT status, SUM(n) FROM task_counts GROUP BY status HAVING SUM(n) <> 0"
            ),
            "count tasks",
        )
        return {status: int(n) for status, n in rows}

    async def delete_finished(
        self, statuses: Collection[str], updated_before: float, limit: int
    ) -> dict[str, int]:
        wanted = list(statuses)

        async def work(c: asyncpg.Connection) -> dict[str, int]:
            gone = await c.fetch(DELETE_FINISHED, wanted, float(updated_before), limit)
            return dict(Counter(row["status"] for row in gone))

        result: dict[str, int] = await self._call(work, "delete finished tasks")
        return result

"""PostgreSQL, through ``asyncpg``, with group commit: the store many nodes share.

Same records and semantics as ``store/sqlite.py``.  Writes — durable and
"soon" alike — go through one queue to one writer task, so they commit in the
order they were made; the writer takes what is queued (up to ``BATCH``) and
runs it in one transaction with a savepoint per operation, so a failing one
fails alone and many writes under load cost one commit.  Durable callers are
answered after the commit.

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
(``task_leases``, in the same savepoint as the task row, so no other node ever
sees a live task without its lease), renewed for all of them in one UPDATE,
and dropped when the task ends.  ``take_over`` is how a node gets tasks:
those whose lease lapsed (or was let go at a graceful stop, or never written
by an older server), locked ``FOR UPDATE SKIP LOCKED`` and re-checked on the
lease row itself, so two nodes never take the same task.  Lease times are the
database's clock, never a node's.

Event ids come from a database sequence, not from the node, because several
nodes write events: the events each write publishes carry the ids it stored.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import asyncpg

from operator_server.logs import get_logger
from operator_server.store.base import (
    Delivery,
    Events,
    RolesTaken,
    Row,
    SessionRecord,
    Store,
    StoredTask,
    StoreError,
    TaskEvent,
    decode_event_rows,
    decode_session,
    decode_session_rows,
    decode_task_row,
)
from operator_server.wire import json as wire_json

log = get_logger(__name__)
BATCH = 512
POOL_MAX = 8
CONNECT_TIMEOUT_S = 10
CLOSE_TIMEOUT_S = 5
# Any fixed 64-bit number names the lock; this one is "operator-server schema".
MIGRATION_LOCK = 0x6F70_7365_7276_0001

# Forward migrations: MIGRATIONS[n] takes the schema from version n to n + 1.
# ``data`` is the task's JSON text, as in SQLite, so a row decodes the same way
# on either store.  ``seq`` is an identity column: increasing, never reused
# (an upsert that hits an existing row uses up a number, which only leaves gaps).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE operator_sessions (
        sid          TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL,
        roles        TEXT NOT NULL,
        description  TEXT NOT NULL,
        created_at   DOUBLE PRECISION NOT NULL,
        last_seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE tasks (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        status     TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        data       TEXT NOT NULL
    );
    CREATE INDEX tasks_by_status_seq ON tasks (status, seq);
    CREATE INDEX tasks_by_status_updated ON tasks (status, updated_at);
    """,
    # v2: a role is exclusive cluster-wide: the primary key decides, not one
    # process's map.  Deleting a session frees its roles.
    """
    CREATE TABLE operator_roles (
        role TEXT PRIMARY KEY,
        sid  TEXT NOT NULL REFERENCES operator_sessions (sid) ON DELETE CASCADE
    );
    INSERT INTO operator_roles (role, sid)
        SELECT DISTINCT ON (r.role) r.role, s.sid
        FROM operator_sessions s, json_array_elements_text(s.roles::json) AS r(role)
        ORDER BY r.role, s.created_at;
    """,
    # v3: task events (the SSE streams; ids given by the engine) and pending
    # webhook deliveries, as in SQLite's v3.
    """
    CREATE TABLE task_events (
        id      BIGINT PRIMARY KEY,
        task_id TEXT NOT NULL,
        data    TEXT NOT NULL
    );
    CREATE INDEX task_events_by_task ON task_events (task_id, id);
    CREATE TABLE webhook_deliveries (
        task_id TEXT PRIMARY KEY,
        due_at  DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX webhook_deliveries_by_due ON webhook_deliveries (due_at);
    """,
    # v4: cluster mode.  A lease per live task; event ids every node draws from
    # one sequence (continuing after any already stored).
    """
    CREATE TABLE task_leases (
        task_id    TEXT PRIMARY KEY,
        node_id    TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX task_leases_by_node ON task_leases (node_id);
    CREATE SEQUENCE task_event_ids;
    SELECT setval('task_event_ids', COALESCE((SELECT MAX(id) FROM task_events), 0) + 1, false);
    """,
]
# A task's first write leases it to its writer; a lease someone else holds stays theirs.
INSERT_LEASE = (
    "INSERT INTO task_leases (task_id, node_id, expires_at) "
    "VALUES ($1, $2, now() + make_interval(secs => $3)) "
    "ON CONFLICT (task_id) DO NOTHING"
)
RENEW_LEASES = (
    "UPDATE task_leases SET expires_at = now() + make_interval(secs => $2) WHERE node_id = $1"
)
RELEASE_LEASES = "UPDATE task_leases SET expires_at = '-infinity' WHERE node_id = $1"
# Live tasks with a lapsed or missing lease, locked so that concurrent reapers
# skip each other's; the upsert re-checks the lease row as it is now (a lease
# renewed or taken since the scan's snapshot does not come back).
TAKE_OVER = """
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
    )
    SELECT t.id, t.data FROM tasks t JOIN taken k ON k.task_id = t.id ORDER BY t.seq
"""
NEXT_EVENT_IDS = "SELECT nextval('task_event_ids') FROM generate_series(1, $1)"
UPSERT_TASK = (
    "INSERT INTO tasks (id, status, created_at, updated_at, data) VALUES ($1, $2, $3, $4, $5) "
    "ON CONFLICT (id) DO UPDATE SET "
    "status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, data = EXCLUDED.data"
)
UPSERT_SESSION = (
    "INSERT INTO operator_sessions "
    "(sid, token_sha256, roles, description, created_at, last_seen_at) "
    "VALUES ($1, $2, $3, $4, $5, $6) "
    "ON CONFLICT (sid) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256, "
    "roles = EXCLUDED.roles, description = EXCLUDED.description, "
    "created_at = EXCLUDED.created_at, last_seen_at = EXCLUDED.last_seen_at"
)
# Claims every role the session does not already hold; whichever ones come back
# are the session's now.  A role held by another session does not come back.
CLAIM_ROLES = """
    INSERT INTO operator_roles (role, sid) SELECT DISTINCT unnest($2::text[]), $1
    ON CONFLICT (role) DO UPDATE SET sid = EXCLUDED.sid WHERE operator_roles.sid = EXCLUDED.sid
    RETURNING role
"""
ROLE_HOLDERS = "SELECT role, sid FROM operator_roles WHERE role = ANY($2::text[]) AND sid <> $1"
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
    )
    SELECT status FROM gone
"""
INSERT_EVENT = "INSERT INTO task_events (id, task_id, data) VALUES ($1, $2, $3)"
UPSERT_DELIVERY = (
    "INSERT INTO webhook_deliveries (task_id, due_at) VALUES ($1, $2) "
    "ON CONFLICT (task_id) DO UPDATE SET due_at = EXCLUDED.due_at"
)

Work = Callable[[asyncpg.Connection], Awaitable[Any]]
# What a lost or refused connection raises: the whole batch fails, not one op.
# InternalClientError too: a backend terminated while the connection sat idle in
# the pool surfaces as a protocol-state error on its next use.
CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


@dataclass
class _Op:
    work: Work
    future: asyncio.Future[Any] | None  # None: a "soon" write
    what: str
    events: Events = ()  # handed to the event observer once committed


class PostgresStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._accepting = False  # writes may be queued: open, and not yet closing
        self._unsettled = 0  # writes queued and not yet committed (or failed)
        self._commit_observer: Callable[[float], None] | None = None
        self._node_id = ""
        self._lease_s = 10.0
        self._live: frozenset[str] = frozenset()
        self._healthy = True

    # -- lifecycle --------------------------------------------------------

    @property
    def shared(self) -> bool:
        return True

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _lost(self, exc: BaseException) -> None:
        if self._healthy:
            log.error("lost the PostgreSQL connection", error=str(exc))
        self._healthy = False

    def _answered(self) -> None:
        if not self._healthy:
            log.info("the PostgreSQL connection is back")
        self._healthy = True

    def lease_tasks(self, node_id: str, lease_s: float, live_statuses: Collection[str]) -> None:
        super().lease_tasks(node_id, lease_s, live_statuses)
        self._node_id, self._lease_s = node_id, float(lease_s)
        self._live = frozenset(live_statuses)

    def claim(self) -> None:
        """Nothing to take: every node of a cluster opens the same database."""

    async def open(self) -> None:
        """Connect, migrate under the advisory lock, start the writer."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=POOL_MAX, timeout=CONNECT_TIMEOUT_S
            )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            await _migrate(self._pool)
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

    async def close(self) -> None:
        """Commit everything queued, stop the writer, close the pool."""
        self._accepting = False  # nothing may queue behind the stop marker
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
            self._writer = None
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
        # The queue is in order: once this no-op is answered, all before it is committed.
        await self._call(_nothing, "flush")

    def observe_commits(self, observer: Callable[[float], None]) -> None:
        self._commit_observer = observer

    # -- the writer -------------------------------------------------------

    async def _write_forever(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < BATCH and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                outcomes = await self._run_batch(batch)
            except Exception as exc:  # the writer must outlive any one batch
                log.exception("store batch failed")
                outcomes = [(False, StoreError(f"commit failed: {exc}"))] * len(batch)
            self._unsettled -= len(batch)
            for op, (ok, value) in zip(batch, outcomes, strict=True):
                if ok:
                    self._events_committed(op.events)
                _deliver(op, ok, value)

    async def _run_batch(self, batch: list[_Op]) -> list[tuple[bool, Any]]:
        assert self._pool is not None
        outcomes: list[tuple[bool, Any]] = []
        began = time.perf_counter()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                for op in batch:
                    try:
                        async with conn.transaction():  # a savepoint
                            outcomes.append((True, await op.work(conn)))
                    except StoreError as exc:  # the op's own refusal, already worded
                        outcomes.append((False, exc))
                    except (asyncpg.PostgresError, ValueError, TypeError) as exc:
                        outcomes.append((False, StoreError(f"{op.what}: {exc}")))
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            return [(False, StoreError(f"commit failed: {exc}"))] * len(batch)
        except asyncpg.PostgresError as exc:
            return [(False, StoreError(f"commit failed: {exc}"))] * len(batch)
        self._answered()
        if self._commit_observer is not None:
            self._commit_observer(time.perf_counter() - began)
        return outcomes

    # -- queueing ---------------------------------------------------------

    async def _call(self, work: Work, what: str, events: Events = ()) -> Any:
        if not self._accepting:
            raise StoreError("the store is not open")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._unsettled += 1
        self._queue.put_nowait(_Op(work, fut, what, events))
        return await fut

    def _soon(self, work: Work, what: str, events: Events = ()) -> None:
        if not self._accepting:
            log.error("store write after close dropped", what=what)
            return
        self._unsettled += 1
        self._queue.put_nowait(_Op(work, None, what, events))

    async def _read(self, work: Work, what: str) -> Any:
        """Run a read on the pool once every write queued before it has committed."""
        if self._pool is None:
            raise StoreError("the store is not open")
        if self._unsettled:
            await self.flush()
        try:
            async with self._pool.acquire() as conn:
                found = await work(conn)
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            raise StoreError(f"{what}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"{what}: {exc}") from exc
        self._answered()
        return found

    # -- operations -------------------------------------------------------

    async def put_session(self, record: SessionRecord) -> None:
        args = (
            record.sid,
            record.token_sha256,
            json.dumps(record.roles),
            record.desc,
            float(record.created_at),
            float(record.last_seen_at),
        )
        roles = list(record.roles)

        async def work(c: asyncpg.Connection) -> None:
            await c.execute(UPSERT_SESSION, *args)
            taken = await c.fetch(CLAIM_ROLES, record.sid, roles)
            if len(taken) < len(set(roles)):
                held = await c.fetch(ROLE_HOLDERS, record.sid, roles)
                # Raised inside the op's savepoint: the session row goes too.
                raise RolesTaken({row["role"]: row["sid"] for row in held})

        await self._call(work, f"save session {record.sid}")

    def touch_session_soon(self, sid: str, last_seen_at: float) -> None:
        self._soon(
            lambda c: c.execute(
                "UPDATE operator_sessions SET last_seen_at = $1 WHERE sid = $2",
                float(last_seen_at),
                sid,
            ),
            f"touch session {sid}",
        )

    async def delete_session(self, sid: str) -> None:
        await self._call(
            lambda c: c.execute("DELETE FROM operator_sessions WHERE sid = $1", sid),
            f"delete session {sid}",
        )

    async def load_sessions(self) -> list[Row]:
        rows = await self._read(
            lambda c: c.fetch(
                "SELECT sid, token_sha256, roles, description, created_at, last_seen_at "
                "FROM operator_sessions ORDER BY created_at"
            ),
            "load sessions",
        )
        return decode_session_rows(rows)

    def _task_write(
        self, record: dict[str, Any], events: Events, deliver_at: float | None = None
    ) -> tuple[Work, str, Events]:
        """The write for ``record`` and its events, snapshotted now, not when the
        writer gets to it."""
        args = (
            record["id"],
            record["status"],
            float(record["created_at"]),
            float(record["updated_at"]),
            wire_json.dumps_bytes(record).decode(),
        )
        live = args[1] in self._live
        stored: list[TaskEvent] = []  # ``events`` with the ids they are stored under

        async def work(c: asyncpg.Connection) -> None:
            await c.execute(UPSERT_TASK, *args)  # an upsert: the row keeps its seq
            if live:
                await c.execute(INSERT_LEASE, args[0], self._node_id, self._lease_s)
            else:
                await c.execute("DELETE FROM task_leases WHERE task_id = $1", args[0])
            await _insert_events(c, events, stored)
            if deliver_at is not None:
                await c.execute(UPSERT_DELIVERY, args[0], float(deliver_at))

        return work, f"save task {record['id']}", stored

    async def put_task(
        self, record: dict[str, Any], events: Events = (), *, deliver_at: float | None = None
    ) -> None:
        await self._call(*self._task_write(record, events, deliver_at))

    def put_task_soon(self, record: dict[str, Any], events: Events = ()) -> None:
        self._soon(*self._task_write(record, events))

    def put_events_soon(self, events: Events) -> None:
        stored: list[TaskEvent] = []
        self._soon(lambda c: _insert_events(c, events, stored), "save events", stored)

    async def last_event_id(self) -> int:
        found = await self._read(
            lambda c: c.fetchval("SELECT MAX(id) FROM task_events"), "last event id"
        )
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
        rows = await self._read(
            lambda c: c.fetch(
                "SELECT id, data FROM tasks WHERE status = ANY($1::text[]) ORDER BY seq", wanted
            ),
            "load tasks",
        )
        return [decode_task_row(task_id, data) for task_id, data in rows]

    async def get_task(self, task_id: str) -> Row | None:
        data = await self._read(
            lambda c: c.fetchval("SELECT data FROM tasks WHERE id = $1", task_id),
            f"read task {task_id}",
        )
        return None if data is None else decode_task_row(task_id, data)

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
        rows = await self._read(lambda c: c.fetch(sql, *args), "list tasks")
        return [StoredTask(int(seq), decode_task_row(task_id, data)) for seq, task_id, data in rows]

    async def count_tasks(self) -> dict[str, int]:
        rows = await self._read(
            lambda c: c.fetch("SELECT status, COUNT(*) FROM tasks GROUP BY status"),
            "count tasks",
        )
        return {status: int(n) for status, n in rows}

    # -- cluster ----------------------------------------------------------

    async def take_over(self, *, at_start: bool, limit: int) -> list[Row]:
        del at_start  # the same at start-up: a live node's tasks keep their lease
        args = (self._node_id, self._lease_s, list(self._live), limit)

        async def work(c: asyncpg.Connection) -> list[Any]:
            async with c.transaction():
                return list(await c.fetch(TAKE_OVER, *args))

        rows = await self._read(work, "take over tasks")
        return [decode_task_row(task_id, data) for task_id, data in rows]

    async def renew_leases(self) -> None:
        await self._direct(RENEW_LEASES, self._node_id, self._lease_s, what="renew leases")

    async def release_leases(self) -> None:
        await self._direct(RELEASE_LEASES, self._node_id, what="release leases")

    async def _direct(self, sql: str, *args: Any, what: str) -> None:
        """A write of this node's own lease rows: straight on the pool, not behind
        the queue (nothing queued touches them but a task's first write)."""
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(sql, *args)
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            raise StoreError(f"{what}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"{what}: {exc}") from exc
        self._answered()

    async def get_session(self, sid: str) -> SessionRecord | None:
        row = await self._read(
            lambda c: c.fetchrow(
                "SELECT sid, token_sha256, roles, description, created_at, last_seen_at "
                "FROM operator_sessions WHERE sid = $1",
                sid,
            ),
            f"read session {sid}",
        )
        if row is None:
            return None
        try:
            return decode_session(*row)
        except Exception as exc:  # a bad row is as good as none
            log.warning("skipping a stored session that cannot be decoded", sid=sid, error=str(exc))
            return None

    async def role_holder(self, role: str) -> str | None:
        sid = await self._read(
            lambda c: c.fetchval("SELECT sid FROM operator_roles WHERE role = $1", role),
            f"find role {role}",
        )
        return None if sid is None else str(sid)

    async def delete_finished(
        self, statuses: Collection[str], updated_before: float, limit: int
    ) -> dict[str, int]:
        wanted = list(statuses)

        async def work(c: asyncpg.Connection) -> dict[str, int]:
            gone = await c.fetch(DELETE_FINISHED, wanted, float(updated_before), limit)
            return dict(Counter(row["status"] for row in gone))

        result: dict[str, int] = await self._call(work, "delete finished tasks")
        return result


async def _insert_events(c: asyncpg.Connection, events: Events, stored: list[TaskEvent]) -> None:
    """Store ``events`` under ids from the shared sequence; ``stored`` gets them
    as stored (what the write publishes once committed)."""
    if not events:
        return
    ids = sorted(int(r[0]) for r in await c.fetch(NEXT_EVENT_IDS, len(events)))
    renumbered = []
    for new_id, event in zip(ids, events, strict=True):
        again = TaskEvent(new_id, event.task_id, event.type, event.data)
        again.__dict__["text"] = event.text  # already encoded
        renumbered.append(again)
    await c.executemany(INSERT_EVENT, [(e.id, e.task_id, e.text) for e in renumbered])
    stored[:] = renumbered


async def _nothing(conn: asyncpg.Connection) -> None:
    del conn


def _deliver(op: _Op, ok: bool, value: Any) -> None:
    if op.future is not None:
        if op.future.done():  # the caller gave up waiting; the write stands
            return
        if ok:
            op.future.set_result(value)
        else:
            op.future.set_exception(value)
    elif not ok:
        log.error("background store write failed", what=op.what, error=str(value))


async def _migrate(pool: asyncpg.Pool) -> int:
    """Bring the schema to ``len(MIGRATIONS)``, one node at a time; refuse a newer one."""
    try:
        async with pool.acquire() as conn:
            # A session lock: PostgreSQL drops it if this connection dies mid-way.
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            try:
                return await _migrate_locked(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
        raise StoreError(f"cannot migrate the PostgreSQL schema: {exc}") from exc


async def _migrate_locked(conn: asyncpg.Connection) -> int:
    async with conn.transaction():
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS operator_server_schema (version INTEGER NOT NULL)"
        )
        version = await conn.fetchval("SELECT version FROM operator_server_schema")
        if version is None:
            version = 0
            await conn.execute("INSERT INTO operator_server_schema VALUES (0)")
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this server knows "
            f"({len(MIGRATIONS)}); refusing to touch it"
        )
    for target in range(version, len(MIGRATIONS)):
        async with conn.transaction():
            await conn.execute(MIGRATIONS[target])
            await conn.execute("UPDATE operator_server_schema SET version = $1", target + 1)
        log.info("migrated the PostgreSQL schema", version=target + 1)
    return len(MIGRATIONS)

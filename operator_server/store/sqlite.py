"""SQLite, behind one thread, with group commit.

Every operation goes through one queue to one thread that owns the connection,
so order is exactly the order of the calls.  The event loop hands what a turn
queued over in one piece (one ``put``, one wake-up of the thread, instead of
one per operation: each wake-up contends for the GIL), and back-to-back
event-only writes share one operation.  The thread takes what is queued (up to
``BATCH``) and runs it in one transaction — one commit, one fsync, for many
writes under load, gathered for ``GATHER_S`` when the store is busy — with a
savepoint per operation so a failing one fails alone.  Durable callers are
answered after the commit.

WAL journal, ``synchronous=FULL`` (a committed write survives power loss, not
only a crash), a busy timeout, the file created with mode 0600, and the schema
versioned in ``PRAGMA user_version`` with forward migrations run at open.

A batch the file cannot take (disk full, I/O error) fails its writes with
``StoreError`` and leaves the file as it was; ``healthy`` is False (healthz
answers 503) until a batch commits cleanly again.  The engine writes again the
ends it owes until they land (``Engine._end``).

One process per file: ``claim`` takes an exclusive ``flock`` on a sidecar
``<file>.lock`` holding the owner's PID, before anything reads or writes the
database, and keeps it until ``close`` (the kernel drops it if the process
dies).  A sidecar rather than the database itself, because SQLite's own locks
on the database are POSIX record locks, and a process that closes *any*
descriptor of that file loses all of them; our lock must never be able to
disturb SQLite's.  The sidecar is left in place on exit: removing it would let
a starting process lock a file a third one is about to replace.
"""

# size: one store behind one thread: its queue, migrations and SQL share the one
# connection the thread owns.
from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import queue
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operator_server.audit.chain import Anchor
from operator_server.audit.record import (
    COLUMNS,
    GENESIS,
    AuditEntry,
    AuditRow,
    chained_columns,
    from_columns,
)
from operator_server.logs import get_logger
from operator_server.store import migrations
from operator_server.store.base import (
    KEY_COLUMNS,
    LINK_USE_COLUMNS,
    Audit,
    AuditQuery,
    Delivery,
    Events,
    KeyRecord,
    LinkUse,
    Notice,
    NoticeMessage,
    Row,
    SessionRecord,
    Store,
    StoredTask,
    StoreError,
    StoreLocked,
    TaskEvent,
    ask_row,
    decode_event_batch_rows,
    decode_key_row,
    decode_key_rows,
    decode_session_rows,
    decode_task_row,
    key_row,
    output_row,
)
from operator_server.store.notice_rows import (
    DELETE_GIVEN_UP,
    MESSAGE_COLUMNS,
    NOTICE_COLUMNS,
    decode_message,
    decode_notice,
    message_row,
    notice_row,
)
from operator_server.wire import json as wire_json

log = get_logger(__name__)
BATCH = 512
# Group commit under load: when the last batch held ``GATHER_AFTER``
# operations or more, the thread waits ``GATHER_S`` after the next one arrives,
# so more writes share its commit (one fsync, and each touched page written
# once for all of them).  A store that is idle, or serving a reader or two,
# commits (and reads) at once.  At 1 ms: about +4% e2e tasks/s and -6% daemon
# CPU per task (``make bench ARGS=e2e``); every durable answer under load waits
# up to that much longer.
GATHER_S = 0.001
GATHER_AFTER = 4
BUSY_TIMEOUT_MS = 5000

# Forward migrations: MIGRATIONS[n] takes the schema from version n to n + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE operator_sessions (
        sid          TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL,
        roles        TEXT NOT NULL,
        desc         TEXT NOT NULL,
        created_at   REAL NOT NULL,
        last_seen_at REAL NOT NULL
    );
    CREATE TABLE tasks (
        id         TEXT PRIMARY KEY,
        status     TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        data       TEXT NOT NULL
    );
    CREATE INDEX tasks_by_status ON tasks (status, updated_at);
    """,
    # v2: finished tasks are read from here, not memory.  ``seq`` orders and
    # pages them (AUTOINCREMENT: never reused, even after retention deletes the
    # newest row); (status, seq) serves filtered pages, (status, updated_at)
    # the retention sweep.
    """
    CREATE TABLE tasks_v2 (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT NOT NULL UNIQUE,
        status     TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        data       TEXT NOT NULL
    );
    INSERT INTO tasks_v2 (id, status, created_at, updated_at, data)
        SELECT id, status, created_at, updated_at, data FROM tasks ORDER BY created_at, id;
    DROP TABLE tasks;
    ALTER TABLE tasks_v2 RENAME TO tasks;
    CREATE INDEX tasks_by_status_seq ON tasks (status, seq);
    CREATE INDEX tasks_by_status_updated ON tasks (status, updated_at);
    """,
    # v3: task events (the SSE streams; ids given by the engine, in commit
    # order) and pending webhook deliveries.
    """
    CREATE TABLE task_events (
        id      INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL,
        data    TEXT NOT NULL
    );
    CREATE INDEX task_events_by_task ON task_events (task_id, id);
    CREATE TABLE webhook_deliveries (
        task_id TEXT PRIMARY KEY,
        due_at  REAL NOT NULL
    );
    CREATE INDEX webhook_deliveries_by_due ON webhook_deliveries (due_at);
    """,
    # v4: events stored a write's worth per row: one row holds a JSON array of
    # consecutive events of one task (ids first_id..last_id), so a task's ~11
    # events are a few rows and index entries, not eleven.  Ranges never
    # overlap, so rows in last_id order are events in id order.
    """
    CREATE TABLE task_event_rows (
        last_id  INTEGER PRIMARY KEY,
        first_id INTEGER NOT NULL,
        task_id  TEXT NOT NULL,
        data     TEXT NOT NULL
    );
    INSERT INTO task_event_rows (last_id, first_id, task_id, data)
        SELECT id, id, task_id, '[' || data || ']' FROM task_events ORDER BY id;
    DROP TABLE task_events;
    CREATE INDEX task_event_rows_by_task ON task_event_rows (task_id, last_id);
    """,
    # v5: worker asks stored apart, one row per ask (``put_ask_soon``): an ask
    # written costs the ask, not a rewrite of its task.  Rows keep their seq on
    # update, so a task's asks read in the order first stored.  The asks rows
    # already hold inline are copied over (the task's next write drops them).
    """
    CREATE TABLE task_asks (
        seq     INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        ask_id  TEXT NOT NULL,
        data    TEXT NOT NULL,
        UNIQUE (task_id, ask_id)
    );
    INSERT OR IGNORE INTO task_asks (task_id, attempt, ask_id, data)
        SELECT t.id, json_extract(a.value, '$.number'), json_extract(k.value, '$.ask_id'),
               k.value
        FROM tasks t, json_each(t.data, '$.attempts') a, json_each(a.value, '$.asks') k
        WHERE instr(t.data, '"asks"') > 0 AND json_valid(t.data)
          AND json_type(k.value, '$.ask_id') = 'text'
          AND json_type(a.value, '$.number') = 'integer'
        ORDER BY t.seq, a.key, k.key;
    """,
    # v6: an attempt's outputs (a worker's result, an ack) stored apart, one
    # row per output, appended once (``put_output``): an output costs itself,
    # not a rewrite of its task with every earlier attempt's outputs.  A
    # task's outputs read in seq order.  The outputs rows already hold inline
    # (``tail``) are copied over (the task's next write drops them).
    """
    CREATE TABLE task_outputs (
        seq     INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        data    TEXT NOT NULL
    );
    CREATE INDEX task_outputs_by_task ON task_outputs (task_id, seq);
    INSERT INTO task_outputs (task_id, attempt, data)
        SELECT t.id, json_extract(a.value, '$.number'), o.value
        FROM tasks t, json_each(t.data, '$.attempts') a, json_each(a.value, '$.tail') o
        WHERE json_valid(t.data)
          AND json_type(a.value, '$.number') = 'integer'
          AND json_type(o.value) = 'array'
        ORDER BY t.seq, a.key, o.key;
    """,
    # v7: API keys (``auth/keys.py``: only the secret's SHA-256 is kept; a
    # revoked key keeps its row) and who minted each session (a principal's
    # name; "" for sessions minted before).
    """
    CREATE TABLE api_keys (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        scopes        TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at    REAL NOT NULL,
        expires_at    REAL,
        note          TEXT NOT NULL,
        revoked_at    REAL
    );
    ALTER TABLE operator_sessions ADD COLUMN minted_by TEXT NOT NULL DEFAULT '';
    """,
    # v8: the audit trail (``operator_server/audit``): one hash chain, appended in
    # the commit of the decision each row records; ``audit_pruned`` holds the
    # last row retention removed, which the first kept row follows.  One
    # index besides seq (a task's rows, for its page): each costs every row a
    # write, and pruning finds its prefix by walking seq.  Written to apply
    # after any other step: it touches no other table.
    """
    CREATE TABLE audit_log (
        seq            INTEGER PRIMARY KEY,
        node           TEXT NOT NULL,
        at             REAL NOT NULL,
        principal      TEXT NOT NULL,
        session_id     TEXT,
        action         TEXT NOT NULL,
        task_id        TEXT,
        req_id         TEXT,
        outcome        TEXT,
        reason         TEXT,
        payload_sha256 TEXT,
        prev_hash      TEXT NOT NULL,
        hash           TEXT NOT NULL
    );
    CREATE INDEX audit_log_by_task ON audit_log (task_id, seq);
    CREATE TABLE audit_pruned (
        seq  INTEGER NOT NULL,
        hash TEXT NOT NULL
    );
    """,
    # v9: action links (``notify/links.py``): the key that signs them when no
    # ``secret`` is set (one row, made once), and each link's one use.
    # Written to apply after any other step: it touches no other table.
    """
    CREATE TABLE link_keys (
        id  INTEGER PRIMARY KEY CHECK (id = 1),
        key TEXT NOT NULL
    );
    CREATE TABLE link_uses (
        link_id   TEXT PRIMARY KEY,
        req_id    TEXT NOT NULL,
        action    TEXT NOT NULL,
        principal TEXT NOT NULL,
        at        REAL NOT NULL
    );
    """,
    # v10: notifications (``operator_server/notify``): notices queued per
    # (rule, recipient, request), and the messages cut to carry them, each
    # with its next due time and tries, so a restart resumes delivery.
    """
    CREATE TABLE notices (
        id         TEXT PRIMARY KEY,
        batch      TEXT NOT NULL,
        node       TEXT NOT NULL,
        queued_at  REAL NOT NULL,
        data       TEXT NOT NULL,
        message_id TEXT
    );
    CREATE INDEX notices_by_message ON notices (message_id);
    CREATE TABLE notice_messages (
        id         TEXT PRIMARY KEY,
        batch      TEXT NOT NULL,
        node       TEXT NOT NULL,
        created_at REAL NOT NULL,
        due_at     REAL,
        attempts   INTEGER NOT NULL,
        last_error TEXT,
        data       TEXT NOT NULL
    );
    """,
]
SESSION_COLUMNS = "sid, token_sha256, roles, desc, created_at, last_seen_at, minted_by"
UPSERT_TASK = (
    "INSERT INTO tasks (id, status, created_at, updated_at, data) VALUES (?,?,?,?,?) "
    "ON CONFLICT (id) DO UPDATE SET "
    "status = excluded.status, updated_at = excluded.updated_at, data = excluded.data"
)
INSERT_EVENTS = "INSERT INTO task_event_rows (last_id, first_id, task_id, data) VALUES (?,?,?,?)"
# Keyset paging: a seek on seq, or on (status, seq), then ``limit`` rows.
LIST_TASKS = "SELECT seq, id, data FROM tasks WHERE seq > ? ORDER BY seq LIMIT ?"
LIST_TASKS_OF_STATUS = (
    "SELECT seq, id, data FROM tasks WHERE status = ? AND seq > ? ORDER BY seq LIMIT ?"
)
# Retention, oldest first, on (status, updated_at); ``marks``: one ? per status.
FINISHED_BEFORE = (
    "SELECT seq, status, id FROM tasks WHERE status IN ({marks}) AND updated_at < ? "
    "ORDER BY updated_at LIMIT ?"
)
DELETE_EVENTS_OF_TASK = "DELETE FROM task_event_rows WHERE task_id = ?"
UPSERT_ASK = (
    "INSERT INTO task_asks (task_id, attempt, ask_id, data) VALUES (?,?,?,?) "
    "ON CONFLICT (task_id, ask_id) DO UPDATE SET attempt = excluded.attempt, data = excluded.data"
)
# The asks of the tasks a read returns, ``marks`` ids at a time (one ? each).
ASKS_OF_TASKS = (
    "SELECT task_id, attempt, data FROM task_asks WHERE task_id IN ({marks}) ORDER BY seq"
)
ASKS_PER_QUERY = 500
INSERT_OUTPUT = "INSERT INTO task_outputs (task_id, attempt, data) VALUES (?,?,?)"
AUDIT_COLUMNS = ", ".join(COLUMNS)
INSERT_AUDIT = f"INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ({','.join('?' * len(COLUMNS))})"
AUDIT_HEAD = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
AUDIT_ANCHOR = "SELECT seq, hash FROM audit_pruned"
OUTPUTS_OF_TASKS = (
    "SELECT task_id, attempt, data FROM task_outputs WHERE task_id IN ({marks}) ORDER BY seq"
)
# How long an event that comes with no task write (an operator request or
# reply, an output) may wait for its task's next write to ride with: under load
# most tasks end within it, and their events cost one row, not one each.  The
# live streams see such an event this much later, at most.
LINGER_S = 0.1
LINGER_SLACK_S = 0.02

Work = Callable[[sqlite3.Connection], Any]


@dataclass
class _Op:
    work: Work
    future: asyncio.Future[Any] | None  # None: a "soon" write
    what: str
    events: Events = ()  # handed to the event observer once committed
    audit: Audit = ()  # chained as the batch ends, if the operation succeeded


class SQLiteStore(Store):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._queue: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        # What this turn of the loop queued, handed to the thread at its end.
        self._outbox: list[_Op] = []
        self._thread: threading.Thread | None = None
        self._commit_observer: Callable[[float], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_fd: int | None = None
        # Events numbered as their write is queued (so ids increase in commit
        # order), from the highest stored at open.
        self._event_id = 0
        # Events with no task write yet, by task, and when each task's must go.
        self._lingering: dict[str, list[TaskEvent]] = {}
        # Audit entries of those events' decisions: they go with them.
        self._lingering_audit: dict[str, list[AuditEntry]] = {}
        self._linger_due: deque[tuple[float, str]] = deque()
        self._linger_timer: asyncio.TimerHandle | None = None
        # False from a batch the file could not take (disk full, I/O error)
        # until one commits cleanly: healthz answers 503 meanwhile.  Set by the
        # thread, read by the loop (one bool: no lock needed).
        self._healthy = True

    # -- lifecycle --------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def claim(self) -> None:
        """Lock the store for this process, or raise ``StoreLocked`` naming the holder."""
        if self._lock_fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLocked(
                    f"{self.path} is in use by another operator-server process "
                    f"(pid {holder or 'unknown'}); stop it or choose another store.path"
                ) from None
            raise StoreError(f"cannot lock {self.lock_path}: {exc}") from exc
        # Only the holder writes: the PID is what a second process reports.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    async def open(self) -> None:
        """Claim the file, start the thread; it opens the file and runs the migrations."""
        self.claim()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name="store-sqlite", daemon=True)
        self._thread.start()
        await self._call(_migrate, "migrate")
        self._event_id = await self._call(_max_event_id, "last event id")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Create it ourselves so it is 0600 from the first byte; SQLite gives its
        # -wal and -shm files the same mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    async def close(self) -> None:
        """Write everything queued, stop the thread, then let go of the file."""
        if self._thread is not None:
            self._release_lingering(None)
            self._hand_over()
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        self._release()

    async def flush(self) -> None:
        # The queue is in order: once this no-op is answered, all before it is committed.
        self._release_lingering(None)
        await self._call(lambda c: None, "flush")

    def observe_commits(self, observer: Callable[[float], None]) -> None:
        self._commit_observer = observer

    # -- the thread -------------------------------------------------------

    def _work(self) -> None:
        try:
            conn: sqlite3.Connection | None = self._connect()
            broken: StoreError | None = None
        except (OSError, sqlite3.Error) as exc:
            conn, broken = None, StoreError(f"cannot open {self.path}: {exc}")
        stop = False
        busy = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            if busy:
                time.sleep(GATHER_S)  # let more writes join this commit
            batch = first
            while len(batch) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.extend(nxt)
            busy = len(batch) >= GATHER_AFTER
            if conn is None:
                self._healthy = False
                self._deliver(batch, [(False, broken)] * len(batch))
            else:
                self._run_batch(conn, batch)
        if conn is not None:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        began = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Optimistic: the whole batch as it comes, with no savepoint per
                # operation (three statements each) — writes almost never fail.
                outcomes = [(True, op.work(conn)) for op in batch]
            except (sqlite3.Error, ValueError, TypeError):
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                outcomes = [self._isolated(conn, op) for op in batch]
            audited = [
                e for op, (ok, _) in zip(batch, outcomes, strict=True) if ok for e in op.audit
            ]
            if audited:  # in this commit, or the batch fails with it
                _append_audit(conn, self.audit_node, audited)
            conn.execute("COMMIT")
            if self._commit_observer is not None:
                self._commit_observer(time.perf_counter() - began)
            self._healthy = not any(not ok and _file_failed(value) for ok, value in outcomes)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = StoreError(f"commit failed: {exc}")
            outcomes = [(False, error)] * len(batch)
            self._healthy = False
        self._deliver(batch, outcomes)

    @staticmethod
    def _isolated(conn: sqlite3.Connection, op: _Op) -> tuple[bool, Any]:
        """One operation in its own savepoint, so a failing one fails alone."""
        conn.execute("SAVEPOINT op")
        try:
            outcome: tuple[bool, Any] = (True, op.work(conn))
            conn.execute("RELEASE op")
        except (sqlite3.Error, ValueError, TypeError) as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            error = StoreError(f"{op.what}: {exc}")
            error.__cause__ = exc  # the file failed, or the operation (``_file_failed``)
            outcome = (False, error)
        return outcome

    def _deliver(self, batch: list[_Op], outcomes: list[tuple[bool, Any]]) -> None:
        """Hand a batch's outcomes to the event loop in one wake-up, not one per
        operation: each wake-up is a syscall and a turn of the loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle_batch, batch, outcomes)

    def _settle_batch(self, batch: list[_Op], outcomes: list[tuple[bool, Any]]) -> None:
        for op, (ok, value) in zip(batch, outcomes, strict=True):
            if ok and op.events:
                # Before the caller resumes, and in queue order: ids reach
                # subscribers in increasing order.
                self._events_committed(op.events)
            if op.future is not None:
                if ok:
                    _settle(op.future, value, None)
                else:
                    _settle(op.future, None, value)
            elif not ok:
                log.error("background store write failed", what=op.what, error=str(value))

    # -- queueing ---------------------------------------------------------

    def _enqueue(self, op: _Op) -> None:
        if not self._outbox:
            assert self._loop is not None
            self._loop.call_soon(self._hand_over)
        self._outbox.append(op)

    def _hand_over(self) -> None:
        if self._outbox:
            ops, self._outbox = self._outbox, []
            self._queue.put(ops)

    async def _call(self, work: Work, what: str, events: Events = (), audit: Audit = ()) -> Any:
        if self._thread is None or self._loop is None:
            raise StoreError("the store is not open")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._enqueue(_Op(work, fut, what, events, audit))
        return await fut

    def _soon(self, work: Work, what: str, events: Events = (), audit: Audit = ()) -> None:
        if self._thread is None:
            log.error("store write after close dropped", what=what)
            return
        self._enqueue(_Op(work, None, what, events, audit))

    # -- operations -------------------------------------------------------

    async def put_session(self, record: SessionRecord, *, audit: Audit = ()) -> None:
        row = _session_row(record)
        await self._call(
            lambda c: c.execute(
                f"INSERT OR REPLACE INTO operator_sessions ({SESSION_COLUMNS}) "
                "VALUES (?,?,?,?,?,?,?)",
                row,
            ),
            f"save session {record.sid}",
            audit=audit,
        )

    async def hand_over_session(
        self, source: SessionRecord, target: SessionRecord, *, audit: Audit = ()
    ) -> None:
        rows = [_session_row(source), _session_row(target)]
        await self._call(
            lambda c: c.executemany(
                f"INSERT OR REPLACE INTO operator_sessions ({SESSION_COLUMNS}) "
                "VALUES (?,?,?,?,?,?,?)",
                rows,
            ),
            f"hand session {source.sid} over to {target.sid}",
            audit=audit,
        )

    def touch_session_soon(self, sid: str, last_seen_at: float, *, audit: Audit = ()) -> None:
        self._soon(
            lambda c: c.execute(
                "UPDATE operator_sessions SET last_seen_at = ? WHERE sid = ?", (last_seen_at, sid)
            ),
            f"touch session {sid}",
            audit=audit,
        )

    async def delete_session(self, sid: str, *, audit: Audit = ()) -> None:
        await self._call(
            lambda c: c.execute("DELETE FROM operator_sessions WHERE sid = ?", (sid,)),
            f"delete session {sid}",
            audit=audit,
        )

    async def load_sessions(self) -> list[Row]:
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {SESSION_COLUMNS} FROM operator_sessions ORDER BY created_at"
            ).fetchall(),
            "load sessions",
        )
        return decode_session_rows(rows)

    async def link_key(self, candidate: str) -> str:
        def work(c: sqlite3.Connection) -> Any:
            c.execute("INSERT OR IGNORE INTO link_keys (id, key) VALUES (1, ?)", (candidate,))
            return c.execute("SELECT key FROM link_keys WHERE id = 1").fetchone()

        row = await self._call(work, "read the action links' key")
        return str(row[0])

    async def claim_link(self, use: LinkUse) -> LinkUse | None:
        row = (use.link_id, use.req_id, use.action, use.principal, use.at)

        def work(c: sqlite3.Connection) -> Any:
            added = c.execute(
                f"INSERT OR IGNORE INTO link_uses ({LINK_USE_COLUMNS}) VALUES (?,?,?,?,?)", row
            ).rowcount
            if added:
                return None
            return c.execute(
                f"SELECT {LINK_USE_COLUMNS} FROM link_uses WHERE link_id = ?", (use.link_id,)
            ).fetchone()

        found = await self._call(work, f"claim link {use.link_id}")
        return None if found is None else LinkUse(*found)

    async def release_link(self, link_id: str) -> None:
        await self._call(
            lambda c: c.execute("DELETE FROM link_uses WHERE link_id = ?", (link_id,)),
            f"release link {link_id}",
        )

    async def link_use(self, link_id: str) -> LinkUse | None:
        found = await self._call(
            lambda c: c.execute(
                f"SELECT {LINK_USE_COLUMNS} FROM link_uses WHERE link_id = ?", (link_id,)
            ).fetchone(),
            f"read link {link_id}",
        )
        return None if found is None else LinkUse(*found)

    async def put_key(self, record: KeyRecord, audit: Audit = ()) -> None:
        row = key_row(record)
        await self._call(
            lambda c: c.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", row
            ),
            f"save key {record.id}",
            audit=audit,
        )

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = await self._call(
            lambda c: c.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone(),
            f"read key {key_id}",
        )
        return decode_key_row(row)

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ).fetchall(),
            "list keys",
        )
        return decode_key_rows(rows)

    async def revoke_key(self, key_id: str, at: float, audit: Audit = ()) -> KeyRecord | None:
        def work(c: sqlite3.Connection) -> Any:
            c.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (at, key_id),
            )
            return c.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()

        row = await self._call(work, f"revoke key {key_id}", audit=audit)
        return decode_key_row(row)

    def _task_write(
        self,
        record: dict[str, Any],
        events: Events,
        deliver_at: float | None = None,
        audit: Audit = (),
    ) -> tuple[Work, str, Events, Audit]:
        """The write for ``record`` and its events, snapshotted now, on the caller's thread."""
        row = (
            record["id"],
            record["status"],
            record["created_at"],
            record["updated_at"],
            wire_json.dumps_bytes(record).decode(),
        )
        waiting = self._lingering.pop(record["id"], None)
        if waiting:
            # The task's own earlier events go first, in the same row.
            events = [*waiting, *events]
        held = self._lingering_audit.pop(record["id"], None)
        if held:
            audit = [*held, *audit]
        event_rows = self._number(events)

        def work(c: sqlite3.Connection) -> None:
            # An upsert, not INSERT OR REPLACE: the row keeps its seq.
            c.execute(UPSERT_TASK, row)
            if event_rows:
                c.executemany(INSERT_EVENTS, [_event_row(*r) for r in event_rows])
            if deliver_at is not None:
                c.execute(
                    "INSERT OR REPLACE INTO webhook_deliveries VALUES (?,?)", (row[0], deliver_at)
                )

        return work, f"save task {record['id']}", events, audit

    async def put_task(
        self,
        record: dict[str, Any],
        events: Events = (),
        *,
        deliver_at: float | None = None,
        audit: Audit = (),
        ended_as: dict[str, Any] | None = None,
    ) -> None:
        del ended_as  # one process: nobody else to tell
        await self._call(*self._task_write(record, events, deliver_at, audit))

    def put_task_soon(
        self,
        record: dict[str, Any],
        events: Events = (),
        *,
        deliver_at: float | None = None,
        audit: Audit = (),
    ) -> None:
        self._soon(*self._task_write(record, events, deliver_at, audit))

    def _number(self, events: Events) -> list[tuple[int, str, Events]]:
        """Give ``events`` the next ids; the rows they make, one per run of one
        task's events (a write's events are normally all its task's: one row)."""
        if not events:
            return []
        first = self._event_id + 1
        task_id = events[0].task_id
        one_task = True
        for event_id, event in enumerate(events, first):
            event.id = event_id
            if event.task_id != task_id:
                one_task = False
        self._event_id = first + len(events) - 1
        if one_task:
            return [(first, task_id, events)]
        rows: list[tuple[int, str, Events]] = []
        start = 0
        for i, event in enumerate(events):
            if event.task_id != events[start].task_id:
                rows.append((events[start].id, events[start].task_id, events[start:i]))
                start = i
        rows.append((events[start].id, events[start].task_id, events[start:]))
        return rows

    def put_ask_soon(self, task_id: str, attempt: int, ask: dict[str, Any]) -> None:
        row = ask_row(task_id, attempt, ask)
        self._soon(lambda c: c.execute(UPSERT_ASK, row), f"save ask {row[2]} of {task_id}")

    async def put_output(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> None:
        await self.put_output_soon(task_id, attempt, output, audit=audit)

    def put_output_soon(
        self, task_id: str, attempt: int, output: list[Any], *, audit: Audit = ()
    ) -> asyncio.Future[None]:
        row = output_row(task_id, attempt, output)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._thread is None or self._loop is None:
            fut.set_exception(StoreError("the store is not open"))
        else:  # queued now, not when first awaited
            self._enqueue(
                _Op(
                    lambda c: c.execute(INSERT_OUTPUT, row),
                    fut,
                    f"save output of {task_id}",
                    audit=audit,
                )
            )
        return fut

    def put_events_soon(self, events: Events, *, audit: Audit = ()) -> None:
        """Held for up to ``LINGER_S`` to ride with the task's next write; then
        written on their own, one row per task (``_release_lingering``).  An
        audit entry waits with its task's events, or, with none waiting,
        goes at once."""
        if self._thread is None:
            log.error("store write after close dropped", what="save events")
            return
        loop = self._loop
        assert loop is not None
        lingering = self._lingering
        for event in events:
            waiting = lingering.get(event.task_id)
            if waiting is None:
                lingering[event.task_id] = [event]
                self._linger_due.append((loop.time() + LINGER_S, event.task_id))
                if self._linger_timer is None:
                    self._linger_timer = loop.call_at(self._linger_due[0][0], self._on_linger_timer)
            else:
                waiting.append(event)
        alone = []
        for entry in audit:
            if entry.task_id is not None and entry.task_id in lingering:
                self._lingering_audit.setdefault(entry.task_id, []).append(entry)
            else:
                alone.append(entry)
        if alone:
            self._soon(lambda c: None, "save audit", audit=alone)

    def _release_lingering(self, now: float | None) -> None:
        """Queue every lingering event due by ``now`` (all of them: ``None``)."""
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        due = self._linger_due
        rows = []
        audit: list[AuditEntry] = []
        while due and (now is None or due[0][0] <= now):
            _, task_id = due.popleft()
            waiting = self._lingering.pop(task_id, None)
            if waiting:  # else a task write took them meanwhile
                rows.extend(self._number(waiting))
            audit.extend(self._lingering_audit.pop(task_id, ()))
        if rows or audit:
            self._enqueue(
                _Op(
                    lambda c: c.executemany(INSERT_EVENTS, [_event_row(*r) for r in rows]),
                    None,
                    "save events",
                    [e for _, _, events in rows for e in events],
                    audit,
                )
            )
        if due and self._loop is not None:
            # A little after the earliest is due, so one wake-up takes several.
            self._linger_timer = self._loop.call_at(
                due[0][0] + LINGER_SLACK_S, self._on_linger_timer
            )

    def _on_linger_timer(self) -> None:
        assert self._loop is not None
        self._linger_timer = None
        self._release_lingering(self._loop.time())

    # -- the audit trail ---------------------------------------------------

    async def append_audit(self, entries: Audit) -> None:
        await self._call(lambda c: None, "save audit", audit=list(entries))

    async def audit_page(self, query: AuditQuery) -> list[AuditRow]:
        self._release_lingering(None)  # a read sees every decision made before it
        where: list[str] = ["seq > ?"]
        args: list[Any] = [query.after]
        for column, value in (
            ("task_id", query.task_id),
            ("principal", query.principal),
            ("action", query.action),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.since is not None:
            where.append("at >= ?")
            args.append(query.since)
        sql = (
            f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} "
            "ORDER BY seq LIMIT ?"
        )
        rows = await self._call(
            lambda c: c.execute(sql, (*args, query.limit)).fetchall(), "read audit"
        )
        return [from_columns(r) for r in rows]

    async def audit_anchor(self) -> Anchor | None:
        found = await self._call(lambda c: c.execute(AUDIT_ANCHOR).fetchone(), "read audit anchor")
        return None if found is None else Anchor(int(found[0]), str(found[1]))

    async def prune_audit(self, before: float) -> int:
        def work(c: sqlite3.Connection) -> int:
            head = c.execute(AUDIT_HEAD).fetchone()
            if head is None:
                return 0
            # The first row to keep: the oldest as new as ``before``, else the
            # head; walked from the oldest row, it reads the prefix it removes.
            found = c.execute(
                "SELECT seq FROM audit_log WHERE at >= ? ORDER BY seq LIMIT 1", (before,)
            ).fetchone()
            keep = min(int(found[0]), int(head[0])) if found is not None else int(head[0])
            last = c.execute(
                "SELECT seq, hash FROM audit_log WHERE seq < ? ORDER BY seq DESC LIMIT 1", (keep,)
            ).fetchone()
            if last is None:
                return 0
            gone = c.execute("DELETE FROM audit_log WHERE seq < ?", (keep,)).rowcount
            c.execute("DELETE FROM audit_pruned")
            c.execute("INSERT INTO audit_pruned VALUES (?, ?)", (last[0], last[1]))
            return int(gone)

        result: int = await self._call(work, "prune audit")
        return result

    async def last_event_id(self) -> int:
        self._release_lingering(None)
        await self._call(lambda c: None, "last event id")
        return self._event_id

    async def load_events(self, after_id: int, task_id: str | None, limit: int) -> list[TaskEvent]:
        # Every row holding an event after ``after_id`` has last_id > after_id,
        # and each row holds at least one event: ``limit`` rows are enough.
        if task_id is None:
            sql = (
                "SELECT first_id, task_id, data FROM task_event_rows WHERE last_id > ? "
                "ORDER BY last_id LIMIT ?"
            )
            args: tuple[Any, ...] = (after_id, limit)
        else:
            sql = (
                "SELECT first_id, task_id, data FROM task_event_rows "
                "WHERE task_id = ? AND last_id > ? ORDER BY last_id LIMIT ?"
            )
            args = (task_id, after_id, limit)
        rows = await self._call(lambda c: c.execute(sql, args).fetchall(), "load events")
        return [e for e in decode_event_batch_rows(rows) if e.id > after_id][:limit]

    async def put_notices(self, notices: Sequence[Notice]) -> None:
        rows = [notice_row(n) for n in notices]
        await self._call(
            lambda c: c.executemany(
                f"INSERT OR IGNORE INTO notices ({NOTICE_COLUMNS}) VALUES (?,?,?,?,?,?)", rows
            ),
            "queue notices",
        )

    async def cut_notice_message(self, message: NoticeMessage, notice_ids: Sequence[str]) -> None:
        row, ids = message_row(message), [(message.id, nid) for nid in notice_ids]

        def work(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO notice_messages ({MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", row
            )
            c.executemany("UPDATE notices SET message_id = ? WHERE id = ?", ids)

        await self._call(work, f"cut notice message {message.id}")

    async def record_notice_message(self, message: NoticeMessage) -> None:
        m = message

        def work(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE notice_messages SET due_at = ?, attempts = ?, last_error = ?, data = ? "
                "WHERE id = ?",
                (m.due_at, m.attempts, m.last_error, message_row(m)[-1], m.id),
            )
            if m.due_at is None:
                c.execute("DELETE FROM notices WHERE message_id = ?", (m.id,))
                if m.last_error is None:
                    c.execute("DELETE FROM notice_messages WHERE id = ?", (m.id,))

        await self._call(work, f"record notice message {m.id}")

    async def delete_given_up(self, created_before: float, limit: int) -> int:
        def work(c: sqlite3.Connection) -> int:
            return c.execute(DELETE_GIVEN_UP.format("?", "?"), (created_before, limit)).rowcount

        gone: int = await self._call(work, "delete given-up notice messages")
        return gone

    async def load_notices(self, node: str) -> tuple[list[Notice], list[NoticeMessage]]:
        del node  # one process: every notice is this node's, whatever its id was

        def work(c: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            notices = c.execute(
                f"SELECT {NOTICE_COLUMNS} FROM notices ORDER BY queued_at, id"
            ).fetchall()
            messages = c.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM notice_messages WHERE due_at IS NOT NULL "
                "ORDER BY created_at, id"
            ).fetchall()
            return notices, messages

        notices, messages = await self._call(work, "load notices")
        return [decode_notice(r) for r in notices], [decode_message(r) for r in messages]

    async def next_deliveries(self, limit: int) -> list[Delivery]:
        rows = await self._call(
            lambda c: c.execute(
                "SELECT task_id, due_at FROM webhook_deliveries ORDER BY due_at LIMIT ?", (limit,)
            ).fetchall(),
            "load deliveries",
        )
        return [Delivery(str(task_id), float(due)) for task_id, due in rows]

    async def record_delivery(
        self, task_id: str, record: dict[str, Any] | None, due_at: float | None
    ) -> None:
        data = None if record is None else wire_json.dumps_bytes(record).decode()

        def work(c: sqlite3.Connection) -> None:
            # An UPDATE, never an upsert: a task retention deleted stays deleted.
            found = c.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if found and data is not None:
                c.execute("UPDATE tasks SET data = ? WHERE id = ?", (data, task_id))
            if due_at is None or not found:
                c.execute("DELETE FROM webhook_deliveries WHERE task_id = ?", (task_id,))
            else:
                c.execute(
                    "UPDATE webhook_deliveries SET due_at = ? WHERE task_id = ?", (due_at, task_id)
                )

        await self._call(work, f"record delivery of {task_id}")

    async def load_tasks(self, statuses: Collection[str]) -> list[Row]:
        wanted = list(statuses)
        marks = ",".join("?" * len(wanted))
        rows, asks, outputs = await self._call(
            lambda c: _with_asks_of(
                c,
                c.execute(
                    f"SELECT id, data FROM tasks WHERE status IN ({marks}) ORDER BY seq", wanted
                ).fetchall(),
                0,
            ),
            "load tasks",
        )
        return [
            decode_task_row(task_id, data, asks.get(task_id, ()), outputs.get(task_id, ()))
            for task_id, data in rows
        ]

    async def get_task(self, task_id: str) -> Row | None:
        rows, asks, outputs = await self._call(
            lambda c: _with_asks_of(
                c, c.execute("SELECT id, data FROM tasks WHERE id = ?", (task_id,)).fetchall(), 0
            ),
            f"read task {task_id}",
        )
        return (
            decode_task_row(task_id, rows[0][1], asks.get(task_id, ()), outputs.get(task_id, ()))
            if rows
            else None
        )

    async def task_seq(self, task_id: str) -> int | None:
        found = await self._call(
            lambda c: c.execute("SELECT seq FROM tasks WHERE id = ?", (task_id,)).fetchone(),
            f"find task {task_id}",
        )
        return None if found is None else int(found[0])

    async def list_tasks(self, status: str | None, after_seq: int, limit: int) -> list[StoredTask]:
        sql, args = (
            (LIST_TASKS, [after_seq, limit])
            if status is None
            else (LIST_TASKS_OF_STATUS, [status, after_seq, limit])
        )
        rows, asks, outputs = await self._call(
            lambda c: _with_asks_of(c, c.execute(sql, args).fetchall(), 1), "list tasks"
        )
        return [
            StoredTask(
                seq, decode_task_row(task_id, data, asks.get(task_id, ()), outputs.get(task_id, ()))
            )
            for seq, task_id, data in rows
        ]

    async def count_tasks(self) -> dict[str, int]:
        rows = await self._call(
            lambda c: c.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall(),
            "count tasks",
        )
        return {status: int(n) for status, n in rows}

    async def delete_finished(
        self, statuses: Collection[str], updated_before: float, limit: int
    ) -> dict[str, int]:
        wanted = list(statuses)
        sql = FINISHED_BEFORE.format(marks=",".join("?" * len(wanted)))

        def work(c: sqlite3.Connection) -> dict[str, int]:
            victims = c.execute(sql, (*wanted, updated_before, limit)).fetchall()
            c.executemany("DELETE FROM tasks WHERE seq = ?", [(seq,) for seq, _, _ in victims])
            ids = [(task_id,) for _, _, task_id in victims]
            c.executemany(DELETE_EVENTS_OF_TASK, ids)
            c.executemany("DELETE FROM task_asks WHERE task_id = ?", ids)
            c.executemany("DELETE FROM task_outputs WHERE task_id = ?", ids)
            c.executemany("DELETE FROM webhook_deliveries WHERE task_id = ?", ids)
            return dict(Counter(status for _, status, _ in victims))

        result: dict[str, int] = await self._call(work, "delete finished tasks")
        return result


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


def _file_failed(error: Any) -> bool:
    """A failed operation's error says the file could not be written (disk
    full, I/O error, locked), not that its own data was refused."""
    return isinstance(getattr(error, "__cause__", None), sqlite3.OperationalError)


def _settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def _event_row(first_id: int, task_id: str, events: Events) -> tuple[int, int, str, str]:
    """The stored row of consecutive events of one task: encoded here, on the
    store's thread, as one JSON array (one encode, not one per event)."""
    data = wire_json.dumps_bytes([e.stored() for e in events]).decode()
    return first_id + len(events) - 1, first_id, task_id, data


def _with_asks_of(
    conn: sqlite3.Connection, rows: list[Any], id_at: int
) -> tuple[list[Any], dict[str, list[tuple[int, str]]], dict[str, list[tuple[int, str]]]]:
    """``rows`` (a task id in column ``id_at``) and their tasks' stored asks
    and outputs, by task: ``(attempt, data)`` in the order first stored."""
    ids = [row[id_at] for row in rows]
    asks: dict[str, list[tuple[int, str]]] = {}
    outputs: dict[str, list[tuple[int, str]]] = {}
    for start in range(0, len(ids), ASKS_PER_QUERY):
        chunk = ids[start : start + ASKS_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        for sql, found in ((ASKS_OF_TASKS, asks), (OUTPUTS_OF_TASKS, outputs)):
            for task_id, attempt, data in conn.execute(sql.format(marks=marks), chunk):
                found.setdefault(task_id, []).append((attempt, data))
    return rows, asks, outputs


def _append_audit(conn: sqlite3.Connection, node: str, entries: list[AuditEntry]) -> None:
    """Chain ``entries`` after the newest row (or the anchor, or the start),
    in the transaction that holds what they record."""
    head = conn.execute(AUDIT_HEAD).fetchone() or conn.execute(AUDIT_ANCHOR).fetchone()
    seq, prev = (int(head[0]), str(head[1])) if head is not None else (0, GENESIS)
    conn.executemany(INSERT_AUDIT, chained_columns(seq + 1, node, entries, prev))


def _max_event_id(conn: sqlite3.Connection) -> int:
    found = conn.execute("SELECT MAX(last_id) FROM task_event_rows").fetchone()
    return int(found[0] or 0)


def _migrate(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    for new_version, sql in migrations.steps("SQLite", version, MIGRATIONS, sqlite3.DatabaseError):
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {new_version}")
    return len(MIGRATIONS)


def _session_row(record: SessionRecord) -> tuple[Any, ...]:
    return (
        record.sid,
        record.token_sha256,
        json.dumps(record.roles),
        record.desc,
        record.created_at,
        record.last_seen_at,
        record.minted_by,
    )

"""PostgreSQL, through ``asyncpg``, with group commit: the store many nodes share.

Same records and semantics as ``store/sqlite.py``.  Writes — durable and
"soon" alike — go through one queue to one writer task, so they commit in the
order they were made; the writer takes what is queued (up to ``BATCH``) and
runs it in one transaction, so many writes under load cost one commit.
Durable callers are answered after the commit.

The writer is a single server, so what bounds a node is the round trips it
spends per operation, not the commit (docs/cluster.md).  Hence: an operation
is one statement where it can be (a task's write — fence check, row, lease,
events, delivery — is one data-modifying CTE); a batch runs without a
savepoint per operation, and only if one of them fails is it rolled back and
run again with a savepoint each, so a failing operation still fails alone;
a run of plain "soon" writes of one statement is pipelined; and a batch's
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

# size: migrations, the group-commit writer, the task/session SQL and cross-node
# routing; each is to get a module of its own.
from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from operator_server.logs import get_logger
from operator_server.store.base import (
    Delivery,
    Events,
    Fenced,
    PendingRow,
    RolesTaken,
    Row,
    SessionRecord,
    Store,
    StoredTask,
    StoreError,
    TaskEvent,
    ask_row,
    decode_event_rows,
    decode_session,
    decode_session_rows,
    decode_task_row,
    output_row,
)
from operator_server.store.pgbus import ALL, SQL_CHANNEL, PgBus, channel, encode
from operator_server.wire import json as wire_json
from operator_server.wire.json import STORED_MAX_DEPTH

log = get_logger(__name__)
BATCH = 512
# Task ids per "ended" notice: well within a NOTIFY payload.
ENDED_PER_NOTIFY = 100
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
    # v5: any node serves any operator.  Which node holds each session's socket;
    # every unanswered operator request, in issue order, with the node waiting
    # for its reply; the live nodes (a heartbeat beside the leases); and the
    # cluster messages too large for a NOTIFY payload.
    """
    ALTER TABLE operator_sessions ADD COLUMN socket_node TEXT;
    ALTER TABLE operator_sessions ADD COLUMN socket_epoch BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE pending_requests (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY,
        req_id     TEXT PRIMARY KEY,
        sid        TEXT NOT NULL REFERENCES operator_sessions (sid) ON DELETE CASCADE,
        owner_node TEXT NOT NULL,
        frame      TEXT NOT NULL,
        issued_at  DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX pending_requests_by_sid ON pending_requests (sid, seq);
    CREATE INDEX pending_requests_by_owner ON pending_requests (owner_node);
    CREATE TABLE cluster_nodes (
        node_id    TEXT PRIMARY KEY,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE cluster_messages (
        id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        body       TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
    # v6: tasks by status, kept by triggers as rows change, so every node's
    # healthz counts the whole cluster's tasks without a scan that grows with
    # history.  One row per node and status (the writing connection names its
    # node), so nodes never wait on each other's counts; readers add them up.
    """
    CREATE TABLE task_counts (
        node_id TEXT NOT NULL,
        status  TEXT NOT NULL,
        n       BIGINT NOT NULL,
        PRIMARY KEY (node_id, status)
    );
    INSERT INTO task_counts SELECT '', status, COUNT(*) FROM tasks GROUP BY status;
    CREATE FUNCTION operator_server_count_task() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        node TEXT := coalesce(current_setting('operator_server.node_id', true), '');
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO task_counts VALUES (node, OLD.status, -1)
            ON CONFLICT (node_id, status) DO UPDATE SET n = task_counts.n - 1;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO task_counts VALUES (node, NEW.status, 1)
            ON CONFLICT (node_id, status) DO UPDATE SET n = task_counts.n + 1;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER tasks_counted AFTER INSERT OR DELETE ON tasks
        FOR EACH ROW EXECUTE FUNCTION operator_server_count_task();
    CREATE TRIGGER tasks_recounted AFTER UPDATE OF status ON tasks
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION operator_server_count_task();
    """,
    # v7: worker asks stored apart, one row per ask (``put_ask_soon``): an ask
    # written costs the ask, not a rewrite of its task.  Rows keep their seq on
    # update, so a task's asks read in the order first stored.  The asks rows
    # already hold inline are copied over (the task's next write drops them);
    # a row whose text is not valid jsonb keeps its own, with a warning.
    """
    CREATE TABLE task_asks (
        seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        ask_id  TEXT NOT NULL,
        data    TEXT NOT NULL,
        UNIQUE (task_id, ask_id)
    );
    DO $$
    DECLARE
        t RECORD;
    BEGIN
        FOR t IN SELECT id, data FROM tasks WHERE strpos(data, '"asks"') > 0 ORDER BY seq LOOP
            BEGIN
                INSERT INTO task_asks (task_id, attempt, ask_id, data)
                SELECT t.id, (a.value ->> 'number')::int, k.value ->> 'ask_id', k.value::text
                FROM jsonb_array_elements(t.data::jsonb -> 'attempts')
                         WITH ORDINALITY AS a(value, i),
                     jsonb_array_elements(a.value -> 'asks') WITH ORDINALITY AS k(value, j)
                WHERE jsonb_typeof(k.value -> 'ask_id') = 'string'
                ORDER BY a.i, k.j
                ON CONFLICT (task_id, ask_id) DO NOTHING;
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'the asks of task % stay inline: %', t.id, SQLERRM;
            END;
        END LOOP;
    END $$;
    """,
    # v8: a task's fencing epoch, moved on by every takeover.  The lease row
    # alone cannot fence: the node that ends a task deletes it, so a node woken
    # from a freeze would find no holder and write over the end.  The epoch
    # stays with the row; every write must match the one its writer holds.
    """
    ALTER TABLE tasks ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
    """,
    # v9: an attempt's outputs (a worker's result, an ack) stored apart, one
    # row per output, appended once (``put_output``): an output costs itself,
    # not a rewrite of its task with every earlier attempt's outputs.  A
    # task's outputs read in seq order.  The outputs rows already hold inline
    # (``tail``) are copied over (the task's next write drops them); a row
    # whose text is not valid jsonb keeps its own, with a warning.
    """
    CREATE TABLE task_outputs (
        seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        data    TEXT NOT NULL
    );
    CREATE INDEX task_outputs_by_task ON task_outputs (task_id, seq);
    DO $$
    DECLARE
        t RECORD;
    BEGIN
        FOR t IN SELECT id, data FROM tasks WHERE strpos(data, '"tail"') > 0 ORDER BY seq LOOP
            BEGIN
                INSERT INTO task_outputs (task_id, attempt, data)
                SELECT t.id, (a.value ->> 'number')::int, o.value::text
                FROM jsonb_array_elements(t.data::jsonb -> 'attempts')
                         WITH ORDINALITY AS a(value, i),
                     jsonb_array_elements(a.value -> 'tail') WITH ORDINALITY AS o(value, j)
                WHERE jsonb_typeof(a.value -> 'number') = 'number'
                  AND jsonb_typeof(o.value) = 'array'
                ORDER BY a.i, o.j;
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'the outputs of task % stay inline: %', t.id, SQLERRM;
            END;
        END LOOP;
    END $$;
    """,
]
# A task's write, in one statement (one round trip).  The lease row and the
# task row are locked first — a takeover waits for this write's commit, or this
# write sees the new holder and epoch — and nothing is written while another
# node holds the lease, nor unless the row's epoch is the one the writer holds
# (``$10``; NULL: a task new to this node, epoch 0): a takeover moves it on and
# the row keeps it after its lease is gone, so a node woken after its task was
# taken over and ended elsewhere is refused too (``Fenced``).  A missing row
# may be written (a new task).  A live task's
# first write leases it to its writer (a lease someone else holds stays
# theirs); a task's end drops its lease.  The row is an upsert, so it keeps its
# seq.  Its webhook delivery rides along; its events are stored by the writer.
WRITE_TASK = """
    WITH holder AS (
        SELECT node_id FROM task_leases WHERE task_id = $1 FOR UPDATE
    ), stored AS (
        SELECT epoch FROM tasks WHERE id = $1 FOR UPDATE
    ), mine AS (
        SELECT NOT EXISTS (SELECT 1 FROM holder WHERE node_id <> $6)
           AND NOT EXISTS (SELECT 1 FROM stored WHERE epoch <> COALESCE($10::bigint, 0)) AS ok
    ), task AS (
        INSERT INTO tasks (id, status, created_at, updated_at, data)
        SELECT $1, $2, $3, $4, $5 FROM mine WHERE ok
        ON CONFLICT (id) DO UPDATE SET
            status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, data = EXCLUDED.data
    ), leased AS (
        INSERT INTO task_leases (task_id, node_id, expires_at)
        SELECT $1, $6, now() + make_interval(secs => $8) FROM mine WHERE ok AND $7
        ON CONFLICT (task_id) DO NOTHING
    ), unleased AS (
        DELETE FROM task_leases WHERE task_id = $1 AND NOT $7 AND (SELECT ok FROM mine)
    ), delivery AS (
        INSERT INTO webhook_deliveries (task_id, due_at)
        SELECT $1, $9 FROM mine WHERE ok AND $9::float8 IS NOT NULL
        ON CONFLICT (task_id) DO UPDATE SET due_at = EXCLUDED.due_at
    )
    SELECT (SELECT ok FROM mine) AS ok, (SELECT node_id FROM holder) AS holder,
        COALESCE((SELECT epoch FROM stored), 0) AS epoch
"""
# Leases a batch of this node is writing right now are skipped (they are
# renewed next round): the renewal never waits in a batch's way, or it in its.
RENEW_LEASES = """
    UPDATE task_leases SET expires_at = now() + make_interval(secs => $2)
    WHERE task_id IN (
        SELECT task_id FROM task_leases WHERE node_id = $1 FOR UPDATE SKIP LOCKED
    )
"""
# Only the runs a node holds: a lease of its without a run (an end it could not
# store, a run it let go) lapses, and the task is taken over.
RENEW_HELD_LEASES = """
    UPDATE task_leases SET expires_at = now() + make_interval(secs => $2)
    WHERE task_id IN (
        SELECT task_id FROM task_leases WHERE node_id = $1 AND task_id = ANY($3::text[])
        FOR UPDATE SKIP LOCKED
    )
"""
RELEASE_LEASES = "UPDATE task_leases SET expires_at = '-infinity' WHERE node_id = $1"
# Live tasks with a lapsed or missing lease, locked so that concurrent reapers
# skip each other's; the upsert re-checks the lease row as it is now (a lease
# renewed or taken since the scan's snapshot does not come back).  Each task
# taken moves to a new epoch: whatever its former node still writes is refused.
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
    ), bumped AS (
        UPDATE tasks t SET epoch = t.epoch + 1 FROM taken k WHERE t.id = k.task_id
        RETURNING t.id, t.data, t.epoch, t.seq
    )
    SELECT id, data, epoch FROM bumped ORDER BY seq
"""
# Event-storing transactions take turns (this lock, taken at a batch's end and
# held to commit): event ids from the shared sequence increase in commit order
# across nodes, so a reader following ``id > last`` never passes an id that
# commits later.
EVENTS_LOCK = 0x6F70_7365_7276_0002
# An op that loses a deadlock (PostgreSQL aborts one side, e.g. a takeover's
# locks crossing a batch's) is run again in a new savepoint, this many times.
DEADLOCK_RETRIES = 3
NEXT_EVENT_IDS = "SELECT nextval('task_event_ids') FROM generate_series(1, $1)"
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
    ), asks AS (
        DELETE FROM task_asks a USING gone g WHERE a.task_id = g.id
    ), outputs AS (
        DELETE FROM task_outputs o USING gone g WHERE o.task_id = g.id
    )
    SELECT status FROM gone
"""
# One ask, written only while no other node holds its task's lease and the
# task's epoch is the one its writer holds, as a task's own write is
# (``WRITE_TASK``): a node that lost the task does not add to it, even after
# the task ended elsewhere.  (Skipped, not refused: nobody waits for an ask's write.)
UPSERT_ASK = """
    INSERT INTO task_asks (task_id, attempt, ask_id, data)
    SELECT $1, $2, $3, $4
    WHERE NOT EXISTS (SELECT 1 FROM task_leases WHERE task_id = $1 AND node_id <> $5)
      AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND epoch <> COALESCE($6::bigint, 0))
    ON CONFLICT (task_id, ask_id) DO UPDATE SET attempt = EXCLUDED.attempt, data = EXCLUDED.data
"""
# One output, fenced exactly as an ask is (``UPSERT_ASK``); it returns its seq
# when written, nothing when fenced off: a worker waits on this write (its 200
# says the result is on disk), so a fenced one is refused, not skipped.
INSERT_OUTPUT = """
    INSERT INTO task_outputs (task_id, attempt, data)
    SELECT $1, $2, $3
    WHERE NOT EXISTS (SELECT 1 FROM task_leases WHERE task_id = $1 AND node_id <> $4)
      AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND epoch <> COALESCE($5::bigint, 0))
    RETURNING seq
"""
OUTPUTS_OF_TASKS = (
    "SELECT task_id, attempt, data FROM task_outputs WHERE task_id = ANY($1::text[]) ORDER BY seq"
)
ASKS_OF_TASKS = (
    "SELECT task_id, attempt, data FROM task_asks WHERE task_id = ANY($1::text[]) ORDER BY seq"
)
INSERT_EVENTS = (
    "INSERT INTO task_events (id, task_id, data) "
    "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])"
)

# Cluster routing (v5).  A request is inserted under a share lock on its
# session's row, and a socket attaches under an update lock on it, so the two
# take turns: either the attach's replay reads the request, or the request's
# writer reads the new socket node and sends the frame there.  (The lock is
# held to commit, and the insert is seen only at commit, whatever order the
# statement runs its parts in.)  One statement: one round trip.
# ``$6``, when given, is the frame's notice to the node holding the socket,
# sent by the same statement (as it commits): one transaction, not two.
ISSUE_REQUEST = f"""
    WITH session AS (
        SELECT socket_node FROM operator_sessions WHERE sid = $2 FOR SHARE
    ), request AS (
        INSERT INTO pending_requests (req_id, sid, owner_node, frame, issued_at)
        VALUES ($1, $2, $3, $4, $5)
    ), told AS (
        SELECT pg_notify({SQL_CHANNEL.format("socket_node")}, $6) FROM session
        WHERE $6::text IS NOT NULL AND socket_node IS NOT NULL AND socket_node <> $3
    )
    SELECT socket_node, (SELECT count(*) FROM told) > 0 AS told FROM session
"""
SOCKET_NODE = "SELECT socket_node, socket_epoch FROM operator_sessions WHERE sid = $1 FOR UPDATE"
ATTACH_SOCKET = "UPDATE operator_sessions SET socket_node = $2, socket_epoch = $3 WHERE sid = $1"
PENDING_OF = (
    "SELECT req_id, owner_node, frame, issued_at FROM pending_requests WHERE sid = $1 ORDER BY seq"
)
# Notify the node holding a session's socket, if another node holds it.
NOTIFY_SOCKET_NODE = (
    f"SELECT pg_notify({SQL_CHANNEL.format('socket_node')}, $2) FROM operator_sessions "
    "WHERE sid = $1 AND socket_node IS NOT NULL AND socket_node <> $3"
)
# A request answered: its row goes, and a withdrawal (if any) is told to the
# node holding the socket — one statement.
FINISH_REQUEST = "DELETE FROM pending_requests WHERE req_id = $1"
FINISH_WITHDRAWN = (
    "WITH finished AS (DELETE FROM pending_requests WHERE req_id = $4) " + NOTIFY_SOCKET_NODE
)
DETACH_SOCKET = (
    "UPDATE operator_sessions SET socket_node = NULL WHERE sid = $1 AND socket_node = $2"
)
HEARTBEAT = (
    "INSERT INTO cluster_nodes (node_id, expires_at) "
    "VALUES ($1, now() + make_interval(secs => $2)) "
    "ON CONFLICT (node_id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
)
# A node that stopped beating: its sockets are gone and its requests' waiters
# too (their attempts are interrupted and taken over).  A node beats from the
# moment its store opens, so a node with no row at all is gone as well.
BURY_NODES = """
    WITH dead AS (
        DELETE FROM cluster_nodes WHERE expires_at < now() RETURNING node_id
    ), unplugged AS (
        UPDATE operator_sessions SET socket_node = NULL
        WHERE socket_node IN (SELECT node_id FROM dead)
           OR socket_node NOT IN (SELECT node_id FROM cluster_nodes)
    )
    SELECT node_id FROM dead
"""
# Their requests (and any whose node has no row), to be withdrawn wherever a
# live node shows them to an operator.
DEAD_REQUESTS = """
    DELETE FROM pending_requests p USING operator_sessions s
    WHERE s.sid = p.sid AND (
        p.owner_node = ANY($1::text[])
        OR NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node_id = p.owner_node)
    )
    RETURNING p.req_id, p.sid, p.owner_node, s.socket_node
"""
OLD_MESSAGES = "DELETE FROM cluster_messages WHERE created_at < now() - interval '1 minute'"
TASK_OWNER = "SELECT node_id FROM task_leases WHERE task_id = $1 AND expires_at > now()"

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


# What an operation raises for itself: it fails, not the batch.
OP_ERRORS = (StoreError, asyncpg.PostgresError, ValueError, TypeError)


@dataclass
class _Op:
    work: Work
    future: asyncio.Future[Any] | None  # None: a "soon" write
    what: str
    # Events stored with the write, if it succeeds: the writer numbers and
    # stores a batch's together, as the batch ends (``_store_events``).
    given: Events = ()
    events: list[TaskEvent] = field(default_factory=list)  # ``given`` as stored
    # Set for a write that is one statement with no result: a run of them with
    # the same SQL is sent in one go (``executemany``, pipelined).
    plain: tuple[str, tuple[Any, ...]] | None = None


class _OpFailed(Exception):
    """An operation failed in a batch run without savepoints: the batch rolls back."""

    def __init__(self, error: StoreError) -> None:
        super().__init__(str(error))
        self.error = error


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
        self._bus = PgBus(url)
        self._ended: list[str] = []  # tasks the batch being written ends
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

    def _lost(self, exc: BaseException) -> None:
        if self._healthy:
            log.error("lost the PostgreSQL connection", error=str(exc))
        self._healthy = False

    def _answered(self) -> None:
        if not self._healthy:
            log.info("the PostgreSQL connection is back")
        self._healthy = True

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
                # Whose task_counts rows this connection's writes move (v6).
                server_settings={"operator_server.node_id": self._node_id},
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
        """Run ``batch`` in one transaction.  Optimistically first, without a
        savepoint per operation (two round trips each saved); if any operation
        fails, that run is rolled back and the batch is run again with a
        savepoint per operation, so the failing one fails alone (its own
        ``StoreError`` — ``RolesTaken``, ``Fenced`` — reaching its caller) and
        the others commit.  Operations are written to be run twice: they
        snapshot their arguments when queued."""
        assert self._pool is not None
        began = time.perf_counter()
        try:
            async with self._pool.acquire() as conn:
                try:
                    outcomes = await self._attempt(conn, batch, savepoints=False)
                except _OpFailed as failed:
                    if len(batch) == 1:  # rolled back: the same as its savepoint
                        return [(False, failed.error)]
                    outcomes = await self._attempt(conn, batch, savepoints=True)
        except CONNECTION_ERRORS as exc:
            self._lost(exc)
            return [(False, StoreError(f"commit failed: {exc}"))] * len(batch)
        except asyncpg.PostgresError as exc:
            return [(False, StoreError(f"commit failed: {exc}"))] * len(batch)
        self._answered()
        if self._commit_observer is not None:
            self._commit_observer(time.perf_counter() - began)
        return outcomes

    async def _attempt(
        self, conn: asyncpg.Connection, batch: list[_Op], *, savepoints: bool
    ) -> list[tuple[bool, Any]]:
        """One run of ``batch``; without ``savepoints`` the first failing
        operation raises ``_OpFailed`` and the whole run rolls back."""
        outcomes: list[tuple[bool, Any]] = []
        self._ended = []
        async with conn.transaction():
            if not savepoints:
                outcomes = await _together(conn, batch)
            else:
                for op in batch:
                    outcomes.append(await _in_savepoint(conn, op))
            done = [op for op, (ok, _) in zip(batch, outcomes, strict=True) if ok]
            await _store_events(conn, done)
            ended = await self._announce(conn, batch)
        # Forgotten once the end is committed, not before: an end whose commit
        # failed is written again at the same epoch.
        for task_id in ended:
            self._epochs.pop(task_id, None)
        return outcomes

    async def _announce(self, conn: asyncpg.Connection, batch: list[_Op]) -> list[str]:
        """Tell every node, as the batch commits, which tasks it ended (their
        long-polls wake) and the newest event it stored (their streams read on):
        a few NOTIFYs per batch, not one per write.  The tasks ended."""
        ended, self._ended = self._ended, []
        last = max((e.id for op in batch for e in op.events), default=0)
        if last:
            body = encode("events", self._node_id, {"last": last})
            await conn.execute("SELECT pg_notify($1, $2)", ALL, body)
        for i in range(0, len(ended), ENDED_PER_NOTIFY):
            body = encode("ended", self._node_id, {"ids": ended[i : i + ENDED_PER_NOTIFY]})
            await conn.execute("SELECT pg_notify($1, $2)", ALL, body)
        return ended

    # -- queueing ---------------------------------------------------------

    async def _call(
        self,
        work: Work,
        what: str,
        given: Events = (),
    ) -> Any:
        if not self._accepting:
            raise StoreError("the store is not open")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._unsettled += 1
        self._queue.put_nowait(_Op(work, fut, what, given))
        return await fut

    def _soon_plain(self, what: str, sql: str, *args: Any) -> None:
        """A "soon" write that is one statement with no result."""
        self._soon(lambda c: c.execute(sql, *args), what, plain=(sql, args))

    def _soon(
        self,
        work: Work,
        what: str,
        given: Events = (),
        *,
        plain: tuple[str, tuple[Any, ...]] | None = None,
    ) -> None:
        if not self._accepting:
            log.error("store write after close dropped", what=what)
            return
        self._unsettled += 1
        self._queue.put_nowait(_Op(work, None, what, given, plain=plain))

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
        self._soon_plain(
            f"touch session {sid}",
            "UPDATE operator_sessions SET last_seen_at = $1 WHERE sid = $2",
            float(last_seen_at),
            sid,
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
        task_id = record["id"]
        live = record["status"] in self._live
        args = (
            task_id,
            record["status"],
            float(record["created_at"]),
            float(record["updated_at"]),
            wire_json.dumps_bytes(record).decode(),
            self._node_id,
            live,
            self._lease_s,
        )
        delivery = None if deliver_at is None else float(deliver_at)
        expected = self._epochs.get(task_id)  # as of now, like the record

        async def work(c: asyncpg.Connection) -> None:
            found = await c.fetchrow(WRITE_TASK, *args, delivery, expected)
            if not found["ok"]:
                self._epochs.pop(task_id, None)
                owner = found["holder"]
                if owner is not None and owner != self._node_id:
                    raise Fenced(f"task {task_id} is run by node {owner} now")
                raise Fenced(
                    f"task {task_id} was taken over since this node last wrote it "
                    f"(epoch {found['epoch']}, not {expected or 0})"
                )
            if live:
                self._epochs[task_id] = int(found["epoch"])
            else:
                self._ended.append(task_id)  # announced as the batch commits

        return work, f"save task {task_id}", events

    async def put_task(
        self, record: dict[str, Any], events: Events = (), *, deliver_at: float | None = None
    ) -> None:
        await self._call(*self._task_write(record, events, deliver_at))

    def put_task_soon(
        self, record: dict[str, Any], events: Events = (), *, deliver_at: float | None = None
    ) -> None:
        self._soon(*self._task_write(record, events, deliver_at))

    def put_ask_soon(self, task_id: str, attempt: int, ask: dict[str, Any]) -> None:
        row = ask_row(task_id, attempt, ask)
        epoch = self._epochs.get(task_id)  # as of now, like the ask
        what = f"save ask {row[2]} of {task_id}"
        self._soon_plain(what, UPSERT_ASK, *row, self._node_id, epoch)

    def _output_write(self, task_id: str, attempt: int, output: list[Any]) -> tuple[Work, str]:
        row = output_row(task_id, attempt, output)
        epoch = self._epochs.get(task_id)  # as of now, like the output

        async def work(c: asyncpg.Connection) -> None:
            if await c.fetchval(INSERT_OUTPUT, *row, self._node_id, epoch) is None:
                raise Fenced(f"task {task_id} was taken over; its output was not stored")

        return work, f"save output of {task_id}"

    async def put_output(self, task_id: str, attempt: int, output: list[Any]) -> None:
        await self.put_output_soon(task_id, attempt, output)

    def put_output_soon(
        self, task_id: str, attempt: int, output: list[Any]
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._accepting:
            fut.set_exception(StoreError("the store is not open"))
        else:  # queued now, not when first awaited
            work, what = self._output_write(task_id, attempt, output)
            self._unsettled += 1
            self._queue.put_nowait(_Op(work, fut, what))
        return fut

    def put_events_soon(self, events: Events) -> None:
        self._soon(_nothing, "save events", events)  # stored by the writer

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
        rows, asks, outputs = await self._read(
            lambda c: _with_asks_of(
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
        rows, asks, outputs = await self._read(
            lambda c: _with_asks_of(
                c, c.fetch("SELECT id, data FROM tasks WHERE id = $1", task_id)
            ),
            f"read task {task_id}",
        )
        return (
            decode_task_row(
                task_id, rows[0]["data"], asks.get(task_id, ()), outputs.get(task_id, ())
            )
            if rows
            else None
        )

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
            lambda c: _with_asks_of(c, c.fetch(sql, *args)), "list tasks"
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

    # -- cluster ----------------------------------------------------------

    async def take_over(self, *, at_start: bool, limit: int) -> list[Row]:
        del at_start  # the same at start-up: a live node's tasks keep their lease
        args = (self._node_id, self._lease_s, list(self._live), limit)

        async def work(
            c: asyncpg.Connection,
        ) -> tuple[list[Any], dict[str, list[Any]], dict[str, list[Any]]]:
            async with c.transaction():
                return await _with_asks_of(c, c.fetch(TAKE_OVER, *args))

        rows, asks, outputs = await self._read(work, "take over tasks")
        for row in rows:
            self._epochs[row["id"]] = int(row["epoch"])
        return [
            decode_task_row(
                row["id"], row["data"], asks.get(row["id"], ()), outputs.get(row["id"], ())
            )
            for row in rows
        ]

    async def renew_leases(self, task_ids: Collection[str] | None = None) -> None:
        sent = time.monotonic()
        if task_ids is None:
            await self._direct(RENEW_LEASES, self._node_id, self._lease_s, what="renew leases")
        else:
            args = (self._node_id, self._lease_s, list(task_ids))
            await self._direct(RENEW_HELD_LEASES, *args, what="renew leases")
        self._renewal_sent = sent
        await self._direct(HEARTBEAT, self._node_id, self._lease_s, what="node heartbeat")

    async def release_leases(self, task_ids: Collection[str] | None = None) -> None:
        if task_ids is not None:
            sql = RELEASE_LEASES + " AND task_id = ANY($2::text[])"
            await self._direct(sql, self._node_id, list(task_ids), what="release leases")
            for task_id in task_ids:  # taken again (here or elsewhere) at a new epoch
                self._epochs.pop(task_id, None)
            return
        await self._direct(RELEASE_LEASES, self._node_id, what="release leases")
        await self._direct(
            "DELETE FROM cluster_nodes WHERE node_id = $1", self._node_id, what="leave"
        )

    async def bury_dead_nodes(self) -> list[str]:
        """Forget the nodes whose heartbeat lapsed: their sockets and the requests
        they were waiting on; each such request still shown to an operator on a
        live node is withdrawn there, and every node hears which nodes died."""
        me = self._node_id

        async def work(c: asyncpg.Connection) -> list[str]:
            async with c.transaction():
                dead = {str(row["node_id"]) for row in await c.fetch(BURY_NODES)}
                for req_id, sid, owner, node in await c.fetch(DEAD_REQUESTS, list(dead)):
                    dead.add(owner)
                    if node is None or node in dead:
                        continue
                    withdraw = _withdraw(me, sid, req_id, "its node stopped")
                    await c.execute("SELECT pg_notify($1, $2)", channel(node), withdraw)
                if dead:
                    gone = encode("nodes_gone", me, {"nodes": sorted(dead)})
                    await c.execute("SELECT pg_notify($1, $2)", ALL, gone)
                await c.execute(OLD_MESSAGES)
                return sorted(dead)

        found: list[str] = await self._read(work, "bury dead nodes")
        return found

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
    ) -> tuple[str | None, bool]:
        text = wire_json.dumps(frame)
        args = (req_id, sid, self._node_id, text, float(issued_at), notice)

        async def work(c: asyncpg.Connection) -> tuple[str | None, bool]:
            row = await c.fetchrow(ISSUE_REQUEST, *args)
            if row is None or row["socket_node"] is None:
                return None, False
            return str(row["socket_node"]), bool(row["told"])

        found: tuple[str | None, bool] = await self._call(work, f"issue request {req_id}")
        return found

    def finish_request_soon(self, sid: str, req_id: str, withdrawn: str | None) -> None:
        me = self._node_id
        notice = None if withdrawn is None else _withdraw(me, sid, req_id, withdrawn)

        what = f"finish request {req_id}"
        if notice is None:
            self._soon_plain(what, FINISH_REQUEST, req_id)
        else:
            self._soon_plain(what, FINISH_WITHDRAWN, sid, notice, me, req_id)

    async def attach_socket(self, sid: str) -> tuple[int, list[PendingRow]]:
        me = self._node_id

        async def work(c: asyncpg.Connection) -> tuple[int, list[Any]]:
            before = await c.fetchrow(SOCKET_NODE, sid)
            if before is None:
                raise StoreError(f"no operator session {sid}")
            epoch = int(before["socket_epoch"]) + 1
            await c.execute(ATTACH_SOCKET, sid, me, epoch)
            old = before["socket_node"]
            if old is not None and old != me:
                replaced = encode("replaced", me, {"sid": sid, "epoch": epoch})
                await c.execute("SELECT pg_notify($1, $2)", channel(old), replaced)
            rows = list(await c.fetch(PENDING_OF, sid))
            delivered = encode("delivered", me, {"sid": sid})
            for owner in {row["owner_node"] for row in rows} - {me}:
                await c.execute("SELECT pg_notify($1, $2)", channel(owner), delivered)
            return epoch, rows

        epoch, rows = await self._call(work, f"attach socket of {sid}")
        return epoch, _pending_rows(rows)

    async def pending_of(self, sid: str) -> list[PendingRow]:
        rows = await self._read(lambda c: c.fetch(PENDING_OF, sid), f"pending of {sid}")
        return _pending_rows(rows)

    def detach_socket_soon(self, sid: str) -> None:
        self._soon_plain(f"detach {sid}", DETACH_SOCKET, sid, self._node_id)

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


async def _with_asks_of(
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


async def _store_events(c: asyncpg.Connection, done: list[_Op]) -> None:
    """Store the events of the batch's operations that succeeded, under ids from
    the shared sequence in the batch's order: three round trips per batch,
    whatever their number, at the batch's end — so ``EVENTS_LOCK``, held to
    commit, is held for those and the commit only, and writers of several
    nodes run their operations side by side.  A run that rolls back leaves its
    ids unused: gaps, never a reuse."""
    wanted = sum(len(op.given) for op in done)
    if not wanted:
        return
    await c.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_LOCK)
    ids = iter(sorted(int(r[0]) for r in await c.fetch(NEXT_EVENT_IDS, wanted)))
    stored: list[TaskEvent] = []
    for op in done:
        numbered = []
        for event in op.given:
            numbered.append(event.renumbered(next(ids)))
        op.events[:] = numbered
        stored += numbered
    await c.execute(INSERT_EVENTS, *_event_columns(stored))


async def _together(conn: asyncpg.Connection, batch: list[_Op]) -> list[tuple[bool, Any]]:
    """Run ``batch`` without savepoints, in as few round trips as it allows:
    each run of plain writes of the same statement pipelined.  The first
    failure raises ``_OpFailed`` (naming the operation, or the first of the
    run it failed in)."""
    op = batch[0]
    outcomes: list[tuple[bool, Any]] = []
    try:
        i = 0
        while i < len(batch):
            op = batch[i]
            run = 1
            while (
                op.plain is not None
                and i + run < len(batch)
                and (nxt := batch[i + run].plain) is not None
                and nxt[0] == op.plain[0]
            ):
                run += 1
            if run > 1:
                await conn.executemany(op.plain[0], [o.plain[1] for o in batch[i : i + run]])  # type: ignore[index]
                outcomes += [(True, None)] * run
            else:
                outcomes.append((True, await op.work(conn)))
            i += run
    except OP_ERRORS as exc:
        raise _OpFailed(_op_error(op, exc)) from exc
    return outcomes


def _event_columns(events: list[TaskEvent]) -> tuple[list[int], list[str], list[str]]:
    texts = [wire_json.dumps_bytes(e.stored()).decode() for e in events]
    return [e.id for e in events], [e.task_id for e in events], texts


def _op_error(op: _Op, exc: Exception) -> StoreError:
    if isinstance(exc, StoreError):  # the op's own refusal, already worded
        return exc
    return StoreError(f"{op.what}: {exc}")


def _withdraw(from_node: str, sid: str, req_id: str, reason: str) -> str:
    """The message that has the node showing ``req_id`` send the operator its
    ``cancel`` (handled by the operator directory)."""
    return encode("withdraw", from_node, {"sid": sid, "req_id": req_id, "reason": reason})


def _pending_rows(rows: list[Any]) -> list[PendingRow]:
    out = []
    for req_id, owner, frame, issued_at in rows:
        try:
            decoded = wire_json.loads(frame, STORED_MAX_DEPTH)
        except ValueError as exc:  # one bad row is skipped, never fatal
            log.warning(
                "skipping a stored request that cannot be decoded", req_id=req_id, error=str(exc)
            )
            continue
        out.append(PendingRow(req_id, owner, decoded, float(issued_at)))
    return out


async def _in_savepoint(conn: asyncpg.Connection, op: _Op) -> tuple[bool, Any]:
    """One op in its own savepoint: a failing op fails alone; one that loses a
    deadlock is run again."""
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            async with conn.transaction():  # a savepoint
                return True, await op.work(conn)
        except asyncpg.DeadlockDetectedError as exc:
            if attempt == DEADLOCK_RETRIES:
                return False, _op_error(op, exc)
        except OP_ERRORS as exc:
            return False, _op_error(op, exc)
    raise AssertionError("unreachable: the last attempt returns")


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

"""The PostgreSQL schema: its forward migrations, run at open under an advisory lock."""

from __future__ import annotations

import asyncpg

from operator_server.store import migrations
from operator_server.store.base import StoreError
from operator_server.store.postgres.writer import CONNECTION_ERRORS

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
    # v10: API keys (``auth/keys.py``: only the secret's SHA-256 is kept; a
    # revoked key keeps its row) and who minted each session (a principal's
    # name; "" for sessions minted before).
    """
    CREATE TABLE api_keys (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        scopes        TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at    DOUBLE PRECISION NOT NULL,
        expires_at    DOUBLE PRECISION,
        note          TEXT NOT NULL,
        revoked_at    DOUBLE PRECISION
    );
    ALTER TABLE operator_sessions ADD COLUMN minted_by TEXT NOT NULL DEFAULT '';
    """,
    # v11: the audit trail (``operator_server/audit``): one hash chain for the
    # whole cluster, appended by each node's writer in the commit of the
    # decision each row records, under the lock event ids are drawn under;
    # ``audit_pruned`` holds the last row retention removed.  Written to apply
    # after any other step: it touches no other table.
    """
    CREATE TABLE audit_log (
        seq            BIGINT PRIMARY KEY,
        node           TEXT NOT NULL,
        at             DOUBLE PRECISION NOT NULL,
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
        seq  BIGINT NOT NULL,
        hash TEXT NOT NULL
    );
    """,
    # v12: action links (``notify/links.py``): the key that signs them when no
    # ``secret`` is set (one row, made once by whichever node comes first), and
    # each link's one use.  Written to apply after any other step: it touches
    # no other table.
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
        at        DOUBLE PRECISION NOT NULL
    );
    """,
    # v13: a pending request's course, so that every node shows it as the
    # node that issued it does: when its deadline (or escalation step's end)
    # decides it, its step, and its moves (JSON).  A row stored before has
    # none: no deadline known, step 0, no moves.
    """
    ALTER TABLE pending_requests ADD COLUMN deadline_at DOUBLE PRECISION;
    ALTER TABLE pending_requests ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE pending_requests ADD COLUMN moves TEXT NOT NULL DEFAULT '[]';
    """,
    # v14: notifications, as in SQLite's v10; each node sends the notices it
    # queued (``node``).
    """
    CREATE TABLE notices (
        id         TEXT PRIMARY KEY,
        batch      TEXT NOT NULL,
        node       TEXT NOT NULL,
        queued_at  DOUBLE PRECISION NOT NULL,
        data       TEXT NOT NULL,
        message_id TEXT
    );
    CREATE INDEX notices_by_node ON notices (node, queued_at);
    CREATE INDEX notices_by_message ON notices (message_id);
    CREATE TABLE notice_messages (
        id         TEXT PRIMARY KEY,
        batch      TEXT NOT NULL,
        node       TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        due_at     DOUBLE PRECISION,
        attempts   INTEGER NOT NULL,
        last_error TEXT,
        data       TEXT NOT NULL
    );
    """,
]


async def migrate(pool: asyncpg.Pool) -> int:
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
    for new_version, sql in migrations.steps("PostgreSQL", version, MIGRATIONS):
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute("UPDATE operator_server_schema SET version = $1", new_version)
    return len(MIGRATIONS)

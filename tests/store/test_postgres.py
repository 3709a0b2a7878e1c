"""The PostgreSQL store: what it adds to the shared contract (tests/store/test_contract.py).

Migrations that many nodes may run at once, a newer schema refused, a lost
connection survived, and a restart on the same database losing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from operator_server.engine.faces import Kind
from operator_server.engine.tasks import Task
from operator_server.store import (
    Fenced,
    PostgresStore,
    RequestCourse,
    RolesTaken,
    SessionRecord,
    StoreError,
    TaskEvent,
)
from operator_server.store.postgres import MIGRATIONS
from tests.conftest import Server, create_task, directory_of, wait_task
from tests.store.test_migrations import inline_asks_task, inline_outputs_task
from tests.store.test_postgres_cluster import common, daemons
from tests.test_daemon import start_daemon
from tests.wsop import connect, mint


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def schema_version(url: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT version FROM operator_server_schema")
    finally:
        await conn.close()


async def test_nodes_starting_together_migrate_once_and_all_open(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    with capture_logs() as logs:
        await asyncio.gather(*(s.open() for s in stores))
    try:
        migrated = [e for e in logs if e["event"] == "migrated the PostgreSQL schema"]
        assert [e["version"] for e in migrated] == list(range(1, len(MIGRATIONS) + 1))
        assert await schema_version(pg_url) == len(MIGRATIONS)
        # Each node writes, every node reads it.
        await asyncio.gather(
            *(
                s.put_task({"id": f"t-{n}", "status": "pending", "created_at": 1, "updated_at": 1})
                for n, s in enumerate(stores)
            )
        )
        assert await stores[0].count_tasks() == {"pending": 4}
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_database_from_a_newer_server_is_refused(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_url)
    await conn.execute("UPDATE operator_server_schema SET version = $1", len(MIGRATIONS) + 1)
    await conn.close()
    with pytest.raises(StoreError, match="newer"):
        await PostgresStore(pg_url).open()


async def test_an_unreachable_database_is_a_store_error_naming_postgresql() -> None:
    # Nothing listens on port 1.
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        await PostgresStore("postgresql://nobody@127.0.0.1:1/none").open()


async def test_a_dropped_connection_fails_at_most_the_batch_in_flight(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await store.put_session(SessionRecord("op-1", "ab" * 32, ["main"], "", 1.0, 1.0))
        admin = await asyncpg.connect(pg_url)
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await admin.close()
        assert killed >= 1
        record = {"id": "t-after", "status": "pending", "created_at": 1, "updated_at": 1}
        try:
            await store.put_task(record)
        except StoreError:  # the write that met the dead connection
            await store.put_task(record)
        assert (await store.get_task("t-after")) is not None
        assert [r.key for r in await store.load_sessions()] == ["op-1"]
    finally:
        await store.close()


async def test_restart_on_the_same_database_keeps_sessions_roles_and_tasks(
    server: Server, pg_url: str
) -> None:
    first = await server(store__url=pg_url)
    sid, token = await mint(first, ["main"])
    task = await create_task(first, agent="echo", directive={"keep": "me"})
    before = await wait_task(first, task["id"])
    await first.close()

    second = await server(store__url=pg_url)
    view = await second.get(f"/v1/operators/{sid}", headers=auth(token))
    assert view.status == 200 and (await view.json())["roles"] == ["main"]
    clash = await second.post("/v1/operators", json={"roles": ["main"]})
    assert clash.status == 409  # the role is still held
    after = await (await second.get(f"/v1/tasks/{task['id']}")).json()
    assert after == before
    listed = await (await second.get("/v1/tasks")).json()
    assert [t["id"] for t in listed["tasks"]] == [task["id"]]
    ws = await connect(second, sid, token)  # the same token still opens the socket
    assert directory_of(second).sessions[sid].connected
    await ws.close()


async def test_a_role_claimed_on_node_a_gets_409_on_node_b(server: Server, pg_url: str) -> None:
    node_a = await server(store__url=pg_url, node_id="node-a")
    node_b = await server(store__url=pg_url, node_id="node-b")
    sid, token = await mint(node_a, ["main"])
    clash = await node_b.post("/v1/operators", json={"roles": ["spare", "main"]})
    assert clash.status == 409
    body = (await clash.json())["error"]
    assert body["code"] == "roles_conflict"
    assert body["conflicts"] == [{"role": "main", "sid": sid}]
    assert directory_of(node_b).sessions == {}  # nothing half-taken on B
    # Nothing half-taken in the database either: "spare" is still free.
    await mint(node_b, ["spare"])
    # Deleting the session on A frees the role for B.
    assert (await node_a.delete(f"/v1/operators/{sid}", headers=auth(token))).status == 204
    await mint(node_b, ["main"])


async def test_upgrading_gives_each_stored_role_to_its_oldest_session(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_url)
    await conn.execute(
        "DROP TABLE operator_roles, task_events, webhook_deliveries, task_leases, "
        "pending_requests, cluster_nodes, cluster_messages, task_counts, task_asks, "
        "task_outputs, api_keys, audit_log, audit_pruned, notices, notice_messages, link_keys, "
        "link_uses; "
        "DROP FUNCTION operator_server_count_task CASCADE; "
        "DROP SEQUENCE task_event_ids; "
        "ALTER TABLE operator_sessions DROP COLUMN socket_node, DROP COLUMN socket_epoch, "
        "DROP COLUMN minted_by; "
        "ALTER TABLE tasks DROP COLUMN epoch; "
        "UPDATE operator_server_schema SET version = 1"
    )
    for sid, created in (("op-new", 2.0), ("op-old", 1.0)):
        await conn.execute(
            "INSERT INTO operator_sessions VALUES ($1, 'h', '[\"main\", \"x\"]', '', $2, $2)",
            sid,
            created,
        )
    await store.open()
    await store.close()
    holders = dict(await conn.fetch("SELECT role, sid FROM operator_roles"))
    await conn.close()
    assert holders == {"main": "op-old", "x": "op-old"}


# Back to v11: before the action links (v12), the requests' course (v13) and
# the notifications (v14).
UNDO_COURSE = (
    "DROP TABLE link_keys, link_uses, notices, notice_messages; "
    "ALTER TABLE pending_requests DROP COLUMN deadline_at, DROP COLUMN step, DROP COLUMN moves"
)
UNDO_KEYS = (
    f"DROP TABLE api_keys; ALTER TABLE operator_sessions DROP COLUMN minted_by; {UNDO_COURSE}"
)


@pytest.mark.parametrize(
    ("table", "undo", "old_task", "key", "copied"),
    [
        # Undoing every later step too: the epoch column, the outputs table,
        # the keys and who minted each session, the pending requests' course.
        (
            "task_asks",
            "DROP TABLE task_asks, task_outputs, audit_log, audit_pruned; "
            f"ALTER TABLE tasks DROP COLUMN epoch; {UNDO_KEYS}",
            inline_asks_task,
            "asks",
            2,
        ),
        (
            "task_outputs",
            f"DROP TABLE task_outputs, audit_log, audit_pruned; {UNDO_KEYS}",
            inline_outputs_task,
            "tail",
            3,
        ),
    ],
)
async def test_upgrading_keeps_what_rows_hold_inline_once_the_task_is_next_written(
    pg_url: str,
    table: str,
    undo: str,
    old_task: Callable[[str], dict[str, Any]],
    key: str,
    copied: int,
) -> None:
    """The migration that brought ``table`` copies what older rows hold inline
    (``key`` of each attempt) and the task reads back the same, also once
    written again without it."""
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    old = old_task("t-1")
    # jsonb refuses \u0000: this row's items cannot be copied, and stay inline.
    odd = {**old_task("t-odd"), "directive": "\u0000"}
    conn = await asyncpg.connect(pg_url)
    # The schema as it was just before the migration that brought ``table``.
    before = next(n for n, step in enumerate(MIGRATIONS) if f"CREATE TABLE {table}" in step)
    await conn.execute(f"{undo}; UPDATE operator_server_schema SET version = {before}")
    for rec in (old, odd):
        await conn.execute(
            "INSERT INTO tasks (id, status, created_at, updated_at, data) "
            "VALUES ($1, 'running', 1, 1, $2)",
            rec["id"],
            json.dumps(rec),
        )
    await store.open()
    try:
        counted = f"SELECT task_id, count(*) FROM {table} GROUP BY task_id"
        assert dict(await conn.fetch(counted)) == {"t-1": copied}
        for rec in (old, odd):
            row = await store.get_task(str(rec["id"]))
            assert row is not None and row.value == rec
        # Written again as the engine writes it now (nothing inline): still there.
        without = json.loads(json.dumps(old))
        for attempt in without["attempts"]:
            del attempt[key]
        await store.put_task(without)
        row = await store.get_task("t-1")
        assert row is not None and row.value == old
    finally:
        await store.close()
        await conn.close()


async def test_upgrading_keeps_pending_requests_and_then_stores_each_ones_course(
    pg_url: str,
) -> None:
    """A request stored before its course was (v11) reads back with none
    known; one stored after keeps its deadline, step and moves."""
    store = PostgresStore(pg_url)
    store.lease_tasks("node-a", 10, ["running"])
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f"{UNDO_COURSE}; UPDATE operator_server_schema SET version = 11")
        await conn.execute(
            "INSERT INTO operator_sessions (sid, token_sha256, roles, description, created_at, "
            "last_seen_at) VALUES ('op-1', 'h', '[\"main\"]', '', 1, 1)"
        )
        await conn.execute(
            "INSERT INTO pending_requests (req_id, sid, owner_node, frame, issued_at) "
            "VALUES ('r-old', 'op-1', 'node-a', '{\"type\": \"ask\"}', 1)"
        )
    finally:
        await conn.close()
    await store.open()
    try:
        assert await schema_version(pg_url) == len(MIGRATIONS)
        course = RequestCourse(99.5, 2, ({"from": "l1", "to": "l2", "reason": "escalated"},))
        await store.issue_request("op-1", "r-new", {"type": "ask"}, 2.0, None, course)
        rows = {row.req_id: row for _, row in await store.pending_requests()}
        assert rows["r-old"].course == RequestCourse()
        assert rows["r-old"].frame == {"type": "ask"}
        assert rows["r-new"].course == course
        assert [row.course for row in await store.pending_of("op-1")] == [RequestCourse(), course]
    finally:
        await store.close()


def task_record(task_id: str, status: str) -> dict[str, Any]:
    return {"id": task_id, "status": status, "created_at": 1.0, "updated_at": 2.0}


@contextlib.asynccontextmanager
async def store_pair(
    pg_url: str, lease_a: float = 10
) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two writers on one database, as nodes ``node-a`` (leasing for
    ``lease_a``) and ``node-b`` (10 s)."""
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    a.lease_tasks("node-a", lease_a, ["running"])
    b.lease_tasks("node-b", 10, ["running"])
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def cut_off_pair(
    pg_url: str,
) -> contextlib.AbstractAsyncContextManager[tuple[PostgresStore, PostgresStore]]:
    """``a`` with a 0.2 s lease it never renews (a node about to be cut off),
    ``b`` with a 10 s one (the survivor)."""
    return store_pair(pg_url, 0.2)


async def test_a_node_whose_task_was_taken_over_cannot_write_it_any_more(pg_url: str) -> None:
    async with cut_off_pair(pg_url) as (a, b):
        await a.put_task(task_record("t-1", "running"))
        assert await b.take_over(at_start=False, limit=10) == []  # a's lease holds
        await asyncio.sleep(0.3)  # a is cut off: no renewal, the lease lapses
        taken = await b.take_over(at_start=False, limit=10)
        assert [row.key for row in taken] == ["t-1"]
        # a comes back and ends the task it no longer runs: refused, unchanged.
        with pytest.raises(Fenced, match="node-b"):
            await a.put_task(task_record("t-1", "passed"))
        assert (await b.get_task("t-1")).value["status"] == "running"  # type: ignore[union-attr]
        await b.put_task(task_record("t-1", "passed"))
        assert (await a.get_task("t-1")).value["status"] == "passed"  # type: ignore[union-attr]


async def test_a_node_whose_task_was_taken_over_adds_no_ask_to_it(pg_url: str) -> None:
    async with cut_off_pair(pg_url) as (a, b):
        record = {**task_record("t-1", "running"), "attempts": [{"number": 1}]}
        await a.put_task(record)
        a.put_ask_soon("t-1", 1, {"ask_id": "ask-a", "question": "mine?"})
        await a.flush()
        await asyncio.sleep(0.3)  # a is cut off: no renewal, the lease lapses
        [taken] = await b.take_over(at_start=False, limit=10)
        assert [k["ask_id"] for k in taken.value["attempts"][0]["asks"]] == ["ask-a"]
        # a comes back and writes asks of the task it no longer runs: skipped.
        a.put_ask_soon("t-1", 1, {"ask_id": "ask-a", "question": "changed"})
        a.put_ask_soon("t-1", 1, {"ask_id": "ask-late", "question": "new"})
        await a.flush()
        row = await b.get_task("t-1")
        assert row is not None
        assert row.value["attempts"][0]["asks"] == [{"ask_id": "ask-a", "question": "mine?"}]
        b.put_ask_soon("t-1", 1, {"ask_id": "ask-b", "question": "b's"})
        await b.flush()
        row = await a.get_task("t-1")
        assert row is not None
        assert [k["ask_id"] for k in row.value["attempts"][0]["asks"]] == ["ask-a", "ask-b"]


async def test_a_node_whose_task_was_taken_over_adds_no_output_to_it(pg_url: str) -> None:
    """Fenced as a task's write is: while the other node holds the lease, and
    after it ended the task and dropped the lease (the epoch moved on)."""
    out = ["final", "worker", "mine", True, 1.0]
    async with cut_off_pair(pg_url) as (a, b):
        record = {**task_record("t-1", "running"), "attempts": [{"number": 1}]}
        await a.put_task(record)
        await a.put_output("t-1", 1, out)
        await asyncio.sleep(0.3)  # a is cut off: no renewal, the lease lapses
        [taken] = await b.take_over(at_start=False, limit=10)
        assert taken.value["attempts"][0]["tail"] == [out]
        # a comes back and adds to the task it no longer runs: refused.
        with pytest.raises(Fenced, match="taken over"):
            await a.put_output("t-1", 1, ["final", "worker", "late", True, 2.0])
        a.put_output_soon("t-1", 1, ["output", "ack", "late", True, 2.0])
        await a.flush()
        await b.put_task({**record, "status": "passed"})  # b ends it: no lease row left
        with pytest.raises(Fenced, match="taken over"):
            await a.put_output("t-1", 1, ["final", "worker", "later", True, 3.0])
        row = await b.get_task("t-1")
        assert row is not None and row.value["attempts"][0]["tail"] == [out]


async def test_a_buried_nodes_leases_lapse_with_it_even_one_written_after_its_last_renewal(
    pg_url: str,
) -> None:
    """A dead node's tasks are taken as soon as it is buried, not each when its
    own lease runs out (up to a third of a lease later for one written after
    its last renewal): a node trusts none of its leases from one ``lease_s``
    after its last renewal, before its heartbeat lapses."""
    async with store_pair(pg_url) as (a, b):
        await a.put_task(task_record("t-1", "running"))  # leased to node-a for 10 s
        assert await b.take_over(at_start=False, limit=10) == []
        conn = await asyncpg.connect(pg_url)
        try:  # node-a stopped beating (its last heartbeat ran out)
            await conn.execute(
                "UPDATE cluster_nodes SET expires_at = now() - interval '1 second' "
                "WHERE node_id = 'node-a'"
            )
        finally:
            await conn.close()
        assert await b.bury_dead_nodes() == ["node-a"]
        taken = await b.take_over(at_start=False, limit=10)
        assert [row.key for row in taken] == ["t-1"]
        with pytest.raises(Fenced, match="node-b"):
            await a.put_task(task_record("t-1", "passed"))


async def test_a_burial_does_not_wait_for_a_lease_the_dead_node_froze_holding_locked(
    pg_url: str,
) -> None:
    """A node frozen mid-batch keeps its transaction, and the lease rows it
    locked, open: its burial skips them (they lapse on their own) rather than
    hang the survivor's whole lease round on them."""
    async with store_pair(pg_url) as (a, b):
        await a.put_task(task_record("t-1", "running"))
        await a.put_task(task_record("t-2", "running"))
        conn = await asyncpg.connect(pg_url)
        frozen = await asyncpg.connect(pg_url)
        try:
            await conn.execute(  # node-a stopped beating
                "UPDATE cluster_nodes SET expires_at = now() - interval '1 second' "
                "WHERE node_id = 'node-a'"
            )
            async with frozen.transaction():  # node-a's batch, as it froze
                await frozen.execute("SELECT 1 FROM task_leases WHERE task_id = 't-1' FOR UPDATE")
                buried = await asyncio.wait_for(b.bury_dead_nodes(), 10)  # not a hang
                assert buried == ["node-a"]
                taken = await b.take_over(at_start=False, limit=10)
                assert [row.key for row in taken] == ["t-2"]  # t-1 lapses on its own
        finally:
            await frozen.close()
            await conn.close()


async def test_placing_writes_are_gathered_with_the_other_task_writes_of_their_batch(
    pg_url: str,
) -> None:
    """A new task placed on its operator's node is a row of the same array
    statement as every other task write (``WRITE_TASKS`` with ``place_by``)."""
    async with store_pair(pg_url) as (a, b):
        await a.put_session(SessionRecord("op-1", "ab" * 32, ["main"], "", 1.0, 1.0))
        await b.attach_socket("op-1")  # its socket is on node-b
        before = a.statements_sent
        placed = await asyncio.gather(
            *(
                a.place_new_task(task_record(f"p-{i}", "running"), (), "main", "placed")
                for i in range(10)
            ),
            *(queued(a.put_task_soon, task_record(f"t-{i}", "running")) for i in range(10)),
        )
        assert placed[:10] == ["node-b"] * 10
        assert a.statements_sent - before == 1
        conn = await asyncpg.connect(pg_url)
        try:
            leases = dict(await conn.fetch("SELECT task_id, node_id FROM task_leases"))
        finally:
            await conn.close()
        assert leases == {
            **{f"p-{i}": "node-b" for i in range(10)},
            **{f"t-{i}": "node-a" for i in range(10)},
        }


async def lease_expiry(url: str, task_id: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT expires_at FROM task_leases WHERE task_id = $1", task_id)
    finally:
        await conn.close()


async def test_a_renewal_whose_heartbeat_fails_renews_nothing_so_the_node_never_outtrusts_it(
    pg_url: str,
) -> None:
    """A node's leases and its heartbeat are renewed together or not at all:
    it trusts its leases from its last renewal, and the other nodes bury it
    (letting its leases go at once) by its heartbeat."""
    lease_s = 1.5
    async with store_pair(pg_url, lease_s) as (a, b):
        conn = await asyncpg.connect(pg_url)
        try:
            await a.put_task(task_record("t-1", "running"))
            before = await lease_expiry(pg_url, "t-1")
            await conn.execute(
                "CREATE FUNCTION no_beat() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'heartbeat refused'; END $$"
            )
            await conn.execute(
                "CREATE TRIGGER no_beat BEFORE INSERT OR UPDATE ON cluster_nodes FOR EACH ROW "
                "WHEN (NEW.node_id = 'node-a') EXECUTE FUNCTION no_beat()"
            )
            with pytest.raises(StoreError, match="heartbeat refused"):
                await a.renew_leases(["t-1"])
            assert await lease_expiry(pg_url, "t-1") == before  # not renewed alone
            await asyncio.sleep(lease_s + 0.1)  # node-a's heartbeat lapses
            assert await b.bury_dead_nodes() == ["node-a"]
            assert [row.key for row in await b.take_over(at_start=False, limit=10)] == ["t-1"]
            assert a.leases_lapsed  # node-a stopped trusting it before
        finally:
            await conn.close()


async def test_a_lease_its_own_batch_holds_locked_is_renewed_once_the_batch_commits(
    pg_url: str,
) -> None:
    """The renewal skips leases a batch of the node holds locked, so as not to
    wait in its way, then renews them once it committed: the node trusts
    every lease it holds from the renewal on, so none may be left behind."""
    store = PostgresStore(pg_url)
    store.lease_tasks("node-a", 10, ["running"])
    await store.open()
    conn = await asyncpg.connect(pg_url)
    try:
        await store.put_task(task_record("t-1", "running"))
        before = await lease_expiry(pg_url, "t-1")
        tx = conn.transaction()
        await tx.start()  # as a batch of node-a's writing t-1 would
        await conn.execute("SELECT 1 FROM task_leases WHERE task_id = 't-1' FOR UPDATE")
        renewal = asyncio.create_task(store.renew_leases(["t-1"]))
        probe = await asyncpg.connect(pg_url)
        try:
            for _ in range(500):  # until it waits for the lock (or is done: skipped it)
                if renewal.done() or await probe.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%UPDATE task_leases%'"
                ):
                    break
                await asyncio.sleep(0.02)
        finally:
            await probe.close()
        await tx.commit()
        await renewal
        assert await lease_expiry(pg_url, "t-1") > before
    finally:
        await conn.close()
        await store.close()


async def test_a_request_moved_back_in_keeps_its_place_before_one_issued_after_it(
    pg_url: str,
) -> None:
    """Gathered writes keep a session's requests in issue order (their seq is
    the order an attach replays them in), also past a move's finish."""
    store = PostgresStore(pg_url)
    store.lease_tasks("node-a", 10, ["running"])
    await store.open()
    try:
        await store.put_session(SessionRecord("op-1", "ab" * 32, ["main"], "", 1.0, 1.0))
        await store.put_session(SessionRecord("op-2", "cd" * 32, ["other"], "", 1.0, 1.0))
        await store.issue_request("op-1", "r-moved", {"n": 0}, 1.0)
        commits: list[float] = []
        store.observe_commits(commits.append)
        await asyncio.gather(  # one batch, in this order
            queued(store.finish_request_soon, "op-1", "r-moved", None),
            store.issue_request("op-2", "r-moved", {"n": "moved"}, 2.0),
            store.issue_request("op-2", "r-new", {"n": 1}, 3.0),
        )
        assert len(commits) == 1
        assert [row.req_id for row in await store.pending_of("op-2")] == ["r-moved", "r-new"]
    finally:
        await store.close()


def event(task_id: str, type: str) -> TaskEvent:
    return TaskEvent.of_data(0, task_id, {"task_id": task_id, "type": type, "at": "now"})


async def test_writes_that_fail_inside_a_batch_fail_alone_and_the_rest_commit_with_events(
    pg_url: str,
) -> None:
    async with cut_off_pair(pg_url) as (a, b):
        await a.put_session(SessionRecord("op-1", "ab" * 32, ["main"], "", 1.0, 1.0))
        await a.put_task(task_record("t-gone", "running"))
        await asyncio.sleep(0.3)  # a is cut off: no renewal, the lease lapses
        assert [row.key for row in await b.take_over(at_start=False, limit=10)] == ["t-gone"]
        seen: list[TaskEvent] = []
        a.observe_events(seen.extend)
        commits: list[float] = []
        a.observe_commits(commits.append)
        # Queued together, so the writer takes them as one batch.
        outcomes = await asyncio.gather(
            a.put_task(task_record("t-1", "running"), [event("t-1", "created")]),
            a.put_session(SessionRecord("op-2", "cd" * 32, ["main"], "", 1.0, 1.0)),
            a.put_task(task_record("t-gone", "passed"), [event("t-gone", "status")]),
            a.put_task(task_record("t-2", "running"), [event("t-2", "created")]),
            return_exceptions=True,
        )
        assert len(commits) == 1  # one batch, one transaction
        assert outcomes[0] is None and outcomes[3] is None
        assert isinstance(outcomes[1], RolesTaken) and outcomes[1].conflicts == {"main": "op-1"}
        assert isinstance(outcomes[2], Fenced)
        # The refused writes left nothing; the others committed, events and all.
        assert await a.get_session("op-2") is None
        assert (await a.get_task("t-gone")).value["status"] == "running"  # type: ignore[union-attr]
        assert [(e.task_id, e.type) for e in seen] == [("t-1", "created"), ("t-2", "created")]
        stored = await b.load_events(0, None, 10)
        assert [(e.id, e.task_id) for e in stored] == [(e.id, e.task_id) for e in seen]
        assert stored[0].id < stored[1].id
        assert {row.key for row in await a.load_tasks(["running"])} == {"t-1", "t-2", "t-gone"}


async def test_a_run_of_soon_writes_of_one_kind_all_land_in_issue_order(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    store.lease_tasks("node-a", 10, ["running"])
    await store.open()
    try:
        await store.put_session(SessionRecord("op-1", "ab" * 32, ["main"], "", 1.0, 1.0))
        for n in range(4):
            await store.issue_request("op-1", f"r-{n}", {"type": "hook", "n": n}, float(n))
        # Queued back to back: one batch, each kind's run sent in one go.
        for n in range(3):
            store.finish_request_soon("op-1", f"r-{n}", None)
        for seen in (5.0, 6.0, 7.0):
            store.touch_session_soon("op-1", seen)
        _, pending = await store.attach_socket("op-1")
        assert [row.req_id for row in pending] == ["r-3"]
        session = await store.get_session("op-1")
        assert session is not None and session.last_seen_at == 7.0
    finally:
        await store.close()


async def queued(write: Callable[..., None], *args: Any) -> None:
    """A "soon" write queued when this coroutine first runs, in its turn."""
    write(*args)


async def test_a_batch_sends_each_kind_of_write_once_per_round_and_keeps_each_rows_order(
    pg_url: str,
) -> None:
    """Gathered writes (``writer.Gathered``): a batch's task writes, request
    rows, outputs and finishes are each one array statement per round, and a
    row written twice in the batch is written in the batch's order."""
    store = PostgresStore(pg_url)
    store.lease_tasks("node-a", 10, ["running"])
    await store.open()
    try:
        await store.put_session(SessionRecord("op-1", "ab" * 32, ["main"], "", 1.0, 1.0))
        commits: list[float] = []
        store.observe_commits(commits.append)
        before = store.statements_sent
        n = 30

        def record(i: int, status: str) -> dict[str, Any]:
            return {**task_record(f"t-{i}", status), "attempts": [{"number": 1}]}

        # Queued together, in this order (each coroutine queues its write as it
        # first runs, and they run in turn): one batch.
        await asyncio.gather(
            *(queued(store.put_task_soon, record(i, "running")) for i in range(n)),
            *(store.issue_request("op-1", f"r-{i}", {"n": i}, float(i)) for i in range(n)),
            *(store.put_output(f"t-{i}", 1, ["final", "w", i, True, 1.0]) for i in range(n)),
            queued(store.put_task_soon, record(0, "passed")),
            queued(store.finish_request_soon, "op-1", "r-0", None),
            store.issue_request("op-1", "r-0", {"n": "again"}, 99.0),  # a move: the same id
        )
        assert len(commits) == 1
        # Round 1: the task writes, the requests.  Round 2: the outputs (each
        # after its task's write), r-0's finish.  Round 3: t-0's end, r-0 again.
        # One statement per kind and round: 6, not 93.
        assert store.statements_sent - before == 6
        ended = await store.get_task("t-0")
        assert ended is not None and ended.value["status"] == "passed"
        assert {row.key for row in await store.load_tasks(["running"])} == {
            f"t-{i}" for i in range(1, n)
        }
        last = await store.get_task(f"t-{n - 1}")
        assert last is not None
        assert last.value["attempts"][0]["tail"] == [["final", "w", n - 1, True, 1.0]]
        conn = await asyncpg.connect(pg_url)
        try:
            outputs = await conn.fetchval("SELECT count(*) FROM task_outputs")
            leased = await conn.fetch("SELECT task_id FROM task_leases")
        finally:
            await conn.close()
        assert outputs == n
        assert {row["task_id"] for row in leased} == {f"t-{i}" for i in range(1, n)}
        pending = await store.pending_of("op-1")
        assert [row.req_id for row in pending] == [f"r-{i}" for i in range(1, n)] + ["r-0"]
        assert pending[-1].frame == {"n": "again"}
    finally:
        await store.close()


async def test_a_node_renews_the_leases_of_the_runs_it_holds_and_no_other(pg_url: str) -> None:
    node = await start_daemon(*common(pg_url, 1), "--node-id", "node-a")
    async with daemons(node), aiohttp.ClientSession() as http:
        # A running task leased to node-a, with no run there: what an attempt's
        # end the node could not store used to leave behind, renewed forever.
        orphan = Task(
            agent="echo",
            directive={"n": 1},
            system=None,
            operator=None,
            layers=(),
            kind=Kind.AUTOMATE,
            max_attempts=1,
        )
        orphan.start_attempt()
        writer = PostgresStore(pg_url)
        writer.lease_tasks("node-a", 1, ["running"])
        await writer.open()
        try:
            await writer.put_task(orphan.to_record())
        finally:
            await writer.close()
        # Its lease lapses and a lease round takes it over (node-a, the only
        # node) and runs it again.
        async with http.get(f"{node.base}/v1/tasks/{orphan.id}?wait=10") as resp:
            done = await resp.json()
        assert done["status"] == "passed", done
        assert done["attempts"][0]["error"]["code"] == "interrupted"

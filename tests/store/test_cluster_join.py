"""A node joining while another node's batches commit misses none of their
news: two real daemons on one real PostgreSQL.

A batch tells the other nodes only when its statement sees another node's row
in ``cluster_nodes`` (``STORE_EVENTS_AND_TELL``), so a joining node reads the
newest event id under the events' lock, after its heartbeat row committed
(``JOINED``).  The race is made certain here, not hoped for: PostgreSQL
triggers of the test's own hold the two transactions at the points that
matter (a gate each, an advisory lock the test holds), and the test lets them
go in the order that would lose a batch's news."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg

from operator_server.store.postgres.tasks import EVENTS_LOCK
from tests.http.sse import next_event
from tests.store.test_cluster_placement import seated
from tests.store.test_cluster_routing import THIN, create, mint, next_of
from tests.store.test_postgres_cluster import common, daemons, ended
from tests.test_daemon import start_daemon

# Advisory keys (two int4) of the test's gates.
GATE = 4242
HEARTBEAT_GATE, END_GATE = 1, 2
# Each trigger waits until the test lets its gate go (a shared lock on it).
GATES = f"""
    CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({GATE}, TG_ARGV[0]::int);
        RETURN NEW;
    END $$;
    -- node-b's heartbeat row, as it is written
    CREATE TRIGGER gate_heartbeat BEFORE INSERT OR UPDATE ON cluster_nodes
        FOR EACH ROW WHEN (NEW.node_id = 'node-b') EXECUTE FUNCTION test_gate({HEARTBEAT_GATE});
    -- a task's end, as its batch stores its events (the statement's snapshot,
    -- which decides whether it tells, is taken by then)
    CREATE TRIGGER gate_end BEFORE INSERT ON task_events
        FOR EACH ROW WHEN (NEW.data::jsonb ->> 3 = 'passed') EXECUTE FUNCTION test_gate({END_GATE});
"""
# Transactions of this database waiting for an advisory lock, by key.
WAITING = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND NOT granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = $3
"""


async def close(conn: asyncpg.Connection, gate: int) -> None:
    """Hold ``gate``: a transaction reaching its trigger waits there."""
    await conn.execute("SELECT pg_advisory_lock($1, $2)", GATE, gate)


async def open_(conn: asyncpg.Connection, gate: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", GATE, gate)


async def waiting_at(conn: asyncpg.Connection, gate: int) -> bool:
    """A transaction waits at ``gate``."""
    return bool(await conn.fetchval(WAITING, GATE, gate, 2))


async def waiting_for_the_events_lock(conn: asyncpg.Connection) -> bool:
    """A transaction waits for the lock that event-storing batches take."""
    return bool(await conn.fetchval(WAITING, EVENTS_LOCK >> 32, EVENTS_LOCK & 0xFFFF_FFFF, 1))


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(750):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the database never got there")


async def statuses_until_the_end(stream: aiohttp.ClientResponse, after: int) -> list[str]:
    """The status after each event a task's stream sends past id ``after``,
    until it closes (after the task's end) or a few seconds pass without it."""
    statuses: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while (event := await next_event(stream, 10)) is not None:
                if event.id > after:
                    statuses.append(event.data["status"])
    return statuses


async def test_a_node_joining_while_a_batch_ends_a_task_sees_the_end_on_its_streams_and_long_polls(
    pg_url: str,
) -> None:
    """Node A's batch ending a task looks for other nodes before node B's
    heartbeat row commits (so it tells nobody) and commits after it.  B, joining
    meanwhile, must read the newest event id only after that batch committed:
    whatever B shows from the moment it serves (the task's stream, a long-poll)
    reaches the task's end."""
    a = await start_daemon(*common(pg_url, 3), "--node-id", "node-a")
    async with daemons(a), aiohttp.ClientSession() as http:
        ws = await seated(http, a, await mint(http, a))
        task_id = await create(http, a, THIN)
        spawn = await next_of(ws, "spawn")  # it runs on A, alone
        conn = await asyncpg.connect(pg_url)
        await conn.execute(GATES)
        await close(conn, HEARTBEAT_GATE)
        await close(conn, END_GATE)
        starting = asyncio.ensure_future(start_daemon(*common(pg_url, 3), "--node-id", "node-b"))
        try:
            await until(lambda: waiting_at(conn, HEARTBEAT_GATE))  # B's row, not committed
            await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "ok"})
            await until(lambda: waiting_at(conn, END_GATE))  # A's end: looked, not committed
            shown = await conn.fetchval(
                "SELECT MAX(id) FROM task_events WHERE task_id = $1", task_id
            )
            await open_(conn, HEARTBEAT_GATE)

            async def b_waits_or_serves() -> bool:
                return starting.done() or await waiting_for_the_events_lock(conn)

            # B's row commits; then B waits for A's batch, or serves already.
            await until(b_waits_or_serves)
            end_held = starting.done()
            if not end_held:
                await open_(conn, END_GATE)  # B serves once A's batch has committed
            b = await starting
            poll = asyncio.ensure_future(http.get(f"{b.base}/v1/tasks/{task_id}?wait=5"))
            async with http.get(f"{b.base}/v1/tasks/{task_id}/events") as stream:
                assert stream.status == 200
                # Its stream has read what is stored (up to the last event A
                # committed) before A's batch commits, if B serves already.
                while (event := await next_event(stream, 10)) is not None and event.id < shown:
                    pass
                if end_held:
                    await open_(conn, END_GATE)
                assert "passed" in await statuses_until_the_end(stream, shown)
            async with await poll as resp:
                assert (await resp.json())["status"] == "passed"
            assert (await ended(http, a, task_id))["status"] == "passed"
        finally:
            await conn.close()  # every gate opens
            b = await starting
            b.proc.kill()
            b.proc.wait()
        await ws.close()

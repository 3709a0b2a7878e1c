"""A node joining while another node's batches commit misses none of their
news: two real daemons on one real PostgreSQL.

A batch tells the other nodes only when its statement sees another node's row
in ``cluster_nodes`` (``STORE_EVENTS_AND_TELL``), so a joining node reads the
newest event id under the events' lock, after its heartbeat row committed
(``JOINED``).  The race is made certain here, not hoped for: test triggers
hold the two transactions at the points that matter (``tests/store/gates.py``),
and the test lets them go in the order that would lose a batch's news."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import asyncpg

from operator_server.store.postgres.tasks import EVENTS_LOCK
from tests.http.sse import next_event
from tests.store.gates import close, gate, open_, until, waiting_at, waiting_for
from tests.store.test_cluster_placement import seated
from tests.store.test_cluster_routing import THIN, create, mint, next_of
from tests.store.test_postgres_cluster import common, daemons, ended
from tests.test_daemon import start_daemon

HEARTBEAT_GATE, END_GATE = 1, 2


async def gate_the_race(conn: asyncpg.Connection) -> None:
    # Node B's heartbeat row, as it is written.
    await gate(
        conn,
        HEARTBEAT_GATE,
        "BEFORE INSERT OR UPDATE ON cluster_nodes FOR EACH ROW WHEN (NEW.node_id = 'node-b')",
    )
    # A task's end, as its batch stores its events: the statement's snapshot,
    # which decided whether it tells the other nodes, is taken by then.
    await gate(
        conn,
        END_GATE,
        "BEFORE INSERT ON task_events FOR EACH ROW WHEN (NEW.data::jsonb ->> 3 = 'passed')",
    )


async def waiting_for_the_events_lock(conn: asyncpg.Connection) -> bool:
    """A transaction waits for the lock event-storing batches take."""
    return await waiting_for(conn, EVENTS_LOCK)


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
        await gate_the_race(conn)
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

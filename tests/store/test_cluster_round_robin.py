"""What a task created on the node that does not hold its operator's socket
costs that node (the round-robin balancer's case): two real daemons on one
real PostgreSQL, the store watched from outside."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg

from tests.store.test_cluster_placement import HOOKED, seated, work_as_sub_agent
from tests.store.test_cluster_routing import create, mint, next_of, two_nodes
from tests.store.test_postgres_cluster import daemons, ended

# Every read of a task reads its asks too (``task_asks``); nothing else the
# thin hooked path does touches that table.
READS_WAITING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE wait_event_type = 'Lock' AND query LIKE '%task_asks%'"
)


async def test_a_long_poll_on_the_creating_node_reads_a_task_handed_away_only_once_it_ended(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws = await seated(http, b, await mint(http, b))
        task_id = await create(http, a, HOOKED)
        hook = await next_of(ws, "hook_before")  # B runs it
        conn = await asyncpg.connect(pg_url)
        try:
            async with conn.transaction():
                # Any read of the task, from now on, waits for this lock.
                await conn.execute("LOCK TABLE task_asks IN ACCESS EXCLUSIVE MODE")
                poll = asyncio.create_task(ended(http, a, task_id))
                await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
                spawn = await next_of(ws, "spawn")
                await work_as_sub_agent(http, spawn)
                # A took the long-poll up several round trips ago: it waits for
                # the task's end without having read it.
                assert await conn.fetchval(READS_WAITING) == 0
                assert not poll.done()
            # A plain read on A, or a long-poll whose wait runs out, is the
            # task as it runs, not as it was created.
            for query in ("", "?wait=0.1"):
                async with http.get(f"{a.base}/v1/tasks/{task_id}{query}") as resp:
                    assert resp.status == 200 and (await resp.json())["status"] == "running"
            await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {}})
            task = await poll  # read once, as it ended
            assert task["status"] == "passed" and task["result"]["value"] == {"by": task_id}
        finally:
            await conn.close()
        await ws.close()

"""What a task created on the node that does not hold its operator's socket
costs that node (the round-robin balancer's case): two real daemons on one
real PostgreSQL, the store watched from outside."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg

from operator_server.cluster.messages import Placed
from operator_server.store import SessionRecord
from operator_server.store.postgres import PostgresStore
from tests.store.test_cluster_placement import HOOKED, seated, work_as_sub_agent
from tests.store.test_cluster_routing import create, mint, next_of, two_nodes
from tests.store.test_postgres_cluster import daemons, ended
from tests.test_daemon import Daemon

# Every read of a task reads its asks too (``task_asks``); nothing else the
# thin hooked path does touches that table.
READS_WAITING = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE wait_event_type = 'Lock' AND query LIKE '%task_asks%'"
)


@dataclasses.dataclass
class HandedAway:
    """A task created on A and run on B, its operator's node, worked as far as
    its sub-agent's result while every read of a task waits; a long-poll of
    it on A started before."""

    http: aiohttp.ClientSession
    a: Daemon
    b: Daemon
    ws: aiohttp.ClientWebSocketResponse
    task_id: str
    spawn: dict[str, Any]
    poll: asyncio.Task[dict[str, Any]]
    conn: asyncpg.Connection
    unlock: Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def handed_away_while_reads_wait(pg_url: str) -> AsyncIterator[HandedAway]:
    """``HandedAway`` for the block; reads wait until ``unlock`` (or its end)."""
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws = await seated(http, b, await mint(http, b))
        task_id = await create(http, a, HOOKED)
        hook = await next_of(ws, "hook_before")  # B runs it
        conn = await asyncpg.connect(pg_url)
        locked = conn.transaction()
        held = False

        async def unlock() -> None:
            nonlocal held
            if held:
                held = False
                await locked.rollback()

        try:
            await locked.start()
            held = True
            # Any read of the task, from now on, waits for this lock.
            await conn.execute("LOCK TABLE task_asks IN ACCESS EXCLUSIVE MODE")
            poll = asyncio.create_task(ended(http, a, task_id))
            await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
            spawn = await next_of(ws, "spawn")
            await work_as_sub_agent(http, spawn)
            yield HandedAway(http, a, b, ws, task_id, spawn, poll, conn, unlock)
        finally:
            await unlock()
            await conn.close()
        await ws.close()


async def test_a_long_poll_on_the_creating_node_reads_a_task_handed_away_only_once_it_ended(
    pg_url: str,
) -> None:
    async with handed_away_while_reads_wait(pg_url) as h:
        # A took the long-poll up several round trips ago: it waits for the
        # task's end without having read it.
        assert await h.conn.fetchval(READS_WAITING) == 0
        assert not h.poll.done()
        await h.unlock()
        # A plain read on A, or a long-poll whose wait runs out, is the task
        # as it runs, not as it was created.
        for query in ("", "?wait=0.1"):
            async with h.http.get(f"{h.a.base}/v1/tasks/{h.task_id}{query}") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "running"
        await h.ws.send_json({"type": "spawn_ack", "req_id": h.spawn["req_id"], "value": {}})
        task = await h.poll  # read once, as it ended
        assert task["status"] == "passed" and task["result"]["value"] == {"by": h.task_id}


async def test_a_long_poll_on_the_creating_node_takes_the_ended_task_from_the_news_of_its_end(
    pg_url: str,
) -> None:
    async with handed_away_while_reads_wait(pg_url) as h:
        await h.ws.send_json({"type": "spawn_ack", "req_id": h.spawn["req_id"], "value": {}})
        after = await next_of(h.ws, "hook_after")
        await h.ws.send_json({"type": "hook_ack", "req_id": after["req_id"], "ok": True})
        # B ends it; its end's news carries it whole, outputs in: A answers
        # the long-poll without reading it.
        task = await asyncio.wait_for(h.poll, 10)
        assert await h.conn.fetchval(READS_WAITING) == 0
        await h.unlock()
        assert task["status"] == "passed" and task["result"]["value"] == {"by": h.task_id}
        assert task["attempts"][0]["outputs"]  # the worker's result, stored apart
        async with h.http.get(f"{h.b.base}/v1/tasks/{h.task_id}") as resp:
            assert await resp.json() == task  # what a read of it says


async def test_the_write_storing_a_new_task_places_it_on_its_operators_node_and_tells_that_node(
    pg_url: str,
) -> None:
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    a.lease_tasks("node-a", 10, ["pending", "running"])
    b.lease_tasks("node-b", 10, ["pending", "running"])
    await a.open()
    await b.open()
    try:
        heard: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        b.bus.on(Placed, lambda _node, message: heard.set_result(message.ids))
        await b.put_session(SessionRecord("op-b", "ab" * 32, ["main"], "", 1.0, 1.0))
        await b.attach_socket("op-b")  # its socket is on node-b
        notice = Placed(["t-1"]).encode("node-a")
        # By role or by sid: the write itself finds node-b, leases it the task
        # and tells it, in one transaction.
        assert await a.place_new_task(record("t-1"), [], "main", notice) == "node-b"
        assert await asyncio.wait_for(heard, 10) == ["t-1"]
        assert await a.task_owner("t-1") == "node-b"
        assert [row.key for row in await b.claim_placed(None, [])] == ["t-1"]
        assert await a.place_new_task(record("t-2"), [], "op-b", notice) == "node-b"
        # No socket on another live node (nobody holds the role; the socket
        # is here): stored leased here, written on as any task of this node.
        await a.put_session(SessionRecord("op-a", "cd" * 32, ["here"], "", 1.0, 1.0))
        await a.attach_socket("op-a")
        for name, task_id in (("nobody", "t-3"), ("here", "t-4")):
            assert await a.place_new_task(record(task_id), [], name, notice) is None
            assert await a.task_owner(task_id) == "node-a"
            await a.put_task({**record(task_id), "status": "running"})
            assert (await b.get_task(task_id)).value["status"] == "running"  # type: ignore[union-attr]
    finally:
        await a.close()
        await b.close()


def record(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "status": "pending", "created_at": 1.0, "updated_at": 1.0}

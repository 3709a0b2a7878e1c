"""A node's PostgreSQL ``LISTEN`` connection is cut while an operator on it has
requests pending from another node: the frames notified meanwhile are lost to
it, so when it listens again it re-reads the stored requests — and the
operator is shown each one exactly once, none lost, none twice; and a task
handed to it meanwhile is claimed there as it listens again."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg

from tests.store.gates import close, gate
from tests.store.test_cluster_placement import seated, started_on
from tests.store.test_cluster_routing import THIN, create, frame, mint, next_of, two_nodes
from tests.store.test_postgres_cluster import connect, daemons, ended

BATCH = 4
# What a node's listener connection last ran: its LISTENs, its ping, or the
# read of a message too large for a NOTIFY.  The pool's connections run none.
LISTENER_QUERY = (
    "(query LIKE 'LISTEN %' OR query = 'SELECT 1' "
    "OR query LIKE 'SELECT body FROM cluster_messages%')"
)


def client_ports(pid: int) -> set[int]:
    """The local TCP ports of process ``pid``'s sockets (Linux ``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def cut_listener(pg_url: str, pid: int) -> int:
    """Terminate the listener connection of the node process ``pid``; its pid."""
    conn = await asyncpg.connect(pg_url)
    try:
        for _ in range(100):
            found = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[]) "
                f"AND datname = current_database() AND {LISTENER_QUERY}",
                sorted(client_ports(pid)),
            )
            if len(found) == 1:
                backend = int(found[0]["pid"])
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", backend)
                return backend
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError(f"no single listener connection found: {found}")


async def test_after_the_listener_is_cut_and_back_each_pending_request_reaches_its_operator_once(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url, 1.5)  # the listener pings (and notices) every 0.5 s
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, a)
        ws = await connect(http, b, op)
        shown: Counter[str] = Counter()
        tasks: dict[str, str] = {}

        async def read_spawns(n: int) -> None:
            while len(shown) < n:
                found = await frame(ws, 15)
                if found["type"] == "spawn":
                    shown[found["req_id"]] += 1
                    tasks[found["req_id"]] = found["task_id"]

        # Pending before the cut: shown once, through B's listener.
        ids = [await create(http, a, THIN) for _ in range(BATCH)]
        await read_spawns(BATCH)
        await cut_listener(pg_url, b.proc.pid)
        # Issued while B is not listening: their notices are lost to it.
        ids += [await create(http, a, THIN) for _ in range(BATCH)]
        await read_spawns(2 * BATCH)
        # Whatever else B would send (a second replay) comes before this pong.
        await ws.send_json({"type": "ping", "id": "after"})
        while (found := await frame(ws, 15))["type"] != "pong":
            if found["type"] == "spawn":
                shown[found["req_id"]] += 1
        assert sorted(tasks.values()) == sorted(ids)  # none lost
        assert set(shown.values()) == {1}, shown  # none twice
        for req_id, task_id in tasks.items():
            await ws.send_json({"type": "spawn_ack", "req_id": req_id, "value": task_id})
        for task_id in ids:
            async with http.get(f"{a.base}/v1/tasks/{task_id}?wait=15") as resp:
                task = await resp.json()
            assert task["status"] == "passed" and task["result"]["value"] == task_id, task
        await ws.close()
    events = {e.get("event") for e in b.logs()}
    assert "cluster listener lost its connection" in events
    assert "cluster listener is back; re-reading what it may have missed" in events


async def test_a_task_placed_on_a_node_while_its_listener_is_cut_is_claimed_once_it_listens_again(
    pg_url: str,
) -> None:
    """The notice handing the task over is lost with the listener; the node
    claims what was placed on it when it listens again (``Placement``'s
    resync), not once the lease lapsed and some node took it over: a lease
    moved from node to node (a takeover) waits at a gate here."""
    a, b = await two_nodes(pg_url, 6)  # the listener notices the cut within 2 s
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws = await seated(http, b, await mint(http, a))
        db = await asyncpg.connect(pg_url)
        try:
            await gate(db, 1, "BEFORE UPDATE OF node_id ON task_leases FOR EACH ROW")
            await close(db, 1)
            await cut_listener(pg_url, b.proc.pid)
            task_id = await create(http, a, THIN)  # stored leased to B; B hears nothing
            spawn = await next_of(ws, "spawn")
            assert spawn["task_id"] == task_id
            await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "ok"})
            task = await ended(http, a, task_id)
            assert task["status"] == "passed" and len(task["attempts"]) == 1, task
            assert await started_on(http, a, task_id) == ["node-b"]
        finally:
            await db.close()
        await ws.close()
    events = {e.get("event") for e in b.logs()}
    assert "cluster listener is back; re-reading what it may have missed" in events

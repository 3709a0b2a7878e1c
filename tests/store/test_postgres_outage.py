"""A database outage shorter than a lease, on two real nodes and a real
PostgreSQL stopped with ``-m immediate`` and started again: no task is
stranded, and no client ever sees an end the store does not hold.

Node A runs five tasks waiting for their ``hook_before``; PostgreSQL goes
away; the operator approves (A then cannot store the spawn request); clients
read the tasks on both nodes throughout; PostgreSQL comes back within the
lease.  Every task then passes (the attempt the outage cut short ends
``interrupted`` and a new one is dispatched, here or on B), both nodes and the
store agree, and every end a client saw is the stored one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from operator_server.localcluster import Postgres, throwaway_postgres
from tests.pg import new_database, require_postgres
from tests.store.test_postgres_cluster import common, connect, daemons
from tests.test_daemon import Daemon, start_daemon

TASKS = 5
LEASE_S = 6  # the outage below lasts about 3 s


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A server of this test's own: it is stopped and started again, which the
    session's shared one must never be."""
    require_postgres()
    with throwaway_postgres() as pg:
        yield pg


class Operator:
    """Plays the operator on one socket: approves every hook (but only once
    told to), acknowledges every spawn with the task's id as its result."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.hooks: dict[str, list[dict[str, Any]]] = {}  # task id -> hook_before frames
        self.approving = asyncio.Event()
        self.held: list[dict[str, Any]] = []

    async def run(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return
            frame = json.loads(msg.data)
            if frame["type"] == "hook_before":
                self.hooks.setdefault(frame["task_id"], []).append(frame)
                if self.approving.is_set():
                    await self._approve(frame)
                else:
                    self.held.append(frame)
            elif frame["type"] == "spawn":
                reply = {"type": "spawn_ack", "req_id": frame["req_id"], "value": frame["task_id"]}
                await self.ws.send_json(reply)

    async def _approve(self, frame: dict[str, Any]) -> None:
        await self.ws.send_json({"type": "hook_ack", "req_id": frame["req_id"], "ok": True})

    async def approve_all(self) -> None:
        self.approving.set()
        held, self.held = self.held, []
        for frame in held:
            await self._approve(frame)


class Watcher:
    """Clients reading the tasks on both nodes all along: every terminal state
    any of them was shown, to be held against the store at the end."""

    def __init__(self, http: aiohttp.ClientSession, nodes: list[Daemon], ids: list[str]) -> None:
        self.http, self.nodes, self.ids = http, nodes, ids
        self.seen: dict[str, set[tuple[str, str | None]]] = {i: set() for i in ids}

    async def read(self, node: Daemon, task_id: str, wait: float = 0) -> dict[str, Any] | None:
        url = f"{node.base}/v1/tasks/{task_id}" + (f"?wait={wait:g}" if wait else "")
        try:
            async with self.http.get(url) as resp:
                if resp.status != 200:  # a node cut off may answer 503: it showed nothing
                    return None
                task: dict[str, Any] = await resp.json()
        except aiohttp.ClientError:
            return None
        if task["status"] not in ("pending", "running"):
            code = (task.get("error") or {}).get("code")
            self.seen[task_id].add((task["status"], code))
        return task

    async def forever(self) -> None:
        while True:
            for node in self.nodes:
                for task_id in self.ids:
                    await self.read(node, task_id)
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def test_an_outage_shorter_than_a_lease_strands_no_task_and_shows_no_unstored_end(
    own_postgres: Postgres,
) -> None:
    pg_url = await new_database(own_postgres)
    a = await start_daemon(*common(pg_url, LEASE_S), "--node-id", "node-a")
    b = await start_daemon(*common(pg_url, LEASE_S), "--node-id", "node-b")
    async with daemons(a, b), aiohttp.ClientSession() as http:
        async with http.post(f"{a.base}/v1/operators", json={"roles": ["main"]}) as resp:
            op = await resp.json()
        operator = Operator(await connect(http, a, op))
        body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}, "max_attempts": 1}
        ids = []
        for _ in range(TASKS):
            async with http.post(f"{a.base}/v1/tasks", json=body) as resp:
                assert resp.status == 202
                ids.append((await resp.json())["id"])
        watcher = Watcher(http, [a, b], ids)
        async with running(operator.run()), running(watcher.forever()):
            for _ in range(100):  # every task waits for its hook
                if len(operator.held) == TASKS:
                    break
                await asyncio.sleep(0.05)
            assert len(operator.held) == TASKS

            await asyncio.to_thread(own_postgres.stop, "immediate")
            await operator.approve_all()  # A cannot store the spawns that follow
            # A long-poll on A meanwhile shows no end: none could be stored.
            during = await asyncio.gather(*(watcher.read(a, i, wait=1.5) for i in ids))
            for task in during:
                assert task is not None and task["status"] == "running", task
            await asyncio.to_thread(own_postgres.start)

            # Every task ends, passed: approved, spawned and acknowledged again.
            ended = await asyncio.gather(*(watcher.read(a, i, wait=30) for i in ids))
            for task in ended:
                assert task is not None and task["status"] == "passed", task
        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch("SELECT id, status, data FROM tasks WHERE id = ANY($1)", ids)
            leases = await conn.fetch("SELECT * FROM task_leases WHERE task_id = ANY($1)", ids)
        finally:
            await conn.close()
        stored = {r["id"]: json.loads(r["data"]) for r in rows}
        assert {r["status"] for r in rows} == {"passed"} and len(rows) == TASKS
        assert not leases  # nobody holds, or renews, a lease on an ended task
        for task_id in ids:
            record = stored[task_id]
            assert record["result"]["value"] == task_id
            # The attempt the outage cut short ended interrupted, not failed.
            first, *_, last = record["attempts"]
            assert first["error"]["code"] == "interrupted", record["attempts"]
            assert last["status"] == "passed"
            # Both nodes show what the store holds.
            for node in (a, b):
                shown = await watcher.read(node, task_id)
                assert shown is not None and shown["status"] == "passed"
                statuses = [x["status"] for x in shown["attempts"]]
                assert statuses == [x["status"] for x in record["attempts"]]
            # No client was ever shown an end the store does not hold.
            assert watcher.seen[task_id] == {("passed", None)}, watcher.seen[task_id]
        await operator.ws.close()

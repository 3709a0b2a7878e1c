"""A node frozen (SIGSTOP) past its leases, then woken (SIGCONT), after the node
that took its tasks over has finished them: the woken node shows the operator
nothing of its stale runs and writes over nothing that was finished."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from operator_server.store import Fenced, TaskEvent
from tests.store.test_postgres import cut_off_pair, task_record
from tests.store.test_postgres_cluster import common, connect, daemons
from tests.test_daemon import Daemon, start_daemon

TASKS = 5
LEASE_S = 1.5
FREEZE_S = 3 * LEASE_S
# Longer than the freeze: the woken node still waits on the hooks it issued,
# and hears the replies the operator sent meanwhile (so it would go on to
# spawn).  The spawn timeout is short: a stale spawn would time out (and end
# its task) soon after the wake.
HOOK_TIMEOUT_S = 4 * FREEZE_S
SPAWN_TIMEOUT_S = LEASE_S
Seen = list[tuple[float, dict[str, Any]]]


async def hooks_waiting(http: aiohttp.ClientSession, node: Daemon, op: dict[str, Any]) -> list[str]:
    """``TASKS`` tasks on ``node`` for ``op``'s role, each waiting for its first
    ``hook_before`` (shown on the operator's socket there, not answered)."""
    body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}, "max_attempts": 1}
    ids = []
    for _ in range(TASKS):
        async with http.post(f"{node.base}/v1/tasks", json=body) as resp:
            assert resp.status == 202
            ids.append((await resp.json())["id"])
    headers = {"Authorization": f"Bearer {op['token']}"}
    url = f"{node.base}/v1/operators/{op['sid']}/pending"
    for _ in range(200):
        async with http.get(url, headers=headers) as resp:
            pending = (await resp.json())["pending"]
        if len(pending) == TASKS:
            return ids
        await asyncio.sleep(0.05)
    raise AssertionError(f"the hooks were not all issued: {pending}")


async def play_operator(ws: aiohttp.ClientWebSocketResponse, ids: list[str], seen: Seen) -> None:
    """Approve every hook (the frozen node's, replayed here, too) and acknowledge
    the spawn of each task's second attempt, until all of those were sent;
    record every frame with when it came."""
    left = set(ids)
    while left:
        frame = json.loads((await asyncio.wait_for(ws.receive(), 30)).data)
        seen.append((time.monotonic(), frame))
        if frame["type"] == "hook_before":
            await ws.send_json({"type": "hook_ack", "req_id": frame["req_id"], "ok": True})
        elif frame["type"] == "spawn" and frame["attempt"] > 1:
            ack = {"type": "spawn_ack", "req_id": frame["req_id"], "value": frame["task_id"]}
            await ws.send_json(ack)
            left.discard(frame["task_id"])


async def watch(ws: aiohttp.ClientWebSocketResponse, seen: Seen, seconds: float) -> None:
    """Record what the operator is sent for ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            async for msg in ws:
                seen.append((time.monotonic(), json.loads(msg.data)))
    except TimeoutError:
        pass


async def all_passed(http: aiohttp.ClientSession, node: Daemon, ids: list[str]) -> None:
    for task_id in ids:
        async with http.get(f"{node.base}/v1/tasks/{task_id}?wait=15") as resp:
            task = await resp.json()
        assert task["status"] == "passed", task


async def status_events(pg_url: str) -> dict[str, list[str]]:
    """Every task's stored ``status`` events, in order."""
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT id, task_id, data FROM task_events ORDER BY id")
    finally:
        await conn.close()
    found: dict[str, list[str]] = {}
    for row in rows:
        event = TaskEvent.from_stored(row["id"], row["task_id"], json.loads(row["data"]))
        if event.type == "status":
            found.setdefault(event.task_id, []).append(event.status)
    return found


async def test_a_node_woken_after_its_tasks_were_taken_over_and_finished_sends_and_writes_nothing(
    pg_url: str,
) -> None:
    flags = (
        *common(pg_url, LEASE_S),
        "--hook-timeout-s", str(HOOK_TIMEOUT_S),
        "--spawn-timeout-s", str(SPAWN_TIMEOUT_S),
        "--reconnect-grace-s", "60",
    )  # fmt: skip
    a = await start_daemon(*flags, "--node-id", "node-a")
    b = await start_daemon(*flags, "--node-id", "node-b")
    async with daemons(a, b), aiohttp.ClientSession() as http:
        async with http.post(f"{a.base}/v1/operators", json={"roles": ["main"]}) as resp:
            op = await resp.json()
        # Seated on A, so the tasks run there (a task whose operator has no
        # socket anywhere would wait for one, and go where it attaches).
        ws_a = await connect(http, a, op)
        ids = await hooks_waiting(http, a, op)
        a.proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            # At once, before B buries A: B replays A's hooks and the operator
            # approves them (the replies wait for A in its listener's queue).
            ws = await connect(http, b, op)
            seen: Seen = []
            await asyncio.wait_for(play_operator(ws, ids, seen), 30)
            await all_passed(http, b, ids)
            await asyncio.sleep(max(0.0, frozen + FREEZE_S - time.monotonic()))
        finally:
            a.proc.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        # A's first lease rounds, and past the spawn timeout of any spawn it sent.
        await watch(ws, seen, 2 * LEASE_S + SPAWN_TIMEOUT_S)
        stale = [f for at, f in seen if at >= woke and f["type"] in ("spawn", "hook_before", "ask")]
        assert stale == []  # nothing of A's runs is shown again: no work done twice
        for node in (a, b):
            for task_id in ids:
                async with http.get(f"{node.base}/v1/tasks/{task_id}") as resp:
                    task = await resp.json()
                assert task["status"] == "passed", task
                first, second = task["attempts"]
                assert first["error"]["code"] == "interrupted"
                assert second["status"] == "passed"
                assert task["result"]["value"] == task_id
        for socket in (ws, ws_a):
            await socket.close()
    statuses = await status_events(pg_url)
    for task_id in ids:
        assert statuses[task_id][-1] == "passed", statuses[task_id]  # nothing after the end
        assert statuses[task_id].count("passed") == 1, statuses[task_id]


async def test_a_stale_writer_is_refused_after_the_task_ended_elsewhere_and_its_lease_went(
    pg_url: str,
) -> None:
    async with cut_off_pair(pg_url) as (a, b):
        await a.put_task(task_record("t-1", "running"))
        await asyncio.sleep(0.3)  # a is frozen: no renewal, the lease lapses
        assert [row.key for row in await b.take_over(at_start=False, limit=10)] == ["t-1"]
        await b.put_task(task_record("t-1", "running"))  # b writes at the epoch it took
        await b.put_task(task_record("t-1", "passed"))  # its end drops the lease row
        # a wakes and ends the task it no longer runs: no lease row to stop it,
        # but the task's epoch moved on when b took it.
        with pytest.raises(Fenced, match="taken over"):
            await a.put_task(task_record("t-1", "failed"))
        a.put_task_soon(task_record("t-1", "failed"))
        await a.flush()
        assert (await a.get_task("t-1")).value["status"] == "passed"  # type: ignore[union-attr]

"""A deadline survives a real crash: the daemon is SIGKILLed while a request
waits, restarted on the same file (or, in a cluster, another node takes the
task over), and the request issued again (a new req_id, in the re-dispatched
attempt) keeps the due time the first one had."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from operator_server.wire.times import iso
from tests.http.sse import read_all
from tests.store.test_postgres_cluster import common, connect, daemons
from tests.test_daemon import free_port, start_daemon, task_row
from tests.wsop import expect, recv

DEADLINE_S = 6


async def _stored_due(db: Path, task_id: str) -> float:
    """The hook_before's due time, once the daemon has written it to the file."""
    for _ in range(400):
        _, data = task_row(db, task_id)
        dues = json.loads(data).get("dues", {})
        if "hook_before" in dues:
            return float(dues["hook_before"]["due_at"])
        await asyncio.sleep(0.025)
    raise AssertionError("the hook_before's due time was never stored")


async def test_a_request_reissued_after_a_sigkill_keeps_its_due_time(tmp_path: Path) -> None:
    db = tmp_path / "due.sqlite"
    port = free_port()
    args = (
        "--secret",
        "s",
        "--store-path",
        str(db),
        "--log-format",
        "json",
        "--remind-at-fraction",
        "0.05",
    )
    daemon = await start_daemon(*args, port=port)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{daemon.base}/v1/operators", json={"roles": ["main"]}) as resp:
                op = await resp.json()
            ws_url = f"{daemon.base}/v1/operators/{op['sid']}/ws"
            auth = {"Authorization": f"Bearer {op['token']}"}
            ws = await http.ws_connect(ws_url, headers=auth)
            operator = {
                "role": "main",
                "deadlines": {"hook_before": {"deadline_s": DEADLINE_S, "on_timeout": "fail"}},
            }
            body = {"agent": "coder", "directive": "x", "operator": operator}
            async with http.post(f"{daemon.base}/v1/tasks", json=body) as resp:
                task: dict[str, Any] = await resp.json()
            first = await expect(ws, "hook_before")
            due = await _stored_due(db, task["id"])

            daemon.proc.send_signal(signal.SIGKILL)
            assert daemon.proc.wait(timeout=10) == -signal.SIGKILL
            await ws.close()
            daemon = await start_daemon(*args, port=port)

            ws = await http.ws_connect(ws_url, headers=auth)  # the restored session
            again = await expect(ws, "hook_before", timeout=10)
            assert again["req_id"] != first["req_id"]
            assert (again["attempt"], again["task_id"]) == (2, task["id"])
            cancel = await expect(ws, "cancel", timeout=DEADLINE_S + 10)
            assert cancel["req_id"] == again["req_id"]

            async with http.get(f"{daemon.base}/v1/tasks/{task['id']}?wait=10") as resp:
                done = await resp.json()
            assert done["status"] == "failed"
            assert done["error"]["code"] == "operator_timeout"
            assert done["attempts"][0]["error"]["code"] == "interrupted"
            async with http.get(f"{daemon.base}/v1/tasks/{task['id']}/events") as resp:
                events = await read_all(resp)
        reminders = {e.data["req_id"]: e.data for e in events if e.type == "request_due_soon"}
        # The clock did not restart: the new request is due when the first was.
        assert reminders[again["req_id"]]["due_at"] == iso(due)
        assert reminders[again["req_id"]]["attempt"] == 2
        # Settled by its deadline: the stored due time went with it.
        _, data = task_row(db, task["id"])
        assert "hook_before" not in json.loads(data)["dues"]
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.terminate()
            daemon.proc.wait(timeout=15)


async def _next(
    ws: aiohttp.ClientWebSocketResponse, wanted: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """The next frame ``wanted`` picks, passing over the others."""
    while True:
        frame = await recv(ws, timeout)
        if wanted(frame):
            return frame


async def _stored_due_in(pg_url: str, task_id: str, kind: str) -> float:
    """``kind``'s due time, once a node has written it to the shared database."""
    conn = await asyncpg.connect(pg_url)
    try:
        for _ in range(400):
            data = await conn.fetchval("SELECT data FROM tasks WHERE id = $1", task_id)
            dues = json.loads(data).get("dues", {}) if data else {}
            if kind in dues:
                return float(dues[kind]["due_at"])
            await asyncio.sleep(0.025)
    finally:
        await conn.close()
    raise AssertionError(f"the {kind}'s due time was never stored")


async def test_a_node_taking_a_task_over_keeps_its_requests_due_time(pg_url: str) -> None:
    args = (*common(pg_url, 1.5), "--remind-at-fraction", "0.05")
    a = await start_daemon(*args, "--node-id", "node-a")
    async with daemons(a), aiohttp.ClientSession() as http:
        async with http.post(f"{a.base}/v1/operators", json={"roles": ["main"]}) as resp:
            op = await resp.json()
        ws = await connect(http, a, op)
        body = {
            "agent": "coder",
            "directive": "x",
            "operator": {"role": "main", "deadlines": {"spawn": {"deadline_s": DEADLINE_S}}},
            "layers": ["operator_delegate"],
        }
        async with http.post(f"{a.base}/v1/tasks", json=body) as resp:
            task: dict[str, Any] = await resp.json()
        first = await expect(ws, "spawn")
        due = await _stored_due_in(pg_url, task["id"], "spawn")
        b = await start_daemon(*args, "--node-id", "node-b")
        async with daemons(b):
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
            await ws.close()
            ws = await connect(http, b, op)
            # The first spawn, stored, may be replayed and then withdrawn
            # before B takes the task over and issues the second.
            again = await _next(ws, lambda f: f["type"] == "spawn" and f["attempt"] == 2, 15)
            assert again["req_id"] != first["req_id"]
            await _next(
                ws,
                lambda f: f["type"] == "cancel" and f["req_id"] == again["req_id"],
                DEADLINE_S + 15,
            )
            async with http.get(f"{b.base}/v1/tasks/{task['id']}?wait=10") as resp:
                done = await resp.json()
            assert done["error"]["code"] == "operator_timeout", done
            async with http.get(f"{b.base}/v1/tasks/{task['id']}/events") as resp:
                events = await read_all(resp)
            await ws.close()
    reminders = {e.data["req_id"]: e.data for e in events if e.type == "request_due_soon"}
    # Node B went on with node A's clock.
    assert reminders[again["req_id"]]["due_at"] == iso(due)

"""A real crash: the daemon killed with SIGKILL mid-task, restarted on the same file."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from operator_server.client import OperatorClient, TaskClient, WorkerClient
from tests.test_daemon import free_port, start_daemon


async def test_a_task_in_flight_at_a_crash_completes_through_the_reconnected_operator(
    tmp_path: Path,
) -> None:
    port = free_port()
    args = ("--secret", "s", "--store-path", str(tmp_path / "crash.sqlite"), "--log-format", "json")
    daemon = await start_daemon(*args, port=port)
    seen_attempts: list[int] = []
    first_spawn = asyncio.Event()

    async def on_spawn(frame: dict[str, Any]) -> Any:
        seen_attempts.append(frame["attempt"])
        if frame["attempt"] == 1:
            first_spawn.set()
            await asyncio.Event().wait()  # the crash happens while this attempt runs
        async with WorkerClient(daemon.base, frame["worker_handle"]) as worker:
            prompt = await worker.prompt()
            await worker.result({"finished": prompt["prompt"]})
        return {}

    op = OperatorClient(
        daemon.base, roles=["main"], on_spawn=on_spawn, backoff_min_s=0.05, backoff_max_s=0.2
    )
    try:
        await op.start()
        async with TaskClient(daemon.base) as tasks:
            task = await tasks.create(agent="coder", directive="survive", operator={"role": "main"})
        await asyncio.wait_for(first_spawn.wait(), 10)

        daemon.proc.send_signal(signal.SIGKILL)
        assert daemon.proc.wait(timeout=10) == -signal.SIGKILL
        daemon = await start_daemon(*args, port=port)

        async with TaskClient(daemon.base) as tasks:
            done = await tasks.get(task["id"], wait=20)
        assert done["status"] == "passed"
        assert done["result"] == {"value": {"finished": "survive"}, "ok": True}
        assert done["attempt"] == 2 and done["interruptions"] == 1
        assert [a["status"] for a in done["attempts"]] == ["failed", "passed"]
        assert done["attempts"][0]["error"]["code"] == "interrupted"
        assert seen_attempts == [1, 2]
        assert op.connects >= 2  # the same session reconnected, never re-minted
    finally:
        await op.close()
        if daemon.proc.poll() is None:
            daemon.proc.terminate()
            daemon.proc.wait(timeout=15)


async def test_a_task_a_long_poll_saw_pass_is_still_passed_after_a_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "seen.sqlite"
    port = free_port()
    args = ("--secret", "s", "--store-path", str(db), "--log-format", "json")
    daemon = await start_daemon(*args, port=port)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{daemon.base}/v1/operators", json={}) as resp:
                op = await resp.json()
            ws = await http.ws_connect(
                f"{daemon.base}/v1/operators/{op['sid']}/ws",
                headers={"Authorization": f"Bearer {op['token']}"},
            )
            body = {
                "agent": "coder",
                "directive": "x",
                "operator": {"sid": op["sid"]},
                "layers": ["operator_delegate"],
            }
            async with http.post(f"{daemon.base}/v1/tasks", json=body) as resp:
                task = await resp.json()
            spawn = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            # Hold the write lock from outside, so no commit can land while we look.
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            url = f"{daemon.base}/v1/tasks/{task['id']}?wait=10"
            poll = asyncio.ensure_future(http.get(url))
            await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "v"})
            done, _ = await asyncio.wait({poll}, timeout=1)
            if not done:  # as it should be: the end is not committed, so not shown
                other.rollback()
            seen = await (await poll).json()
            # Killed the moment the client has its answer.
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(timeout=10)
            other.rollback()
            other.close()
            await ws.close()
        assert seen["status"] == "passed"

        daemon = await start_daemon(*args, port=port)
        async with TaskClient(daemon.base) as tasks:
            after = await tasks.get(task["id"])
        assert after["status"] == "passed" and after["interruptions"] == 0
        assert [a["status"] for a in after["attempts"]] == ["passed"]
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.terminate()
            daemon.proc.wait(timeout=15)

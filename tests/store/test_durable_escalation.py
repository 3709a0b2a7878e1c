"""An escalation chain survives a real crash: the daemon is SIGKILLed while a
request waits at the chain's second step, restarted on the same file, and the
request issued again (a new req_id, in the re-dispatched attempt) goes
straight to that step's role and moves on when the stored step ends, not a
whole step after the restart."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from tests.http.sse import read_all
from tests.test_daemon import free_port, start_daemon, task_row
from tests.wsop import expect

# The second step is long enough to span the kill and the restart.
FIRST_S, SECOND_S = 1, 8


async def _stored_step(db: Path, task_id: str, step: int) -> float:
    """When the hook_before's ``step`` ends, once the daemon has stored it."""
    for _ in range(400):
        _, data = task_row(db, task_id)
        due = json.loads(data).get("dues", {}).get("hook_before")
        if due is not None and due["step"] == step:
            return float(due["due_at"])
        await asyncio.sleep(0.025)
    raise AssertionError(f"step {step} of the hook_before was never stored")


def _unix(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


async def test_a_chain_resumes_at_its_step_with_its_time_after_a_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "chain.sqlite"
    port = free_port()
    args = ("--secret", "s", "--store-path", str(db), "--log-format", "json")
    daemon = await start_daemon(*args, port=port)
    try:
        async with aiohttp.ClientSession() as http:
            ops: dict[str, dict[str, Any]] = {}
            for role in ("l1", "l2", "l3"):
                async with http.post(f"{daemon.base}/v1/operators", json={"roles": [role]}) as r:
                    ops[role] = await r.json()

            async def seat(role: str) -> aiohttp.ClientWebSocketResponse:
                op = ops[role]
                return await http.ws_connect(
                    f"{daemon.base}/v1/operators/{op['sid']}/ws",
                    headers={"Authorization": f"Bearer {op['token']}"},
                )

            ws1, ws2 = await seat("l1"), await seat("l2")
            operator = {
                "role": "l1",
                "escalate": [
                    {"after_s": FIRST_S, "role": "l2"},
                    {"after_s": SECOND_S, "role": "l3"},
                ],
            }
            body = {"agent": "coder", "directive": "x", "operator": operator}
            async with http.post(f"{daemon.base}/v1/tasks", json=body) as resp:
                task: dict[str, Any] = await resp.json()
            first = await expect(ws1, "hook_before")
            assert (await expect(ws2, "hook_before", timeout=10))["req_id"] == first["req_id"]
            second_ends = await _stored_step(db, task["id"], 1)

            daemon.proc.send_signal(signal.SIGKILL)
            assert daemon.proc.wait(timeout=10) == -signal.SIGKILL
            for ws in (ws1, ws2):
                await ws.close()
            restarted_at = time.time()
            daemon = await start_daemon(*args, port=port)

            ws2, ws3 = await seat("l2"), await seat("l3")
            # Straight to the step it had reached: l2, not l1.
            again = await expect(ws2, "hook_before", timeout=10)
            assert again["req_id"] != first["req_id"]
            assert (again["attempt"], again["task_id"]) == (2, task["id"])
            cancel = await expect(ws2, "cancel", timeout=SECOND_S + 10)
            assert (cancel["req_id"], cancel["reason"]) == (again["req_id"], "escalated")
            assert (await expect(ws3, "hook_before", timeout=10))["req_id"] == again["req_id"]
            assert await _stored_step(db, task["id"], 2) is not None
            await ws3.send_json({"type": "hook_ack", "req_id": again["req_id"], "ok": False})

            async with http.get(f"{daemon.base}/v1/tasks/{task['id']}?wait=10") as resp:
                done = await resp.json()
            assert (done["status"], done["error"]["code"]) == ("failed", "spawn_rejected")
            assert done["attempts"][0]["error"]["code"] == "interrupted"
            async with http.get(f"{daemon.base}/v1/tasks/{task['id']}/events") as resp:
                events = await read_all(resp)
        moved = [e.data for e in events if e.type == "request_moved"]
        assert [(m["req_id"], m["from"], m["to"], m["step"]) for m in moved] == [
            (first["req_id"], "l1", "l2", 1),
            (again["req_id"], "l2", "l3", 2),  # never at l1 again: no step 1 this time
        ]
        # Moved when the stored step ended: the clock did not restart with the daemon.
        assert second_ends - 0.001 <= _unix(moved[1]["at"]) < restarted_at + SECOND_S
        # Settled: the stored step went with it.
        _, data = task_row(db, task["id"])
        assert "hook_before" not in json.loads(data)["dues"]
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.terminate()
            daemon.proc.wait(timeout=15)

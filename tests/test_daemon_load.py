"""SIGTERM under load: a real daemon process stops within its grace time while
workers pile large asks onto their attempts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.test_daemon import start_daemon

SHUTDOWN_TIMEOUT_S = 5
# What a stop may take beyond shutdown_timeout_s: closing sockets, committing
# what is queued, on a machine busy with other tests.  The daemon was
# still running 15 s after SIGTERM.
SLACK_S = 10
TASKS = 4
FAST_WORKERS_PER_TASK = 4
QUESTION = "x" * 200_000
# SIGTERM once this many asks are in, or every fast worker was refused (a
# bound): with the default bounds an attempt takes 20 such questions.
ASKS_BEFORE_SIGTERM = 240


async def test_sigterm_stops_the_daemon_in_its_grace_time_while_large_asks_pile_up(
    tmp_path: Path,
) -> None:
    daemon = await start_daemon(
        "--secret",
        "s",
        "--log-format",
        "json",
        "--log-level",
        "warning",
        "--store-path",
        str(tmp_path / "load.sqlite"),
        "--shutdown-timeout-s",
        str(SHUTDOWN_TIMEOUT_S),
    )
    spawns: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    asked = refused = 0
    enough = asyncio.Event()
    loops: list[asyncio.Task[None]] = []
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{daemon.base}/v1/operators", json={"roles": ["main"]}) as r:
                op = await r.json()
            ws = await http.ws_connect(
                f"{daemon.base}/v1/operators/{op['sid']}/ws",
                headers={"Authorization": f"Bearer {op['token']}"},
                max_msg_size=0,
            )

            async def operate() -> None:
                """Approve each hook, hold each spawn, never answer an ask."""
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        continue
                    frame = json.loads(msg.data)
                    if frame["type"] == "hook_before":
                        reply = {"type": "hook_ack", "req_id": frame["req_id"], "ok": True}
                        await ws.send_json(reply)
                    elif frame["type"] == "spawn":
                        spawns.put_nowait(frame)

            async def ask_on(handle: str, held: bool) -> None:
                """Ask until refused: held asks wait for an answer (in flight
                at SIGTERM), the others come back pending at once."""
                nonlocal asked, refused
                body = {"question": QUESTION, "timeout_s": 30 if held else 0}
                headers = {"Authorization": f"Bearer {handle}"}
                with contextlib.suppress(aiohttp.ClientError):
                    while True:
                        async with http.post(
                            f"{daemon.base}/v1/worker/ask", json=body, headers=headers
                        ) as resp:
                            if resp.status in (200, 202):
                                asked += 1
                            elif not held:  # a bound, or the daemon stopping
                                refused += 1
                            if asked >= ASKS_BEFORE_SIGTERM or (
                                refused == TASKS * FAST_WORKERS_PER_TASK
                            ):
                                enough.set()
                            if resp.status not in (200, 202):
                                return

            loops.append(asyncio.create_task(operate()))
            for _ in range(TASKS):
                body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}}
                async with http.post(f"{daemon.base}/v1/tasks", json=body) as r:
                    assert r.status == 202
            for _ in range(TASKS):
                spawn = await asyncio.wait_for(spawns.get(), 10)
                for n in range(FAST_WORKERS_PER_TASK + 1):
                    loops.append(asyncio.create_task(ask_on(spawn["worker_handle"], n == 0)))
            await asyncio.wait_for(enough.wait(), 60)

            daemon.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            code = await asyncio.to_thread(daemon.proc.wait, SHUTDOWN_TIMEOUT_S + SLACK_S)
            took = time.monotonic() - signalled
            assert code == 0, f"exit code {code} after {took:.1f} s ({asked} asks)"
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


async def test_a_crash_keeps_an_attempts_asks_and_they_read_back_withdrawn(
    tmp_path: Path,
) -> None:
    """Asks are stored apart from their task: a SIGKILL mid-attempt keeps them,
    and the restart that interrupts the attempt withdraws them on disk too."""
    args = ("--secret", "s", "--log-format", "json", "--store-path", str(tmp_path / "c.sqlite"))
    daemon = await start_daemon(*args)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{daemon.base}/v1/operators", json={"roles": ["main"]}) as r:
                op = await r.json()
            ws = await http.ws_connect(
                f"{daemon.base}/v1/operators/{op['sid']}/ws",
                headers={"Authorization": f"Bearer {op['token']}"},
            )
            body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}}
            async with http.post(f"{daemon.base}/v1/tasks", json=body) as r:
                task = await r.json()
            hook = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
            spawn = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            headers = {"Authorization": f"Bearer {spawn['worker_handle']}"}
            for question in ("first?", {"second": [1, 2]}):
                ask = {"question": question, "timeout_s": 0}
                async with http.post(
                    f"{daemon.base}/v1/worker/ask", json=ask, headers=headers
                ) as r:
                    assert r.status == 202
            # A durable write after them: the store commits in order, so they are on disk.
            async with http.post(f"{daemon.base}/v1/operators", json={}) as r:
                assert r.status == 201
            await ws.close()

        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(timeout=10)
        daemon = await start_daemon(*args, port=int(daemon.base.rsplit(":", 1)[1]))
        async with aiohttp.ClientSession() as http:
            url = f"{daemon.base}/v1/tasks/{task['id']}"
            async with http.post(f"{url}/cancel", json={"reason": "enough"}) as r:
                assert r.status == 200, await r.text()
            async with http.get(url) as r:
                done = await r.json()
        first = done["attempts"][0]
        assert first["error"]["code"] == "interrupted"
        assert [(a["question"], a["status"]) for a in first["asks"]] == [
            ("first?", "withdrawn"),
            ({"second": [1, 2]}, "withdrawn"),
        ]
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()

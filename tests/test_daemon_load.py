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

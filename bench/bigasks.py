"""One worker handle against the daemon: 80 sequential worker asks of 200 KB
each on one attempt (issue 20, item 3), on a real daemon process at the
shipped defaults (a SQLite file).

Each ask is answered ``202 pending`` at once (``timeout_s: 0``) and never
answered by the operator, so its question stays on the attempt.  Measured: the
median latency of the first and of the last ten asks (an ask that rewrote
every ask before it got slower with each one), the daemon's RSS before and
after, and how long SIGTERM takes to stop it.  Two rows: the bounds raised out
of the way (every ask kept: what the store costs per ask), and the shipped
bounds (``max_ask_bytes_per_attempt``, 4 MiB: the asks past it are refused,
413).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from typing import Any

import aiohttp

from bench.common import Daemon, median, progress, record, table

ASKS = 80
QUESTION = "x" * 200_000
UNBOUNDED = {"max_asks_per_attempt": "1000", "max_ask_bytes_per_attempt": str(1 << 30)}


async def one_run(settings: dict[str, str]) -> list[Any]:
    with tempfile.TemporaryDirectory(prefix="bench-bigasks-") as tmp:
        daemon = Daemon(f"{tmp}/bench.sqlite", tmp, settings=settings)
        await daemon.start()
        assert daemon.proc is not None
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{daemon.url}/v1/operators", json={"roles": ["m"]}) as r:
                    op = await r.json()
                ws = await http.ws_connect(
                    f"{daemon.url}/v1/operators/{op['sid']}/ws",
                    headers={"Authorization": f"Bearer {op['token']}"},
                    max_msg_size=0,
                )
                spawned: asyncio.Future[str] = asyncio.get_running_loop().create_future()

                async def operate() -> None:
                    async for msg in ws:
                        frame = json.loads(msg.data)
                        if frame["type"] == "hook_before":
                            ack = {"type": "hook_ack", "req_id": frame["req_id"], "ok": True}
                            await ws.send_json(ack)
                        elif frame["type"] == "spawn" and not spawned.done():
                            spawned.set_result(frame["worker_handle"])

                reader = asyncio.create_task(operate())
                body = {"agent": "bench", "directive": "x", "operator": {"role": "m"}}
                async with http.post(f"{daemon.url}/v1/tasks", json=body) as r:
                    assert r.status == 202, await r.text()
                handle = await asyncio.wait_for(spawned, 30)
                rss_before = daemon.rss_kib()
                times, kept = [], 0
                headers = {"Authorization": f"Bearer {handle}"}
                ask = {"question": QUESTION, "timeout_s": 0}
                for n in range(ASKS):
                    t0 = time.perf_counter()
                    async with http.post(
                        f"{daemon.url}/v1/worker/ask", json=ask, headers=headers
                    ) as r:
                        await r.read()
                        kept += r.status == 202
                    times.append((time.perf_counter() - t0) * 1000)
                    if (n + 1) % 20 == 0:
                        progress(f"bigasks: {n + 1}/{ASKS}")
                rss_after = daemon.rss_kib()
                t0 = time.perf_counter()
                await daemon.stop()
                stop_s = time.perf_counter() - t0
                reader.cancel()
        finally:
            if daemon.proc.returncode is None:
                daemon.proc.kill()
                await daemon.proc.wait()
    return [
        kept,
        f"{median(times[:10]):.1f}",
        f"{median(times[-10:]):.1f}",
        f"{rss_before // 1024} → {rss_after // 1024}",
        f"{stop_s:.1f}",
    ]


async def run() -> None:
    rows = [
        ["bounds raised (every ask kept)", *await one_run(UNBOUNDED)],
        ["shipped bounds", *await one_run({})],
    ]
    record(
        f"One handle, {ASKS} sequential asks of 200 KB on one attempt",
        table(
            [
                "settings",
                "asks kept",
                "first 10 p50 ms",
                "last 10 p50 ms",
                "RSS MB before → after",
                "SIGTERM to exit s",
            ],
            rows,
        ),
    )

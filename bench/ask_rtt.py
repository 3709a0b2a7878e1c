"""Ask round trips: the engine's ``SeniorBridge.ask`` through a real socket to a
peer process, against a raw-aiohttp baseline in the same run.

The daemon's app runs in this process (the benchmark calls the session's
``ask`` directly) at the shipped defaults: SQLite file, ``info`` JSON logs to a
file, and the default ``ask_timeout_s`` (300 s), so the per-ask timeout is paid.

The baseline is the floor of what any aiohttp WebSocket server can do here: a
bare handler that pushes the same JSON request and resolves a future on the
reply — no sessions, no validation, no writer task.  Both are answered by the
same peer code in a second process.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bench.common import (
    Peer,
    median,
    progress,
    record,
    serve,
    serve_operator_server,
    table,
    verdict,
    windowed,
)
from operator_server.operators.keys import DIRECTORY

Ask = Callable[[str, Any], Awaitable[Any]]
WINDOWS = ((1, 4000), (100, 30000))
WARMUP = 500
# Raw and ours alternate for this many rounds; the median of each is reported,
# so both see the same machine conditions.
ROUNDS = 3
TARGETS = {1: 0.8, 100: 0.7}


async def raw_server() -> tuple[web.AppRunner, str, asyncio.Future[Ask]]:
    loop = asyncio.get_running_loop()
    pending: dict[str, asyncio.Future[Any]] = {}
    ready: asyncio.Future[Ask] = loop.create_future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)

        async def ask(task_id: str, question: Any) -> Any:
            req_id = str(uuid.uuid4())
            fut = loop.create_future()
            pending[req_id] = fut
            frame = {"type": "ask", "req_id": req_id, "task_id": task_id, "question": question}
            await ws.send_str(json.dumps(frame))
            return await fut

        ready.set_result(ask)
        async for msg in ws:
            reply = json.loads(msg.data)
            fut = pending.pop(reply["req_id"], None)
            if fut is not None:
                fut.set_result(reply["value"])
        return ws

    app = web.Application()
    app.router.add_get("/raw", handler)
    runner, url = await serve(app)
    return runner, url, ready


async def measure(ask: Ask, window: int, total: int, label: str) -> float:
    async def one(i: int) -> None:
        assert await ask("t-bench", i) == i

    await windowed(WARMUP, window, one, f"{label} warm-up")
    elapsed = await windowed(total, window, one, label)
    return total / elapsed


async def run() -> dict[int, tuple[float, float]]:
    raw_runner, raw_url, raw_ready = await raw_server()
    raw_peer = await Peer.start("asks", raw_url, "/raw")
    await raw_peer.line()
    raw_ask = await raw_ready

    ours = await serve_operator_server()
    ours_peer = await Peer.start("asks", ours.url, "/v1/operators/{sid}/ws")
    sid = (await ours_peer.line())["sid"]
    session = ours.app[DIRECTORY].sessions[sid]

    rates: dict[int, tuple[float, float]] = {}
    try:
        for window, total in WINDOWS:
            progress(f"ask round trips, window {window}, {ROUNDS} rounds")
            raws, ourss = [], []
            for r in range(ROUNDS):
                raws.append(await measure(raw_ask, window, total, f"raw w={window} r{r}"))
                ourss.append(await measure(session.ask, window, total, f"ours w={window} r{r}"))
            rates[window] = (median(raws), median(ourss))
    finally:
        for peer in (raw_peer, ours_peer):
            await peer.stop()
        await raw_runner.cleanup()
        await ours.close()

    targets = TARGETS
    rows = [
        [
            w,
            f"{raw:,.0f}",
            f"{ours:,.0f}",
            f"{ours / raw:.2f}",
            f"≥ {targets[w]}",
            verdict(ours / raw >= targets[w]),
        ]
        for w, (raw, ours) in rates.items()
    ]
    record(
        f"ask round trips at default timeouts (asks/s, median of {ROUNDS} interleaved rounds)",
        table(["window", "raw aiohttp", "operator_server", "ratio", "target", ""], rows),
    )
    return rates


if __name__ == "__main__":
    asyncio.run(run())

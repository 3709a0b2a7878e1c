"""The operator side of the benchmarks, run as its own process.

Modes (each prints one JSON line when ready, then serves until terminated):

* ``asks URL PATH``: one socket to URL+PATH answering every ``ask`` with its
  question — the same code answers the operator server and the raw baseline.
* ``many URL N``: mint N sessions and connect all of them; answer asks.
* ``e2e URL N WINDOW SECONDS ROLE [TASK_URL]``: a real operator (``OperatorClient``)
  under ROLE whose spawns fetch the prompt and post the result with ``WorkerClient``;
  then create N tasks over HTTP with WINDOW in flight (or, when SECONDS > 0, as
  many as finish in SECONDS), and print the elapsed time and latencies.  Tasks
  are created and awaited on TASK_URL (default URL: another node of a cluster).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

import aiohttp
import structlog

from operator_server.client import OperatorClient, TaskClient, WorkerClient


def emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def answer_forever(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for msg in ws:
        frame = json.loads(msg.data)
        if frame.get("type") == "ask":
            await ws.send_str(
                json.dumps(
                    {"type": "answer", "req_id": frame["req_id"], "value": frame["question"]}
                )
            )


async def asks(url: str, path: str) -> None:
    async with aiohttp.ClientSession() as http:
        headers = {}
        if "/operators/" in path:
            mint = await (await http.post(f"{url}/v1/operators", json={})).json()
            path = path.replace("{sid}", mint["sid"])
            headers["Authorization"] = f"Bearer {mint['token']}"
        ws = await http.ws_connect(url + path, headers=headers, max_msg_size=0)
        emit({"ready": True, "sid": path.split("/")[3] if "/operators/" in path else None})
        await answer_forever(ws)


async def many(url: str, n: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        sids = []
        sockets = []
        for _ in range(n):
            mint = await (await http.post(f"{url}/v1/operators", json={})).json()
            sids.append(mint["sid"])
            sockets.append(
                await http.ws_connect(
                    f"{url}/v1/operators/{mint['sid']}/ws",
                    headers={"Authorization": f"Bearer {mint['token']}"},
                )
            )
        emit({"ready": True, "connect_s": time.perf_counter() - started, "sids": sids})
        await asyncio.gather(*(answer_forever(ws) for ws in sockets))


async def e2e(url: str, n: int, window: int, seconds: float, role: str, task_url: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def on_spawn(frame: dict[str, Any]) -> Any:
            worker = WorkerClient(url, frame["worker_handle"], session=http)
            prompt = await worker.prompt()
            await worker.result({"echo": prompt["prompt"]})
            return {}

        async def approve(frame: dict[str, Any]) -> bool:
            return True

        op = OperatorClient(
            url, roles=[role], on_spawn=on_spawn, on_hook_before=approve, session=http
        )
        await op.start()
        tasks = TaskClient(task_url or url, session=http)
        latencies: list[float] = []
        counter = iter(range(n))
        deadline = time.perf_counter() + seconds if seconds > 0 else float("inf")

        async def lane() -> None:
            for i in counter:
                if time.perf_counter() >= deadline:
                    return
                t0 = time.perf_counter()
                task = await tasks.create(agent="bench", directive=i, operator={"role": role})
                done = await tasks.get(task["id"], wait=60)
                if done["status"] != "passed":
                    raise RuntimeError(f"task ended {done['status']}: {done}")
                latencies.append(time.perf_counter() - t0)
                if seconds <= 0 and len(latencies) % max(1, n // 10) == 0:
                    print(f"  .. e2e: {len(latencies)}/{n}", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(window)))
        emit({"elapsed_s": time.perf_counter() - t0, "latencies": latencies})
        await op.close()


def main() -> None:
    # stdout carries this process's results; its logs go to stderr.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    mode, *args = sys.argv[1:]
    if mode == "asks":
        asyncio.run(asks(args[0], args[1]))
    elif mode == "many":
        asyncio.run(many(args[0], int(args[1])))
    elif mode == "e2e":
        task_url = args[5] if len(args) > 5 else ""
        asyncio.run(e2e(args[0], int(args[1]), int(args[2]), float(args[3]), args[4], task_url))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

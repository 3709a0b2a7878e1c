"""What every benchmark shares: servers on loopback, the peer process, reporting."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from operator_server.app import build_app
from operator_server.config import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def bench_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "secret": "bench",
        "log_level": "error",
        "heartbeat_s": 0,
        "sweep_interval_s": 3600,
        "store.path": ":memory:",
        "outbound_queue_max": 100_000,
    }
    values.update(overrides)
    return load_settings(env={}, overrides=values)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def serve_operator_server(**overrides: Any) -> tuple[web.AppRunner, str, web.Application]:
    from operator_server.logs import configure_logging

    configure_logging("error", "json")
    app = build_app(bench_settings(**overrides))
    runner, url = await serve(app)
    return runner, url, app


class Peer:
    """The operator side, in its own process: ``python -m bench.peer MODE ...``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> Peer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.peer",
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def line(self, timeout: float = 120) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError("peer exited early")
        message: dict[str, Any] = json.loads(raw)
        return message

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def windowed(
    total: int, window: int, one: Callable[[int], Awaitable[None]], label: str
) -> float:
    """Run ``one(i)`` for i < total with ``window`` in flight; returns seconds."""
    counter = iter(range(total))
    done = 0
    started = time.perf_counter()
    step = max(1, total // 10)

    async def lane() -> None:
        nonlocal done
        for i in counter:
            await one(i)
            done += 1
            if done % step == 0:
                progress(f"{label}: {done}/{total}")

    await asyncio.gather(*(lane() for _ in range(window)))
    return time.perf_counter() - started


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def rss_kib(pid: int | None = None) -> int:
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(out)


def record(title: str, body: str) -> None:
    """Print a result and append it to RESULTS.md with the machine and date."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = f"### {title} — {stamp}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"\n{header}\n\n{body}\n", flush=True)
    with RESULTS.open("a") as fh:
        fh.write(f"\n{header}\n\n{body}\n")

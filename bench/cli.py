"""``make bench ARGS=cli``: how long the command line takes to answer, as a
person or an MCP client waits for it.

Each round, in fresh interpreters (wall time, exec to exit or to the answer):

* ``python -c pass``: the interpreter alone, the baseline;
* ``operator-server --help`` (``python -m operator_server --help``);
* ``operator-server task get ID`` against a running daemon (one real daemon
  for the whole run, the task created before the rounds);
* the MCP bridge (``operator-server mcp --url ...``): exec to the answer to
  the client's ``initialize`` request, written to its stdin at once; then
  stdin is closed and the bridge leaves its session.

The command runs in a temporary directory, not the checkout, so the code
measured is whatever ``operator_server`` the interpreter finds: the installed
checkout, or an older tree put first with ``PYTHONPATH`` (how "before" rows are
taken).  The rounds interleave, so a busy moment on the shared machine hits
every column alike; the table shows medians.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROUNDS = 10
# "Well under a second" (issue 22): the target for --help and a one-shot task get.
TARGET_S = 0.5
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"},
    },
}


async def _wall(cwd: str, *args: str) -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.DEVNULL, cwd=cwd
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"{args}: exited {proc.returncode}")
    return time.perf_counter() - t0


async def _bridge_first_answer(cwd: str, url: str) -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "operator_server",
        "mcp",
        "--url",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=cwd,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
    await proc.stdin.drain()
    answer = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
    took = time.perf_counter() - t0
    if answer.get("id") != 1 or "result" not in answer:
        raise RuntimeError(f"the bridge answered {answer}")
    proc.stdin.close()  # the bridge leaves its session and exits
    await asyncio.wait_for(proc.wait(), 60)
    return took


async def run() -> dict[str, float]:
    from bench.common import Daemon, median, progress, record, table, verdict

    parts: dict[str, list[float]] = {k: [] for k in ("python", "help", "get", "mcp")}
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        daemon = Daemon(str(Path(tmp) / "daemon.sqlite"), tmp)
        await daemon.start()
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{daemon.url}/v1/tasks", json={"agent": "echo", "directive": "x"}
                ) as resp,
            ):
                task_id = (await resp.json())["id"]
            get = ("-m", "operator_server", "task", "get", task_id, "--url", daemon.url)
            for r in range(ROUNDS):
                progress(f"cli: round {r + 1}/{ROUNDS}")
                parts["python"].append(await _wall(tmp, "-c", "pass"))
                parts["help"].append(await _wall(tmp, "-m", "operator_server", "--help"))
                parts["get"].append(await _wall(tmp, *get))
                parts["mcp"].append(await _bridge_first_answer(tmp, daemon.url))
        finally:
            await daemon.stop()
    med = {k: median(v) for k, v in parts.items()}

    def row(name: str, key: str, target: float | None) -> list[str]:
        seconds = med[key]
        return [
            name,
            f"{seconds * 1000:.0f}",
            f"{seconds / med['python']:.1f}x",
            "" if target is None else f"< {target * 1000:.0f} ms: {verdict(seconds < target)}",
        ]

    record(
        f"cli: wall time until the command answers (median of {ROUNDS})",
        table(
            ["command", "ms", "vs python -c pass", "target"],
            [
                row("python -c pass (baseline)", "python", None),
                row("operator-server --help", "help", TARGET_S),
                row("operator-server task get ID (a running daemon)", "get", TARGET_S),
                row("operator-server mcp: exec to the initialize answer", "mcp", None),
            ],
        ),
    )
    return med

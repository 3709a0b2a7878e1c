"""``GET /v1/requests`` with 100 vs 10,000 pending requests (issue 24).

A real daemon (``Daemon``: the CLI, SQLite, shipped defaults) and one operator
session holding role ``main`` that reads every frame and answers none.  Each
task's ``hook_before`` waits on it with a deadline of an hour, so every
request stays pending while the list is read.  Measured: p50/p99 of the first
page of 50 (as an admin, and filtered by ``role``), and the daemon's resident
memory with them all pending.  The verdict: the 10k page within 2x of the 100.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

import aiohttp

from bench.common import Daemon, median, percentile, progress, record, table, verdict

SIZES = (100, 10_000)
READS = 200
PAGE = "50"
# Flat in their number: a page at 10k costs at most this many times one at 100.
TARGET_RATIO = 2.0
DEADLINE_S = 3600
WINDOW = 32
# The one setting away from the defaults: the list is read by an admin that
# signs in (with no api_token every caller is one, and reads the same list).
API_TOKEN = "bench-admin"
ADMIN = {"Authorization": f"Bearer {API_TOKEN}"}


async def _latencies(http: aiohttp.ClientSession, url: str, **params: str) -> list[float]:
    times = []
    for _ in range(READS):
        t0 = time.perf_counter()
        async with http.get(f"{url}/v1/requests", params=params, headers=ADMIN) as resp:
            body = await resp.json()
            if resp.status != 200 or len(body["requests"]) != int(PAGE):
                raise RuntimeError(f"GET /v1/requests {params}: {resp.status} {body}")
        times.append((time.perf_counter() - t0) * 1000)
    return times


async def _one(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-requests-") as tmp:
        daemon = Daemon(f"{tmp}/bench.sqlite", tmp, settings={"api_token": API_TOKEN})
        await daemon.start()
        try:
            async with aiohttp.ClientSession() as http:
                url = daemon.url
                async with http.post(
                    f"{url}/v1/operators", json={"roles": ["main"]}, headers=ADMIN
                ) as resp:
                    op = await resp.json()
                ws = await http.ws_connect(
                    f"{url}/v1/operators/{op['sid']}/ws",
                    headers={"Authorization": f"Bearer {op['token']}"},
                    max_msg_size=0,
                )
                seen = 0
                all_pending = asyncio.Event()

                async def read() -> None:
                    # Reads every frame (so the socket never stalls), answers none.
                    nonlocal seen
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT and '"hook_before"' in msg.data:
                            seen += 1
                            if seen == n:
                                all_pending.set()

                reader = asyncio.ensure_future(read())
                task: dict[str, Any] = {
                    "agent": "coder",
                    "directive": "wait",
                    "operator": {"role": "main", "deadline_s": DEADLINE_S},
                }
                counter = iter(range(n))

                async def lane() -> None:
                    for _ in counter:
                        async with http.post(f"{url}/v1/tasks", json=task, headers=ADMIN) as r:
                            if r.status != 202:
                                raise RuntimeError(f"POST /v1/tasks: {r.status} {await r.text()}")

                progress(f"requests list: {n:,} pending hook_befores")
                await asyncio.gather(*(lane() for _ in range(WINDOW)))
                await asyncio.wait_for(all_pending.wait(), 600)
                rss = daemon.rss_kib()
                progress(f"requests list: {READS} reads of a page of {PAGE} at {n:,}")
                plain = await _latencies(http, url, limit=PAGE)
                by_role = await _latencies(http, url, limit=PAGE, role="main")
                await ws.close()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        finally:
            await daemon.stop()
    return {
        "p50": median(plain),
        "p99": percentile(plain, 99),
        "role_p50": median(by_role),
        "role_p99": percentile(by_role, 99),
        "rss_mib": rss / 1024,
    }


async def run() -> dict[int, dict[str, float]]:
    out = {n: await _one(n) for n in SIZES}
    rows = [
        [
            f"{n:,}",
            f"{m['p50']:.2f}",
            f"{m['p99']:.2f}",
            f"{m['role_p50']:.2f}",
            f"{m['role_p99']:.2f}",
            f"{m['rss_mib']:.0f}",
        ]
        for n, m in out.items()
    ]
    small, big = out[SIZES[0]], out[SIZES[-1]]
    ratio = max(big["p50"] / small["p50"], big["role_p50"] / small["role_p50"])
    body = table(
        [
            "pending requests",
            f"page of {PAGE} p50 ms",
            "p99 ms",
            "?role= p50 ms",
            "?role= p99 ms",
            "daemon RSS MiB",
        ],
        rows,
    )
    body += (
        f"\n\nFlat in their number: p50 at {SIZES[-1]:,} is {ratio:.1f}x that at "
        f"{SIZES[0]:,} (target ≤ {TARGET_RATIO:g}x): {verdict(ratio <= TARGET_RATIO)}. "
        f"{READS} sequential reads each, as the admin; one session holds every request."
    )
    record("requests list: GET /v1/requests with 100 vs 10,000 pending", body)
    return out

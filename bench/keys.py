"""What a principal's credential costs end to end (issue 23, section 5).

The same e2e load as ``bench/e2e.py`` (64 in flight, the thin path) against
one daemon at the shipped defaults with an ``api_token`` set, in interleaved
rounds: its clients (the operator's mint, every task create and long-poll)
send either the bootstrap ``api_token`` or an API key holding just the scopes
the load needs (``tasks:create``, ``tasks:read``, ``operate:*``).  The key is
verified once (a store read and an HMAC) and then served from the
authenticator's LRU, so the target is that it costs at most 5% of tasks/s.
Daemon CPU per task is read from /proc as the steadier reading of the same
question on a shared machine.
"""

from __future__ import annotations

import asyncio
import tempfile

import aiohttp

from bench.common import (
    E2E,
    WINDOW,
    Daemon,
    e2e_load,
    median,
    progress,
    record,
    table,
    verdict,
)

TOTAL = 3000
WARMUP = 300
ROUNDS = 7
TARGET = 0.05
BOOTSTRAP = "bench-bootstrap-token"
SCOPES = ["tasks:create", "tasks:read", "operate:*"]


async def make_key(url: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/keys",
            json={"name": "bench", "scopes": SCOPES},
            headers={"Authorization": f"Bearer {BOOTSTRAP}"},
        ) as resp,
    ):
        if resp.status != 201:
            raise RuntimeError(f"POST /v1/keys: {resp.status} {await resp.text()}")
        key: str = (await resp.json())["key"]
        return key


async def run() -> float:
    with tempfile.TemporaryDirectory(prefix="bench-keys-") as tmp:
        daemon = Daemon(f"{tmp}/keys.sqlite", tmp, settings={"api_token": BOOTSTRAP})
        credentials: dict[str, str] = {}
        results: dict[str, list[E2E]] = {"bootstrap token": [], "API key": []}
        cpu_ms: dict[str, list[float]] = {name: [] for name in results}
        try:
            await daemon.start()
            credentials = {"bootstrap token": BOOTSTRAP, "API key": await make_key(daemon.url)}
            progress(f"keys: warm-up, {WARMUP} tasks each")
            for credential in credentials.values():
                await e2e_load(daemon.url, WARMUP, credential=credential)
            for r in range(ROUNDS):
                progress(f"keys round {r + 1}/{ROUNDS}: {TOTAL} tasks each, {WINDOW} in flight")
                names = list(credentials)
                names = names[r % 2 :] + names[: r % 2]  # who goes first alternates
                for name in names:
                    before = daemon.cpu_s()
                    results[name].append(
                        await e2e_load(daemon.url, TOTAL, credential=credentials[name])
                    )
                    cpu_ms[name].append((daemon.cpu_s() - before) * 1000 / TOTAL)
        finally:
            await daemon.stop()

    rates = {name: median([e.rate for e in runs]) for name, runs in results.items()}
    cpus = {name: median(v) for name, v in cpu_ms.items()}
    base, base_cpu = rates["bootstrap token"], cpus["bootstrap token"]
    rows = [
        [
            name,
            f"{rates[name]:,.0f}",
            f"{median([e.p50_ms for e in runs]):.1f}",
            f"{median([e.p99_ms for e in runs]):.1f}",
            f"{(1 - rates[name] / base) * 100:+.1f}%",
            f"{cpus[name]:.3f}",
            f"{(cpus[name] / base_cpu - 1) * 100:+.1f}%",
        ]
        for name, runs in results.items()
    ]
    cost = 1 - rates["API key"] / base
    cpu_cost = cpus["API key"] / base_cpu - 1
    headers = ["credential", "tasks/s", "p50 ms", "p99 ms", "throughput cost"]
    record(
        f"an API key vs the bootstrap token, same daemon (median of {ROUNDS} interleaved rounds)",
        table([*headers, "daemon CPU ms/task", "CPU cost"], rows)
        + f"\n\nAPI key vs bootstrap token: **{cost * 100:.1f}%** slower,"
        f" **{cpu_cost * 100:+.1f}%** daemon CPU per task (target ≤ {TARGET * 100:.0f}%): "
        + verdict(max(cost, cpu_cost) <= TARGET),
    )
    return cost


if __name__ == "__main__":
    asyncio.run(run())

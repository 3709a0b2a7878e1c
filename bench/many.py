"""Many operators: 1,000 sessions connected at once, each answering asks.

The daemon's app runs in this process at the shipped defaults (SQLite file,
``info`` JSON logs to a file, default timeouts).  Reports the time to mint and
connect them all, the server's resident memory per idle connected session,
and ask throughput spread across the sessions.
"""

from __future__ import annotations

import asyncio
import gc

from bench.common import (
    Peer,
    progress,
    record,
    rss_kib,
    serve_operator_server,
    table,
    verdict,
    windowed,
)
from operator_server.operators.keys import DIRECTORY

SESSIONS = 1000
ASKS = 20000
WINDOW = 100
TARGET_KIB = 50


async def run() -> tuple[float, float, float]:
    server = await serve_operator_server()
    url, app = server.url, server.app
    # Warm the allocator and the request path before the baseline reading.
    warm = await Peer.start("many", url, "5")
    await warm.line()
    await warm.stop()
    for sid in list(app[DIRECTORY].sessions):
        app[DIRECTORY].remove(sid, "bench", "warm-up done")  # type: ignore[arg-type]
    await asyncio.sleep(0.5)
    gc.collect()
    before = rss_kib()

    progress(f"many operators: minting and connecting {SESSIONS} sessions")
    peer = await Peer.start("many", url, str(SESSIONS))
    try:
        ready = await peer.line(timeout=600)
        directory = app[DIRECTORY]
        sessions = [directory.sessions[sid] for sid in ready["sids"]]
        assert all(s.connected for s in sessions)
        gc.collect()
        per_session = (rss_kib() - before) / SESSIONS

        async def one(i: int) -> None:
            assert await sessions[i % SESSIONS].ask("t-bench", i) == i

        elapsed = await windowed(ASKS, WINDOW, one, "asks across sessions")
        rate = ASKS / elapsed
    finally:
        await peer.stop()
        await server.close()

    record(
        f"many operators ({SESSIONS} sessions)",
        table(
            ["sessions", "mint+connect s", "RSS KiB/session", "target", "", "asks/s (window 100)"],
            [
                [
                    SESSIONS,
                    f"{ready['connect_s']:.2f}",
                    f"{per_session:.1f}",
                    f"≤ {TARGET_KIB}",
                    verdict(per_session <= TARGET_KIB),
                    f"{rate:,.0f}",
                ]
            ],
        ),
    )
    return ready["connect_s"], per_session, rate


if __name__ == "__main__":
    asyncio.run(run())

"""What live all-task event streams cost everyone else (issue 20).

A burst of ``BURST`` end-to-end tasks (the peer's thin path, as in
``bench/e2e.py``) against one daemon at its shipped defaults, with no stream
open, and with ``STREAMS`` readers following ``GET /v1/events``, in interleaved
rounds.  The readers are a process of their own (``python -m bench.fanout
readers URL N``) that reads every byte and throws it away, over raw sockets, so
their own cost stays small; it prints how many bytes it read, so a row also
says that every stream got every event.

The issue's target: ``STREAMS`` open streams cost at most 2x the burst time of
none.  The daemon's CPU time per burst is shown too (steadier on a shared VM).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile

from bench.common import (
    ROOT,
    Daemon,
    e2e_load,
    median,
    progress,
    record,
    table,
    verdict,
)

BURST = 300
STREAMS = 500
ROUNDS = 5
TARGET = 2.0


class Readers:
    """``STREAMS`` SSE readers in their own process."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self.n = n
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.fanout",
            "readers",
            self.url,
            str(self.n),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if json.loads(line).get("open") != self.n:
            raise RuntimeError(f"readers: {line!r}")

    async def stop(self) -> int:
        """Stop them; how many bytes each read on average."""
        assert self.proc is not None and self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        await asyncio.wait_for(self.proc.wait(), 60)
        return int(json.loads(line)["bytes"]) // self.n


async def run() -> float:
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        daemon = Daemon(f"{tmp}/bench.sqlite", tmp)
        seconds: dict[int, list[float]] = {0: [], STREAMS: []}
        cpu: dict[int, list[float]] = {0: [], STREAMS: []}
        per_stream: list[float] = []
        try:
            await daemon.start()
            progress(f"fanout: warm-up, {BURST} tasks")
            await e2e_load(daemon.url, BURST)
            for r in range(ROUNDS):
                order = [0, STREAMS] if r % 2 == 0 else [STREAMS, 0]
                for n in order:
                    progress(f"fanout round {r + 1}/{ROUNDS}: {BURST} tasks, {n} streams open")
                    readers = Readers(daemon.url, n) if n else None
                    if readers is not None:
                        await readers.start()
                    before = daemon.cpu_s()
                    result = await e2e_load(daemon.url, BURST)
                    cpu[n].append(daemon.cpu_s() - before)
                    seconds[n].append(result.seconds)
                    if readers is not None:
                        await asyncio.sleep(0.5)  # the last events reach every stream
                        per_stream.append(await readers.stop())
        finally:
            await daemon.stop()

    base, loaded = median(seconds[0]), median(seconds[STREAMS])
    ratio = loaded / base
    rows = [
        [
            f"{n}",
            f"{median(seconds[n]):.2f}",
            f"{BURST / median(seconds[n]):,.0f}",
            f"{median(cpu[n]):.2f}",
            f"{median(seconds[n]) / base:.2f}x",
        ]
        for n in (0, STREAMS)
    ]
    record(
        f"event fan-out: a {BURST}-task burst with live GET /v1/events streams "
        f"(median of {ROUNDS} interleaved rounds)",
        table(["streams open", "burst s", "tasks/s", "daemon CPU s", "vs none"], rows)
        + f"\n\neach stream read {median(per_stream):,.0f} bytes per burst (every event)"
        + f"\n\n{STREAMS} streams vs none: **{ratio:.2f}x** the burst time"
        + f" (target ≤ {TARGET:g}x): {verdict(ratio <= TARGET)}",
    )
    return ratio


# -- the readers' process ------------------------------------------------------


class _Discard(asyncio.Protocol):
    def __init__(self, counter: list[int], ready: asyncio.Future[None]) -> None:
        self.counter = counter
        self.ready = ready
        self.head = b""

    def data_received(self, data: bytes) -> None:
        self.counter[0] += len(data)
        if not self.ready.done():
            self.head += data
            if b"\r\n\r\n" in self.head:
                if not self.head.startswith(b"HTTP/1.1 200"):
                    self.ready.set_exception(RuntimeError(self.head[:200].decode()))
                else:
                    self.ready.set_result(None)


async def _readers(url: str, n: int) -> None:
    loop = asyncio.get_running_loop()
    host, port = url.removeprefix("http://").split(":")
    counter = [0]
    request = (
        f"GET /v1/events HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    transports = []
    for _ in range(n):
        ready: asyncio.Future[None] = loop.create_future()
        transport, _p = await loop.create_connection(
            lambda ready=ready: _Discard(counter, ready),  # type: ignore[misc]
            host,
            int(port),
        )
        transport.write(request)
        await ready
        transports.append(transport)
    counter[0] = 0
    print(json.dumps({"open": n}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench closes our stdin
    for transport in transports:
        transport.close()
    print(json.dumps({"bytes": counter[0]}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["readers"]:
        asyncio.run(_readers(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(run())

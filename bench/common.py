"""What every benchmark shares: the daemon at its shipped defaults (in this
process or as a real subprocess), the peer process, probes, and reporting.

Settings come from the defaults in ``operator_server/config.py``; a benchmark
overrides only what it must (port, store path, secret).  That means a SQLite
file store, ``info`` logging through the daemon's own JSON pipeline (to a log
file, so its cost is counted), and the default timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web
from yarl import URL

from operator_server.app import build_app
from operator_server.config import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
HISTORY = ROOT / "bench" / "history"
SECRET = "bench"
# Tasks in flight in every end-to-end load.
WINDOW = 64

_history: Path | None = None


# -- reporting ---------------------------------------------------------------


def history_file() -> Path:
    """This run's dated file under bench/history/ (gitignored), made on first use."""
    global _history
    if _history is None:
        HISTORY.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        _history = HISTORY / f"{stamp}.md"
        _history.write_text(
            f"# make bench — {stamp}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n"
        )
    return _history


def record(title: str, body: str) -> None:
    """Print a result and append it to this run's history file."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = f"### {title} — {stamp}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"\n{header}\n\n{body}\n", flush=True)
    with history_file().open("a") as fh:
        fh.write(f"\n{header}\n\n{body}\n")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(out)


# -- numbers -----------------------------------------------------------------


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


def cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds.  On a shared machine this is
    steadier than a rate: other work slows the clock, not the work per task."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def p50_ms(http: aiohttp.ClientSession, url: str, n: int, **params: str) -> float:
    """Median latency of ``n`` sequential GETs of ``url`` (each must answer 200)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with http.get(URL(url, encoded=True), params=params or None) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {url} {params}: {resp.status}")
        times.append((time.perf_counter() - t0) * 1000)
    return median(times)


# -- the daemon in this process -------------------------------------------------


def bench_settings(store_path: str, **overrides: Any) -> Settings:
    """The shipped defaults, with only what a benchmark must set."""
    values: dict[str, Any] = {"secret": SECRET, "store.path": store_path, **overrides}
    return load_settings(env={}, overrides=values)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class InProcess:
    """The daemon's app in this process (for benchmarks that call the engine
    directly), on a SQLite file, logging at ``info`` as JSON to a file."""

    runner: web.AppRunner
    url: str
    app: web.Application
    tmp: tempfile.TemporaryDirectory[str]
    log: IO[str]

    async def close(self) -> None:
        await self.runner.cleanup()
        self.log.close()
        self.tmp.cleanup()


async def serve_operator_server(**overrides: Any) -> InProcess:
    from operator_server.logs import configure_logging

    tmp = tempfile.TemporaryDirectory(prefix="bench-")
    settings = bench_settings(f"{tmp.name}/bench.sqlite", **overrides)
    # Closed by InProcess.close; opening a local file does not block the loop long.
    log = open(f"{tmp.name}/daemon.log", "w")  # noqa: SIM115, ASYNC230
    # The daemon's own pipeline, rendering JSON as it does when stdout is not a
    # terminal; the logger captures the stream at configure time.
    with contextlib.redirect_stdout(log):
        configure_logging(settings.log_level, "json")
    app = build_app(settings)
    runner, url = await serve(app)
    return InProcess(runner, url, app, tmp, log)


# -- the daemon as a real process ----------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without OPERATOR_SERVER_* settings, so only the defaults apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(extra)
    return env


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the listening socket on ``port``.

    The port was free when picked, but a slow start leaves time for another
    process on this shared machine (another worktree's test daemon, say) to
    take it and answer /v1/healthz in our place.
    """
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1].endswith(f":{port:04X}") and cols[3] == "0A":  # 0A: LISTEN
            inodes.add(cols[9])
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False


async def wait_healthz(url: str, proc: asyncio.subprocess.Process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    port = int(url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
            try:
                async with http.get(f"{url}/v1/healthz") as resp:
                    if resp.status == 200:
                        if not listens(proc.pid, port):
                            raise RuntimeError(f"{url}: another process took the port")
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.005)
    raise RuntimeError(f"{url}: no healthz within {timeout}s")


class Daemon:
    """``python -m bench.gcserve serve --port P --store-path S --secret bench``:
    the real CLI (see gcserve.py for the optional GC log and profile), stdout
    and stderr to a log file."""

    def __init__(
        self,
        store_path: str,
        workdir: str,
        *,
        gc_log: bool = False,
        audit_log: bool = False,
        profile: str = "",
        settings: dict[str, str] | None = None,
        source: Path = ROOT,
    ) -> None:
        """``settings``: keys to set away from their defaults (``{"events": "false"}``),
        passed as ``OPERATOR_SERVER_<KEY>`` variables.  ``audit_log``: time the
        store's audit appends (see gcserve.py; read with ``audit()`` after ``stop``).
        ``source``: the checkout whose code runs (another commit's tree, to
        compare builds; default this one)."""
        self.source = source
        self.store_path = store_path
        self.settings = settings or {}
        self.workdir = Path(workdir)
        self.gc_path = str(self.workdir / f"gc-{id(self)}.json") if gc_log else ""
        self.audit_path = str(self.workdir / f"audit-{id(self)}.json") if audit_log else ""
        self.log_path = self.workdir / f"daemon-{id(self)}.log"
        self.profile = profile
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Start it; returns seconds from exec to the first healthz answer."""
        extra = {ENV_PREFIX + k.upper(): v for k, v in self.settings.items()}
        if self.gc_path:
            extra["OPERATOR_SERVER_BENCH_GC_LOG"] = self.gc_path
        if self.audit_path:
            extra["OPERATOR_SERVER_BENCH_AUDIT_LOG"] = self.audit_path
        if self.profile:
            extra["OPERATOR_SERVER_BENCH_PROFILE"] = self.profile
        if self.source != ROOT:  # its package, not the one installed from this checkout
            extra["PYTHONPATH"] = str(self.source)
        with self.log_path.open("a") as log:
            t0 = time.perf_counter()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.gcserve",
                "serve",
                "--port",
                str(self.port),
                "--store-path",
                self.store_path,
                "--secret",
                SECRET,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.source,
                env=_clean_env(**extra),
            )
        await wait_healthz(self.url, self.proc)
        return time.perf_counter() - t0

    def rss_kib(self) -> int:
        assert self.proc is not None
        return rss_kib(self.proc.pid)

    def cpu_s(self) -> float:
        """CPU seconds the process has used so far, all its threads (the store's too)."""
        assert self.proc is not None
        return cpu_s(self.proc.pid)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 60)

    def gc(self) -> dict[str, Any]:
        """What gcserve wrote at exit: ``{"counts": [...], "pauses": [[t, gen, ms], ...]}``."""
        data: dict[str, Any] = json.loads(Path(self.gc_path).read_text())
        return data

    def audit(self) -> dict[str, Any]:
        """What gcserve wrote at exit: ``{"rows": N, "calls": N, "cpu_s": S}``."""
        data: dict[str, Any] = json.loads(Path(self.audit_path).read_text())
        return data

    def log_lines(self) -> int:
        with self.log_path.open() as fh:
            return sum(1 for _ in fh)


class Relay:
    """``python -m bench.relay PORT``: the bare aiohttp baseline as its own process
    (on the standard event loop; ``uvloop=True`` for the reference row)."""

    def __init__(self, uvloop: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self._args = [str(self.port), *(["uvloop"] if uvloop else [])]

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.relay", *self._args, cwd=ROOT
        )
        await wait_healthz(self.url, self.proc)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 60)


# -- the peer ------------------------------------------------------------------


class Peer:
    """The operator side, in its own process: ``python -m bench.peer MODE ...``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str, credential: str = "") -> Peer:
        """``credential``: what its clients send (``OPERATOR_SERVER_API_KEY``)."""
        env = {**os.environ, "OPERATOR_SERVER_API_KEY": credential} if credential else None
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.peer",
            *args,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=env,
            # One result line carries every latency of a run.
            limit=1 << 26,
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


@dataclass(frozen=True)
class E2E:
    tasks: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


_roles = iter(range(1_000_000))


async def interleaved(
    label: str, daemons: dict[str, Daemon], rounds: int, total: int, warmup: int
) -> tuple[dict[str, list[E2E]], dict[str, list[float]]]:
    """Start ``daemons``, warm each up with ``warmup`` e2e tasks, then run
    ``rounds`` rounds of ``total`` on each in turn, rotating who goes first so
    a drift in machine load spreads evenly; stop them.  Each one's runs, and
    its daemon CPU per task (ms) in each."""
    results: dict[str, list[E2E]] = {name: [] for name in daemons}
    cpu_ms: dict[str, list[float]] = {name: [] for name in daemons}
    try:
        for daemon in daemons.values():
            await daemon.start()
        progress(f"{label}: warm-up, {warmup} tasks each")
        for daemon in daemons.values():
            await e2e_load(daemon.url, warmup)
        for r in range(rounds):
            progress(f"{label} round {r + 1}/{rounds}: {total} tasks each, {WINDOW} in flight")
            names = list(daemons)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                before = daemons[name].cpu_s()
                results[name].append(await e2e_load(daemons[name].url, total))
                cpu_ms[name].append((daemons[name].cpu_s() - before) * 1000 / total)
    finally:
        for daemon in daemons.values():
            await daemon.stop()
    return results, cpu_ms


async def e2e_load(
    url: str,
    tasks: int,
    *,
    seconds: float = 0,
    window: int = WINDOW,
    task_url: str = "",
    credential: str = "",
) -> E2E:
    """The peer's thin-path load: ``tasks`` tasks, or as many as fit in ``seconds``.

    The operator connects to ``url``; tasks are created on ``task_url`` (default
    ``url``: in a cluster, another node may take them).

    Each load is a fresh operator under a fresh role: a session outlives its
    socket on the daemon, and a role is held by one session at a time.
    ``credential``: the API key or api_token its mint and task calls send.
    """
    role = f"bench-{os.getpid()}-{next(_roles)}"
    args = [url, str(tasks), str(window), str(seconds), role] + ([task_url] if task_url else [])
    peer = await Peer.start("e2e", *args, credential=credential)
    try:
        stats = await peer.line(timeout=max(600, seconds * 3))
    finally:
        await peer.stop()
    latencies: list[float] = stats["latencies"]
    return E2E(
        len(latencies),
        stats["elapsed_s"],
        median(latencies) * 1000,
        percentile(latencies, 99) * 1000,
    )

"""``make bench ARGS=start``: from exec to the first ``/v1/healthz`` answer of a
real daemon on an empty store, and where that time goes.

Each round, in fresh interpreters and a fresh temporary directory:

* ``daemon``: the real CLI (``python -m bench.gcserve serve``, see common.Daemon)
  on an empty SQLite file, from exec to the first 200 from ``/v1/healthz``
  (polled every 5 ms), then SIGTERM;
* ``python``: a bare interpreter, ``python -c pass``, exec to exit;
* the probe (``python -m bench.start probe DIR``), which times inside one
  process the steps the daemon takes: importing the server
  (``operator_server.cli``, ``.app``, ``.daemon``), ``build_app``, and the
  app's start-up (open the store with its migrations, recover, start the
  background tasks, listen).  It exits without serving.

What is left of ``daemon`` after the parts is the CLI's own work (argument
parsing, settings, logging set-up), the first request and the poll interval.
The rounds interleave, so a busy moment on the shared machine hits every
column alike; the table shows medians.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

# Nothing of operator_server at module level: the probe runs this module and
# times those imports itself.
ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 10


async def _wall(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{args}: exited {proc.returncode}")
    return time.perf_counter() - t0, out.decode()


async def run() -> dict[str, float]:
    from bench.common import Daemon, median, progress, record, table

    parts: dict[str, list[float]] = {
        k: [] for k in ("daemon", "python", "import", "build_app", "startup")
    }
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        for r in range(ROUNDS):
            progress(f"start: round {r + 1}/{ROUNDS}")
            workdir = Path(tmp) / str(r)
            workdir.mkdir()
            daemon = Daemon(str(workdir / "daemon.sqlite"), str(workdir))
            try:
                parts["daemon"].append(await daemon.start())
            finally:
                await daemon.stop()
            parts["python"].append((await _wall("-c", "pass"))[0])
            out = (await _wall("-m", "bench.start", "probe", str(workdir)))[1]
            probe = json.loads(out.splitlines()[-1])
            for key in ("import", "build_app", "startup"):
                parts[key].append(probe[key])
    med = {k: median(v) for k, v in parts.items()}
    rest = med["daemon"] - med["python"] - med["import"] - med["build_app"] - med["startup"]

    def row(name: str, seconds: float) -> list[str]:
        return [name, f"{seconds * 1000:.0f}", f"{seconds / med['daemon']:.0%}"]

    record(
        f"start: exec to first healthz on an empty SQLite store (median of {ROUNDS})",
        table(
            ["part", "ms", "share"],
            [
                row("exec to first healthz (the real CLI)", med["daemon"]),
                row("  python itself (python -c pass)", med["python"]),
                row("  importing the server (cli, app, daemon)", med["import"]),
                row("  build_app", med["build_app"]),
                row("  start-up: open store + migrate, recover, tasks, listen", med["startup"]),
                row("  the rest: CLI, settings, logging, first request, 5 ms poll", rest),
            ],
        ),
    )
    return med


def probe(workdir: str) -> None:
    """Time the daemon's start-up steps in this (fresh) process; print JSON."""
    t0 = time.perf_counter()
    import operator_server.cli
    import operator_server.daemon  # noqa: F401
    from operator_server.app import build_app

    t1 = time.perf_counter()
    from bench.common import bench_settings, serve
    from operator_server.logs import configure_logging

    settings = bench_settings(f"{workdir}/probe.sqlite")
    # The daemon's own log pipeline, to a file as the daemon's goes; the file
    # stays open until this process exits.
    log = open(f"{workdir}/probe.log", "w")  # noqa: SIM115
    with contextlib.redirect_stdout(log):
        configure_logging(settings.log_level, "json")
    t1b = time.perf_counter()
    app = build_app(settings)
    t2 = time.perf_counter()

    async def start() -> float:
        t = time.perf_counter()
        runner, _ = await serve(app)
        took = time.perf_counter() - t
        await runner.cleanup()
        return took

    startup = asyncio.run(start())
    print(json.dumps({"import": t1 - t0, "build_app": t2 - t1b, "startup": startup}))


if __name__ == "__main__":
    if sys.argv[1:2] != ["probe"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.start probe DIR")
    probe(sys.argv[2])

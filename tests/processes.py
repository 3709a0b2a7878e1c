"""Every process a test starts is stopped when that test ends, however it ends.

A test that fails (an assertion, its time limit) between starting a daemon or
a CLI and stopping it would otherwise leave the process running: holding a
port, a database, a state file, for the rest of the run.  Each place that
starts one passes it through ``started``; the suite's autouse fixture
(``tests/conftest.py``) kills whatever of it still runs once the test and its
own fixtures are done.  A test that stops its process itself is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from typing import Any, TypeVar

P = TypeVar("P", subprocess.Popen[Any], asyncio.subprocess.Process)

_started: list[subprocess.Popen[Any] | asyncio.subprocess.Process] = []


def started(proc: P) -> P:
    """Remember ``proc`` so that it is stopped at the end of the current test."""
    _started.append(proc)
    return proc


def stop_leftovers() -> list[int]:
    """Kill every remembered process still running; the pids that were."""
    killed = []
    while _started:
        proc = _started.pop()
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is None:
                killed.append(proc.pid)
                proc.kill()
                proc.wait(timeout=30)
        elif proc.returncode is None:
            # Its event loop may be closed by now: signal it directly (the
            # loop's child watcher still reaps it).
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
    return killed

"""The ready-made operator killed for real: SIGKILL, then started again with the
same role, against a real daemon process with a SQLite store, and across a
restart of that daemon too."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
from pathlib import Path
from typing import Any

import aiohttp

from operator_server.client.state import load_state
from tests.client.test_cli import CLI
from tests.processes import started
from tests.test_daemon import Daemon, free_port, start_daemon


async def operator(
    url: str, state_file: Path, *args: str, stdin: Any = asyncio.subprocess.DEVNULL
) -> tuple[asyncio.subprocess.Process, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "operator",
        "--url",
        url,
        "--role",
        "main",
        "--state-file",
        str(state_file),
        *args,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started(proc)
    assert proc.stdout is not None
    # A replayed request may be handled (and printed) before the seat line.
    while b"waiting for work" not in (line := await asyncio.wait_for(proc.stdout.readline(), 30)):
        assert line, "the operator ended before taking its seat"
    return proc, line


async def read_until(proc: asyncio.subprocess.Process, text: bytes) -> None:
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, f"the operator ended before printing {text!r}"
        if text in line:
            return


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.kill()
    await proc.wait()


async def create(http: aiohttp.ClientSession, base: str, directive: str) -> str:
    body = {"agent": "shell", "directive": directive, "operator": {"role": "main"}}
    async with http.post(f"{base}/v1/tasks", json=body) as resp:
        assert resp.status == 202, await resp.text()
        task_id: str = (await resp.json())["id"]
        return task_id


async def get(http: aiohttp.ClientSession, base: str, task_id: str, wait: float = 0) -> Any:
    async with http.get(f"{base}/v1/tasks/{task_id}", params={"wait": str(wait)}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def stop_daemon(daemon: Daemon) -> None:
    if daemon.proc.poll() is None:
        daemon.proc.kill()
    daemon.proc.communicate(timeout=30)


async def test_a_killed_operator_resumes_and_answers_what_was_pending_once(
    tmp_path: Path,
) -> None:
    store = str(tmp_path / "d.sqlite")
    state_file = tmp_path / "op.json"
    port = free_port()
    flags = ("--secret", "s", "--log-format", "json", "--store-path", store)
    daemon = await start_daemon(*flags, "--reconnect-grace-s", "60", port=port)
    procs: list[asyncio.subprocess.Process] = []
    controller, terminal = pty.openpty()
    try:
        # A person at a terminal takes the spawn and is killed before pressing Enter.
        first, _ = await operator(daemon.base, state_file, stdin=terminal)
        procs.append(first)
        kept = load_state(state_file)
        assert kept is not None
        async with aiohttp.ClientSession() as http:
            t1 = await create(http, daemon.base, "across a kill")
            await read_until(first, b"press Enter")
            await kill(first)

            # Started again with the same role: no 409, the same session, and the
            # spawn still pending is replayed and answered by the new process.
            second, line = await operator(daemon.base, state_file, "--exec", "tr a-z A-Z")
            procs.append(second)
            assert line.startswith(f"resumed as {kept.sid}".encode()), line
            done = await get(http, daemon.base, t1, wait=20)
            assert done["status"] == "passed", done
            assert done["result"] == {"value": "ACROSS A KILL", "ok": True}
            assert len(done["attempts"]) == 1
            finals = [o for o in done["attempts"][0]["outputs"] if o["kind"] == "final"]
            assert [o["source"] for o in finals] == ["worker"]

            # Killed again, and the daemon too, with a request pending for it.
            await kill(second)
            t2 = await create(http, daemon.base, "across a restart")
            assert (await get(http, daemon.base, t2))["status"] == "running"
        daemon.proc.kill()
        stop_daemon(daemon)
        daemon = await start_daemon(*flags, port=port)

        third, line = await operator(daemon.base, state_file, "--exec", "tr a-z A-Z")
        procs.append(third)
        assert line.startswith(f"resumed as {kept.sid}".encode()), line
        async with aiohttp.ClientSession() as http:
            done = await get(http, daemon.base, t2, wait=20)
        assert done["status"] == "passed", done
        assert done["result"] == {"value": "ACROSS A RESTART", "ok": True}
        # Whether the first attempt reached the disk before the kill (then it is
        # "interrupted" and a second one runs) is the daemon's business; either
        # way the operator answered the one that ran.
        served = done["attempts"][-1]
        assert all(a["error"]["code"] == "interrupted" for a in done["attempts"][:-1])
        assert [o["source"] for o in served["outputs"] if o["kind"] == "final"] == ["worker"]

        third.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(third.wait(), 30) == 0
        assert not state_file.exists()
    finally:
        for proc in procs:
            if proc.returncode is None:
                await kill(proc)
        stop_daemon(daemon)
        os.close(controller)
        os.close(terminal)

"""The daemon as a real process: start, serve, and stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    base: str

    def logs(self) -> list[dict[str, object]]:
        out, _ = self.proc.communicate(timeout=30)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def start_daemon(*args: str, port: int | None = None) -> Daemon:
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "operator_server", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{base}/v1/healthz") as resp:
                    if resp.status == 200:
                        return Daemon(proc, base)
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("daemon did not come up")


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = await start_daemon(
        "--secret", "s", "--log-format", "json", "--store-path", str(tmp_path / "d.sqlite")
    )
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


async def test_sigterm_cancels_in_flight_work_closes_sockets_1001_and_exits_0(
    daemon: Daemon,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon.base}/v1/operators", json={"roles": ["main"]}) as resp:
            op = await resp.json()
        ws = await http.ws_connect(
            f"{daemon.base}/v1/operators/{op['sid']}/ws",
            headers={"Authorization": f"Bearer {op['token']}"},
        )
        body = {"agent": "coder", "directive": "x", "operator": {"role": "main"}}
        async with http.post(f"{daemon.base}/v1/tasks", json=body) as resp:
            task = await resp.json()
        hook = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        assert hook["type"] == "hook_before" and hook["task_id"] == task["id"]

        daemon.proc.send_signal(signal.SIGTERM)
        cancel = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        assert cancel == {
            "type": "cancel",
            "req_id": hook["req_id"],
            "reason": "server shutting down",
        }
        closing = await asyncio.wait_for(ws.receive(), 5)
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert closing.data == 1001
        await ws.close()

    assert daemon.proc.wait(timeout=15) == 0
    logs = daemon.logs()
    ended = [e for e in logs if e.get("event") == "task finished"]
    assert ended and ended[0]["task_id"] == task["id"]
    assert ended[0]["status"] == "cancelled"
    assert ended[0]["message"] == "server shutting down"
    # No secret reaches the log.
    text = json.dumps(logs)
    assert op["token"] not in text


async def test_the_daemon_serves_echo_tasks_with_no_operator(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"agent": "echo", "directive": {"n": 1}}
        async with http.post(f"{daemon.base}/v1/tasks", json=body) as resp:
            assert resp.status == 202
            location = resp.headers["Location"]
        async with http.get(f"{daemon.base}{location}?wait=5") as resp:
            task = await resp.json()
    assert task["status"] == "passed" and task["result"]["value"] == {"n": 1}
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(timeout=15) == 0

"""The daemon as a real process: start, serve, and stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import started


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
    started(proc)
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


@pytest.mark.parametrize("loop", ["uvloop", "asyncio", None])
async def test_the_daemon_serves_echo_tasks_with_no_operator_on_either_event_loop(
    tmp_path: Path, loop: str | None
) -> None:
    chosen = ["--event-loop", loop] if loop else []  # None: the default, uvloop
    daemon = await start_daemon(
        "--secret", "s", "--log-format", "json", "--store-path", str(tmp_path / "d.sqlite"), *chosen
    )
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
    starting = [e for e in daemon.logs() if e.get("event") == "starting"]
    assert [e["event_loop"] for e in starting] == [loop or "uvloop"]


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "operator_server", "serve", "--secret", "s", *args]


def run_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a daemon that is expected to stop by itself at start-up."""
    return subprocess.run(serve_command(*args), capture_output=True, text=True, timeout=20)


def task_row(db: Path, task_id: str) -> tuple[str, str]:
    conn = sqlite3.connect(db)
    try:
        row: tuple[str, str] = conn.execute(
            "SELECT status, data FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
    finally:
        conn.close()
    return row


async def test_a_second_daemon_on_the_store_exits_naming_the_file_and_holder_and_writes_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "shared.sqlite"
    first = await start_daemon("--secret", "s", "--store-path", str(db))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{first.base}/v1/operators", json={"roles": ["main"]}) as resp:
                op = await resp.json()
            ws = await http.ws_connect(
                f"{first.base}/v1/operators/{op['sid']}/ws",
                headers={"Authorization": f"Bearer {op['token']}"},
            )
            body = {
                "agent": "coder",
                "directive": "x",
                "operator": {"role": "main"},
                "layers": ["operator_delegate"],
            }
            async with http.post(f"{first.base}/v1/tasks", json=body) as resp:
                task = await resp.json()
            spawn = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            assert spawn["type"] == "spawn"
            # Once the spawn's due time is stored (a second after it was
            # issued), the first daemon writes nothing until the spawn is answered.
            for _ in range(400):
                before = task_row(db, task["id"])
                if "spawn" in json.loads(before[1]).get("dues", {}):
                    break
                await asyncio.sleep(0.025)
            assert before[0] == "running"

            # Another port, the same file: a restart's recovery would re-dispatch
            # the running task; the second process must not get that far.
            second = await asyncio.to_thread(
                run_to_exit, "--port", str(free_port()), "--store-path", str(db)
            )
            assert second.returncode != 0
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert str(db) in lines[0] and f"pid {first.proc.pid}" in lines[0]
            assert task_row(db, task["id"]) == before

            # The first daemon carries on with its task as if nothing happened.
            await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "ok"})
            async with http.get(f"{first.base}/v1/tasks/{task['id']}?wait=5") as resp:
                done = await resp.json()
            assert done["status"] == "passed" and done["attempt"] == 1
            await ws.close()
    finally:
        first.proc.terminate()
        assert first.proc.wait(timeout=15) == 0


async def test_a_busy_port_is_one_line_naming_the_address_and_the_store_is_never_opened(
    tmp_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        db = tmp_path / "never.sqlite"
        result = await asyncio.to_thread(
            run_to_exit, "--port", str(port), "--store-path", str(db), "--log-format", "json"
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"operator-server: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in result.stdout
    assert not db.exists()  # bound before the store is opened, let alone recovered


async def test_port_0_logs_the_port_it_really_listens_on(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        serve_command(
            "--port", "0", "--log-format", "json", "--store-path", str(tmp_path / "p.sqlite")
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started(proc)
    try:
        assert proc.stdout is not None
        url = None
        while url is None:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
            assert line, "the daemon exited before it listened"
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "listening":
                url = str(event["url"])
        assert not url.endswith(":0")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/healthz") as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


async def _spawn_before_any_socket(base: str, op: dict[str, Any]) -> dict[str, Any]:
    """Create a task for ``op``'s role while it has no socket, then connect: the
    spawn was issued (and its directive written) before the socket existed."""
    body = {
        "agent": "coder",
        "directive": "x",
        "operator": {"role": "main"},
        "layers": ["operator_delegate"],
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/tasks", json=body) as resp:
            assert resp.status == 202
        ws = await http.ws_connect(
            f"{base}/v1/operators/{op['sid']}/ws",
            headers={"Authorization": f"Bearer {op['token']}"},
        )
        spawn: dict[str, Any] = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        await ws.close()
    assert spawn["type"] == "spawn"
    return spawn


async def test_a_spawn_issued_before_the_first_socket_names_the_url_the_daemon_listens_on(
    daemon: Daemon,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{daemon.base}/v1/operators", json={"roles": ["main"]}) as resp,
    ):
        op = await resp.json()
    spawn = await _spawn_before_any_socket(daemon.base, op)
    assert f"{daemon.base}/v1/worker/prompt" in spawn["directive"]


async def test_a_session_restored_after_a_restart_gets_spawns_naming_the_new_url(
    tmp_path: Path,
) -> None:
    """The restarted daemon listens on another port: the restored session's first
    spawn, issued before it reconnects, must name that port, not a stale one."""
    store = str(tmp_path / "r.sqlite")
    first = await start_daemon("--secret", "s", "--store-path", store)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{first.base}/v1/operators", json={"roles": ["main"]}) as resp,
    ):
        op = await resp.json()
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=15) == 0
    port = free_port()
    while f":{port}" in first.base:  # the point is a different port
        port = free_port()
    second = await start_daemon("--secret", "s", "--store-path", store, port=port)
    try:
        spawn = await _spawn_before_any_socket(second.base, op)
        assert f"{second.base}/v1/worker/prompt" in spawn["directive"]
        assert first.base not in spawn["directive"]
    finally:
        second.proc.kill()
        second.proc.wait()


async def test_half_sent_requests_are_cut_off_while_healthz_keeps_answering(
    tmp_path: Path,
) -> None:
    d = await start_daemon(
        "--secret", "s", "--store-path", str(tmp_path / "s.sqlite"), "--request-read-timeout-s", "1"
    )
    host, port = "127.0.0.1", int(d.base.rsplit(":", 1)[1])
    try:
        # Headers that never end: the server closes the connection.
        head_r, head_w = await asyncio.open_connection(host, port)
        head_w.write(b"GET /v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        # A body that never arrives: 408 request_timeout, then the connection closes.
        body_r, body_w = await asyncio.open_connection(host, port)
        body_w.write(
            b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"agent": '
        )
        async with aiohttp.ClientSession() as http, http.get(f"{d.base}/v1/healthz") as resp:
            assert resp.status == 200  # the server is not held up meanwhile

        assert await asyncio.wait_for(head_r.read(), 10) == b""
        answer = await asyncio.wait_for(body_r.read(), 10)  # read() returns at the close
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 408 Request Timeout", answer
        error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "request_timeout" and "request_read_timeout_s" in error["message"]
        for w in (head_w, body_w):
            w.close()
    finally:
        d.proc.terminate()
        assert d.proc.wait(timeout=15) == 0


async def test_a_daemon_without_a_secret_says_nothing_about_it(tmp_path: Path) -> None:
    """One daemon loses nothing to a random key (a capability dies with the
    process that minted it), so a start without ``secret`` is as quiet as one
    with it: no warning line, on stdout or stderr, in JSON or in words."""
    daemon = await start_daemon("--log-format", "json", "--store-path", str(tmp_path / "d.sqlite"))
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{daemon.base}/v1/tasks", json={"agent": "echo", "directive": "x"}) as resp,
    ):
        assert resp.status == 202  # it works with the random key
    daemon.proc.send_signal(signal.SIGTERM)
    out, _ = daemon.proc.communicate(timeout=30)
    assert daemon.proc.returncode == 0
    assert "secret" not in out, out
    assert [line for line in out.splitlines() if '"warning"' in line] == [], out

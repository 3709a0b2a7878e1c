"""The daemon as a real process on PostgreSQL: serve, stop, start again, lose nothing."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import aiohttp

from tests.test_daemon import start_daemon


async def test_a_daemon_on_postgresql_serves_tasks_and_a_restart_keeps_sessions_and_tasks(
    pg_url: str,
) -> None:
    common = ("--secret", "s", "--log-format", "json", "--store-url", pg_url)
    first = await start_daemon(*common, "--node-id", "node-a")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{first.base}/v1/operators", json={"roles": ["main"]}) as resp:
                assert resp.status == 201
                op = await resp.json()
            body = {"agent": "echo", "directive": {"n": 1}}
            async with http.post(f"{first.base}/v1/tasks", json=body) as resp:
                assert resp.status == 202
                location = resp.headers["Location"]
            async with http.get(f"{first.base}{location}?wait=5") as resp:
                before = await resp.json()
            assert before["status"] == "passed" and before["result"]["value"] == {"n": 1}
            async with http.get(f"{first.base}/v1/healthz") as resp:
                assert (await resp.json())["node_id"] == "node-a"
            async with http.get(f"{first.base}/metrics") as resp:
                assert 'operator_server_node_info{node_id="node-a"' in await resp.text()
    finally:
        first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=15) == 0
    logs = first.logs()
    assert logs and all(line.get("node_id") == "node-a" for line in logs)
    assert pg_url.split("@")[0] not in "".join(map(str, logs))  # no credentials in the log

    second = await start_daemon(*common)
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {op['token']}"}
            async with http.get(f"{second.base}/v1/operators/{op['sid']}", headers=headers) as r:
                assert r.status == 200 and (await r.json())["roles"] == ["main"]
            async with http.get(f"{second.base}{location}") as resp:
                assert await resp.json() == before
            async with http.get(f"{second.base}/v1/healthz") as resp:
                node_id = (await resp.json())["node_id"]
            # The default names the host and the process.
            assert node_id == f"{socket.gethostname()}-{second.proc.pid}"
    finally:
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=15) == 0


def test_an_unreachable_database_stops_start_up_with_one_line_and_no_password() -> None:
    url = "postgresql://ops:hunter2@127.0.0.1:1/ops"  # nothing listens on port 1
    argv = ["serve", "--port", "0", "--store-url", url, "--secret", "s"]
    done = subprocess.run(
        [sys.executable, "-m", "operator_server", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "store: cannot connect to PostgreSQL" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr

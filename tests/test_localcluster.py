"""``make cluster``: its entry point really starts two nodes on one PostgreSQL,
and Ctrl-C stops everything it started and removes what it made."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.pg import require_postgres


async def read_banner(proc: asyncio.subprocess.Process) -> dict[str, str]:
    """The node URLs, the server's port and its directory, from the banner."""
    assert proc.stdout is not None
    found: dict[str, str] = {}
    while "node-b" not in found:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line, "make cluster exited before printing its URLs"
        if m := re.search(r"PostgreSQL \(127\.0\.0\.1:(\d+), data in (\S+)\)", line):
            found["pg_port"], found["root"] = m.groups()
        elif m := re.match(r"\s+(node-[ab]): (http://\S+)", line):
            found[m[1]] = m[2]
    return found


def refuses(url_or_port: str) -> bool:
    port = int(url_or_port.rsplit(":", 1)[-1])
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def two_free_ports() -> int:
    """A free port whose next one is free too."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two free ports in a row")


@pytest.mark.parametrize("port_given", [False, True], ids=["free-ports", "port"])
async def test_make_cluster_starts_two_nodes_on_one_database_and_ctrl_c_leaves_nothing_behind(
    port_given: bool,
) -> None:
    require_postgres()
    port = two_free_ports() if port_given else None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "operator_server.localcluster",
        *(["--port", str(port)] if port else []),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        started = await read_banner(proc)
        a, b = started["node-a"], started["node-b"]
        if port:  # make cluster PORT=N: node-a on N, node-b on N + 1
            assert (a, b) == (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}")
        async with aiohttp.ClientSession() as http:
            ids = []
            for url in (a, b):
                async with http.get(f"{url}/v1/healthz") as resp:
                    assert resp.status == 200
                    ids.append((await resp.json())["node_id"])
            assert ids == ["node-a", "node-b"]
            # One database and one secret: a session minted on A is served by B.
            async with http.post(f"{a}/v1/operators", json={"roles": ["try"]}) as resp:
                op = await resp.json()
            headers = {"Authorization": f"Bearer {op['token']}"}
            async with http.get(f"{b}/v1/operators/{op['sid']}", headers=headers) as resp:
                assert resp.status == 200 and (await resp.json())["roles"] == ["try"]

        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert refuses(a) and refuses(b) and refuses(started["pg_port"])
        assert not Path(started["root"]).exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

"""Two daemons on one PostgreSQL: leases keep them apart, a dead or stopped
node's running tasks go to the survivor, a session minted on one node works on
the other, and a node cut off from its database says so on healthz."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.test_daemon import Daemon, free_port, start_daemon

TASKS = 12


def common(pg_url: str, lease_s: float) -> tuple[str, ...]:
    return (
        "--secret", "s", "--log-format", "json", "--store-url", pg_url,
        "--cluster-lease-s", str(lease_s),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def daemons(*procs: Daemon) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for d in procs:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()


async def operator_with_spawns(
    http: aiohttp.ClientSession, node: Daemon, n: int
) -> tuple[dict[str, Any], list[str]]:
    """An operator minted on ``node`` holding ``n`` running tasks (spawns unanswered)."""
    async with http.post(f"{node.base}/v1/operators", json={"roles": ["main"]}) as resp:
        op = await resp.json()
    ws = await connect(http, node, op)
    body = {
        "agent": "coder",
        "directive": "x",
        "operator": {"role": "main"},
        "layers": ["operator_delegate"],
        "max_attempts": 1,
    }
    ids = []
    for _ in range(n):
        async with http.post(f"{node.base}/v1/tasks", json=body) as resp:
            assert resp.status == 202
            ids.append((await resp.json())["id"])
    spawned = set()
    while len(spawned) < n:
        frame = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
        if frame["type"] == "spawn":
            spawned.add(frame["task_id"])
            op.setdefault("credentials", []).append(
                (frame["task_id"], frame["worker_handle"], frame["capability_token"])
            )
    assert spawned == set(ids)
    op["ws"] = ws
    return op, ids


async def connect(
    http: aiohttp.ClientSession, node: Daemon, op: dict[str, Any]
) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(
        f"{node.base}/v1/operators/{op['sid']}/ws",
        headers={"Authorization": f"Bearer {op['token']}"},
    )


async def answer_spawns(ws: aiohttp.ClientWebSocketResponse, ids: list[str]) -> None:
    """Play the operator: acknowledge every spawn, until each task in ``ids``
    had the spawn of its second attempt (the first was cut short; its request
    may be replayed, then withdrawn, and answering it changes nothing)."""
    left = set(ids)
    while left:
        frame = json.loads((await asyncio.wait_for(ws.receive(), 15)).data)
        if frame["type"] == "spawn":
            await ws.send_json(
                {"type": "spawn_ack", "req_id": frame["req_id"], "value": frame["task_id"]}
            )
            if frame["attempt"] > 1:
                left.discard(frame["task_id"])


async def ended(http: aiohttp.ClientSession, node: Daemon, task_id: str) -> dict[str, Any]:
    async with http.get(f"{node.base}/v1/tasks/{task_id}?wait=15") as resp:
        task: dict[str, Any] = await resp.json()
        return task


async def test_a_killed_nodes_tasks_pass_on_the_survivor_once_their_leases_lapse(
    pg_url: str,
) -> None:
    a = await start_daemon(*common(pg_url, 1.5), "--node-id", "node-a")
    async with daemons(a), aiohttp.ClientSession() as http:
        op, ids = await operator_with_spawns(http, a, TASKS)
        # A second node starting now leaves the first node's running tasks alone.
        b = await start_daemon(*common(pg_url, 1.5), "--node-id", "node-b")
        async with daemons(b):
            for task_id in ids:
                async with http.get(f"{b.base}/v1/tasks/{task_id}") as resp:
                    task = await resp.json()
                assert task["status"] == "running" and len(task["attempts"]) == 1

            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
            await op["ws"].close()
            # The session minted on A, its token, and its role all work on B.
            headers = {"Authorization": f"Bearer {op['token']}"}
            async with http.get(f"{b.base}/v1/operators/{op['sid']}", headers=headers) as resp:
                assert resp.status == 200 and (await resp.json())["roles"] == ["main"]
            ws = await connect(http, b, op)
            await answer_spawns(ws, ids)
            for task_id in ids:
                task = await ended(http, b, task_id)
                assert task["status"] == "passed", task
                assert task["result"]["value"] == task_id
                # max_attempts is 1: the cut attempt did not use it up.
                first, second = task["attempts"]
                assert first["error"]["code"] == "interrupted"
                assert second["status"] == "passed"
            # The cut attempts' credentials, minted on A, are dead on B.
            for task_id, *creds in op["credentials"]:
                for cred in creds:
                    url = f"{b.base}/v1/worker/prompt?task_id={task_id}"
                    async with http.get(url, headers={"Authorization": f"Bearer {cred}"}) as resp:
                        assert resp.status in (401, 403), await resp.text()
            await ws.close()
            b.proc.send_signal(signal.SIGTERM)
            assert b.proc.wait(timeout=15) == 0
        logs = b.logs()
        started = next(e for e in logs if e.get("event") == "recovered stored state")
        assert started["tasks"] == 0  # took nothing of the live node's at start-up
        taken = sum(
            e["tasks"] for e in logs if e.get("event") == "took over tasks from another node"
        )
        assert taken == TASKS


async def test_a_gracefully_stopped_node_hands_its_running_tasks_over_and_none_end_cancelled(
    pg_url: str,
) -> None:
    # A long lease: the survivor does not wait for it, the stopped node lets go.
    a = await start_daemon(*common(pg_url, 30), "--node-id", "node-a")
    b = await start_daemon(*common(pg_url, 30), "--node-id", "node-b")
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op, ids = await operator_with_spawns(http, a, TASKS)
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=15) == 0
        await op["ws"].close()
        ws = await connect(http, b, op)
        # Not after lease_s (30 s, beyond this wait): at B's next look.
        await asyncio.wait_for(answer_spawns(ws, ids), 15)
        for task_id in ids:
            task = await ended(http, b, task_id)
            assert task["status"] == "passed", task
        await ws.close()
        logs = a.logs()
        assert not [e for e in logs if e.get("event") == "task finished"]  # none cancelled
        assert any(e.get("event") == "handed over running tasks to the other nodes" for e in logs)


class Cuttable:
    """A TCP proxy to PostgreSQL that the test can cut and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


async def healthz(http: aiohttp.ClientSession, node: Daemon) -> int:
    async with http.get(f"{node.base}/v1/healthz") as resp:
        return resp.status


async def wait_status(http: aiohttp.ClientSession, node: Daemon, status: int) -> None:
    for _ in range(300):
        if await healthz(http, node) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"healthz did not answer {status}")


async def test_healthz_answers_503_while_the_database_is_cut_off_and_200_once_it_is_back(
    pg_url: str, postgres: Any
) -> None:
    proxy = Cuttable(postgres.port)
    await proxy.start()
    url = pg_url.replace(f":{postgres.port}/", f":{proxy.port}/")
    node = await start_daemon(*common(url, 1), "--node-id", "node-a")
    async with daemons(node), aiohttp.ClientSession() as http:
        assert await healthz(http, node) == 200
        # A task in flight across the cut: its spawn is shown, not yet answered.
        op, (running,) = await operator_with_spawns(http, node, 1)
        await proxy.cut()
        await wait_status(http, node, 503)
        async with http.get(f"{node.base}/v1/healthz") as resp:
            assert (await resp.json())["error"]["code"] == "store_failed"
        body = {"agent": "echo", "directive": 1}
        async with http.post(f"{node.base}/v1/tasks", json=body) as resp:
            assert resp.status == 503  # no new work meanwhile
        # Cut off for longer than a lease: the node lets its task go, for any
        # node (itself included, once back) to take over.
        await asyncio.sleep(1.5)
        await proxy.start()
        await wait_status(http, node, 200)
        async with http.post(f"{node.base}/v1/tasks", json=body) as resp:
            assert resp.status == 202
            task_id = (await resp.json())["id"]
        assert (await ended(http, node, task_id))["status"] == "passed"
        # Nothing lost: the task that was running passes on its next attempt.
        await asyncio.wait_for(answer_spawns(op["ws"], [running]), 15)
        task = await ended(http, node, running)
        assert task["status"] == "passed", task
        assert task["attempts"][0]["error"]["code"] == "interrupted"
        await op["ws"].close()
        node.proc.send_signal(signal.SIGTERM)
        # In a thread: the proxy runs on this loop, and the stop writes through it.
        assert await asyncio.to_thread(node.proc.wait, 15) == 0
    await proxy.cut()

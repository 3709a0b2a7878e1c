"""Any node serves any request: two real daemons on one real PostgreSQL, with
the operator's socket on one node and the work on the other."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import aiohttp

from tests.http.sse import next_block, parse
from tests.store.test_postgres_cluster import common, connect, daemons
from tests.test_daemon import Daemon, start_daemon

THIN = {
    "agent": "coder",
    "directive": "write it",
    "operator": {"role": "main"},
    "layers": ["operator_delegate"],
    "max_attempts": 1,
}


async def two_nodes(pg_url: str, lease_s: float = 10, *extra: str) -> tuple[Daemon, Daemon]:
    a = await start_daemon(*common(pg_url, lease_s), "--node-id", "node-a", *extra)
    b = await start_daemon(*common(pg_url, lease_s), "--node-id", "node-b", *extra)
    return a, b


async def mint(http: aiohttp.ClientSession, node: Daemon) -> dict[str, Any]:
    async with http.post(f"{node.base}/v1/operators", json={"roles": ["main"]}) as resp:
        assert resp.status == 201
        op: dict[str, Any] = await resp.json()
        return op


async def create(http: aiohttp.ClientSession, node: Daemon, body: dict[str, Any]) -> str:
    async with http.post(f"{node.base}/v1/tasks", json=body) as resp:
        assert resp.status == 202, await resp.text()
        task_id: str = (await resp.json())["id"]
        return task_id


async def create_when_ready(http: aiohttp.ClientSession, node: Daemon, body: dict[str, Any]) -> str:
    """``create``, as a client does it: a 503 (a node just woken from a freeze
    re-makes the store connection PostgreSQL cut meanwhile) is tried again
    a moment later."""
    for _ in range(40):
        async with http.post(f"{node.base}/v1/tasks", json=body) as resp:
            if resp.status == 503:
                await asyncio.sleep(0.25)
                continue
            assert resp.status == 202, await resp.text()
            task_id: str = (await resp.json())["id"]
            return task_id
    raise AssertionError(f"{node.base} refused new tasks throughout")


async def frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    found: dict[str, Any] = json.loads(msg.data)
    return found


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while (found := await frame(ws))["type"] != kind:
        pass
    return found


async def spawned(
    http: aiohttp.ClientSession, socket_on: Daemon, task_on: Daemon
) -> tuple[aiohttp.ClientWebSocketResponse, str, dict[str, Any], dict[str, str]]:
    """An operator connected to ``socket_on`` holding the spawn of a task created
    on ``task_on``: its socket, the task id, the spawn, and the worker's header
    (its handle, what the directive gives a sub-agent)."""
    op = await mint(http, socket_on)
    ws = await connect(http, socket_on, op)
    await until_pong(ws, "attached")  # the node took the socket up: tasks go there
    task_id = await create(http, task_on, THIN)
    spawn = await next_of(ws, "spawn")
    assert spawn["task_id"] == task_id
    return ws, task_id, spawn, {"Authorization": f"Bearer {spawn['worker_handle']}"}


async def until_pong(ws: aiohttp.ClientWebSocketResponse, ping_id: str) -> list[dict[str, Any]]:
    """Every frame before the pong to our ping: what the server had sent so far."""
    await ws.send_json({"type": "ping", "id": ping_id})
    seen = []
    while (found := await frame(ws))["type"] != "pong":
        seen.append(found)
    assert found["id"] == ping_id
    return seen


async def test_a_task_on_node_a_reaches_the_operator_on_node_b_and_a_long_poll_on_a_sees_its_end(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws, task_id, spawn, _ = await spawned(http, socket_on=b, task_on=a)
        # The long-poll waits on A, which created the task but does not run it.
        poll = asyncio.ensure_future(http.get(f"{a.base}/v1/tasks/{task_id}?wait=60"))
        # The task went to B, where the socket is: the directive names B.  A
        # worker whose calls reach A anyway (a balancer) is passed on to B.
        assert b.base in spawn["directive"]
        auth = {"Authorization": f"Bearer {spawn['capability_token']}"}
        url = f"{a.base}/v1/worker/prompt?task_id={task_id}"
        async with http.get(url, headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["prompt"] == "write it"
        result = {"task_id": task_id, "value": {"done": 1}, "ok": True}
        async with http.post(f"{a.base}/v1/worker/result", json=result, headers=auth) as resp:
            assert resp.status == 200
        await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
        resp = await asyncio.wait_for(poll, 15)  # woken by the end, not by its 60 s
        task = await resp.json()
        assert task["status"] == "passed" and task["result"]["value"] == {"done": 1}
        await ws.close()


async def test_worker_calls_and_cancels_may_hit_the_node_that_does_not_run_the_task(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws, task_id, spawn, auth = await spawned(http, socket_on=a, task_on=a)
        # Everything through B; A runs the attempt and decides.
        async with http.get(f"{b.base}/v1/worker/prompt?task_id={task_id}", headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["prompt"] == "write it"
        ask = {"task_id": task_id, "question": "which?", "timeout_s": 0}
        async with http.post(f"{b.base}/v1/worker/ask", json=ask, headers=auth) as resp:
            assert resp.status == 202
            ask_id = (await resp.json())["ask_id"]
        asked = await next_of(ws, "ask")
        assert asked["question"] == "which?"
        await ws.send_json({"type": "answer", "req_id": asked["req_id"], "value": "that"})
        url = f"{b.base}/v1/worker/ask/{ask_id}?wait=10"
        async with http.get(url, headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["value"] == "that"
        result = {"task_id": task_id, "value": "v", "ok": True}
        async with http.post(f"{b.base}/v1/worker/result", json=result, headers=auth) as resp:
            assert resp.status == 200
        await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
        async with http.get(f"{b.base}/v1/tasks/{task_id}?wait=15") as resp:
            assert (await resp.json())["status"] == "passed"
        # A late result through B is refused by A, where the attempt ended.
        async with http.post(f"{b.base}/v1/worker/result", json=result, headers=auth) as resp:
            assert resp.status in (401, 409)

        # A cancel on B stops a run on A; the operator's request is withdrawn.
        second = await create(http, a, THIN)
        spawn = await next_of(ws, "spawn")
        async with http.post(f"{b.base}/v1/tasks/{second}/cancel") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
        cancel = await next_of(ws, "cancel")
        assert cancel["req_id"] == spawn["req_id"]
        await ws.close()


async def test_an_event_stream_on_node_b_follows_a_task_that_runs_on_node_a(pg_url: str) -> None:
    a, b = await two_nodes(pg_url)
    async with (
        daemons(a, b),
        aiohttp.ClientSession() as http,
        http.get(f"{b.base}/v1/events") as stream,
    ):
        assert stream.status == 200
        task_id = await create(http, a, {"agent": "echo", "directive": 1})
        types = []
        while True:
            block = await next_block(stream, 10)
            assert block is not None
            event = parse(block)
            if event is None or event.data.get("task_id") != task_id:
                continue
            types.append(event.type)
            if event.type == "status" and event.data.get("status") == "passed":
                break
        assert types[0] == "created" and "attempt_ended" in types


async def test_a_socket_moved_from_node_b_to_node_a_replays_every_pending_request_once_in_order(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, b)
        ws = await connect(http, b, op)
        issued, tasks = [], []
        for node in (a, b, a, b, a, b):  # interleaved: requests issued by both nodes
            task_id = await create(http, node, THIN)
            tasks.append(task_id)
            spawn = await next_of(ws, "spawn")
            assert spawn["task_id"] == task_id
            issued.append(spawn["req_id"])
        await ws.close()
        # Either node lists all six as pending, in issue order.
        headers = {"Authorization": f"Bearer {op['token']}"}
        for node in (a, b):
            async with http.get(
                f"{node.base}/v1/operators/{op['sid']}/pending", headers=headers
            ) as resp:
                listed = (await resp.json())["pending"]
            assert [p["req_id"] for p in listed] == issued
            assert {p["type"] for p in listed} == {"spawn"} and listed[0]["attempt"] == 1

        ws = await connect(http, a, op)
        replayed = await until_pong(ws, "after-replay")
        assert [f["req_id"] for f in replayed] == issued  # each once, in issue order
        assert all(f["type"] == "spawn" for f in replayed)
        for req_id in issued:
            await ws.send_json({"type": "spawn_ack", "req_id": req_id, "value": req_id})
        # Every reply reached the node waiting for it: no error frames came back.
        assert await until_pong(ws, "after-replies") == []
        for task_id in tasks:
            async with http.get(f"{a.base}/v1/tasks/{task_id}?wait=15") as resp:
                assert (await resp.json())["status"] == "passed"
        await ws.close()


async def test_a_newer_socket_on_another_node_replaces_the_older_one(pg_url: str) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, a)
        old = await connect(http, a, op)
        new = await connect(http, b, op)
        msg = await asyncio.wait_for(old.receive(), 10)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4000
        # The newer one is the session's socket: a task on A reaches it on B.
        task_id = await create(http, a, THIN)
        spawn = await next_of(new, "spawn")
        assert spawn["task_id"] == task_id
        await new.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 1})
        async with http.get(f"{a.base}/v1/tasks/{task_id}?wait=15") as resp:
            assert (await resp.json())["status"] == "passed"
        await new.close()


async def test_deleting_a_session_on_one_node_closes_its_socket_on_the_other(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, a)
        ws = await connect(http, b, op)
        await until_pong(ws, "attached")
        headers = {"Authorization": f"Bearer {op['token']}"}
        async with http.delete(f"{a.base}/v1/operators/{op['sid']}", headers=headers) as resp:
            assert resp.status == 204
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type is aiohttp.WSMsgType.CLOSE


async def test_healthz_on_every_node_counts_the_whole_clusters_tasks(pg_url: str) -> None:
    a, b = await two_nodes(pg_url, 1.0)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ids = [await create(http, a, {"agent": "echo", "directive": i}) for i in range(3)]
        for task_id in ids:
            async with http.get(f"{a.base}/v1/tasks/{task_id}?wait=15") as resp:
                assert (await resp.json())["status"] == "passed"
        for node in (a, b):  # counted as they commit; read every lease_s / 3
            for _ in range(100):
                async with http.get(f"{node.base}/v1/healthz") as resp:
                    health = await resp.json()
                if health["tasks"].get("passed") == 3:
                    break
                await asyncio.sleep(0.1)
            assert health["tasks"]["passed"] == 3, health
            assert health["node_id"] == ("node-a" if node is a else "node-b")


async def test_a_frame_too_large_for_a_notify_payload_still_reaches_the_other_node(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws, task_id, _, auth = await spawned(http, socket_on=b, task_on=a)
        # Far over NOTIFY's 8000-byte payload: it travels as a cluster_messages row.
        question = {"context": "x" * 20_000, "which": "one?"}
        ask = {"task_id": task_id, "question": question, "timeout_s": 0}
        async with http.post(f"{a.base}/v1/worker/ask", json=ask, headers=auth) as resp:
            assert resp.status == 202
            ask_id = (await resp.json())["ask_id"]
        asked = await next_of(ws, "ask")
        assert asked["question"] == question
        await ws.send_json({"type": "answer", "req_id": asked["req_id"], "value": "this one"})
        async with http.get(f"{a.base}/v1/worker/ask/{ask_id}?wait=10", headers=auth) as resp:
            assert (await resp.json())["value"] == "this one"
        await ws.close()


async def test_every_node_shows_an_operator_connected_to_another_until_that_node_dies(
    pg_url: str,
) -> None:
    """The admin's views and healthz's counts are the cluster's: node A shows
    the operator whose socket is on node B as connected (there, with its
    pending request); once B dies, A shows it disconnected as soon as B's
    heartbeat lapses, before anyone buries B."""
    a, b = await two_nodes(pg_url, 1.5)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, a)
        ws = await connect(http, b, op)
        await create(http, a, THIN)  # its spawn waits on the socket at B
        assert (await next_of(ws, "spawn"))["type"] == "spawn"
        own = {"Authorization": f"Bearer {op['token']}"}

        async def views(node: Daemon) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            async with http.get(f"{node.base}/v1/operators") as resp:
                assert resp.status == 200, await resp.text()
                (listed,) = (await resp.json())["operators"]
            async with http.get(f"{node.base}/v1/operators/{op['sid']}", headers=own) as resp:
                one = await resp.json()
            async with http.get(f"{node.base}/v1/healthz") as resp:
                counts = (await resp.json())["operators"]
            return listed, one, counts

        for node in (a, b):
            listed, one, counts = await views(node)
            for view in (listed, one):
                assert (view["sid"], view["connected"], view["node"]) == (op["sid"], True, "node-b")
                assert view["pending"] == 1
            assert counts == {"sessions": 1, "connected": 1}
            # The peer's address is known where the socket is, and only there.
            assert (listed["remote"] is not None) is (node is b)
        async with http.get(f"{a.base}/v1/operators", params={"connected": "false"}) as resp:
            assert (await resp.json())["operators"] == []

        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        await ws.close()
        # Within a few of B's leases (1.5 s), its heartbeat has lapsed.
        for _ in range(150):
            listed, one, counts = await views(a)
            if not listed["connected"]:
                break
            await asyncio.sleep(0.1)
        for view in (listed, one):
            assert (view["connected"], view["node"], view["remote"]) == (False, None, None)
        assert counts == {"sessions": 1, "connected": 0}

"""A task runs on the node holding its operator's socket: two real daemons on
one real PostgreSQL, tasks created on the node that does not hold it."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.http.sse import next_block, parse
from tests.store.gates import close, gate, open_
from tests.store.test_cluster_escalation import _mint
from tests.store.test_cluster_routing import (
    THIN,
    create,
    frame,
    mint,
    next_of,
    two_nodes,
    until_pong,
)
from tests.store.test_postgres_cluster import common, connect, daemons, ended
from tests.test_daemon import Daemon, free_port, start_daemon

# The default layers: hook_before, spawn, hook_after.
HOOKED = {"agent": "coder", "directive": "write it", "operator": {"role": "main"}}


async def seated(
    http: aiohttp.ClientSession, node: Daemon, op: dict[str, Any]
) -> aiohttp.ClientWebSocketResponse:
    """The operator's socket on ``node``, once the node has taken it up (it
    answers a ping only after): what it replayed is read."""
    ws = await connect(http, node, op)
    await until_pong(ws, "seated")
    return ws


async def direct_messages(http: aiohttp.ClientSession, *nodes: Daemon) -> float:
    """Messages the nodes heard addressed to one of them by another: crossings."""
    total = 0.0
    for node in nodes:
        async with http.get(f"{node.base}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith("operator_server_cluster_messages_total{") and (
                'scope="direct"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def started_on(http: aiohttp.ClientSession, node: Daemon, task_id: str) -> list[str]:
    """The ``node`` of each ``attempt_started`` event of a finished task."""
    nodes = []
    async with http.get(f"{node.base}/v1/tasks/{task_id}/events") as stream:
        assert stream.status == 200
        while (block := await next_block(stream, 10)) is not None:
            event = parse(block)
            if event is not None and event.type == "attempt_started":
                nodes.append(event.data["node"])
    return nodes


async def work_as_sub_agent(
    http: aiohttp.ClientSession, spawn: dict[str, Any], via: str | None = None
) -> None:
    """What a sub-agent does with the spawn's directive: read the prompt and
    post a result, at the URL the directive names (or at ``via``)."""
    auth = {"Authorization": f"Bearer {spawn['worker_handle']}"}
    base = via or next(
        word.rsplit("/v1/worker/prompt", 1)[0]
        for word in spawn["directive"].split()
        if word.endswith("/v1/worker/prompt")
    )
    async with http.get(f"{base}/v1/worker/prompt", headers=auth) as resp:
        assert resp.status == 200 and (await resp.json())["prompt"] == "write it"
    result = {"value": {"by": spawn["task_id"]}, "ok": True}
    async with http.post(f"{base}/v1/worker/result", json=result, headers=auth) as resp:
        assert resp.status == 200, await resp.text()


async def operate(ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession) -> str:
    """Play the operator through one hooked task: its task id."""
    hook = await next_of(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await next_of(ws, "spawn")
    await work_as_sub_agent(http, spawn)
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {}})
    return str(spawn["task_id"])


async def test_a_task_created_on_a_for_a_role_held_on_b_runs_on_b_crossing_at_most_twice(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws = await seated(http, b, await mint(http, b))
        before = await direct_messages(http, a, b)
        db = await asyncpg.connect(pg_url)
        try:
            # A lease moved from node to node waits at the gate: the task must
            # be stored leased to B by the write that creates it, not stored
            # as A's and handed on after.
            await gate(db, 1, "BEFORE UPDATE OF node_id ON task_leases FOR EACH ROW")
            await close(db, 1)
            task_id = await create(http, a, HOOKED)
            lease = "SELECT node_id FROM task_leases WHERE task_id = $1"
            assert await db.fetchval(lease, task_id) == "node-b"
            await open_(db, 1)
        finally:
            await db.close()
        assert await operate(ws, http) == task_id
        task = await ended(http, a, task_id)
        assert task["status"] == "passed" and task["result"]["value"] == {"by": task_id}
        assert set(task["attempts"][0]["served_by"].values()) and await started_on(
            http, a, task_id
        ) == ["node-b"]
        # Its hook_before, spawn, prompt, result and hook_after, all on B: the
        # hand-over is the only message between the nodes (and B counted it).
        assert 1 <= await direct_messages(http, a, b) - before <= 2
        await ws.close()


async def test_a_task_waiting_for_its_operators_socket_runs_on_the_node_it_attaches_on(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, b)  # a session holds the role; no socket anywhere yet
        before = await direct_messages(http, a, b)
        task_id = await create(http, a, HOOKED)  # so it is stored and waits on A
        ws = await seated(http, b, op)
        assert await operate(ws, http) == task_id
        task = await ended(http, a, task_id)
        assert task["status"] == "passed" and task["result"]["value"] == {"by": task_id}
        assert set(task["attempts"][0]["served_by"].values()) == {op["sid"]}
        # Its one attempt ran on B, where the socket attached: handed there
        # before it started (one message), nothing relayed between the nodes.
        assert await started_on(http, a, task_id) == ["node-b"]
        assert await direct_messages(http, a, b) - before <= 2
        await ws.close()


async def test_a_socket_moving_from_b_to_a_leaves_running_attempts_on_b_and_sends_the_next_to_a(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, b)
        ws_b = await seated(http, b, op)
        running = [await create(http, a, HOOKED) for _ in range(2)]
        holds = []
        while len(holds) < len(running):  # both attempts under way on B: their hooks answered
            # In whatever order they come: the second task's hook may come
            # before the first one's spawn.
            shown = await frame(ws_b)
            if shown["type"] == "hook_before":
                await ws_b.send_json({"type": "hook_ack", "req_id": shown["req_id"], "ok": True})
            elif shown["type"] == "spawn":
                holds.append(shown)
        assert {spawn["task_id"] for spawn in holds} == set(running)

        ws_a = await connect(http, a, op)  # the socket moves
        replayed = await until_pong(ws_a, "moved")  # replayed on A, answered there, decided on B
        assert {f["req_id"] for f in replayed} == {s["req_id"] for s in holds}
        while (await ws_b.receive()).type is not aiohttp.WSMsgType.CLOSE:
            pass  # B closes its socket as it hears of the move
        for spawn in holds:
            await work_as_sub_agent(http, spawn)
            await ws_a.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {}})
        for task_id in running:
            assert (await ended(http, a, task_id))["status"] == "passed"
            assert await started_on(http, a, task_id) == ["node-b"]

        following = await create(http, b, HOOKED)  # created on B: goes to the socket, on A
        assert await operate(ws_a, http) == following
        assert (await ended(http, b, following))["status"] == "passed"
        assert await started_on(http, b, following) == ["node-a"]
        for ws in (ws_a, ws_b):
            await ws.close()


async def test_the_next_attempt_of_a_task_goes_to_the_node_its_operators_socket_moved_to(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, b)
        ws_b = await seated(http, b, op)
        task_id = await create(http, a, {**THIN, "max_attempts": 2})
        first = await next_of(ws_b, "spawn")  # attempt 1, on B
        ws_a = await connect(http, a, op)  # the socket moves while it runs
        assert [f["req_id"] for f in await until_pong(ws_a, "moved")] == [first["req_id"]]
        # Answered on A, decided on B (where it runs): it failed, one attempt is left.
        await ws_a.send_json({"type": "spawn_ack", "req_id": first["req_id"], "error": "again"})
        second = await next_of(ws_a, "spawn")
        assert (second["task_id"], second["attempt"]) == (task_id, 2)
        assert a.base in second["directive"]
        await ws_a.send_json({"type": "spawn_ack", "req_id": second["req_id"], "value": "ok"})
        task = await ended(http, b, task_id)
        assert task["status"] == "passed" and len(task["attempts"]) == 2
        assert await started_on(http, b, task_id) == ["node-b", "node-a"]
        for ws in (ws_a, ws_b):
            await ws.close()


async def test_a_seat_handed_over_to_node_a_leaves_the_running_attempt_on_b_and_the_next_goes_to_a(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        source, target = await _mint(http, b.base, "main"), await _mint(http, a.base, "night")
        ws_b, ws_a = await seated(http, b, source), await seated(http, a, target)
        running = await create(http, a, HOOKED)  # runs on B, where "main" is seated
        hook = await next_of(ws_b, "hook_before")
        await ws_b.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
        spawn = await next_of(ws_b, "spawn")
        async with http.post(  # through A, not the node holding the source's socket
            f"{a.base}/v1/operators/{source['sid']}/handover",
            json={"sid": target["sid"]},
            headers={"Authorization": f"Bearer {source['token']}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["moved"] == [spawn["req_id"]]
        # The request moves to the target's socket; the attempt stays on B.
        assert (await next_of(ws_a, "spawn"))["req_id"] == spawn["req_id"]
        await work_as_sub_agent(http, spawn)
        await ws_a.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {}})
        assert (await ended(http, a, running))["status"] == "passed"
        assert await started_on(http, a, running) == ["node-b"]

        following = await create(http, b, HOOKED)  # created on B: goes to "main" on A
        assert await operate(ws_a, http) == following
        assert (await ended(http, b, following))["status"] == "passed"
        assert await started_on(http, b, following) == ["node-a"]
        for ws in (ws_a, ws_b):
            await ws.close()


async def test_a_sub_agent_given_a_directive_from_b_posts_its_result_through_a(
    pg_url: str,
) -> None:
    # Each node names itself by its own public_url (here another spelling of
    # the address it listens on): the directive names the running node's.
    ports = free_port(), free_port()
    a, b = [
        await start_daemon(
            *common(pg_url, 10), "--node-id", node, "--public-url", f"http://localhost:{port}",
            port=port,
        )
        for node, port in zip(("node-a", "node-b"), ports, strict=True)
    ]  # fmt: skip
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, b)
        ws = await seated(http, b, op)
        task_id = await create(http, a, HOOKED)
        hook = await next_of(ws, "hook_before")
        await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
        spawn = await next_of(ws, "spawn")
        assert f"http://localhost:{ports[1]}/v1/worker/prompt" in spawn["directive"]
        assert f":{ports[0]}/" not in spawn["directive"]
        # Behind a balancer (or an old directive) the calls reach A, which
        # passes them to B, where the attempt runs.
        await work_as_sub_agent(http, spawn, via=a.base)
        await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {}})
        task = await ended(http, b, task_id)
        assert task["status"] == "passed" and task["result"]["value"] == {"by": task_id}
        assert set(task["attempts"][0]["served_by"].values()) == {op["sid"]}
        await ws.close()


@pytest.mark.parametrize("killed", [0, 1], ids=["node-a-killed", "node-b-killed"])
async def test_300_tasks_created_round_robin_all_pass_once_when_either_node_is_killed(
    pg_url: str, killed: int
) -> None:
    """Each node holds one role's socket; every task is created on the other
    node (a round-robin balancer at its worst), so each node runs half.  One
    node dies with all 300 in flight: the survivor takes its half over, the
    operator reconnects there, and every task passes, exactly once."""
    # Long enough that no handed task's lease lapses before it is claimed on a
    # loaded machine (then another node would take it over: still passed once,
    # but not where this test expects it).
    lease_s = 3.0
    nodes = await two_nodes(pg_url, lease_s, "--log-level", "warning")
    roles = ("ra", "rb")  # held on node a, on node b
    async with daemons(*nodes), aiohttp.ClientSession() as http:
        ops = [await _mint(http, node.base, role) for node, role in zip(nodes, roles, strict=True)]
        sockets = [await seated(http, node, op) for node, op in zip(nodes, ops, strict=True)]

        def body(i: int) -> dict[str, Any]:  # created on node i % 2, its role on the other
            return {**THIN, "operator": {"role": roles[1 - i % 2]}}

        ids = await asyncio.gather(*(create(http, nodes[i % 2], body(i)) for i in range(300)))
        on = [ids[1::2], ids[0::2]]  # the tasks whose role each node holds

        async def shown(ws: aiohttp.ClientWebSocketResponse, want: list[str]) -> dict[str, str]:
            spawns: dict[str, str] = {}
            while len(spawns) < len(want):  # every spawn shown, none answered
                spawn = await next_of(ws, "spawn")
                spawns[spawn["task_id"]] = spawn["req_id"]
            assert set(spawns) == set(want)
            return spawns

        held = await asyncio.gather(
            *(shown(ws, want) for ws, want in zip(sockets, on, strict=True))
        )
        dead, survivor = nodes[killed], nodes[1 - killed]
        dead.proc.send_signal(signal.SIGKILL)
        dead.proc.wait()
        # The survivor's operator answers its half; the dead node's comes
        # back on the survivor and answers the attempts re-dispatched there
        # (a request the dead node issued, replayed, is refused: no harm).
        for task_id, req_id in held[1 - killed].items():
            reply = {"type": "spawn_ack", "req_id": req_id, "value": task_id}
            await sockets[1 - killed].send_json(reply)
        moved = await seated(http, survivor, ops[killed])

        async def operate(ws: aiohttp.ClientWebSocketResponse) -> None:
            while True:
                found = await frame(ws, 60)
                if found["type"] == "spawn" and found["req_id"] not in answered:
                    answered.add(found["req_id"])
                    reply = {"type": "spawn_ack", "req_id": found["req_id"], "value": "again"}
                    await ws.send_json(reply)

        answered = set(held[1 - killed].values())
        operators = [asyncio.ensure_future(operate(ws)) for ws in (sockets[1 - killed], moved)]
        try:
            async with asyncio.timeout(lease_s + 25):  # a loaded 2-core machine
                tasks = await asyncio.gather(*(ended(http, survivor, t) for t in ids))
        finally:
            for operator in operators:
                operator.cancel()
        assert {t["id"]: t["status"] for t in tasks} == {t: "passed" for t in ids}
        for task in tasks:  # passed once; any attempt before cut short by the kill
            *cut, last = task["attempts"]
            assert last["status"] == "passed", task
            assert all(a["error"]["code"] == "interrupted" for a in cut), task
        by_id = {t["id"]: t for t in tasks}
        # The survivor's half ran there once; the dead node's passed on the survivor.
        assert all(len(by_id[t]["attempts"]) == 1 for t in on[1 - killed])
        assert all(len(by_id[t]["attempts"]) == 2 for t in on[killed])
        for ws in (*sockets, moved):
            await ws.close()

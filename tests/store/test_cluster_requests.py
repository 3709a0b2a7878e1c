"""Operator requests over REST in a cluster: two real daemons on one real
PostgreSQL.  Any node lists every node's requests, and a REST reply on one
node settles a request whose socket (and issuer) is on the other."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.store.test_cluster_routing import create, frame, mint, next_of, two_nodes
from tests.store.test_postgres_cluster import connect, daemons

HOOKED = {"agent": "coder", "directive": "x", "operator": {"role": "main"}, "max_attempts": 1}


async def listed(http: aiohttp.ClientSession, base: str) -> list[str]:
    async with http.get(f"{base}/v1/requests") as resp:
        assert resp.status == 200, await resp.text()
        return [r["req_id"] for r in (await resp.json())["requests"]]


async def reply(
    http: aiohttp.ClientSession, base: str, req_id: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/v1/requests/{req_id}/reply", json=body) as resp:
        return resp.status, await resp.json()


async def ended(http: aiohttp.ClientSession, base: str, task_id: str) -> dict[str, Any]:
    async with http.get(f"{base}/v1/tasks/{task_id}?wait=15") as resp:
        task: dict[str, Any] = await resp.json()
        return task


async def test_a_rest_reply_on_node_a_settles_a_request_whose_socket_is_on_node_b(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        op = await mint(http, b)
        ws = await connect(http, b, op)

        # Issued on B, where the socket is: A's reply is relayed to B.
        on_b = await create(http, b, HOOKED)
        hook = await next_of(ws, "hook_before")
        assert await listed(http, a.base) == [hook["req_id"]] == await listed(http, b.base)
        rejected = {"type": "hook_ack", "ok": False, "reason": "from node a"}
        assert await reply(http, a.base, hook["req_id"], rejected) == (
            200,
            {"req_id": hook["req_id"], "type": "hook_ack", "via": "rest"},
        )
        cancel = await next_of(ws, "cancel")
        assert (cancel["req_id"], cancel["reason"]) == (hook["req_id"], "answered_elsewhere")
        task = await ended(http, a.base, on_b)
        assert task["status"] == "failed" and "from node a" in task["error"]["message"]

        # Issued on A, the socket on B: settled on A, B's socket is withdrawn.
        on_a = await create(http, a, HOOKED)
        hook = await next_of(ws, "hook_before")
        assert hook["task_id"] == on_a
        assert await listed(http, b.base) == [hook["req_id"]]
        status, _ = await reply(http, a.base, hook["req_id"], rejected)
        assert status == 200
        cancel = await next_of(ws, "cancel")
        assert (cancel["req_id"], cancel["reason"]) == (hook["req_id"], "answered_elsewhere")
        # The socket's late reply, on B, is told it lost.
        await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
        late = await frame(ws)
        assert (late["type"], late["code"]) == ("error", "already_answered")
        assert (await ended(http, b.base, on_a))["status"] == "failed"
        assert await listed(http, a.base) == []

        async with http.get(f"{a.base}/v1/audit?action=hook.rejected") as resp:
            entries = (await resp.json())["entries"]
        assert sorted(e["task_id"] for e in entries) == sorted([on_a, on_b])
        assert {e["principal"] for e in entries} == {"local"}
        await ws.close()

"""An escalation step crosses nodes: two real daemons on one real PostgreSQL,
the task and its first step's operator on node A, the next step's role held by
an operator minted and connected on node B."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.store.test_cluster_routing import create, next_of, two_nodes
from tests.store.test_postgres_cluster import connect, daemons


async def _mint(http: aiohttp.ClientSession, base: str, role: str) -> dict[str, Any]:
    async with http.post(f"{base}/v1/operators", json={"roles": [role]}) as resp:
        assert resp.status == 201, await resp.text()
        op: dict[str, Any] = await resp.json()
        return op


async def test_a_request_escalates_to_a_role_held_on_the_other_node(pg_url: str) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws1 = await connect(http, a, await _mint(http, a.base, "l1"))
        l2 = await _mint(http, b.base, "l2")
        ws2 = await connect(http, b, l2)
        operator = {"role": "l1", "escalate": [{"after_s": 1, "role": "l2"}]}
        body = {"agent": "coder", "directive": "x", "operator": operator, "max_attempts": 1}
        task_id = await create(http, a, body)

        hb = await next_of(ws1, "hook_before")
        cancel = await next_of(ws1, "cancel")
        assert (cancel["req_id"], cancel["reason"]) == (hb["req_id"], "escalated")
        assert await next_of(ws2, "hook_before") == hb  # same request, on B's socket
        await ws1.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
        error = await next_of(ws1, "error")
        assert (error["code"], error["req_id"]) == ("already_moved", hb["req_id"])
        # B's operator answers; the reply reaches the attempt on A and counts.
        await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
        async with http.get(f"{a.base}/v1/tasks/{task_id}?wait=15") as resp:
            task = await resp.json()
        assert (task["status"], task["error"]["code"]) == ("failed", "spawn_rejected")
        assert task["attempts"][0]["served_by"]
        for ws in (ws1, ws2):
            await ws.close()


async def test_an_escalated_request_is_seen_by_whoever_operates_its_new_role(pg_url: str) -> None:
    """A moved request is stored under its new holder: a key that may operate
    only the next step's role reads and answers it over REST on either node."""
    boot = {"Authorization": "Bearer cluster-bootstrap"}
    a, b = await two_nodes(pg_url, 10, "--api-token", "cluster-bootstrap")
    async with daemons(a, b), aiohttp.ClientSession(headers=boot) as http:
        ws1 = await connect(http, a, await _mint(http, a.base, "l1"))
        ws2 = await connect(http, b, await _mint(http, b.base, "l2"))
        async with http.post(
            f"{a.base}/v1/keys", json={"name": "second-line", "scopes": ["operate:l2"]}
        ) as resp:
            assert resp.status == 201, await resp.text()
            key = {"Authorization": f"Bearer {(await resp.json())['key']}"}
        operator = {"role": "l1", "escalate": [{"after_s": 1, "role": "l2"}]}
        body = {"agent": "coder", "directive": "x", "operator": operator, "max_attempts": 1}
        task_id = await create(http, a, body)
        hb = await next_of(ws1, "hook_before")
        assert await next_of(ws2, "hook_before") == hb  # moved to l2, on B's socket
        for node in (a, b):
            async with http.get(f"{node.base}/v1/requests/{hb['req_id']}", headers=key) as resp:
                assert resp.status == 200, await resp.text()
        reply = {"type": "hook_ack", "ok": False, "reason": "second line says no"}
        async with http.post(
            f"{a.base}/v1/requests/{hb['req_id']}/reply", json=reply, headers=key
        ) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{a.base}/v1/tasks/{task_id}?wait=15") as resp:
            assert (await resp.json())["status"] == "failed"
        for ws in (ws1, ws2):
            await ws.close()

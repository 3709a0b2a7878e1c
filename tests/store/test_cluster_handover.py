"""A seat handover crosses nodes: two real daemons on one real PostgreSQL, the
source session (and the task whose request it holds) on node A, the target
minted and connected on node B.  The request moves to B's socket once, B's
reply counts on A, the source's late reply gets ``already_moved``, and the
store says who holds the roles now."""

from __future__ import annotations

import aiohttp
import asyncpg

from tests.store.test_cluster_escalation import _mint
from tests.store.test_cluster_routing import create, next_of, two_nodes
from tests.store.test_postgres_cluster import connect, daemons


async def test_a_handover_to_a_session_on_the_other_node_moves_its_request_there(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        source = await _mint(http, a.base, "l1")
        ws1 = await connect(http, a, source)
        target = await _mint(http, b.base, "night")
        ws2 = await connect(http, b, target)
        body = {"agent": "coder", "directive": "x", "operator": {"role": "l1"}, "max_attempts": 1}
        task_id = await create(http, a, body)
        hb = await next_of(ws1, "hook_before")

        async with http.post(
            f"{a.base}/v1/operators/{source['sid']}/handover",
            json={"sid": target["sid"]},
            headers={"Authorization": f"Bearer {source['token']}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["moved"] == [hb["req_id"]]
        cancel = await next_of(ws1, "cancel")
        assert (cancel["req_id"], cancel["reason"]) == (hb["req_id"], "handed_over")
        assert await next_of(ws2, "hook_before") == hb  # the same request, on B's socket
        await ws1.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
        error = await next_of(ws1, "error")
        assert (error["code"], error["req_id"]) == ("already_moved", hb["req_id"])
        await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
        async with http.get(f"{a.base}/v1/tasks/{task_id}?wait=15") as resp:
            task = await resp.json()
        assert (task["status"], task["error"]["code"]) == ("failed", "spawn_rejected")

        db = await asyncpg.connect(pg_url)
        try:
            rows = await db.fetch("SELECT role, sid FROM operator_roles ORDER BY role")
        finally:
            await db.close()
        assert [(r["role"], r["sid"]) for r in rows] == [
            ("l1", target["sid"]),
            ("night", target["sid"]),
        ]
        for ws in (ws1, ws2):
            await ws.close()

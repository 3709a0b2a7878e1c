"""Operator requests over REST in a cluster: two real daemons on one real
PostgreSQL.  Any node lists every node's requests, and a REST reply on one
node settles a request whose socket (and issuer) is on the other."""

from __future__ import annotations

from datetime import datetime, timedelta
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


async def _shown(http: aiohttp.ClientSession, base: str, req_id: str) -> dict[str, Any]:
    async with http.get(f"{base}/v1/requests/{req_id}") as resp:
        assert resp.status == 200, await resp.text()
        shown: dict[str, Any] = await resp.json()
    async with http.get(f"{base}/v1/requests") as resp:
        listed = (await resp.json())["requests"]
    assert [{**r, "waiting_s": 0} for r in listed] == [{**shown, "waiting_s": 0}]
    return shown


async def test_another_node_shows_a_requests_deadline_step_and_moves_as_its_issuer_does(
    pg_url: str,
) -> None:
    """Issued and escalated on A, its step's holder on B, then reassigned on A:
    B reads the request's course from its stored row, as A reads it from
    the request itself."""
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws1 = await connect(http, a, await _mint_role(http, a.base, "l1"))
        ws2 = await connect(http, b, await _mint_role(http, b.base, "l2"))
        ws3 = await connect(http, a, await _mint_role(http, a.base, "review"))
        operator = {"role": "l1", "escalate": [{"after_s": 1, "role": "l2"}], "deadline_s": 60}
        body = {"agent": "coder", "directive": "x", "operator": operator, "max_attempts": 1}
        task_id = await create(http, a, body)
        hb = await next_of(ws1, "hook_before")
        assert await next_of(ws2, "hook_before") == hb  # escalated to l2, on B's socket

        on_a, on_b = (
            await _shown(http, a.base, hb["req_id"]),
            await _shown(http, b.base, hb["req_id"]),
        )
        assert {**on_b, "waiting_s": 0} == {**on_a, "waiting_s": 0}
        assert on_b["step"] == 1
        assert [(m["from"], m["to"], m["reason"], m["step"]) for m in on_b["moves"]] == [
            ("l1", "l2", "escalated", 1)
        ]
        # At the last step its deadline counts from when it got there.
        waits = datetime.fromisoformat(on_b["deadline_at"]) - datetime.fromisoformat(
            on_b["moves"][0]["at"]
        )
        assert abs(waits - timedelta(seconds=60)) <= timedelta(milliseconds=1)  # rounding only

        sid2 = on_b["holder"]["sid"]
        async with http.post(
            f"{a.base}/v1/requests/{hb['req_id']}/reassign", json={"role": "review", "note": "n"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        assert await next_of(ws3, "hook_before") == hb
        on_b = await _shown(http, b.base, hb["req_id"])
        assert {**on_b, "waiting_s": 0} == {
            **await _shown(http, a.base, hb["req_id"]),
            "waiting_s": 0,
        }
        assert [(m["from"], m["to"], m["reason"], m["note"]) for m in on_b["moves"]] == [
            ("l1", "l2", "escalated", None),
            (sid2, "review", "reassigned", "n"),
        ]
        await ws3.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
        assert (await ended(http, b.base, task_id))["status"] == "failed"
        for ws in (ws1, ws2, ws3):
            await ws.close()


async def _mint_role(http: aiohttp.ClientSession, base: str, role: str) -> dict[str, Any]:
    async with http.post(f"{base}/v1/operators", json={"roles": [role]}) as resp:
        assert resp.status == 201, await resp.text()
        op: dict[str, Any] = await resp.json()
        return op

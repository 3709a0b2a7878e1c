"""Reassignment and seat handover from any node: two real daemons on one real
PostgreSQL, the request issued on one node, the move asked for on the other
(over REST, with a socket's ``reassign`` frame, or by a handover), and role
changes on one node seen by the other's role map and waiting requests."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.store.test_cluster_escalation import _mint
from tests.store.test_cluster_routing import create, next_of, two_nodes, until_pong
from tests.store.test_postgres_cluster import connect, daemons, ended

HOOKED = {"agent": "coder", "directive": "x", "operator": {"role": "l1"}, "max_attempts": 1}
BOOT = {"Authorization": "Bearer cluster-bootstrap"}


def bearer(op: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {op['token']}"}


async def reassign(
    http: aiohttp.ClientSession, base: str, req_id: str, body: Any, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{base}/v1/requests/{req_id}/reassign", json=body, headers=headers
    ) as resp:
        found: dict[str, Any] = await resp.json()
        return resp.status, found


async def test_a_rest_reassign_on_one_node_moves_a_request_issued_on_the_other(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url, 10, "--api-token", "cluster-bootstrap")
    async with daemons(a, b), aiohttp.ClientSession(headers=BOOT) as http:
        l1 = await _mint(http, b.base, "l1")
        ws1 = await connect(http, b, l1)
        l2 = await _mint(http, b.base, "l2")
        ws2 = await connect(http, a, l2)
        async with http.post(
            f"{b.base}/v1/keys", json={"name": "outsider", "scopes": ["operate:other"]}
        ) as resp:
            outsider = {"Authorization": f"Bearer {(await resp.json())['key']}"}
        task_id = await create(http, b, HOOKED)
        hb = await next_of(ws1, "hook_before")
        req_id = hb["req_id"]

        # Refused on A as B would: a principal that may not operate l1, a bad target.
        status, body = await reassign(http, a.base, req_id, {"role": "l2"}, outsider)
        assert (status, body["error"]["code"]) == (403, "forbidden"), body
        status, body = await reassign(http, a.base, req_id, {"role": "l1"}, bearer(l1))
        assert (status, body["error"]["code"]) == (400, "bad_request"), body
        # The holder's own token, on the node that neither issued it nor shows it.
        status, body = await reassign(
            http, a.base, req_id, {"role": "l2", "note": "yours"}, bearer(l1)
        )
        assert status == 200, body
        assert body == {"req_id": req_id, "from": l1["sid"], "to": "l2"}
        cancel = await next_of(ws1, "cancel")
        assert (cancel["req_id"], cancel["reason"]) == (req_id, "reassigned")
        assert await next_of(ws2, "hook_before") == hb  # the same request, on A's socket
        # Now l2 holds it: l1's token may no longer move it.
        status, body = await reassign(http, a.base, req_id, {"role": "l1"}, bearer(l1))
        assert (status, body["error"]["code"]) == (403, "forbidden"), body

        await ws2.send_json({"type": "hook_ack", "req_id": req_id, "ok": False})
        task = await ended(http, b, task_id)
        assert (task["status"], task["error"]["code"]) == ("failed", "spawn_rejected")
        status, body = await reassign(http, a.base, req_id, {"role": "l1"}, BOOT)
        assert (status, body["error"]["code"]) == (409, "already_answered"), body
        status, body = await reassign(http, a.base, f"{l1['sid']}-hb-none", {"role": "l2"}, BOOT)
        assert (status, body["error"]["code"]) == (404, "request_not_found"), body
        for ws in (ws1, ws2):
            await ws.close()


async def test_a_reassign_frame_on_one_node_moves_a_request_issued_on_the_other(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        l1 = await _mint(http, a.base, "l1")
        ws1 = await connect(http, a, l1)
        ws2 = await connect(http, b, await _mint(http, b.base, "l2"))
        task_id = await create(http, b, HOOKED)  # issued by B, shown on A's socket
        hb = await next_of(ws1, "hook_before")

        await ws1.send_json({"type": "reassign", "req_id": hb["req_id"], "role": "l2"})
        cancel = await next_of(ws1, "cancel")
        assert (cancel["req_id"], cancel["reason"]) == (hb["req_id"], "reassigned")
        assert await next_of(ws2, "hook_before") == hb
        await ws1.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
        error = await next_of(ws1, "error")
        assert (error["code"], error["req_id"]) == ("already_moved", hb["req_id"])
        # A request it no longer holds: refused, as on one node.
        await ws1.send_json({"type": "reassign", "req_id": hb["req_id"], "role": "l1"})
        error = await next_of(ws1, "error")
        assert (error["code"], error["req_id"]) == ("already_moved", hb["req_id"])

        await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
        task = await ended(http, b, task_id)
        assert (task["status"], task["error"]["code"]) == ("failed", "spawn_rejected")
        for ws in (ws1, ws2):
            await ws.close()


async def test_a_handover_moves_the_sources_requests_issued_on_every_node_once(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        source = await _mint(http, a.base, "l1")
        ws1 = await connect(http, a, source)
        target = await _mint(http, b.base, "night")
        ws2 = await connect(http, b, target)
        on_a = await create(http, a, HOOKED)
        on_b = await create(http, b, HOOKED)
        raced = await create(http, b, HOOKED)
        held = {}
        while len(held) < 3:
            hb = await next_of(ws1, "hook_before")
            held[hb["task_id"]] = hb

        # A reply from the source races the handover: it counts, or it moved.
        race = held[raced]["req_id"]
        await ws1.send_json({"type": "hook_ack", "req_id": race, "ok": False})
        async with http.post(
            f"{a.base}/v1/operators/{source['sid']}/handover",
            json={"sid": target["sid"]},
            headers=bearer(source),
        ) as resp:
            assert resp.status == 200, await resp.text()
            moved = set((await resp.json())["moved"])
        others = {held[on_a]["req_id"], held[on_b]["req_id"]}
        assert others <= moved and moved <= others | {race}

        # The pong follows the race's answer (a reply passed on is awaited first).
        seen = await until_pong(ws1, "handover")
        refused = [f for f in seen if f["type"] == "error" and f["req_id"] == race]
        assert bool(refused) == (race in moved)  # already_moved iff it moved
        assert all(f["code"] == "already_moved" for f in refused)
        # A cancel from the other node's withdrawal may come after the pong.
        cancels = [f for f in seen if f["type"] == "cancel"]
        while len(cancels) < len(moved):
            cancels.append(await next_of(ws1, "cancel"))
        assert {f["req_id"] for f in cancels} == moved
        assert {f["reason"] for f in cancels} == {"handed_over"}

        shown = {}
        while len(shown) < len(moved):
            hb = await next_of(ws2, "hook_before")
            shown[hb["req_id"]] = hb
        assert set(shown) == moved
        await ws1.send_json({"type": "hook_ack", "req_id": held[on_b]["req_id"], "ok": True})
        late = await next_of(ws1, "error")
        assert (late["code"], late["req_id"]) == ("already_moved", held[on_b]["req_id"])
        for req_id in moved:
            await ws2.send_json({"type": "hook_ack", "req_id": req_id, "ok": False})
        for task_id, node in ((on_a, a), (on_b, b), (raced, b)):
            task = await ended(http, node, task_id)
            assert (task["status"], task["error"]["code"]) == ("failed", "spawn_rejected")
        # Nothing left for anyone: every request ended once.
        assert [f for f in await until_pong(ws2, "end") if f["type"] == "hook_before"] == []
        for ws in (ws1, ws2):
            await ws.close()


async def test_after_a_handover_on_one_node_the_other_node_sends_the_role_to_the_target(
    pg_url: str,
) -> None:
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        source = await _mint(http, b.base, "l1")  # B's role map: l1 -> source
        ws1 = await connect(http, b, source)
        target = await _mint(http, a.base, "night")
        ws2 = await connect(http, a, target)
        async with http.post(
            f"{a.base}/v1/operators/{source['sid']}/handover",
            json={"sid": target["sid"]},
            headers=bearer(source),
        ) as resp:
            assert resp.status == 200, await resp.text()

        task_id = await create(http, b, HOOKED)
        hb = await next_of(ws2, "hook_before")
        assert hb["task_id"] == task_id
        assert [f for f in await until_pong(ws1, "src") if f["type"] == "hook_before"] == []
        await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
        task = await ended(http, b, task_id)
        assert (task["status"], task["error"]["code"]) == ("failed", "spawn_rejected")
        for ws in (ws1, ws2):
            await ws.close()


async def test_a_request_waiting_for_a_role_reaches_a_session_seated_later_on_the_other_node(
    pg_url: str,
) -> None:
    """The request waits on A for ``l2``, which nobody holds; l2 is minted and
    connected on B: it gets the request at once, not when the step's clock
    (60 s here) ends the wait."""
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws1 = await connect(http, a, await _mint(http, a.base, "l1"))
        operator = {"role": "l1", "escalate": [{"after_s": 0.5, "role": "l2"}]}
        task_id = await create(http, a, {**HOOKED, "operator": operator})
        hb = await next_of(ws1, "hook_before")
        cancel = await next_of(ws1, "cancel")
        assert (cancel["req_id"], cancel["reason"]) == (hb["req_id"], "escalated")

        l2 = await _mint(http, b.base, "l2")
        ws2 = await connect(http, b, l2)
        assert await next_of(ws2, "hook_before") == hb
        await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
        task = await asyncio.wait_for(ended(http, a, task_id), 20)
        assert (task["status"], task["error"]["code"]) == ("failed", "spawn_rejected")
        for ws in (ws1, ws2):
            await ws.close()


async def test_a_request_waiting_on_one_node_for_a_role_nobody_holds_is_reassigned_from_the_other(
    pg_url: str,
) -> None:
    """A request waiting for a role has no row: the node asked finds it by
    asking the others (here the loopback admin asks B; A holds it)."""
    a, b = await two_nodes(pg_url)
    async with daemons(a, b), aiohttp.ClientSession() as http:
        ws1 = await connect(http, a, await _mint(http, a.base, "l1"))
        ws3 = await connect(http, a, await _mint(http, a.base, "l3"))
        operator = {"role": "l1", "escalate": [{"after_s": 0.5, "role": "l2"}]}
        task_id = await create(http, a, {**HOOKED, "operator": operator})
        hb = await next_of(ws1, "hook_before")
        await next_of(ws1, "cancel")  # escalated to l2, which nobody holds

        # Until A has looked for l2 in the store, the request is on its way
        # (409 ``already_moved``: "retry"); then it waits, and B finds it there.
        for _ in range(100):
            status, body = await reassign(http, b.base, hb["req_id"], {"role": "l3"}, {})
            if status != 409 or body["error"]["code"] != "already_moved":
                break
        assert status == 200, body
        assert body == {"req_id": hb["req_id"], "from": "l2", "to": "l3"}
        assert await next_of(ws3, "hook_before") == hb
        await ws3.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
        task = await ended(http, a, task_id)
        assert (task["status"], task["error"]["code"]) == ("failed", "spawn_rejected")
        for ws in (ws1, ws3):
            await ws.close()

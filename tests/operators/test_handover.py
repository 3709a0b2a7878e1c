"""Seat handover through a real server and real operator sockets: a session's
roles and every request it holds go to another session at once, on disk
before the answer; the source stays with no roles and its late replies get
``already_moved``; replies racing the handover count exactly once and none is
lost.  Nothing here measures time."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.audit.test_decisions import audit
from tests.conftest import Server, create_task, wait_task
from tests.http.sse import read_all
from tests.wsop import connect, expect, mint, recv


def _stored_roles(path: Path) -> dict[str, list[str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT sid, roles FROM operator_sessions").fetchall()
    return {sid: json.loads(roles) for sid, roles in rows}


async def _events(client: TestClient[Any, Any], task_id: str, kind: str) -> list[dict[str, Any]]:
    events = await read_all(await client.get(f"/v1/tasks/{task_id}/events"))
    return [e.data for e in events if e.type == kind]


async def test_a_handover_moves_the_roles_and_the_pending_requests_to_the_target(
    server: Server, tmp_path: Path
) -> None:
    path = tmp_path / "seat.sqlite"
    client = await server(store__path=str(path))
    source, token = await mint(client, roles=["l1", "triage"])
    ws1 = await connect(client, source, token)
    target, target_token = await mint(client, roles=["night"])
    ws2 = await connect(client, target, target_token)
    task = await create_task(client, agent="coder", operator={"role": "l1"})
    hb = await expect(ws1, "hook_before")

    resp = await client.post(
        f"/v1/operators/{source}/handover",
        json={"sid": target},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "sid": source,
        "target": target,
        "roles": ["l1", "triage"],
        "moved": [hb["req_id"]],
    }
    # On disk before the answer, both rows.
    assert _stored_roles(path) == {source: [], target: ["night", "l1", "triage"]}
    assert await expect(ws1, "cancel") == {
        "type": "cancel",
        "req_id": hb["req_id"],
        "reason": "handed_over",
    }
    assert await expect(ws2, "hook_before") == hb
    # The source stays, with no roles; its late reply changes nothing.
    info = await (
        await client.get(f"/v1/operators/{source}", headers={"Authorization": f"Bearer {token}"})
    ).json()
    assert info["roles"] == []
    await ws1.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
    assert (await expect(ws1, "error"))["code"] == "already_moved"
    await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
    # The role is the target's now: the task's next request goes there.
    spawn = await expect(ws2, "spawn")
    await ws2.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    assert (await wait_task(client, task["id"]))["status"] == "passed"

    moved = await _events(client, task["id"], "request_moved")
    assert [(m["req_id"], m["from"], m["to"], m["reason"]) for m in moved] == [
        (hb["req_id"], source, target, "handed_over")
    ]
    entries = await audit(client, action="session.handed_over")
    assert [(e["session_id"], e["outcome"], e["reason"]) for e in entries] == [
        (source, f"{source} -> {target}", "l1,triage")
    ]


async def test_bad_handovers_are_refused_naming_what_is_wrong(server: Server) -> None:
    client = await server(api_token="admin-secret")
    admin = {"Authorization": "Bearer admin-secret"}
    made = []
    for roles in (["l1"], ["l2"]):
        resp = await client.post("/v1/operators", json={"roles": roles}, headers=admin)
        made.append(await resp.json())
    source, other = made
    auth = {"Authorization": f"Bearer {source['token']}"}
    url = f"/v1/operators/{source['sid']}/handover"
    for body, status, names in (
        ({}, 400, "sid"),
        ({"sid": source["sid"]}, 400, "itself"),
        ({"sid": "op-missing"}, 400, "op-missing"),
    ):
        resp = await client.post(url, json=body, headers=auth)
        assert resp.status == status, await resp.text()
        assert names in (await resp.json())["error"]["message"]
    # Another session's token is not the source's: 401, as on every session route.
    resp = await client.post(
        url, json={"sid": other["sid"]}, headers={"Authorization": f"Bearer {other['token']}"}
    )
    assert resp.status == 401
    missing = await client.post(
        "/v1/operators/op-missing/handover", json={"sid": other["sid"]}, headers=admin
    )
    assert missing.status == 404
    # The admin may hand any seat over.
    resp = await client.post(url, json={"sid": other["sid"]}, headers=admin)
    assert resp.status == 200, await resp.text()
    entries = await (
        await client.get("/v1/audit", params={"action": "session.handed_over"}, headers=admin)
    ).json()
    assert [e["principal"] for e in entries["entries"]] == ["bootstrap"]


async def test_replies_racing_a_handover_count_exactly_once_and_none_is_lost(
    server: Server, tmp_path: Path
) -> None:
    # On disk: the handover's commit leaves replies time to arrive while it is written.
    client = await server(store__path=str(tmp_path / "race.sqlite"))
    source, token = await mint(client, roles=["l1"])
    ws1 = await connect(client, source, token)
    target, target_token = await mint(client, roles=["l2"])
    ws2 = await connect(client, target, target_token)
    count = 20
    tasks = [
        await create_task(client, agent="coder", operator={"role": "l1"}) for _ in range(count)
    ]
    held = [(await expect(ws1, "hook_before"))["req_id"] for _ in range(count)]

    early, racing, late = held[:5], held[5:15], held[15:]

    async def reply(req_ids: list[str]) -> None:
        for req_id in req_ids:
            await ws1.send_json({"type": "hook_ack", "req_id": req_id, "ok": False})
            await asyncio.sleep(0)  # let the handover's request go out between them

    await reply(early)  # before the handover: these count from the source
    await ws1.send_json({"type": "ping", "id": "early"})
    assert await expect(ws1, "pong") == {"type": "pong", "id": "early"}
    # A warm connection: the POST goes out at once, among the racing replies.
    assert (await client.get("/v1/healthz")).status == 200
    resp, _ = await asyncio.gather(
        client.post(
            f"/v1/operators/{source}/handover",
            json={"sid": target},
            headers={"Authorization": f"Bearer {token}"},
        ),
        reply(racing),
    )
    assert resp.status == 200, await resp.text()
    await reply(late)  # after it: every one of these has moved
    moved = (await resp.json())["moved"]
    # Whatever moved reaches the target, which answers it too.
    for _ in moved:
        frame = await expect(ws2, "hook_before")
        await ws2.send_json({"type": "hook_ack", "req_id": frame["req_id"], "ok": False})
    for task in tasks:  # none is lost: every task ends, rejected
        assert (await wait_task(client, task["id"]))["error"]["code"] == "spawn_rejected"
    # The source saw a cancel for each moved request and already_moved for its reply.
    await ws1.send_json({"type": "ping", "id": "barrier"})
    told: Counter[tuple[str, str]] = Counter()
    while (frame := await recv(ws1))["type"] != "pong":
        told[(frame["type"], frame.get("code") or frame.get("reason", ""))] += 1
    assert told == Counter(
        {("cancel", "handed_over"): len(moved), ("error", "already_moved"): len(moved)}
    )
    # Exactly one reply counted per request, from the source or (once moved) the target.
    rejected = await audit(client, action="hook.rejected")
    assert Counter(e["req_id"] for e in rejected) == Counter(dict.fromkeys(held, 1))
    by = {e["req_id"]: e["session_id"] for e in rejected}
    assert {r for r in held if by[r] == target} == set(moved)
    assert set(late) <= set(moved) and not set(early) & set(moved)

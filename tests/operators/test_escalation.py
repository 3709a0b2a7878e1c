"""Escalation chains through a real server and real operator sockets: a request
nobody answers moves from role to role, keeping its req_id; a late reply from
an earlier holder gets ``already_moved``; every move is an event and an audit
row; a role nobody holds makes the request wait for it; bad chains are 400s.
Steps are short and set by the task; nothing here measures time, only what
the server did once a step passed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from tests.audit.test_decisions import audit
from tests.conftest import Server, create_task, wait_task
from tests.http.sse import read_all
from tests.wsop import connect, expect, mint

# Short enough to end a test quickly; the socket is read well within it.
STEP = 0.3


async def _seat(client: TestClient[Any, Any], role: str) -> tuple[str, ClientWebSocketResponse]:
    sid, token = await mint(client, roles=[role])
    return sid, await connect(client, sid, token)


def _chain(*roles: str) -> dict[str, Any]:
    first, *rest = roles
    return {"role": first, "escalate": [{"after_s": STEP, "role": r} for r in rest]}


async def test_a_request_nobody_answers_climbs_the_chain_and_one_reply_counts(
    server: Server, tmp_path: Path
) -> None:
    client = await server(store__path=str(tmp_path / "chain.sqlite"))
    sid1, ws1 = await _seat(client, "l1")
    sid2, ws2 = await _seat(client, "l2")
    sid3, ws3 = await _seat(client, "oncall")
    task = await create_task(client, agent="coder", operator=_chain("l1", "l2", "oncall"))

    hb = await expect(ws1, "hook_before")
    assert await expect(ws1, "cancel") == {
        "type": "cancel",
        "req_id": hb["req_id"],
        "reason": "escalated",
    }
    # The same request, not a new one: same req_id, same frame.
    assert await expect(ws2, "hook_before") == hb
    assert (await expect(ws2, "cancel"))["reason"] == "escalated"
    assert await expect(ws3, "hook_before") == hb

    # The earlier holders answer late: refused, nothing changes.
    for ws in (ws1, ws2):
        await ws.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
        error = await expect(ws, "error")
        assert (error["code"], error["req_id"]) == ("already_moved", hb["req_id"])
    await ws3.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
    # The spawn is a new request of the task: it starts again at the first step.
    spawn = await expect(ws1, "spawn")
    await ws1.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"

    resp = await client.get(f"/v1/tasks/{task['id']}/events")
    events = await read_all(resp)
    moved = [e.data for e in events if e.type == "request_moved"]
    assert [(m["req_id"], m["from"], m["to"], m["step"], m["reason"]) for m in moved] == [
        (hb["req_id"], "l1", "l2", 1, "escalated"),
        (hb["req_id"], "l2", "oncall", 2, "escalated"),
    ]
    assert [m["sid"] for m in moved] == [sid1, sid2]
    assert [m["after_s"] for m in moved] == [STEP, STEP]
    replies = [e.data for e in events if e.type == "reply" and e.data["req_id"] == hb["req_id"]]
    assert [r["sid"] for r in replies] == [sid3]  # exactly one reply counted: the third's

    entries = await audit(client, task_id=task["id"], action="request.escalated")
    assert [(e["req_id"], e["session_id"], e["outcome"]) for e in entries] == [
        (hb["req_id"], sid1, "l1 -> l2"),
        (hb["req_id"], sid2, "l2 -> oncall"),
    ]
    approved = await audit(client, task_id=task["id"], action="hook.approved")
    assert [e["session_id"] for e in approved] == [sid3]


async def test_after_the_last_step_the_deadline_counts_and_decides(server: Server) -> None:
    client = await server()
    _, ws1 = await _seat(client, "l1")
    _, ws2 = await _seat(client, "l2")
    operator = {
        **_chain("l1", "l2"),
        "deadlines": {"hook_before": {"deadline_s": STEP, "on_timeout": "fail"}},
    }
    task = await create_task(client, agent="coder", operator=operator)
    hb = await expect(ws1, "hook_before")
    assert (await expect(ws1, "cancel"))["reason"] == "escalated"
    assert (await expect(ws2, "hook_before"))["req_id"] == hb["req_id"]
    cancel = await expect(ws2, "cancel")
    assert cancel["reason"] == f"no reply within {STEP:g}s"
    done = await wait_task(client, task["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "operator_timeout")


async def test_a_step_to_a_role_nobody_holds_waits_for_its_first_holder(
    server: Server,
) -> None:
    client = await server()
    _, ws1 = await _seat(client, "l1")
    task = await create_task(client, agent="coder", operator=_chain("l1", "l2"))
    hb = await expect(ws1, "hook_before")
    assert (await expect(ws1, "cancel"))["reason"] == "escalated"
    # Nobody holds l2 yet: the request waits there, and its first holder gets it.
    sid2, token2 = await mint(client, roles=["l2"])
    ws2 = await connect(client, sid2, token2)
    assert await expect(ws2, "hook_before") == hb
    await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
    done = await wait_task(client, task["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "spawn_rejected")


async def test_a_bad_chain_is_a_400_naming_the_field(server: Server) -> None:
    client = await server()
    bad = {
        "escalate.0.after_s": [{"after_s": 0, "role": "l2"}],
        "escalate.0.role": [{"after_s": 1, "role": ""}],
        "escalate.1.role": [{"after_s": 1, "role": "l2"}, {"after_s": 1}],
        "escalate": [{"after_s": 1, "role": f"r{i}"} for i in range(11)],
    }
    for field, chain in bad.items():
        body = {"agent": "coder", "directive": "x", "operator": {"role": "l1", "escalate": chain}}
        resp = await client.post("/v1/tasks", json=body)
        assert resp.status == 400, (field, await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] == "bad_request"
        assert error["message"].startswith(f"operator.{field}: "), (field, error)
    resp = await client.get("/v1/openapi.json")
    schemas = (await resp.json())["components"]["schemas"]
    assert "escalate" in schemas["OperatorSpec"]["properties"]
    assert set(schemas["EscalationStep"]["required"]) == {"after_s", "role"}

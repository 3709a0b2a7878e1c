"""Worker asks: a sub-agent asks the senior mid-spawn, over real HTTP and a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Server, create_task, wait_task
from tests.wsop import connect, eventually, expect, mint, no_frame

FORM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "title": "Branch name"},
        "level": {"type": "string", "enum": ["low", "high"], "default": "low"},
        "merge": {"type": "boolean", "description": "merge when done"},
        "retries": {"type": "integer", "minimum": 0},
    },
    "required": ["name", "merge"],
}


async def spawned(
    client: TestClient[Any, Any], **operator: Any
) -> tuple[str, Any, dict[str, Any], dict[str, Any]]:
    """A seated operator holding a fresh task's spawn: (sid, socket, task, spawn)."""
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator=operator or {"sid": sid})
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    return sid, ws, task, await expect(ws, "spawn")


def auth(spawn: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {spawn['worker_handle']}"}


async def post_ask(
    client: TestClient[Any, Any], spawn: dict[str, Any], status: int, **body: Any
) -> dict[str, Any]:
    resp = await client.post("/v1/worker/ask", json=body, headers=auth(spawn))
    assert resp.status == status, await resp.text()
    out: dict[str, Any] = await resp.json()
    return out


async def get_ask(
    client: TestClient[Any, Any], spawn: dict[str, Any], ask_id: str, wait: float, status: int
) -> dict[str, Any]:
    resp = await client.get(
        f"/v1/worker/ask/{ask_id}", params={"wait": str(wait)}, headers=auth(spawn)
    )
    assert resp.status == status, await resp.text()
    out: dict[str, Any] = await resp.json()
    return out


async def test_a_worker_asks_mid_spawn_nested_under_the_spawn_and_gets_the_answer(
    server: Server,
) -> None:
    client = await server()
    sid, ws, task, spawn = await spawned(client)
    asking = asyncio.create_task(
        post_ask(client, spawn, 200, question={"which": "branch?"}, timeout_s=10)
    )
    ask = await expect(ws, "ask")
    assert ask["req_id"].startswith(f"{sid}-ask-")
    assert ask["parent_req_id"] == spawn["req_id"]
    assert ask["task_id"] == task["id"] and ask["question"] == {"which": "branch?"}
    assert "answer_schema" not in ask
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": "main"})
    answered = await asking
    assert answered == {"ask_id": answered["ask_id"], "value": "main"}

    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    [listed] = done["attempts"][0]["asks"]
    assert listed["ask_id"] == answered["ask_id"]
    assert listed["req_id"] == ask["req_id"] and listed["parent_req_id"] == spawn["req_id"]
    assert listed["question"] == {"which": "branch?"} and listed["answer_schema"] is None
    assert listed["status"] == "answered" and listed["answer"] == "main"
    assert listed["declined"] is None and listed["answered_by"] == sid
    assert listed["asked_at"] <= listed["answered_at"]


async def test_a_child_tasks_worker_asks_nested_under_the_childs_own_spawn(
    server: Server,
) -> None:
    client = await server()
    sid, ws, parent, parent_spawn = await spawned(client)
    child = await create_task(
        client, agent="helper", operator={"sid": sid}, parent_task_id=parent["id"]
    )
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    child_spawn = await expect(ws, "spawn")
    assert child_spawn["task_id"] == child["id"]
    assert child_spawn["parent_req_id"] == parent_spawn["req_id"]

    # The child's worker asks during the child's spawn: nested under that
    # spawn, not under the parent's one the child itself is nested under.
    asking = asyncio.create_task(post_ask(client, child_spawn, 200, question="ok?", timeout_s=10))
    ask = await expect(ws, "ask")
    assert ask["task_id"] == child["id"]
    assert ask["parent_req_id"] == child_spawn["req_id"]
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": "yes"})
    assert (await asking)["value"] == "yes"
    await ws.send_json({"type": "spawn_ack", "req_id": child_spawn["req_id"], "value": 1})
    await expect(ws, "hook_after")
    done = await wait_task(client, child["id"])
    assert done["attempts"][0]["asks"][0]["parent_req_id"] == child_spawn["req_id"]
    await ws.send_json({"type": "spawn_ack", "req_id": parent_spawn["req_id"], "value": 2})
    assert (await wait_task(client, parent["id"]))["status"] == "passed"
    await ws.close()


async def test_a_pending_ask_answers_202_and_a_later_wait_returns_the_answer(
    server: Server,
) -> None:
    client = await server()
    _, ws, _, spawn = await spawned(client)
    pending = await post_ask(client, spawn, 202, question="go?", timeout_s=0)
    assert pending == {"ask_id": pending["ask_id"], "status": "pending"}
    ask = await expect(ws, "ask")
    still = await get_ask(client, spawn, pending["ask_id"], 0, 202)
    assert still["status"] == "pending"

    waiting = asyncio.create_task(get_ask(client, spawn, pending["ask_id"], 10, 200))
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": True})
    assert await waiting == {"ask_id": pending["ask_id"], "value": True}
    # The answer is kept: picking it up again asks nobody anything.
    assert await get_ask(client, spawn, pending["ask_id"], 0, 200) == await waiting
    await no_frame(ws)


async def test_a_retried_post_with_the_same_key_is_the_same_ask_not_a_second_one(
    server: Server,
) -> None:
    client = await server()
    _, ws, _, spawn = await spawned(client)
    first = await post_ask(client, spawn, 202, question="q", timeout_s=0, key="k1")
    await expect(ws, "ask")
    again = await post_ask(client, spawn, 202, question="q", timeout_s=0, key="k1")
    assert again["ask_id"] == first["ask_id"]
    await no_frame(ws)


async def test_the_operator_drops_and_reconnects_the_ask_is_replayed_and_answered_once(
    server: Server,
) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    asking = asyncio.create_task(post_ask(client, spawn, 200, question="ok?", timeout_s=10))
    ask = await expect(ws, "ask")
    await ws.close()

    ws = await connect(client, sid, token)
    replayed = [await expect(ws, "spawn"), await expect(ws, "ask")]
    assert [f["req_id"] for f in replayed] == [spawn["req_id"], ask["req_id"]]
    assert replayed[1]["parent_req_id"] == spawn["req_id"]
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": "yes"})
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": "no"})
    duplicate = await expect(ws, "error")
    assert duplicate["code"] == "already_answered"
    assert (await asking)["value"] == "yes"

    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 1})
    done = await wait_task(client, task["id"])
    assert [a["answer"] for a in done["attempts"][0]["asks"]] == ["yes"]


async def test_a_schema_outside_the_subset_is_refused_naming_the_part(server: Server) -> None:
    client = await server()
    _, ws, _, spawn = await spawned(client)
    nested = {"type": "object", "properties": {"where": {"type": "object"}}}
    refused = await post_ask(client, spawn, 400, question="q", answer_schema=nested)
    assert refused["error"]["code"] == "bad_request"
    assert "answer_schema.properties.where.type" in refused["error"]["message"]
    listed = {"type": "object", "properties": {"n": {"type": "string", "items": {}}}}
    refused = await post_ask(client, spawn, 400, question="q", answer_schema=listed)
    assert "answer_schema.properties.n.items" in refused["error"]["message"]
    top = {"type": "object", "properties": {"n": {"type": "string"}}, "anyOf": []}
    refused = await post_ask(client, spawn, 400, question="q", answer_schema=top)
    assert "answer_schema.anyOf" in refused["error"]["message"]
    await no_frame(ws)  # nothing was asked


async def test_a_wrong_answer_gets_bad_answer_and_stays_pending_a_good_one_passes(
    server: Server,
) -> None:
    client = await server()
    _, ws, _, spawn = await spawned(client)
    pending = await post_ask(client, spawn, 202, question="q", answer_schema=FORM, timeout_s=0)
    ask = await expect(ws, "ask")
    assert ask["answer_schema"] == FORM

    wrong = {"name": "fix-1", "merge": "yes"}
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": wrong})
    error = await expect(ws, "error")
    assert error["code"] == "bad_answer" and error["req_id"] == ask["req_id"]
    assert "value.merge" in error["message"]
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": {"merge": True}})
    error = await expect(ws, "error")
    assert error["code"] == "bad_answer" and "'name'" in error["message"]
    assert (await get_ask(client, spawn, pending["ask_id"], 0, 202))["status"] == "pending"

    good = {"name": "fix-1", "level": "high", "merge": False, "retries": 2}
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": good})
    picked = await get_ask(client, spawn, pending["ask_id"], 5, 200)
    assert picked["value"] == good


async def test_a_declined_ask_answers_200_with_the_reason(server: Server) -> None:
    client = await server()
    _, ws, _, spawn = await spawned(client)
    asking = asyncio.create_task(post_ask(client, spawn, 200, question="q", timeout_s=10))
    ask = await expect(ws, "ask")
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "error": "not my call"})
    declined = await asking
    assert declined == {"ask_id": declined["ask_id"], "declined": "not my call"}


async def test_a_task_with_no_senior_bridge_answers_409_no_senior(server: Server) -> None:
    client = await server()
    sid, token = await mint(client)
    ws = await connect(client, sid, token)
    await create_task(client, agent="coder", operator={"backend": sid})
    spawn = await expect(ws, "spawn")  # no spawn hook either: straight to the spawn
    refused = await post_ask(client, spawn, 409, question="q")
    assert refused["error"]["code"] == "no_senior"


async def test_cancelling_the_task_withdraws_its_open_ask_and_the_wait_answers_409(
    server: Server,
) -> None:
    client = await server()
    _, ws, task, spawn = await spawned(client)
    pending = await post_ask(client, spawn, 202, question="q", timeout_s=0)
    ask = await expect(ws, "ask")
    waiting = asyncio.create_task(get_ask(client, spawn, pending["ask_id"], 10, 409))
    await eventually(lambda: _waiting_on_ask(client), what="the worker waits")
    resp = await client.post(f"/v1/tasks/{task['id']}/cancel", json={"reason": "enough"})
    assert resp.status == 200
    withdrawn = {(await expect(ws, "cancel"))["req_id"], (await expect(ws, "cancel"))["req_id"]}
    assert withdrawn == {ask["req_id"], spawn["req_id"]}
    assert (await waiting)["error"]["code"] == "attempt_ended"
    done = await wait_task(client, task["id"])
    [listed] = done["attempts"][0]["asks"]
    assert listed["status"] == "withdrawn" and listed["error"]["code"] == "attempt_ended"
    # The credential died with the attempt, as usual.
    await get_ask(client, spawn, pending["ask_id"], 0, 401)


async def test_a_spawn_timeout_withdraws_the_open_ask_too(server: Server) -> None:
    client = await server(spawn_timeout_s=1)
    _, ws, task, spawn = await spawned(client)
    waiting = asyncio.create_task(post_ask(client, spawn, 409, question="q", timeout_s=10))
    ask = await expect(ws, "ask")
    withdrawn = {(await expect(ws, "cancel"))["req_id"], (await expect(ws, "cancel"))["req_id"]}
    assert withdrawn == {ask["req_id"], spawn["req_id"]}
    assert (await waiting)["error"]["code"] == "attempt_ended"
    assert (await wait_task(client, task["id"]))["error"]["code"] == "operator_timeout"


async def test_worker_asks_are_counted_by_outcome(server: Server) -> None:
    client = await server()
    _, ws, _, spawn = await spawned(client)
    asking = asyncio.create_task(post_ask(client, spawn, 200, question="q", timeout_s=10))
    await ws.send_json(
        {"type": "answer", "req_id": (await expect(ws, "ask"))["req_id"], "value": 1}
    )
    await asking
    asking = asyncio.create_task(post_ask(client, spawn, 200, question="q", timeout_s=10))
    ask = await expect(ws, "ask")
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "error": "no"})
    await asking
    text = await (await client.get("/metrics")).text()
    assert 'operator_server_worker_asks_total{outcome="answered"} 1.0' in text
    assert 'operator_server_worker_asks_total{outcome="declined"} 1.0' in text


def _waiting_on_ask(client: TestClient[Any, Any]) -> bool:
    from tests.wsop import handler_suspended

    return handler_suspended("worker_ask_status")


async def test_the_event_stream_carries_a_worker_asks_request_and_reply(server: Server) -> None:
    from tests.http.sse import read_all

    client = await server()
    sid, ws, task, spawn = await spawned(client)
    asking = asyncio.create_task(post_ask(client, spawn, 200, question="ok?", timeout_s=10))
    ask = await expect(ws, "ask")
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": "yes"})
    await asking
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    stream = await client.get(f"/v1/tasks/{task['id']}/events")
    events = await read_all(stream)
    about_ask = [(e.type, e.data["face"]) for e in events if e.data.get("req_id") == ask["req_id"]]
    assert about_ask == [("request", "senior_bridge"), ("reply", "senior_bridge")]
    assert all(e.data["sid"] == sid for e in events if e.data.get("req_id") == ask["req_id"])
    # The events name the ask; they never carry its question or answer.
    assert not [e for e in events if "yes" in str(e.data.values()) or "ok?" in str(e.data)]

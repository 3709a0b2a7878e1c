"""The whole thin path and each reply kind, through real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import Server, create_task, wait_task
from tests.http.sse import read_all
from tests.http.test_metrics import scrape, value
from tests.wsop import connect, expect, mint, no_frame


async def seated(client: TestClient[Any, Any], roles: list[str] | None = None) -> tuple[str, Any]:
    sid, token = await mint(client, roles)
    return sid, await connect(client, sid, token)


async def test_mint_connect_hook_spawn_worker_ack_after_passed(server: Server) -> None:
    client = await server()
    sid, ws = await seated(client)
    task = await create_task(client, agent="coder", directive="build it", operator={"sid": sid})

    hook = await expect(ws, "hook_before")
    assert hook["req_id"].startswith(f"{sid}-hb-")
    assert hook["task_id"] == task["id"] and hook["agent"] == "coder" and hook["attempt"] == 1
    assert "parent_req_id" not in hook
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})

    spawn = await expect(ws, "spawn")
    assert spawn["req_id"].startswith(f"{sid}-spawn-")
    handle = spawn["worker_handle"]
    assert handle.startswith("wh-") and spawn["capability_token"]
    base = str(client.make_url("")).rstrip("/")
    assert f"{base}/v1/worker/prompt" in spawn["directive"]
    assert handle in spawn["directive"]
    assert "build it" not in str(spawn)  # thin control: the prompt travels over HTTP

    auth = {"Authorization": f"Bearer {handle}"}
    prompt = await (await client.get("/v1/worker/prompt", headers=auth)).json()
    assert prompt == {"task_id": task["id"], "attempt": 1, "agent": "coder", "prompt": "build it"}
    posted = await client.post("/v1/worker/result", json={"value": {"built": True}}, headers=auth)
    assert posted.status == 200
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {}})

    after = await expect(ws, "hook_after")
    assert after["req_id"].startswith(f"{sid}-ha-")
    assert after["result"] == {"value": {"built": True}, "ok": True}
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert done["result"] == {"value": {"built": True}, "ok": True}
    await no_frame(ws)


async def answer_hook(ws: Any, ok: bool = True, reason: str | None = None) -> None:
    hook = await expect(ws, "hook_before")
    frame: dict[str, Any] = {"type": "hook_ack", "req_id": hook["req_id"], "ok": ok}
    if reason:
        frame["reason"] = reason
    await ws.send_json(frame)


async def spawned(client: TestClient[Any, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A seated operator holding the spawn of a fresh task: (socket, task, spawn frame)."""
    sid, ws = await seated(client)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    await answer_hook(ws)
    return ws, task, await expect(ws, "spawn")


async def test_hook_rejection_over_the_socket_fails_the_task(server: Server) -> None:
    client = await server()
    sid, ws = await seated(client)
    task = await create_task(client, agent="coder", operator={"sid": sid})
    await answer_hook(ws, ok=False, reason="too risky")
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"code": "spawn_rejected", "message": "spawn rejected: too risky"}
    await no_frame(ws)  # no spawn followed


async def test_ok_false_is_escalated_by_ask_and_the_answer_overrides(server: Server) -> None:
    client = await server()
    sid, ws = await seated(client, ["main"])
    task = await create_task(client, agent="coder", operator={"role": "main"})
    await answer_hook(ws)
    spawn = await expect(ws, "spawn")
    await ws.send_json(
        {"type": "spawn_ack", "req_id": spawn["req_id"], "value": "tests fail", "ok": False}
    )
    ask = await expect(ws, "ask")
    assert ask["req_id"].startswith(f"{sid}-ask-") and ask["task_id"] == task["id"]
    assert ask["question"] == {"reason": "worker reported ok=false", "value": "tests fail"}
    override = {"decision": "override", "note": "accept as is"}
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": override})
    after = await expect(ws, "hook_after")
    expected = {"original": "tests fail", "senior_answer": override}
    assert after["result"] == {"value": expected, "ok": True}
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed" and done["result"]["value"] == expected


async def test_an_escalation_upheld_stays_blocked_with_the_note_and_a_stray_answer_is_refused(
    server: Server,
) -> None:
    client = await server()
    ws, task, spawn = await spawned(client)
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 0, "ok": False})
    ask = await expect(ws, "ask")
    assert ask["answer_schema"]["required"] == ["decision"]
    assert ask["answer_schema"]["properties"]["decision"]["enum"] == ["override", "uphold"]
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": "no"})
    error = await expect(ws, "error")
    assert error["code"] == "bad_answer" and error["req_id"] == ask["req_id"]
    upheld = {"decision": "uphold", "note": "the tests must pass first"}
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": upheld})
    done = await wait_task(client, task["id"])
    assert done["status"] == "blocked"
    assert done["result"] == {"value": 0, "ok": False}
    assert done["error"] == {"code": "senior_upheld", "message": "the tests must pass first"}


async def test_spawn_halt_ends_the_task_halted_everywhere_and_beats_a_worker_post(
    server: Server,
) -> None:
    """A halt is its own outcome, not a pass: over REST, in the task's events
    and in the metrics; and a halted task is not retried."""
    client = await server()
    sid, ws = await seated(client)
    task = await create_task(client, agent="coder", operator={"sid": sid}, max_attempts=3)
    await answer_hook(ws)
    spawn = await expect(ws, "spawn")
    auth = {"Authorization": f"Bearer {spawn['worker_handle']}"}
    await client.post("/v1/worker/result", json={"value": "partial"}, headers=auth)
    await ws.send_json(
        {"type": "spawn_halt", "req_id": spawn["req_id"], "reason": "enough", "value": 3}
    )
    done = await wait_task(client, task["id"])
    assert done["status"] == "halted"
    assert [a["status"] for a in done["attempts"]] == ["halted"]
    assert done["result"] == {"value": {"halted": True, "reason": "enough", "value": 3}, "ok": True}
    assert done["error"] is None

    events = await read_all(await client.get(f"/v1/tasks/{task['id']}/events"))
    assert [e.data["status"] for e in events if e.type == "status"] == ["running", "halted"]
    listed = await (await client.get("/v1/tasks", params={"status": "halted"})).json()
    assert [t["id"] for t in listed["tasks"]] == [task["id"]]

    samples, _ = await scrape(client)
    assert value(samples, "operator_server_tasks_finished_total", status="halted") == 1
    assert value(samples, "operator_server_tasks_finished_total", status="passed") == 0
    assert value(samples, "operator_server_tasks", status="halted") == 1


async def test_spawn_ack_with_error_fails_the_attempt(server: Server) -> None:
    client = await server()
    ws, task, spawn = await spawned(client)
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "error": "no GPU"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"code": "operator_error", "message": "operator reported: no GPU"}


async def test_spawn_ack_value_is_the_result_when_no_worker_posted(server: Server) -> None:
    client = await server()
    ws, task, spawn = await spawned(client)
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {"n": 7}})
    done = await wait_task(client, task["id"])
    assert done["result"] == {"value": {"n": 7}, "ok": True}


async def test_a_child_task_started_during_a_spawn_carries_parent_req_id(server: Server) -> None:
    client = await server()
    sid, ws = await seated(client)
    parent = await create_task(client, agent="coder", operator={"sid": sid})
    await answer_hook(ws)
    spawn = await expect(ws, "spawn")
    child = await create_task(
        client, agent="helper", operator={"sid": sid}, parent_task_id=parent["id"]
    )
    hook = await expect(ws, "hook_before")
    assert hook["task_id"] == child["id"]
    assert hook["parent_req_id"] == spawn["req_id"]
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False})
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 1})
    assert (await wait_task(client, parent["id"]))["status"] == "passed"
    assert (await wait_task(client, child["id"]))["parent_task_id"] == parent["id"]


async def test_one_socket_serves_many_tasks_concurrently(server: Server) -> None:
    client = await server()
    sid, ws = await seated(client)
    tasks = [
        await create_task(client, agent="coder", directive=i, operator={"sid": sid})
        for i in range(20)
    ]
    answered = 0
    while answered < 20:
        frame = await asyncio.wait_for(ws.receive_json(), 5)
        if frame["type"] == "hook_before":
            await ws.send_json({"type": "hook_ack", "req_id": frame["req_id"], "ok": True})
        elif frame["type"] == "spawn":
            await ws.send_json(
                {"type": "spawn_ack", "req_id": frame["req_id"], "value": frame["task_id"]}
            )
            answered += 1
    for task in tasks:
        done = await wait_task(client, task["id"])
        assert done["result"]["value"] == task["id"]


async def test_an_answer_with_error_leaves_the_work_blocked_instead_of_approving(
    server: Server,
) -> None:
    client = await server()
    ws, task, spawn = await spawned(client)
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 0, "ok": False})
    ask = await expect(ws, "ask")
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "error": "senior crashed"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "blocked"
    assert done["result"] == {"value": 0, "ok": False}


async def test_logs_carry_task_and_request_ids_and_never_a_credential(server: Server) -> None:
    from structlog.contextvars import merge_contextvars
    from structlog.testing import capture_logs

    client = await server(hook_timeout_s=0.2)
    with capture_logs(processors=[merge_contextvars]) as logs:
        resp = await client.post("/v1/operators", json={})
        op = await resp.json()
        ws = await connect(client, op["sid"], op["token"])
        task = await create_task(client, agent="coder", operator={"sid": op["sid"]})
        await expect(ws, "hook_before")
        await expect(ws, "cancel")  # timed out
        done = await wait_task(client, task["id"])
        assert done["error"]["code"] == "operator_timeout"
    text = repr(logs)
    assert op["token"] not in text
    engine_task = [e for e in logs if e.get("task_id") == task["id"]]
    assert any(e["event"] == "attempt started" and e["attempt"] == 1 for e in engine_task)
    timed_out = [e for e in logs if e["event"] == "request timed out"]
    assert timed_out and timed_out[0]["sid"] == op["sid"] and timed_out[0]["req_id"]


async def test_the_directive_names_the_configured_public_url(server: Server) -> None:
    client = await server(public_url="https://ops.example:8443/")
    sid, ws = await seated(client)
    await create_task(client, agent="coder", operator={"sid": sid}, layers=["operator_delegate"])
    spawn = await expect(ws, "spawn")
    assert "https://ops.example:8443/v1/worker/prompt" in spawn["directive"]
    assert "https://ops.example:8443/v1/worker/result" in spawn["directive"]
    assert f"Bearer {spawn['worker_handle']}" in spawn["directive"]


async def test_a_worker_says_why_its_work_failed_and_the_blocked_task_shows_it(
    server: Server,
) -> None:
    client = await server()
    ws, task, spawn = await spawned(client)
    auth = {"Authorization": f"Bearer {spawn['worker_handle']}"}
    refused = await client.post(
        "/v1/worker/result", json={"value": 1, "ok": True, "error": "no"}, headers=auth
    )
    assert refused.status == 400
    assert "error: only with ok=false" in (await refused.json())["error"]["message"]
    too_long = {"value": 1, "ok": False, "error": "x" * 4097}
    assert (await client.post("/v1/worker/result", json=too_long, headers=auth)).status == 400
    posted = await client.post(
        "/v1/worker/submit",
        params={"ok": "false", "error": "make: *** [test] Error 2"},
        data=b"3 tests failed",
        headers=auth,
    )
    assert posted.status == 200, await posted.text()
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
    ask = await expect(ws, "ask")  # the senior sees why too
    assert ask["question"]["error"] == "make: *** [test] Error 2"
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "error": "not mine to decide"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "blocked"
    assert done["result"] == {"value": "3 tests failed", "ok": False}
    assert done["error"] == {"code": "worker_failed", "message": "make: *** [test] Error 2"}
    assert done["attempts"][0]["outputs"][0]["error"] == "make: *** [test] Error 2"

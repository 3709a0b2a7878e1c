"""Every decision a real server makes lands in the audit trail, named: an
operator on a real socket approves, acks, upholds, answers, declines and
rejects; a script creates and cancels; a worker posts a result; a session is
minted, taken up, left and forced out.  Read back through GET /v1/audit."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from operator_server.app import sweep_once
from operator_server.audit.cli import verify_store
from tests.conftest import Server, create_task, engine_of, wait_task
from tests.wsop import connect, expect, mint


def sha(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


async def audit(client: TestClient[Any, Any], **params: str) -> list[dict[str, Any]]:
    resp = await client.get("/v1/audit", params={"limit": "1000", **params})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["next"] is None
    entries: list[dict[str, Any]] = body["entries"]
    return entries


def actions(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["action"], e["principal"], e["outcome"], e["reason"]) for e in entries]


async def test_an_attempt_through_hook_spawn_and_escalation_is_audited_in_order(
    server: Server, tmp_path: Path
) -> None:
    client = await server(store__path=str(tmp_path / "audit.sqlite"))
    sid, token = await mint(client, ["main"])
    ws = await connect(client, sid, token)
    task = await create_task(client, agent="coder", operator={"role": "main"})
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    await ws.send_json(
        {"type": "spawn_ack", "req_id": spawn["req_id"], "value": "half", "ok": False}
    )
    ask = await expect(ws, "ask")
    verdict = {"decision": "uphold", "note": "tests must pass"}
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": verdict})
    assert (await wait_task(client, task["id"]))["status"] == "blocked"

    entries = await audit(client, task_id=task["id"])
    assert actions(entries) == [
        ("task.created", "local", "pending", None),
        ("request.issued", "local", "hook_before", None),
        ("hook.approved", "local", "approved", None),
        ("request.issued", "local", "spawn", None),
        ("spawn.acked", "local", "not_ok", None),
        ("request.issued", "local", "ask", None),
        ("escalation.upheld", "local", "upheld", "tests must pass"),
    ]
    by_action = {e["action"]: e for e in entries}
    assert by_action["hook.approved"]["req_id"] == hook["req_id"]
    assert by_action["hook.approved"]["session_id"] == sid
    assert by_action["spawn.acked"]["payload_sha256"] == sha("half")
    assert by_action["escalation.upheld"]["payload_sha256"] == sha(verdict)
    # The answer itself never enters the trail.
    assert "tests must pass" not in json.dumps(by_action["escalation.upheld"]["payload_sha256"])
    assert (await verify_store(engine_of(client).store)).ok
    await ws.close()


async def test_an_override_a_rejection_and_a_cancel_are_audited_with_their_reasons(
    server: Server,
) -> None:
    client = await server()
    sid, token = await mint(client, ["main"])
    ws = await connect(client, sid, token)

    rejected = await create_task(client, agent="coder", operator={"role": "main"})
    hook = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": False, "reason": "no"})
    assert (await wait_task(client, rejected["id"]))["status"] == "failed"

    overridden = await create_task(
        client,
        agent="coder",
        operator={"role": "main"},
        layers=["senior_escalation", "operator_delegate"],
    )
    spawn = await expect(ws, "spawn")
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 1, "ok": False})
    ask = await expect(ws, "ask")
    answer = {"decision": "override", "note": "ship it"}
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": answer})
    assert (await wait_task(client, overridden["id"]))["status"] == "passed"

    cancelled = await create_task(client, agent="coder", operator={"role": "main"})
    await expect(ws, "hook_before")
    resp = await client.post(
        f"/v1/tasks/{cancelled['id']}/cancel", json={"reason": "changed my mind"}
    )
    assert resp.status == 200, await resp.text()

    assert ("hook.rejected", "local", "rejected", "no") in actions(
        await audit(client, task_id=rejected["id"])
    )
    assert ("escalation.overridden", "local", "overridden", "ship it") in actions(
        await audit(client, task_id=overridden["id"])
    )
    ended = await audit(client, task_id=cancelled["id"], action="task.cancelled")
    assert actions(ended) == [("task.cancelled", "local", "cancelled", "changed my mind")]
    await ws.close()


async def test_asks_answered_and_declined_and_a_workers_result_are_audited(server: Server) -> None:
    client = await server()
    sid, token = await mint(client, ["main"])
    ws = await connect(client, sid, token)
    task = await create_task(
        client, agent="coder", operator={"role": "main"}, layers=["operator_delegate"]
    )
    spawn = await expect(ws, "spawn")
    auth = {"Authorization": f"Bearer {spawn['worker_handle']}"}

    async def worker_asks(question: str) -> Any:
        return await client.post(
            "/v1/worker/ask", json={"question": question, "timeout_s": 10}, headers=auth
        )

    asking = asyncio.create_task(worker_asks("which?"))
    ask = await expect(ws, "ask")
    await ws.send_json({"type": "answer", "req_id": ask["req_id"], "value": "the left one"})
    assert (await asking).status == 200
    asking = asyncio.create_task(worker_asks("sure?"))
    second = await expect(ws, "ask")
    await ws.send_json({"type": "answer", "req_id": second["req_id"], "error": "cannot say"})
    await asking
    posted = await client.post("/v1/worker/result", json={"value": {"done": 1}}, headers=auth)
    assert posted.status == 200, await posted.text()
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"]})
    assert (await wait_task(client, task["id"]))["status"] == "passed"

    entries = await audit(client, task_id=task["id"])
    found = actions(entries)
    assert ("ask.answered", "local", "answered", None) in found
    assert ("ask.declined", "local", "declined", "cannot say") in found
    assert ("worker.result", "worker", "ok", None) in found
    result = next(e for e in entries if e["action"] == "worker.result")
    assert result["payload_sha256"] == sha({"done": 1})
    await ws.close()


async def test_sessions_minted_taken_up_left_and_forced_out_are_audited(server: Server) -> None:
    client = await server()
    sid, token = await mint(client, ["a"])
    ws = await connect(client, sid, token)
    await ws.close()
    resp = await client.delete(f"/v1/operators/{sid}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    forced, _ = await mint(client, ["b"])
    assert (await client.delete(f"/v1/operators/{forced}")).status == 204

    own = [(e["action"], e["session_id"]) for e in await audit(client)]
    assert own == [
        ("session.minted", sid),
        ("session.resumed", sid),
        ("session.left", sid),
        ("session.minted", forced),
        ("session.force_left", forced),
    ]
    minted = (await audit(client, action="session.minted"))[0]
    assert minted["outcome"] == "a" and minted["principal"] == "local"


async def test_the_audit_route_pages_by_seq_and_filters(server: Server) -> None:
    client = await server()
    for _ in range(5):
        await create_task(client, agent="echo")
    first = await client.get("/v1/audit", params={"action": "task.created", "limit": "2"})
    page = await first.json()
    assert [e["seq"] for e in page["entries"]] == [1, 2] and page["next"] == "2"
    rest = await (
        await client.get("/v1/audit", params={"after": page["next"], "limit": "2"})
    ).json()
    assert [e["seq"] for e in rest["entries"]] == [3, 4]
    assert await audit(client, principal="nobody") == []
    assert len(await audit(client, since="2000-01-01T00:00:00Z")) == 5
    assert await audit(client, since="2999-01-01") == []
    entry = page["entries"][0]
    assert set(entry) >= {"seq", "at", "principal", "action", "task_id", "req_id", "outcome"}


async def test_bad_audit_queries_are_400_naming_the_parameter(server: Server) -> None:
    client = await server()
    for params, named in (
        ({"action": "task.exploded"}, "action"),
        ({"since": "yesterday"}, "since"),
        ({"after": "-1"}, "after"),
        ({"after": "x"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
    ):
        resp = await client.get("/v1/audit", params=params)
        assert resp.status == 400, (params, await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] and named in error["message"], (params, error)


async def test_the_audit_route_needs_the_api_token_when_one_is_set(server: Server) -> None:
    client = await server(api_token="t" * 32)
    assert (await client.get("/v1/audit")).status == 401
    resp = await client.get("/v1/audit", headers={"Authorization": f"Bearer {'t' * 32}"})
    assert resp.status == 200


async def test_task_retention_keeps_the_audit_and_audit_retention_prunes_the_oldest(
    server: Server,
) -> None:
    client = await server(store__retention_s=0)
    app: web.Application = client.app  # type: ignore[assignment]
    done = [await create_task(client, agent="echo") for _ in range(3)]
    for task in done:
        assert (await wait_task(client, task["id"]))["status"] == "passed"
    await sweep_once(app)
    assert (await client.get(f"/v1/tasks/{done[0]['id']}")).status == 404  # retention ran
    assert [e["task_id"] for e in await audit(client)] == [t["id"] for t in done]

    # A trail kept a moment only: everything goes but the newest row.
    pruning = await server(audit_retention_days=1e-9)
    app = pruning.app  # type: ignore[assignment]
    for _ in range(3):
        await create_task(pruning, agent="echo")
    await sweep_once(app)
    assert [e["seq"] for e in await audit(pruning)] == [3]
    verdict = await verify_store(engine_of(pruning).store)
    assert verdict.ok and verdict.pruned_through == 2 and verdict.first_seq == 3

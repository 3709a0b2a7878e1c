"""Request deadlines and their on-timeout actions, through a real server and a
real operator socket: what an unanswered hook_before, spawn and ask become,
the 400s for combinations that make no sense, and the ``request_due_soon``
reminder.  Deadlines are short and set by config or the task; nothing here
measures time, only what the server did once it passed."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from operator_server.config import ConfigError, load_settings
from operator_server.engine.deadlines import DueSoon
from operator_server.wire.times import iso
from tests.conftest import Server, create_task, engine_of, wait_task
from tests.http.sse import read_all
from tests.wsop import connect, expect, mint

# Short enough to end a test quickly; the socket is read well within it.
SHORT = 0.3


async def _operator(client: TestClient[Any, Any]) -> tuple[str, ClientWebSocketResponse]:
    sid, token = await mint(client, roles=["main"])
    return sid, await connect(client, sid, token)


async def _to_ask(ws: ClientWebSocketResponse) -> dict[str, Any]:
    """Approve the hook, report ok=false on the spawn: the senior is asked."""
    hb = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    await ws.send_json(
        {"type": "spawn_ack", "req_id": spawn["req_id"], "ok": False, "value": "tests fail"}
    )
    return await expect(ws, "ask")


async def test_an_unanswered_hook_before_fails_closed_by_default_and_never_approves(
    server: Server,
) -> None:
    client = await server(hook_timeout_s=SHORT)
    _, ws = await _operator(client)
    task = await create_task(client, agent="coder", operator={"role": "main"})
    hb = await expect(ws, "hook_before")
    cancel = await expect(ws, "cancel")
    assert cancel["req_id"] == hb["req_id"]
    assert cancel["reason"] == f"no reply within {SHORT:g}s"
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "operator_timeout"
    assert done["attempts"][0]["served_by"]  # it got as far as the hook, no further


async def test_a_hook_before_with_on_timeout_approve_lets_the_spawn_go_ahead(
    server: Server,
) -> None:
    client = await server()
    _, ws = await _operator(client)
    operator = {
        "role": "main",
        "deadlines": {"hook_before": {"deadline_s": SHORT, "on_timeout": "approve"}},
    }
    with capture_logs() as logs:
        task = await create_task(client, agent="coder", operator=operator)
        hb = await expect(ws, "hook_before")
        cancel = await expect(ws, "cancel")
        assert (cancel["req_id"], cancel["reason"]) == (
            hb["req_id"],
            f"no reply within {SHORT:g}s: approve",
        )
        spawn = await expect(ws, "spawn")  # approved by its deadline: the work goes ahead
    # Said loudly, naming what went ahead unapproved.
    [loud] = [e for e in logs if e["log_level"] == "warning"]
    assert "APPROVED" in loud["event"]
    assert (loud["task_id"], loud["req_id"]) == (task["id"], hb["req_id"])
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": {"did": 1}})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert done["result"] == {"value": {"did": 1}, "ok": True}


async def test_an_unanswered_spawn_fails_the_attempt(server: Server) -> None:
    client = await server(spawn_timeout_s=SHORT)
    _, ws = await _operator(client)
    task = await create_task(client, agent="coder", operator={"role": "main"})
    hb = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    assert (await expect(ws, "cancel"))["req_id"] == spawn["req_id"]
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "operator_timeout"
    assert "spawn" in done["error"]["message"]


async def test_an_unanswered_ask_is_declined_by_default_as_an_operator_declining_it(
    server: Server,
) -> None:
    client = await server(ask_timeout_s=SHORT)
    _, ws = await _operator(client)
    task = await create_task(client, agent="coder", operator={"role": "main"})
    ask = await _to_ask(ws)
    cancel = await expect(ws, "cancel")
    assert (cancel["req_id"], cancel["reason"]) == (
        ask["req_id"],
        f"no reply within {SHORT:g}s: decline",
    )
    done = await wait_task(client, task["id"])
    # Declined: nobody overrode the worker's ok=false, so it stands (as when
    # an operator answers the ask with an ``error``), and nothing failed.
    assert done["status"] == "blocked"
    assert done["result"] == {"value": "tests fail", "ok": False}
    assert done["error"] is None or done["error"]["code"] != "operator_timeout"


async def test_an_ask_whose_task_says_fail_fails_the_attempt_at_its_deadline(
    server: Server,
) -> None:
    client = await server()
    _, ws = await _operator(client)
    operator = {"role": "main", "deadlines": {"ask": {"deadline_s": SHORT, "on_timeout": "fail"}}}
    task = await create_task(client, agent="coder", operator=operator)
    ask = await _to_ask(ws)
    assert (await expect(ws, "cancel"))["req_id"] == ask["req_id"]
    done = await wait_task(client, task["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "operator_timeout"


async def test_a_task_wide_deadline_applies_to_every_kind_and_a_kind_may_override_it(
    server: Server,
) -> None:
    client = await server()  # config: 10 s for every kind, and fail
    _, ws = await _operator(client)
    operator = {
        "role": "main",
        "deadline_s": SHORT,
        "on_timeout": "fail",
        # Its own action; its deadline still the task's.
        "deadlines": {"hook_before": {"on_timeout": "approve"}},
    }
    task = await create_task(client, agent="coder", operator=operator)
    assert task["operator"] == operator  # shown back as given
    hb = await expect(ws, "hook_before")
    assert (await expect(ws, "cancel"))["reason"] == f"no reply within {SHORT:g}s: approve"
    spawn = await expect(ws, "spawn")
    cancel = await expect(ws, "cancel")
    assert (cancel["req_id"], cancel["reason"]) == (spawn["req_id"], f"no reply within {SHORT:g}s")
    assert hb["req_id"] != spawn["req_id"]
    done = await wait_task(client, task["id"])
    assert done["error"]["code"] == "operator_timeout"


@pytest.mark.parametrize(
    ("operator", "field", "words"),
    [
        ({"on_timeout": "approve"}, "on_timeout", "cannot end ask"),
        ({"on_timeout": "decline"}, "on_timeout", "cannot end hook_before"),
        ({"deadlines": {"ask": {"on_timeout": "approve"}}}, "deadlines.ask.on_timeout", "approve"),
        (
            {"deadlines": {"spawn": {"on_timeout": "decline"}}},
            "deadlines.spawn.on_timeout",
            "decline",
        ),
        (
            {"deadlines": {"spawn": {"on_timeout": "approve"}}},
            "deadlines.spawn.on_timeout",
            "approve",
        ),
        (
            {"deadlines": {"hook_before": {"on_timeout": "decline"}}},
            "deadlines.hook_before.on_timeout",
            "decline",
        ),
        ({"on_timeout": "shrug"}, "on_timeout", "shrug"),
        ({"deadline_s": 0}, "deadline_s", "greater than 0"),
        ({"deadline_s": -5}, "deadline_s", "greater than 0"),
        ({"deadline_s": "60"}, "deadline_s", "number"),
        ({"deadline_s": True}, "deadline_s", "number"),
        ({"deadlines": {"ask": {"deadline_s": 0}}}, "deadlines", "greater than 0"),
        ({"deadlines": {"hook_after": {"deadline_s": 5}}}, "hook_after", "Unknown field"),
        ({"deadlines": {"ask": {"after_s": 5}}}, "after_s", "Unknown field"),
    ],
)
async def test_a_deadline_that_makes_no_sense_for_its_kind_is_400_naming_it(
    server: Server, operator: dict[str, Any], field: str, words: str
) -> None:
    client = await server()
    body = {"agent": "coder", "directive": "x", "operator": {"role": "main", **operator}}
    resp = await client.post("/v1/tasks", json=body)
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "bad_request"
    assert field in error["message"] and words in error["message"], error["message"]


async def test_hook_before_approves_on_timeout_only_when_the_task_says_so(
    server: Server,
) -> None:
    client = await server()
    engine = engine_of(client)
    defaults = engine.settings
    assert (defaults.hook_on_timeout, defaults.spawn_on_timeout) == ("fail", "fail")
    for body in ({"role": "main"}, {"role": "main", "deadline_s": 5}):
        resp = await client.post(
            "/v1/tasks", json={"agent": "coder", "directive": "x", "operator": body}
        )
        assert resp.status == 202
    with pytest.raises(ConfigError, match="spawn_on_timeout"):
        load_settings(env={}, overrides={"spawn_on_timeout": "approve"})
    with pytest.raises(ConfigError, match="ask_on_timeout"):
        load_settings(env={}, overrides={"ask_on_timeout": "approve"})
    with pytest.raises(ConfigError, match="remind_at_fraction"):
        load_settings(env={}, overrides={"remind_at_fraction": 1})
    assert load_settings(env={}, overrides={"hook_on_timeout": "approve"}).hook_on_timeout == (
        "approve"
    )


async def test_a_request_still_unanswered_near_its_deadline_raises_request_due_soon(
    server: Server,
) -> None:
    client = await server(hook_timeout_s=1, remind_at_fraction=0.5)
    noticed: list[DueSoon] = []
    engine_of(client).due_soon_observers.append(noticed.append)
    sid, ws = await _operator(client)
    task = await create_task(client, agent="coder", operator={"role": "main"})
    hb = await expect(ws, "hook_before")
    await expect(ws, "cancel")  # nobody answered: the reminder came first
    done = await wait_task(client, task["id"])
    assert done["error"]["code"] == "operator_timeout"
    resp = await client.get(f"/v1/tasks/{task['id']}/events")
    events = await read_all(resp)
    types = [e.type for e in events]
    assert types.index("request") < types.index("request_due_soon") < types.index("status", 3)
    due = next(e for e in events if e.type == "request_due_soon").data
    assert due["req_id"] == hb["req_id"]
    assert (due["face"], due["sid"], due["attempt"], due["on_timeout"]) == (
        "spawn_hook",
        sid,
        1,
        "fail",
    )
    assert due["due_at"].endswith("Z")
    assert [(n.task_id, n.req_id, n.kind) for n in noticed] == [
        (task["id"], hb["req_id"], "hook_before")
    ]
    assert iso(noticed[0].due_at) == due["due_at"]


async def test_a_reply_takes_its_requests_deadline_and_reminder_off_the_clock(
    server: Server,
) -> None:
    client = await server(remind_at_fraction=0.5)
    heap = engine_of(client).deadline_heap
    _, ws = await _operator(client)
    task = await create_task(client, agent="coder", operator={"role": "main"})
    hb = await expect(ws, "hook_before")
    # Its steps (the write of its due time a second on, its reminder, its
    # deadline) hold one entry at a time.
    assert len(heap) == 1
    await ws.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
    done = await wait_task(client, task["id"])
    assert done["error"]["code"] == "spawn_rejected"
    assert len(heap) == 0


async def test_a_workers_ask_takes_its_tasks_ask_deadline_and_is_declined_at_it(
    server: Server,
) -> None:
    client = await server()  # config: 10 s for asks
    _, ws = await _operator(client)
    operator = {"role": "main", "deadlines": {"ask": {"deadline_s": SHORT}}}
    task = await create_task(client, agent="coder", operator=operator)
    hb = await expect(ws, "hook_before")
    await ws.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    headers = {"Authorization": f"Bearer {spawn['worker_handle']}"}
    resp = await client.post(
        "/v1/worker/ask", json={"question": "which branch?", "timeout_s": 10}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    declined = await resp.json()
    assert declined["declined"] == f"no reply within {SHORT:g}s (on_timeout: decline)"
    ask = await expect(ws, "ask")
    assert (await expect(ws, "cancel"))["req_id"] == ask["req_id"]
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    done = await wait_task(client, task["id"])
    assert done["status"] == "passed"
    assert done["attempts"][0]["asks"][0]["status"] == "declined"


async def test_the_openapi_document_shows_the_operator_specs_deadline_fields(
    server: Server,
) -> None:
    client = await server()
    doc = await (await client.get("/v1/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    spec = next(s for name, s in schemas.items() if name.startswith("OperatorSpec"))
    assert {"deadline_s", "on_timeout", "deadlines"} <= set(spec["properties"])
    assert spec["properties"]["on_timeout"]["enum"] == ["fail", "decline", "approve"]
    per_kind = next(s for name, s in schemas.items() if name.startswith("KindDeadlines"))
    assert set(per_kind["properties"]) == {"hook_before", "ask", "spawn"}
    assert per_kind.get("additionalProperties") is False

"""Operator requests over REST: a real daemon, a real operator socket, replies
racing over both paths.  The first reply wins wherever it comes from; the
loser is told so with the same code over either path; every reply is counted
and audited with where it came from."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from operator_server.operators.session import MOVES_KEPT
from tests.auth.test_keys import BOOT, make_key
from tests.conftest import Server
from tests.http.sse import read_all
from tests.wsop import connect, expect, recv

ADMIN = {"Authorization": f"Bearer {BOOT}"}
HOOKED = {"agent": "coder", "operator": {"role": "main"}}


async def mint(client: TestClient[Any, Any], roles: list[str]) -> tuple[str, str]:
    resp = await client.post("/v1/operators", json={"roles": roles}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return body["sid"], body["token"]


async def operator(
    client: TestClient[Any, Any], roles: list[str] | None = None
) -> ClientWebSocketResponse:
    sid, token = await mint(client, roles or ["main"])
    return await connect(client, sid, token)


async def hooked_task(
    client: TestClient[Any, Any], ws: ClientWebSocketResponse, role: str = "main"
) -> tuple[str, dict[str, Any]]:
    """A task whose hook_before waits on ``ws``: its id and the frame."""
    resp = await client.post(
        "/v1/tasks",
        json={"agent": "coder", "directive": "x", "operator": {"role": role}},
        headers=ADMIN,
    )
    assert resp.status == 202, await resp.text()
    task_id = (await resp.json())["id"]
    hook = await expect(ws, "hook_before")
    assert hook["task_id"] == task_id
    return task_id, hook


async def wait_task(client: TestClient[Any, Any], task_id: str, wait: float = 5) -> dict[str, Any]:
    resp = await client.get(f"/v1/tasks/{task_id}", params={"wait": str(wait)}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    task: dict[str, Any] = await resp.json()
    return task


async def post_reply(
    client: TestClient[Any, Any], req_id: str, body: Any, key: str = BOOT
) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        f"/v1/requests/{req_id}/reply", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    return resp.status, await resp.json()


async def audit(client: TestClient[Any, Any], **params: str) -> list[dict[str, Any]]:
    resp = await client.get("/v1/audit", params={"limit": "1000", **params}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    entries: list[dict[str, Any]] = (await resp.json())["entries"]
    return entries


async def replies_counted(client: TestClient[Any, Any]) -> dict[tuple[str, str], float]:
    text = await (await client.get("/metrics")).text()
    counted = {}
    for line in text.splitlines():
        if line.startswith("operator_server_replies_total{"):
            labels, value = line[len("operator_server_replies_total{") :].split("} ")
            pairs = dict(part.split("=") for part in labels.split(","))
            counted[(pairs["via"].strip('"'), pairs["kind"].strip('"'))] = float(value)
    return counted


async def test_a_rest_reply_wins_and_the_socket_is_told_answered_elsewhere(server: Server) -> None:
    client = await server(api_token=BOOT)
    key = (await make_key(client, "operate:main", name="chatbot"))["key"]
    ws = await operator(client)
    task_id, hook = await hooked_task(client, ws)

    status, body = await post_reply(
        client, hook["req_id"], {"type": "hook_ack", "ok": False, "reason": "not today"}, key
    )
    assert (status, body) == (200, {"req_id": hook["req_id"], "type": "hook_ack", "via": "rest"})
    cancel = await expect(ws, "cancel")
    assert cancel == {"type": "cancel", "req_id": hook["req_id"], "reason": "answered_elsewhere"}
    # The socket's late reply changes nothing and is told why.
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    late = await expect(ws, "error")
    assert late["code"] == "already_answered" and late["req_id"] == hook["req_id"]
    task = await wait_task(client, task_id)
    assert task["status"] == "failed" and "not today" in task["error"]["message"]

    decided = [e for e in await audit(client, task_id=task_id) if e["action"] == "hook.rejected"]
    assert [(e["principal"], e["req_id"], e["reason"]) for e in decided] == [
        ("key:chatbot", hook["req_id"], "not today")
    ]
    assert (await replies_counted(client)) == {("rest", "hook_ack"): 1.0}
    events = await read_all(await client.get(f"/v1/tasks/{task_id}/events", headers=ADMIN))
    replies = [e.data for e in events if e.type == "reply"]
    assert [(r["req_id"], r["via"]) for r in replies] == [(hook["req_id"], "rest")]
    await ws.close()


async def test_a_socket_reply_wins_and_a_rest_reply_gets_409_already_answered(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    task_id, hook = await hooked_task(client, ws)
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    await expect(ws, "spawn")  # the approval counted

    status, body = await post_reply(client, hook["req_id"], {"type": "hook_ack", "ok": False})
    assert status == 409 and body["error"]["code"] == "already_answered"
    resp = await client.get(f"/v1/requests/{hook['req_id']}", headers=ADMIN)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "already_answered"
    approved = [e for e in await audit(client, task_id=task_id) if e["action"].startswith("hook.")]
    assert [(e["action"], e["principal"]) for e in approved] == [("hook.approved", "bootstrap")]
    assert (await replies_counted(client)) == {("socket", "hook_ack"): 1.0}
    await ws.close()


async def test_a_reply_that_does_not_fit_is_400_naming_why_and_the_request_stays_pending(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    _, hook = await hooked_task(client, ws)
    req_id = hook["req_id"]
    bad: list[tuple[Any, str, str]] = [
        ([1, 2], "bad_message", "JSON object"),
        ({"ok": True}, "bad_message", "type"),
        ({"type": "ping", "id": "1"}, "bad_message", "reply type"),
        ({"type": "hook_ack", "ok": "yes"}, "bad_message", "ok"),
        ({"type": "hook_ack", "ok": True, "extra": 1}, "bad_message", "extra"),
        ({"type": "hook_ack", "ok": True, "req_id": "other"}, "bad_message", "req_id"),
        ({"type": "answer", "value": 1}, "wrong_reply", "hook_before"),
    ]
    for body, code, names in bad:
        status, answer = await post_reply(client, req_id, body)
        assert status == 400, (body, answer)
        assert answer["error"]["code"] == code and names in answer["error"]["message"], answer
    resp = await client.post(f"/v1/requests/{req_id}/reply", data=b"{nope", headers=ADMIN)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_json"
    status, answer = await post_reply(client, "op-nope-hb-1", {"type": "hook_ack", "ok": True})
    assert status == 404 and answer["error"]["code"] == "request_not_found"
    # Still pending: the same body with the right fields counts.
    status, _ = await post_reply(client, req_id, {"type": "hook_ack", "ok": True, "req_id": req_id})
    assert status == 200
    await ws.close()


async def test_an_answer_that_does_not_fill_the_asks_form_is_bad_answer_over_rest(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    task_id, hook = await hooked_task(client, ws)
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    await ws.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": 1, "ok": False})
    ask = await expect(ws, "ask")  # the senior escalation: a decision form
    assert ask["answer_schema"]

    status, body = await post_reply(client, ask["req_id"], {"type": "answer", "value": "meh"})
    assert status == 400 and body["error"]["code"] == "bad_answer"
    declined = {"type": "answer", "error": "cannot judge this"}
    status, _ = await post_reply(client, ask["req_id"], declined)
    assert status == 200
    assert (await expect(ws, "cancel"))["reason"] == "answered_elsewhere"
    # A declined escalation leaves the worker's ok=false standing.
    assert (await wait_task(client, task_id))["status"] == "blocked"
    declines = [e for e in await audit(client, task_id=task_id) if e["action"] == "ask.declined"]
    assert [(e["principal"], e["reason"]) for e in declines] == [("bootstrap", "cannot judge this")]
    await ws.close()


async def test_only_a_principal_that_may_operate_the_role_sees_and_answers_it(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    main_key = (await make_key(client, "operate:ma*", name="main-bot"))["key"]
    other_key = (await make_key(client, "operate:review", name="review-bot"))["key"]
    reader = (await make_key(client, "tasks:read", name="reader"))["key"]
    ws = await operator(client)
    _, hook = await hooked_task(client, ws)
    req_id = hook["req_id"]

    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = await client.get("/v1/requests", headers=headers)
        assert resp.status == 401
        resp = await client.post(f"/v1/requests/{req_id}/reply", json={}, headers=headers)
        assert resp.status == 401
    for key in (other_key, reader):
        auth = {"Authorization": f"Bearer {key}"}
        listed = await (await client.get("/v1/requests", headers=auth)).json()
        assert listed == {"requests": [], "next": None}
        resp = await client.get(f"/v1/requests/{req_id}", headers=auth)
        error = (await resp.json())["error"]
        assert resp.status == 403 and error["code"] == "forbidden" and "'main'" in error["message"]
        status, body = await post_reply(client, req_id, {"type": "hook_ack", "ok": True}, key)
        assert status == 403 and "'main'" in body["error"]["message"]

    auth = {"Authorization": f"Bearer {main_key}"}
    listed = await (await client.get("/v1/requests", headers=auth)).json()
    assert [r["req_id"] for r in listed["requests"]] == [req_id]
    one = await (await client.get(f"/v1/requests/{req_id}", headers=auth)).json()
    waited = ("waiting_s",)
    assert {k: v for k, v in one.items() if k not in waited} == {
        k: v for k, v in listed["requests"][0].items() if k not in waited
    }
    assert one["type"] == "hook_before" and one["agent"] == "coder" and one["attempt"] == 1
    assert one["state"] == "pending" and one["holder"]["roles"] == ["main"]
    assert one["step"] == 0 and one["moves"] == [] and one["deadline_at"] is not None
    status, _ = await post_reply(client, req_id, {"type": "hook_ack", "ok": True}, main_key)
    assert status == 200
    await ws.close()


async def test_a_spawn_is_listed_without_its_credentials(server: Server) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    _, hook = await hooked_task(client, ws)
    await ws.send_json({"type": "hook_ack", "req_id": hook["req_id"], "ok": True})
    spawn = await expect(ws, "spawn")
    resp = await client.get(f"/v1/requests/{spawn['req_id']}", headers=ADMIN)
    text = await resp.text()
    assert resp.status == 200
    for secret in (spawn["capability_token"], spawn["worker_handle"], spawn["directive"]):
        assert secret not in text
    halt = {"type": "spawn_halt", "reason": "enough", "value": {"n": 1}}
    status, _ = await post_reply(client, spawn["req_id"], halt)
    assert status == 200
    await ws.close()


async def test_the_list_filters_by_role_kind_task_and_state_and_pages_by_keyset(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    main = await operator(client, ["main"])
    review = await operator(client, ["review"])
    made = [await hooked_task(client, main) for _ in range(3)]
    made.append(await hooked_task(client, review, role="review"))
    order = [hook["req_id"] for _, hook in made]

    async def listed(**params: str) -> dict[str, Any]:
        resp = await client.get("/v1/requests", params=params, headers=ADMIN)
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body

    def ids(page: dict[str, Any]) -> list[str]:
        return [r["req_id"] for r in page["requests"]]

    assert ids(await listed()) == order
    assert ids(await listed(role="review")) == order[3:]
    assert ids(await listed(role="main", task_id=made[1][0])) == [order[1]]
    assert ids(await listed(kind="ask")) == []
    assert ids(await listed(kind="hook_before", state="pending")) == order
    first = await listed(limit="3")
    assert ids(first) == order[:3] and first["next"]
    rest = await listed(limit="3", after=first["next"])
    assert ids(rest) == order[3:] and rest["next"] is None
    for params in ({"state": "answered"}, {"kind": "hook_after"}, {"limit": "0"}, {"after": "x"}):
        resp = await client.get("/v1/requests", params=params, headers=ADMIN)
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_request"
    await main.close()
    await review.close()


async def test_a_batch_answers_each_reply_on_its_own(server: Server) -> None:
    client = await server(api_token=BOOT)
    ws = await operator(client)
    (t1, h1), (_, h2), (t3, h3) = [await hooked_task(client, ws) for _ in range(3)]
    await ws.send_json({"type": "hook_ack", "req_id": h2["req_id"], "ok": True})
    await expect(ws, "spawn")
    replies = [
        {"req_id": h1["req_id"], "type": "hook_ack", "ok": False, "reason": "batch no"},
        {"req_id": h2["req_id"], "type": "hook_ack", "ok": False},
        {"req_id": h3["req_id"], "type": "answer", "value": 1},
        {"type": "hook_ack", "ok": True},
        {"req_id": "op-x-hb-y", "type": "hook_ack", "ok": True},
        {"req_id": h3["req_id"], "type": "hook_ack", "ok": False, "reason": "batch no"},
    ]
    resp = await client.post("/v1/requests/reply", json={"replies": replies}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    results = (await resp.json())["results"]
    assert [(r["req_id"], r["status"], r.get("error", {}).get("code")) for r in results] == [
        (h1["req_id"], 200, None),
        (h2["req_id"], 409, "already_answered"),
        (h3["req_id"], 400, "wrong_reply"),
        (None, 400, "bad_message"),
        ("op-x-hb-y", 404, "request_not_found"),
        (h3["req_id"], 200, None),
    ]
    for task_id in (t1, t3):
        assert (await wait_task(client, task_id))["status"] == "failed"
    counted = await replies_counted(client)
    assert counted == {("socket", "hook_ack"): 1.0, ("batch", "hook_ack"): 2.0}

    too_many = {"replies": [replies[0]] * 101}
    resp = await client.post("/v1/requests/reply", json=too_many, headers=ADMIN)
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "too_large"
    for body in ({"replies": []}, {"replies": {}}, {}, {"replies": [1], "more": 1}, [1]):
        resp = await client.post("/v1/requests/reply", json=body, headers=ADMIN)
        assert resp.status == 400, body
    await ws.close()


async def test_fifty_races_of_socket_against_rest_count_one_reply_each_and_the_audit_agrees(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    key = (await make_key(client, "operate:main", name="racer"))["key"]
    ws = await operator(client)
    made = [await hooked_task(client, ws) for _ in range(50)]

    async def over_rest(req_id: str) -> int:
        status, _ = await post_reply(
            client, req_id, {"type": "hook_ack", "ok": False, "reason": "rest"}, key
        )
        return status

    async def over_socket(req_id: str) -> None:
        await ws.send_json({"type": "hook_ack", "req_id": req_id, "ok": True})

    # A hundred replies in flight at once.  The first half's REST replies
    # get a head start (one of them has counted before the socket speaks);
    # the socket then replies to all fifty, last to first, while the second
    # half's REST replies are sent beside it.
    head = [asyncio.ensure_future(over_rest(hook["req_id"])) for _, hook in made[:25]]
    early, _ = await asyncio.wait(head, return_when=asyncio.FIRST_COMPLETED)
    tail = [asyncio.ensure_future(over_rest(hook["req_id"])) for _, hook in made[25:]]
    for _, hook in reversed(made):
        await over_socket(hook["req_id"])
    statuses = await asyncio.gather(*head, *tail)
    assert set(statuses) <= {200, 409}
    assert {f.result() for f in early} == {200}  # counted before the socket spoke
    rest_won = {hook["req_id"] for (_, hook), s in zip(made, statuses, strict=True) if s == 200}

    # The socket hears of every request exactly once: its reply lost (error),
    # or it was withdrawn as answered elsewhere (cancel) — or its reply won.
    told: dict[str, list[str]] = {}
    await ws.send_json({"type": "ping", "id": "done"})
    while (frame := await recv(ws))["type"] != "pong":
        if frame["type"] in ("cancel", "error"):
            told.setdefault(frame["req_id"], []).append(frame.get("reason") or frame["code"])
    for req_id in rest_won:
        assert sorted(told[req_id]) == ["already_answered", "answered_elsewhere"]
    for _, hook in made:
        if hook["req_id"] not in rest_won:
            assert hook["req_id"] not in told

    entries = await audit(client)
    decided = [e for e in entries if e["action"] in ("hook.approved", "hook.rejected")]
    assert sorted(e["req_id"] for e in decided) == sorted(h["req_id"] for _, h in made)
    for entry in decided:
        by_rest = entry["req_id"] in rest_won
        assert (entry["action"], entry["principal"]) == (
            ("hook.rejected", "key:racer") if by_rest else ("hook.approved", "bootstrap")
        )
    for task_id, hook in made:
        task = await wait_task(client, task_id, wait=0)
        if hook["req_id"] in rest_won:
            assert task["status"] == "failed"
    counted = await replies_counted(client)
    assert counted.get(("rest", "hook_ack"), 0) == len(rest_won)
    assert counted.get(("socket", "hook_ack"), 0) == 50 - len(rest_won)
    await ws.close()


async def _shown(client: TestClient[Any, Any], req_id: str) -> dict[str, Any]:
    """The request as ``GET /v1/requests/{req_id}`` shows it, which the list agrees with."""
    resp = await client.get(f"/v1/requests/{req_id}", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    one: dict[str, Any] = await resp.json()
    listed = (await (await client.get("/v1/requests", headers=ADMIN)).json())["requests"]
    assert [{**r, "waiting_s": 0} for r in listed if r["req_id"] == req_id] == [
        {**one, "waiting_s": 0}
    ]
    return one


def _moves(shown: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (m["from"], m["to"], m["reason"], m["step"], m["by"], m["note"]) for m in shown["moves"]
    ]


async def test_a_request_shows_each_move_its_step_and_its_deadline_as_it_travels(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    lead = (await make_key(client, "operate:*", name="lead"))["key"]
    ws1, ws2, ws3 = [await operator(client, [role]) for role in ("l1", "l2", "review")]
    sid4, token4 = await mint(client, ["spare"])
    chain = {"role": "l1", "escalate": [{"after_s": 0.3, "role": "l2"}], "deadline_s": 60}
    resp = await client.post(
        "/v1/tasks", json={"agent": "coder", "directive": "x", "operator": chain}, headers=ADMIN
    )
    assert resp.status == 202, await resp.text()
    hb = await expect(ws1, "hook_before")
    assert await expect(ws2, "hook_before") == hb  # escalated to l2, the last step
    sid2 = (await _shown(client, hb["req_id"]))["holder"]["sid"]
    resp = await client.post(
        f"/v1/requests/{hb['req_id']}/reassign",
        json={"role": "review", "note": "yours"},
        headers={"Authorization": f"Bearer {lead}"},
    )
    assert resp.status == 200, await resp.text()
    assert await expect(ws3, "hook_before") == hb
    sid3 = (await _shown(client, hb["req_id"]))["holder"]["sid"]
    resp = await client.post(f"/v1/operators/{sid3}/handover", json={"sid": sid4}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    ws4 = await connect(client, sid4, token4)
    assert await expect(ws4, "hook_before") == hb

    shown = await _shown(client, hb["req_id"])
    assert (shown["holder"]["sid"], shown["step"]) == (sid4, 1)
    assert _moves(shown) == [
        ("l1", "l2", "escalated", 1, None, None),
        (sid2, "review", "reassigned", 1, "key:lead", "yours"),
        (sid3, sid4, "handed_over", 1, "bootstrap", None),
    ]
    # At the last step its deadline counts from when it got there: 60 s on.
    escalated_at = datetime.fromisoformat(shown["moves"][0]["at"])
    waits = datetime.fromisoformat(shown["deadline_at"]) - escalated_at
    assert abs(waits - timedelta(seconds=60)) <= timedelta(milliseconds=1)  # rounding only
    await ws4.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
    assert (await wait_task(client, hb["task_id"]))["status"] == "failed"
    for ws in (ws1, ws2, ws3, ws4):
        await ws.close()


async def test_a_request_waiting_for_a_role_nobody_holds_is_listed_and_answered_over_rest(
    server: Server,
) -> None:
    """Escalated to a role no session holds, a request is held by nobody: it
    is still pending, so whoever may operate that role sees it and answers it
    without a seat."""
    client = await server(api_token=BOOT)
    oncall = (await make_key(client, "operate:oncall", name="pager"))["key"]
    first_line = (await make_key(client, "operate:l1", name="l1-bot"))["key"]
    ws1 = await operator(client, ["l1"])
    chain = {"role": "l1", "escalate": [{"after_s": 0.3, "role": "oncall"}], "deadline_s": 60}
    resp = await client.post(
        "/v1/tasks", json={"agent": "coder", "directive": "x", "operator": chain}, headers=ADMIN
    )
    assert resp.status == 202, await resp.text()
    hb = await expect(ws1, "hook_before")
    assert (await expect(ws1, "cancel"))["reason"] == "escalated"

    as_pager = {"Authorization": f"Bearer {oncall}"}
    resp = await client.get("/v1/requests", headers=as_pager)
    [shown] = (await resp.json())["requests"]
    assert (shown["req_id"], shown["holder"], shown["step"]) == (
        hb["req_id"],
        {"sid": None, "roles": ["oncall"]},
        1,
    )
    assert _moves(shown) == [("l1", "oncall", "escalated", 1, None, None)]
    resp = await client.get(f"/v1/requests/{hb['req_id']}", headers=as_pager)
    assert resp.status == 200 and (await resp.json())["holder"]["sid"] is None
    # The first line no longer operates it.
    resp = await client.get(
        f"/v1/requests/{hb['req_id']}", headers={"Authorization": f"Bearer {first_line}"}
    )
    assert resp.status == 403, await resp.text()

    rejected = {"type": "hook_ack", "ok": False, "reason": "paged: no"}
    status, body = await post_reply(client, hb["req_id"], rejected, oncall)
    assert (status, body) == (200, {"req_id": hb["req_id"], "type": "hook_ack", "via": "rest"})
    task = await wait_task(client, hb["task_id"])
    assert task["status"] == "failed" and "paged: no" in task["error"]["message"]
    # A late reply changes nothing and is told why.
    status, body = await post_reply(client, hb["req_id"], rejected)
    assert (status, body["error"]["code"]) == (409, "already_answered")
    decided = await audit(client, task_id=hb["task_id"], action="hook.rejected")
    assert [(e["principal"], e["session_id"]) for e in decided] == [("key:pager", None)]
    assert (await replies_counted(client)) == {("rest", "hook_ack"): 1.0}
    assert (await (await client.get("/v1/requests", headers=ADMIN)).json())["requests"] == []
    await ws1.close()


async def test_a_request_passed_back_and_forth_shows_only_its_newest_moves(
    server: Server,
) -> None:
    client = await server(api_token=BOOT)
    seats = {}
    for role in ("a", "b"):
        sid, token = await mint(client, [role])
        seats[role] = (token, await connect(client, sid, token))
    resp = await client.post(
        "/v1/tasks",
        json={"agent": "coder", "directive": "x", "operator": {"role": "a"}},
        headers=ADMIN,
    )
    assert resp.status == 202, await resp.text()
    hb = await expect(seats["a"][1], "hook_before")
    here, there = "a", "b"
    for _ in range(MOVES_KEPT + 1):
        token = seats[here][0]
        resp = await client.post(
            f"/v1/requests/{hb['req_id']}/reassign",
            json={"role": there, "note": f"to {there}"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status == 200, await resp.text()
        assert (await expect(seats[here][1], "cancel"))["reason"] == "reassigned"
        assert (await expect(seats[there][1], "hook_before"))["req_id"] == hb["req_id"]
        here, there = there, here
    shown = await _shown(client, hb["req_id"])
    assert len(shown["moves"]) == MOVES_KEPT
    # The newest kept: the first move (to b) is gone, the last one (to b) is there.
    assert shown["moves"][0]["to"] == "a" and shown["moves"][-1]["to"] == "b"
    for _, ws in seats.values():
        await ws.close()

"""Reassignment through a real server and real operator sockets: the holder of
a request (a ``reassign`` frame, or REST with its session's token) or an admin
moves it to another role or session; it keeps its req_id, the first holder
gets ``cancel`` reason ``reassigned`` and ``already_moved`` for a late reply,
the target gets it exactly once (at once, or when its socket attaches); the
move is an event and an audit row with the note.  Nothing here measures time."""

from __future__ import annotations

from typing import Any

from aiohttp import ClientWebSocketResponse
from aiohttp.test_utils import TestClient

from tests.audit.test_decisions import audit
from tests.conftest import Server, create_task, wait_task
from tests.http.sse import read_all
from tests.wsop import connect, expect, mint, no_frame


async def _seat(
    client: TestClient[Any, Any], role: str
) -> tuple[str, str, ClientWebSocketResponse]:
    sid, token = await mint(client, roles=[role])
    return sid, token, await connect(client, sid, token)


async def _moved_events(client: TestClient[Any, Any], task_id: str) -> list[dict[str, Any]]:
    events = await read_all(await client.get(f"/v1/tasks/{task_id}/events"))
    return [e.data for e in events if e.type == "request_moved"]


async def test_the_holder_reassigns_a_request_by_frame_and_the_target_answers_it(
    server: Server,
) -> None:
    client = await server()
    sid1, _, ws1 = await _seat(client, "l1")
    sid2, _, ws2 = await _seat(client, "review")
    task = await create_task(client, agent="coder", operator={"role": "l1"})
    hb = await expect(ws1, "hook_before")

    await ws1.send_json(
        {"type": "reassign", "req_id": hb["req_id"], "role": "review", "note": "yours"}
    )
    assert await expect(ws1, "cancel") == {
        "type": "cancel",
        "req_id": hb["req_id"],
        "reason": "reassigned",
    }
    assert await expect(ws2, "hook_before") == hb  # the same request, once
    # The first holder's late reply changes nothing.
    await ws1.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
    error = await expect(ws1, "error")
    assert (error["code"], error["req_id"]) == ("already_moved", hb["req_id"])
    await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
    spawn = await expect(ws1, "spawn")  # a new request of the task: back to its role
    await ws1.send_json({"type": "spawn_ack", "req_id": spawn["req_id"], "value": "done"})
    assert (await wait_task(client, task["id"]))["status"] == "passed"
    await no_frame(ws2)

    moved = await _moved_events(client, task["id"])
    assert [(m["req_id"], m["sid"], m["from"], m["to"], m["reason"], m["note"]) for m in moved] == [
        (hb["req_id"], sid1, sid1, "review", "reassigned", "yours")
    ]
    entries = await audit(client, task_id=task["id"], action="request.reassigned")
    assert [(e["req_id"], e["session_id"], e["outcome"], e["reason"]) for e in entries] == [
        (hb["req_id"], sid1, f"{sid1} -> review", "yours")
    ]
    approved = await audit(client, task_id=task["id"], action="hook.approved")
    assert [e["session_id"] for e in approved] == [sid2]


async def test_the_holder_reassigns_over_rest_with_its_session_token(server: Server) -> None:
    client = await server()
    sid1, token1, ws1 = await _seat(client, "l1")
    sid2, _, ws2 = await _seat(client, "review")
    task = await create_task(client, agent="coder", operator={"role": "l1"})
    hb = await expect(ws1, "hook_before")

    resp = await client.post(
        f"/v1/requests/{hb['req_id']}/reassign",
        json={"sid": sid2, "note": "please look"},
        headers={"Authorization": f"Bearer {token1}"},
    )
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"req_id": hb["req_id"], "from": sid1, "to": sid2}
    assert (await expect(ws1, "cancel"))["reason"] == "reassigned"
    assert await expect(ws2, "hook_before") == hb
    await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
    done = await wait_task(client, task["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "spawn_rejected")

    # Answered now: a second move is 409, over REST as over the socket.
    again = await client.post(
        f"/v1/requests/{hb['req_id']}/reassign",
        json={"role": "l1"},
        headers={"Authorization": f"Bearer {token1}"},
    )
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "already_answered"
    entries = await audit(client, task_id=task["id"], action="request.reassigned")
    assert [(e["outcome"], e["reason"]) for e in entries] == [(f"{sid1} -> {sid2}", "please look")]


async def test_a_request_reassigned_to_an_offline_session_is_replayed_when_it_connects(
    server: Server,
) -> None:
    client = await server()
    _, _, ws1 = await _seat(client, "l1")
    sid2, token2 = await mint(client, roles=["night"])  # minted, no socket yet
    task = await create_task(client, agent="coder", operator={"role": "l1"})
    hb = await expect(ws1, "hook_before")
    await ws1.send_json({"type": "reassign", "req_id": hb["req_id"], "sid": sid2})
    assert (await expect(ws1, "cancel"))["reason"] == "reassigned"

    ws2 = await connect(client, sid2, token2)
    assert await expect(ws2, "hook_before") == hb
    await ws2.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": False})
    done = await wait_task(client, task["id"])
    assert done["error"]["code"] == "spawn_rejected"


async def test_a_session_that_does_not_hold_the_request_cannot_move_it(server: Server) -> None:
    client = await server(api_token="admin-secret")
    sid1, _, ws1 = await _seat_with(client, "l1")
    _, token2, ws2 = await _seat_with(client, "other")
    created = await client.post(
        "/v1/tasks",
        json={"agent": "coder", "directive": "do it", "operator": {"role": "l1"}},
        headers={"Authorization": "Bearer admin-secret"},
    )
    assert created.status == 202, await created.text()
    hb = await expect(ws1, "hook_before")

    # Over the socket: refused, nothing moves.
    await ws2.send_json({"type": "reassign", "req_id": hb["req_id"], "role": "other"})
    error = await expect(ws2, "error")
    assert (error["code"], error["req_id"]) == ("forbidden", hb["req_id"])
    # Over REST with another session's token: 403.
    resp = await client.post(
        f"/v1/requests/{hb['req_id']}/reassign",
        json={"role": "other"},
        headers={"Authorization": f"Bearer {token2}"},
    )
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    await no_frame(ws1)  # still held by its first holder
    assert hb["req_id"] in _pending_sids(client, sid1)

    # The admin may: it moves.
    resp = await client.post(
        f"/v1/requests/{hb['req_id']}/reassign",
        json={"role": "other", "note": "covering"},
        headers={"Authorization": "Bearer admin-secret"},
    )
    assert resp.status == 200, await resp.text()
    assert (await expect(ws1, "cancel"))["reason"] == "reassigned"
    assert (await expect(ws2, "hook_before"))["req_id"] == hb["req_id"]
    entries = await audit_with(client, action="request.reassigned")
    assert [(e["principal"], e["reason"]) for e in entries] == [("bootstrap", "covering")]


async def test_bad_reassignments_are_answered_with_codes_naming_what_is_wrong(
    server: Server,
) -> None:
    client = await server()
    sid1, token1, ws1 = await _seat(client, "l1")
    await create_task(client, agent="coder", operator={"role": "l1"})
    hb = await expect(ws1, "hook_before")
    auth = {"Authorization": f"Bearer {token1}"}
    url = f"/v1/requests/{hb['req_id']}/reassign"

    unknown = await client.post("/v1/requests/op-nope-hb-1/reassign", json={"role": "x"})
    assert unknown.status == 404
    assert (await unknown.json())["error"]["code"] == "request_not_found"
    for body, names in (
        ({}, "role"),
        ({"role": "a", "sid": "b"}, "role"),
        ({"role": ""}, "role"),
        ({"sid": "op-missing"}, "op-missing"),
        ({"role": "l1"}, "l1"),
        ({"sid": sid1}, sid1),
    ):
        resp = await client.post(url, json=body, headers=auth)
        assert resp.status == 400, (body, await resp.text())
        error = (await resp.json())["error"]
        assert names in error["message"], (body, error)
    bad_json = await client.post(url, data=b"{", headers=auth)
    assert bad_json.status == 400
    # A frame naming no target, both, or a missing session: an error frame, still pending.
    for frame in (
        {"type": "reassign", "req_id": hb["req_id"]},
        {"type": "reassign", "req_id": hb["req_id"], "role": "a", "sid": "b"},
        {"type": "reassign", "req_id": hb["req_id"], "sid": "op-missing"},
    ):
        await ws1.send_json(frame)
        error = await expect(ws1, "error")
        assert error["code"] in ("bad_message", "bad_request"), error
    await ws1.send_json({"type": "hook_ack", "req_id": hb["req_id"], "ok": True})
    await expect(ws1, "spawn")  # the request was never moved: its reply counted


def _pending_sids(client: TestClient[Any, Any], sid: str) -> set[str]:
    from tests.conftest import directory_of

    return set(directory_of(client).sessions[sid].pending)


async def _seat_with(
    client: TestClient[Any, Any], role: str
) -> tuple[str, str, ClientWebSocketResponse]:
    resp = await client.post(
        "/v1/operators", json={"roles": [role]}, headers={"Authorization": "Bearer admin-secret"}
    )
    body = await resp.json()
    return body["sid"], body["token"], await connect(client, body["sid"], body["token"])


async def audit_with(client: TestClient[Any, Any], **params: str) -> list[dict[str, Any]]:
    resp = await client.get(
        "/v1/audit", params=params, headers={"Authorization": "Bearer admin-secret"}
    )
    assert resp.status == 200, await resp.text()
    entries: list[dict[str, Any]] = (await resp.json())["entries"]
    return entries


async def test_a_request_sent_to_a_role_nobody_holds_waits_and_whoever_operates_it_moves_it_on(
    server: Server,
) -> None:
    client = await server(api_token="admin-secret")
    sid1, _, ws1 = await _seat_with(client, "l1")
    _, _, ws3 = await _seat_with(client, "oncall")
    created = await client.post(
        "/v1/tasks",
        json={"agent": "coder", "directive": "do it", "operator": {"role": "l1"}},
        headers={"Authorization": "Bearer admin-secret"},
    )
    assert created.status == 202, await created.text()
    hb = await expect(ws1, "hook_before")
    await ws1.send_json({"type": "reassign", "req_id": hb["req_id"], "role": "security"})
    assert (await expect(ws1, "cancel"))["reason"] == "reassigned"

    # Nobody holds "security": the request waits for it.  A key that may not
    # operate it cannot move it; one that may, can.
    url = f"/v1/requests/{hb['req_id']}/reassign"
    for scopes, status in ((["operate:l*"], 403), (["operate:sec*"], 200)):
        made = await client.post(
            "/v1/keys",
            json={"name": scopes[0], "scopes": scopes},
            headers={"Authorization": "Bearer admin-secret"},
        )
        key = (await made.json())["key"]
        resp = await client.post(
            url, json={"role": "oncall"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert resp.status == status, await resp.text()
    assert await expect(ws3, "hook_before") == hb
    entries = await audit_with(client, action="request.reassigned")
    # The first move is the session's (its minter's act), the second the key's.
    assert [(e["principal"], e["outcome"]) for e in entries] == [
        ("bootstrap", f"{sid1} -> security"),
        ("key:operate:sec*", "security -> oncall"),
    ]
